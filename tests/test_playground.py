"""The playground page at `/`, driven in real headless Chromium (the system's /usr/bin/chromium through
Playwright; nothing is downloaded) against the real service under gunicorn with the tiny bundles:
typing shows the suggestions the API returns for the text as typed (the word being typed completed, words
only), clicking one or Tab accepts it, two models compare side by side, a continuation streams token by
token, session mode feeds words one step at a time, and the page logs no console error. Typing is at one key per 100 ms on a service paced to 20 ms per model step, so
requests overlap and a stale answer would show if the page let one through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from nextword_client import split_typed

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs the system Chromium at /usr/bin/chromium (`apt-get install chromium`; "
                                       ".ci/run installs it)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY_DELAY_MS = 100  # one keystroke every 100 ms
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def service(module_service):
    return module_service(NEXTWORD_BATCH_WAIT_MS="20")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    # A request the page cancels itself (a stale prediction, a stopped stream) fails as ERR_ABORTED by design.
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url} {request.failure}")
            if "ERR_ABORTED" not in (request.failure or "") else None)
    page.goto(service.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.problems = problems
    yield page
    context.close()


def api_predict(service, typed: str, model: str | None = None) -> dict:
    """What the page asks for the text as typed: its trailing letters are the word in progress, words only."""
    text, prefix = split_typed(typed)
    response = requests.post(service.url + "/predict", json={"text": text, "prefix": prefix, "top_k": 10,
                                                              "scores": True, "words_only": True, "model": model},
                             timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def shown_words(page, bars: str = "#bars") -> list[str]:
    return page.eval_on_selector_all(f"{bars} button", "buttons => buttons.map(b => b.dataset.word)")


def wait_for_bars(page, words: list[str], bars: str = "#bars") -> None:
    page.wait_for_function("([bars, words]) => JSON.stringify([...document.querySelectorAll(bars + ' button')]"
                           ".map(b => b.dataset.word)) === JSON.stringify(words)", arg=[bars, words])


def wait_for_surprise(page, words: list[str], box: str = "#surprise") -> None:
    page.wait_for_function("([box, words]) => JSON.stringify([...document.querySelectorAll(box + ' span')]"
                           ".map(s => s.textContent)) === JSON.stringify(words)", arg=[box, words])


def check_colours(page, expected: dict, box: str = "#surprise") -> None:
    """Each word of the surprise view has the probability the API gives it."""
    titles = page.eval_on_selector_all(f"{box} span", "spans => spans.map(s => [s.textContent, s.title])")
    for (word, title), score in zip(titles, expected["scores"], strict=True):
        assert score["word"] == word and title.startswith("p = "), title
        assert float(title.split()[2]) == pytest.approx(score["probability"], rel=5e-3)


def type_slowly(page, text: str) -> None:
    page.locator("#text").press_sequentially(text, delay=KEY_DELAY_MS)


def watch_status(page) -> None:
    """From now on, window.statusLines collects every text the status line shows."""
    page.evaluate("""() => {
        window.statusLines = [];
        new MutationObserver(() => window.statusLines.push(document.getElementById('status').textContent))
            .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
    }""")


def stream(page, max_tokens: int) -> list[str]:
    """Clicks "Stream a continuation" and returns every status line the page showed until it ended."""
    watch_status(page)
    page.fill("#max-tokens", str(max_tokens))
    page.click("#generate")
    page.wait_for_function("window.statusLines.some(line => line.includes('finish:'))")
    return page.evaluate("window.statusLines")


def test_type_see_suggestions_accept_one_and_stream(page, service):
    models = requests.get(service.url + "/models", timeout=30).json()
    assert page.input_value("#model") == models["default"]
    assert sorted(page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")) == sorted(
        m["name"] for m in models["models"])

    type_slowly(page, "the cat eats ")
    expected = api_predict(service, "the cat eats ")
    wait_for_bars(page, [p["word"] for p in expected["predictions"]])
    # each typed word coloured by its probability, the numbers the API gives
    # (the bars of "the cat eat" may equal those of "the cat eats": wait for the words too)
    wait_for_surprise(page, expected["tokens"])
    check_colours(page, expected)

    # the second word that is not the end of the line: a real choice, and a word to continue from
    word = [w for w in shown_words(page) if w != "<eos>"][1]
    page.click(f"#bars button[data-word='{word}']")
    accepted = f"the cat eats {word} "
    assert page.input_value("#text") == accepted
    wait_for_bars(page, [p["word"] for p in api_predict(service, accepted)["predictions"]])

    page.fill("#temperature", "0.5")
    lines = stream(page, 6)
    streamed = [line for line in lines if line.startswith("streaming: ")]
    final = page.input_value("#text")
    done = [line for line in lines if "finish:" in line]
    assert len(done) == 1, lines
    count = int(done[0].split()[0])
    # the text grew token by token: one status line per token as it arrived, before the done line
    assert streamed == [f"streaming: {i} tokens" for i in range(1, count + 1)], lines
    assert final.startswith(accepted.rstrip()) and len(final) > len(accepted.rstrip())
    # and the suggestions follow the continued text
    wait_for_bars(page, [p["word"] for p in api_predict(service, final)["predictions"]])
    assert page.problems == []


def test_the_word_being_typed_is_completed_and_tab_takes_it(page, service):
    type_slowly(page, "the cat eats fish ")
    raw = requests.post(service.url + "/predict", json={"text": "the cat eats fish", "top_k": 10}, timeout=30).json()
    assert {".", "<eos>"} & {p["word"] for p in raw["predictions"][:3]}  # what no one would pick ranks high raw
    wait_for_bars(page, [p["word"] for p in api_predict(service, "the cat eats fish ")["predictions"]])
    assert not {"<unk>", "<eos>", "."} & set(shown_words(page))

    page.fill("#text", "a child ")
    type_slowly(page, "dr")  # letter by letter: the completion shows before the word is finished
    completions = api_predict(service, "a child dr")
    assert completions["filter"]["prefix"] == "dr" and completions["predictions"]
    wait_for_bars(page, [p["word"] for p in completions["predictions"]])
    top = completions["predictions"][0]["word"]
    assert top.startswith("dr") and top != "dr"
    assert page.input_value("#text") == "a child dr"  # the word is not finished, its completion is shown
    page.locator("#text").press("Tab")
    assert page.input_value("#text") == f"a child {top} "
    wait_for_bars(page, [p["word"] for p in api_predict(service, f"a child {top} ")["predictions"]])
    type_slowly(page, "zq")  # nothing in the vocabulary starts with it: an empty list, said so
    page.wait_for_function("document.getElementById('bars').dataset.matches === '0'")
    assert shown_words(page) == [] and "no word starts with" in page.text_content("#bars")
    page.locator("#text").press("Tab")  # nothing to take: Tab leaves the text alone
    assert page.input_value("#text") == f"a child {top} zq"
    assert page.problems == []


def test_two_models_side_by_side_on_the_articles_example(page, service):
    """The preset: the LSTM and the RNN on the same text, each with its suggestions and its colours."""
    column = ".pair .only-comparing"  # the compared model's suggestions
    assert not page.is_visible(column)
    page.click("#preset-cliff")
    assert page.is_checked("#compare") and page.is_visible(column)
    assert (page.input_value("#model"), page.input_value("#model-b")) == ("tiny-lstm", "tiny-rnn")
    typed = page.input_value("#text")
    assert typed.startswith("I have a dog named Cliff.") and typed.endswith("my pet d") and len(typed.split()) > 60
    for model, bars, box in (("tiny-lstm", "#bars", "#surprise"), ("tiny-rnn", "#bars-b", "#surprise-b")):
        expected = api_predict(service, typed, model)
        wait_for_bars(page, [p["word"] for p in expected["predictions"]], bars)
        wait_for_surprise(page, expected["tokens"], box)
        check_colours(page, expected, box)
    assert page.is_visible("#surprise-b")
    # typing goes on in both
    type_slowly(page, "o")
    for model, bars in (("tiny-lstm", "#bars"), ("tiny-rnn", "#bars-b")):
        wait_for_bars(page, [p["word"] for p in api_predict(service, typed + "o", model)["predictions"]], bars)
    page.uncheck("#compare")
    assert not page.is_visible(column) and not page.is_visible("#surprise-b")
    assert page.problems == []


@pytest.mark.slow
def test_session_mode_feeds_each_finished_word_once(page, service):
    page.check("#session-mode")
    type_slowly(page, "a dog barks ")
    expected = api_predict(service, "a dog barks ")
    wait_for_bars(page, [p["word"] for p in expected["predictions"]])  # a session gives the stateless answer
    page.wait_for_function("document.getElementById('status').textContent.includes('has read 3 tokens')")
    assert page.eval_on_selector_all("#surprise span", "s => s.map(x => x.textContent)") == expected["tokens"]
    type_slowly(page, "ba")  # the word in progress ranks the bars; it is not fed
    wait_for_bars(page, [p["word"] for p in api_predict(service, "a dog barks ba")["predictions"]])
    assert "has read 3 tokens" in page.text_content("#status")

    # an edit before the end starts a new session that reads the whole text once
    page.fill("#text", "")
    type_slowly(page, "the bird sings ")
    page.wait_for_function("document.getElementById('status').textContent.includes('has read 3 tokens')")
    wait_for_bars(page, [p["word"] for p in api_predict(service, "the bird sings ")["predictions"]])

    stream(page, 4)
    assert page.input_value("#text").startswith("the bird sings ")
    type_slowly(page, "today ")  # the session continues after the generated words
    page.wait_for_function("!document.getElementById('status').textContent.includes('finish:')")
    assert "has read" in page.text_content("#status"), page.text_content("#status")
    assert page.problems == []


@pytest.fixture
def slow_page(browser, service_factory):
    """The page on a service whose every model step takes 800 ms: a generation is still reading its
    prompt when Stop is clicked, however short the line the tiny model then writes."""
    proc = service_factory(NEXTWORD_BATCH_WAIT_MS="800")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.goto(proc.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.problems = problems
    yield page, proc
    context.close()


def test_stop_ends_a_stream_and_the_page_recovers(slow_page):
    page, service = slow_page
    page.fill("#text", "my friend ")
    page.fill("#max-tokens", "50")
    watch_status(page)
    page.click("#generate")
    page.click("#stop")  # enabled as soon as the request is sent
    page.wait_for_function("window.statusLines.includes('stopped')")
    assert not any("finish:" in line for line in page.evaluate("window.statusLines"))
    assert page.is_enabled("#generate") and not page.is_enabled("#stop")
    text = page.input_value("#text")
    assert text.startswith("my friend ")
    wait_for_bars(page, [p["word"] for p in api_predict(service, text)["predictions"]])
    assert page.problems == []
    # the next stream runs to its end
    lines = stream(page, 3)
    assert any("finish:" in line for line in lines) and "stopped" not in lines


def test_docs_renders_every_operation_without_leaving_the_service(browser, service):
    """/docs is Swagger UI from packaged files: it draws each operation of /openapi.json, and the
    browser asks nothing of any other host (no CDN, no validator badge)."""
    spec = requests.get(service.url + "/openapi.json", timeout=30).json()
    operations = sum(1 for item in spec["paths"].values() for method in item
                     if method in ("get", "post", "put", "patch", "delete"))
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    elsewhere, problems = [], []
    page.on("request", lambda request: elsewhere.append(request.url)
            if not request.url.startswith((service.url + "/", "data:")) else None)
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    try:
        page.goto(service.url + "/docs/")
        page.wait_for_function("n => document.querySelectorAll('.opblock').length === n", arg=operations)
        assert page.locator(".info .title").inner_text().startswith(spec["info"]["title"])
    finally:
        context.close()
    assert elsewhere == [] and problems == []
