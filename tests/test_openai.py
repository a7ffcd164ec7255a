"""POST /v1/completions driven by the real `openai` client against the real service (gunicorn, Redis, tiny
exported bundles): drained and streamed, seeds, stop words, limits, logprobs, errors, the session extension."""

from __future__ import annotations

import json
import math
import os
import time

import httpx
import openai
import pytest
import redis
import requests

from service.heads import Heads
from service.http.openai import _Joiner
from service.tokenizer import detokenize
from tests.conftest import _SUBJECTS
from tests.servers import wait_for

PROMPT = "the cat eats fish ."


@pytest.fixture
def service(service_factory):
    return service_factory(workers=1)


@pytest.fixture
def client(service):
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def _sessions(service) -> int:
    """Sessions in Redis: a stateless completion leaves none behind."""
    r = redis.Redis.from_url(service.env["REDIS_URL"])
    try:
        return sum(1 for _ in r.scan_iter("nextword:session:*"))
    finally:
        r.close()


def test_drained_completion_has_openais_shape(client, service):
    c = client.completions.create(model="tiny-lstm", prompt=PROMPT, max_tokens=5, seed=3)
    assert c.object == "text_completion" and c.id.startswith("cmpl-") and c.model == "tiny-lstm"
    assert isinstance(c.created, int)
    [choice] = c.choices
    assert choice.index == 0 and choice.logprobs is None
    assert c.usage.prompt_tokens == 5  # the cat eats fish .
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert not choice.text[:1].isalnum()  # a word follows the prompt after a space (punctuation hugs it)
    assert _sessions(service) == 0  # the temporary session is gone
    # the same draw on the native endpoint: how it ended, and after how many tokens
    sid = requests.post(f"{service.url}/sessions", json={"model": "tiny-lstm"}).json()["session_id"]
    native = requests.post(f"{service.url}/sessions/{sid}/generate",
                           json={"text": PROMPT, "max_tokens": 5, "seed": 3}).json()
    assert choice.finish_reason == ("length" if native["finish_reason"] == "length" else "stop")
    assert c.usage.completion_tokens == len(native["token_details"])
    if choice.finish_reason == "length":
        assert c.usage.completion_tokens == 5 and len(choice.text.split()) == 5


def test_model_may_be_omitted_and_a_list_of_one_prompt_is_a_prompt(service):
    plain = requests.post(f"{service.url}/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0}).json()
    listed = requests.post(f"{service.url}/v1/completions",
                           json={"prompt": [PROMPT], "max_tokens": 4, "temperature": 0, "model": "tiny-lstm"}).json()
    assert plain["model"] == "tiny-lstm"  # the service's default
    assert plain["choices"][0]["text"] == listed["choices"][0]["text"]


def test_streaming_chunks_concatenate_to_the_drained_text(client):
    kwargs = dict(model="tiny-lstm", prompt=PROMPT, max_tokens=8, seed=11, temperature=1.5)
    drained = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, **kwargs))  # ends at data: [DONE]
    assert all(ch.object == "text_completion" and ch.id == chunks[0].id for ch in chunks)
    texts = [ch.choices[0].text for ch in chunks]
    assert "".join(texts) == drained.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == drained.choices[0].finish_reason
    assert len(chunks) - 1 == len(drained.choices[0].text.split()) or drained.choices[0].finish_reason == "stop"


def test_stream_raw_ends_with_done_and_include_usage_adds_a_usage_chunk(service):
    with requests.post(f"{service.url}/v1/completions", stream=True, timeout=30,
                       json={"prompt": PROMPT, "max_tokens": 3, "stream": True, "seed": 1,
                             "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][len("data: "):])
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 5
    assert 1 <= usage["usage"]["completion_tokens"] <= 3


def test_the_same_seed_gives_the_same_text_and_greedy_needs_none(client):
    def text(**kw):
        return client.completions.create(model="tiny-lstm", prompt="a dog", max_tokens=12, **kw).choices[0].text

    seeded = {text(seed=5, temperature=1.8) for _ in range(3)}
    assert len(seeded) == 1
    assert len({text(seed=s, temperature=1.8) for s in range(6)}) > 1  # the seed matters
    assert len({text(temperature=0) for _ in range(2)}) == 1
    assert text(temperature=0) == text(top_p=0, seed=9)  # top_p 0 keeps the one most likely word


def test_max_tokens_bounds_the_completion(client):
    c = client.completions.create(model="tiny-lstm", prompt="the", max_tokens=1, temperature=0)
    assert c.usage.completion_tokens == 1
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-lstm", prompt="the", max_tokens=10_000)
    assert "max_tokens" in str(e.value)


def test_stop_word_ends_the_completion_and_is_left_out(client):
    def words(**kw):
        c = client.completions.create(model="tiny-lstm", prompt="the cat", max_tokens=6, temperature=1.5, logprobs=0,
                                      **kw)
        return c, [t.strip() for t in c.choices[0].logprobs.tokens]

    for seed in range(20):  # a seed whose completion has a word not seen before it, after the first
        free, tokens = words(seed=seed)
        fresh = [j for j in range(1, len(tokens)) if tokens[j] not in tokens[:j]]
        if fresh:
            break
    else:
        pytest.fail("no seed gave a completion with a new word after the first")
    j = fresh[0]
    stopped, shown = words(seed=seed, stop=tokens[j])
    assert stopped.choices[0].finish_reason == "stop"
    assert shown == tokens[:j]
    assert stopped.choices[0].text == "".join(free.choices[0].logprobs.tokens[:j])
    assert stopped.usage.completion_tokens == j + 1  # the stop word was generated (and consumed) but not shown
    # a stop that is several words as the model reads text never matches (the model generates words)
    several, _ = words(seed=seed, stop=[f"{tokens[j]} {tokens[j]}", f"({tokens[j]}"])
    assert several.choices[0].text == free.choices[0].text
    # line breaks alone are <eos>, which ends a generation anyway
    assert words(seed=seed, stop="\n\n")[0].choices[0].text == free.choices[0].text


def test_logprobs_match_the_generate_endpoint_and_predict(client, service):
    c = client.completions.create(model="tiny-lstm", prompt="the cat", max_tokens=5, seed=21, temperature=1.7,
                                  logprobs=3)
    lp = c.choices[0].logprobs
    n = len(lp.tokens)
    assert n >= 1 and len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and logprob <= 0
        assert list(top.values()) == sorted(top.values(), reverse=True)
        if token in top:
            assert top[token] == pytest.approx(logprob, abs=1e-6)
        else:
            assert logprob <= min(top.values()) + 1e-6
    # the same draw on the native endpoint: its probabilities are the model's own
    sid = requests.post(f"{service.url}/sessions", json={"model": "tiny-lstm"}).json()["session_id"]
    native = requests.post(f"{service.url}/sessions/{sid}/generate",
                           json={"text": "the cat", "max_tokens": 5, "seed": 21, "temperature": 1.7}).json()
    shown = [t for t in native["token_details"] if t["word"] not in ("<eos>",)][:n]
    assert [t["word"] for t in shown] == [t.strip() for t in lp.tokens]
    for t, logprob in zip(shown, lp.token_logprobs):
        assert math.exp(logprob) == pytest.approx(t["probability"], abs=2e-6)
    # the first token's alternatives are /predict's top words after the prompt
    predicted = requests.post(f"{service.url}/predict", json={"text": "the cat", "top_k": 3}).json()["predictions"]
    first = lp.top_logprobs[0]
    assert [k.strip() or "<eos>" for k in first] == [p["word"] for p in predicted]  # <eos> writes a line break
    assert [math.exp(v) for v in first.values()] == pytest.approx([p["probability"] for p in predicted], abs=1e-6)


def test_logprobs_zero_gives_the_chosen_tokens_only_and_streams(client):
    chunks = list(client.completions.create(model="tiny-lstm", prompt="a child", max_tokens=3, seed=2, logprobs=0,
                                            stream=True))
    for ch in chunks[:-1]:
        lp = ch.choices[0].logprobs
        assert lp.tokens == [ch.choices[0].text] and lp.top_logprobs == [{}] and lp.token_logprobs[0] <= 0
    offsets = [ch.choices[0].logprobs.text_offset[0] for ch in chunks[:-1]]
    assert offsets == [sum(len(c.choices[0].text) for c in chunks[:i]) for i in range(len(offsets))]


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 2}, "n"),
    ({"logprobs": 6}, "logprobs"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"echo": True}, "echo"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"best_of": 2}, "best_of"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"suffix": "end"}, "suffix"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"seed": -1}, "seed"),
    ({"extra_body": {"prompt": ["one", "two"]}}, "prompt"),
    ({"extra_body": {"prompt": [1, 2, 3]}}, "prompt"),
    ({"extra_body": {"prompt": "   "}}, "prompt"),
    ({"extra_body": {"top_k": 5}}, "top_k"),
    ({"extra_body": {"stream_options": {"include_usage": True, "other": 1}}}, "stream_options"),
])
def test_bad_fields_are_400s_the_client_raises(client, service, kwargs, field):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-lstm", prompt=PROMPT, **kwargs)
    assert e.value.status_code == 400
    assert (e.value.param, e.value.type, e.value.code) == (field, "invalid_request_error", "invalid_input")
    assert field in e.value.message and set(e.value.body) == {"message", "type", "param", "code"}
    assert _sessions(service) == 0


def test_neutral_openai_defaults_are_accepted(client):
    c = client.completions.create(model="tiny-lstm", prompt=PROMPT, max_tokens=2, n=1, best_of=1, echo=False,
                                  frequency_penalty=0, presence_penalty=0.0, logit_bias={}, user="someone")
    assert len(c.choices) == 1


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=PROMPT)
    assert e.value.body["code"] == "unknown_model"


def test_session_extension_continues_and_commits(client, service):
    sid = requests.post(f"{service.url}/sessions", json={"model": "tiny-lstm"}).json()["session_id"]
    first = client.completions.create(model="tiny-lstm", prompt="the cat", max_tokens=3, temperature=0,
                                      extra_body={"session_id": sid})
    after = requests.get(f"{service.url}/sessions/{sid}").json()
    assert after["tokens"] == 2 + first.usage.completion_tokens and after["version"] == 1
    # an empty prompt continues where the session stands: the words /generate gives on a session fed the same way
    second = client.completions.create(model="tiny-lstm", prompt="", max_tokens=3, temperature=0,
                                       extra_body={"session_id": sid})
    twin = requests.post(f"{service.url}/sessions", json={"model": "tiny-lstm"}).json()["session_id"]
    greedy = {"max_tokens": 3, "temperature": 1e-6}  # at or below 1e-5: greedy
    native = [requests.post(f"{service.url}/sessions/{twin}/generate", json={**extra, **greedy}).json()
              for extra in ({"text": "the cat"}, {})]
    assert first.choices[0].text.lstrip() == native[0]["text"]
    assert second.choices[0].text.lstrip() == native[1]["text"]
    assert not second.choices[0].text[:1].isalnum()  # a word after the session's words gets its space
    assert requests.get(f"{service.url}/sessions/{sid}").json()["version"] == 2
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="tiny-rnn", prompt="the", extra_body={"session_id": sid})
    assert e.value.status_code == 409 and (e.value.param, e.value.code) == ("model", "model_mismatch")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny-lstm", prompt="the", extra_body={"session_id": "x" * 32})


def test_prompt_words_outside_the_subjects_still_complete(client):
    """The tiny corpus' words all work as prompts; an unknown word is read as <unk>."""
    subject = sorted(_SUBJECTS)[0]
    c = client.completions.create(model="tiny-rnn", prompt=f"{subject} zebra", max_tokens=2, seed=0)
    assert c.model == "tiny-rnn" and c.usage.prompt_tokens == 3


def test_the_openapi_request_schema_lists_exactly_the_accepted_fields(client, service):
    fields = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "logprobs", "echo",
              "stream", "stream_options", "user", "best_of", "frequency_penalty", "presence_penalty", "logit_bias",
              "suffix", "session_id"}  # OpenAI's completions fields, and the session extension
    document = requests.get(f"{service.url}/openapi.json").json()
    schema = document["components"]["schemas"]["CompletionRequest"]
    assert schema["additionalProperties"] is False and set(schema["properties"]) == fields
    assert schema["required"] == ["prompt"]
    assert set(document["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]) == {
        "application/json", "text/event-stream"}


def test_api_keys_are_the_clients_api_key(service_factory):
    service = service_factory(NEXTWORD_API_KEYS="k1")
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key="k1", max_retries=0) as good:
        assert good.completions.create(model="tiny-lstm", prompt=PROMPT, max_tokens=2).usage.completion_tokens >= 1
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model="tiny-lstm", prompt=PROMPT)
    assert e.value.body["code"] == "unauthorized"


def test_a_client_that_leaves_mid_stream_leaves_nothing_behind(service_factory):
    """A paced server (every model step waits 50 ms for batch peers, as in tests/test_generate.py), so the client
    leaves while the generation still runs."""
    service = service_factory(NEXTWORD_BATCH_WAIT_MS="50")
    body = dict(model="tiny-lstm", prompt=PROMPT, max_tokens=40, temperature=0)
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        assert client.completions.create(**body).choices[0].finish_reason == "length"  # runs 40 steps
        sid = requests.post(f"{service.url}/sessions", json={"model": "tiny-lstm"}).json()["session_id"]
        for extra in ({}, {"session_id": sid}):
            stream = client.completions.create(stream=True, extra_body=extra, **body)
            next(iter(stream))
            stream.close()
    # both generations closed (a generation that ran on to its end would hold its slot until after its commit),
    # the temporary sessions deleted, and the named one not written: a generation commits only when it ends
    wait_for(lambda: "nextword_active_streams 0.0" in requests.get(f"{service.url}/metrics").text,
             what="both streams to be closed")
    wait_for(lambda: _sessions(service) == 1, what="the temporary session to be deleted")
    assert requests.get(f"{service.url}/sessions/{sid}").json()["version"] == 0


@pytest.mark.parametrize("start", [0, 5, 45])
def test_pieces_concatenate_to_the_joined_text_past_the_window(start):
    """The joiner's pieces, over a context longer than its window, make the text the convention writes."""
    words = ('He said " it was 1 @,@ 000 ( or so ) , and that \'s all " . Then 2 : 33 passed ; role @-@ playing '
             'games , U.S. troops . " Open').split() * 3
    joiner = _Joiner(words[:start], "wikitext")
    pieces = [joiner.add(w) for w in words[start:]]
    assert "".join(pieces) == detokenize(words, "wikitext")[len(detokenize(words[:start], "wikitext")):]


def test_models_are_listed_in_openais_shape(client, models_dir):
    assert {m.id for m in client.models.list()} == {"tiny-lstm", "tiny-rnn"}
    model = client.models.retrieve("tiny-rnn")
    assert (model.id, model.object, model.owned_by) == ("tiny-rnn", "model", "nextword")
    exported = json.loads((models_dir / "tiny-rnn" / "manifest.json").read_text())["export"]["created"]
    assert model.created == exported and abs(exported - time.time()) < 24 * 3600  # made by this test session
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "unknown_model"


def test_a_bundle_without_an_export_time_is_dated_by_its_file(make_app, tiny_bundle_copy):
    manifest = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    del manifest["export"]["created"]
    (tiny_bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    os.utime(tiny_bundle_copy / "model.onnx", (1_700_000_000, 1_700_000_000))
    listed = make_app(models_dir=tiny_bundle_copy.parent, default_model="bundle").test_client().get("/v1/models")
    assert listed.json["data"] == [{"id": "bundle", "object": "model", "created": 1_700_000_000,
                                    "owned_by": "nextword"}]


def test_chat_completions_says_what_the_models_are(client, service):
    """A tool that speaks only chat gets OpenAI's error shape and a message it can show, not a bare 404."""
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="tiny-lstm", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in str(e.value) and "completion model" in str(e.value)
    raw = requests.post(f"{service.url}/v1/chat/completions", json={"messages": []}, timeout=30)
    assert raw.status_code == 404
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["type"] == "invalid_request_error" and raw.json()["error"]["code"] == "not_a_chat_model"
    assert requests.get(f"{service.url}/v1/chat/completions", timeout=30).status_code == 405


def test_logprobs_read_device_resident_rows(make_app):
    """On CUDA log-probabilities stay on the device (service/heads.py); the same heads run on the CPU provider."""
    resident, plain = make_app(), make_app()
    for scheduler in resident.extensions["nextword"].engine.models.values():
        rt = scheduler.runtime
        rt.heads = Heads(rt.bundle.vocab_size, rt.session.get_providers(), "cpu", frozenset({rt.bundle.unk}))
    body = {"prompt": "the cat", "max_tokens": 5, "seed": 3, "logprobs": 2, "temperature": 0.9}
    got, want = (app.test_client().post("/v1/completions", json=body).json for app in (resident, plain))
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    a, b = got["choices"][0]["logprobs"], want["choices"][0]["logprobs"]
    assert a["tokens"] == b["tokens"] and a["token_logprobs"] == pytest.approx(b["token_logprobs"], abs=1e-5)
    assert [list(t) for t in a["top_logprobs"]] == [list(t) for t in b["top_logprobs"]]


# -- OpenAI's error shape, on the app itself (the openai client over a WSGI transport) --------------------------------

def _wsgi_client(app, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://nextword/v1", api_key=api_key, max_retries=0,
                         http_client=httpx.Client(transport=httpx.WSGITransport(app=app)))


def _openai_error(response) -> dict:
    assert response.mimetype == "application/json"
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_errors_under_v1_carry_param_type_and_code_in_the_client(make_app):
    app = make_app(max_text_tokens=3)
    client = _wsgi_client(app)
    with pytest.raises(openai.BadRequestError) as e:  # the engine's text is OpenAI's `prompt`
        client.completions.create(model="tiny-lstm", prompt="the cat eats fish")
    assert (e.value.param, e.value.type, e.value.code) == ("prompt", "invalid_request_error", "invalid_input")
    assert "4 tokens" in e.value.message and "3" in e.value.message  # in the domain's words, not rewritten
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="the")
    assert (e.value.param, e.value.type, e.value.code) == ("model", "invalid_request_error", "unknown_model")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert (e.value.param, e.value.code) == ("model", "unknown_model")
    test = app.test_client()
    assert _openai_error(test.get("/v1/no-such-thing")) == {
        "message": "no endpoint /v1/no-such-thing", "type": "invalid_request_error", "param": None,
        "code": "not_found"}
    assert _openai_error(test.get("/v1/completions"))["code"] == "method_not_allowed"
    assert _openai_error(test.post("/v1/completions", data="{", content_type="application/json"))["code"] == \
        "invalid_json"
    native = test.post("/predict", json={"text": "the cat eats fish"}).json  # the native API keeps its shape
    assert native == {"error": {"code": "invalid_input", "message": native["error"]["message"], "field": "text"}}


def test_401_and_429_under_v1_are_authentication_and_rate_limit_errors(make_app):
    app = make_app(api_keys=("k1",), max_streams=1)
    with pytest.raises(openai.AuthenticationError) as e:
        _wsgi_client(app, "wrong").completions.create(model="tiny-lstm", prompt="the")
    assert (e.value.param, e.value.type, e.value.code) == (None, "authentication_error", "unauthorized")
    held = app.test_client().post("/v1/completions", headers={"Authorization": "Bearer k1"}, buffered=False,
                                  json={"prompt": "the", "max_tokens": 3, "stream": True})
    assert held.status_code == 200  # started, not yet read: it holds the worker's only stream
    with pytest.raises(openai.RateLimitError) as e:
        _wsgi_client(app, "k1").completions.create(model="tiny-lstm", prompt="the")
    assert (e.value.type, e.value.code) == ("rate_limit_error", "overloaded")
    assert e.value.response.headers["Retry-After"] == "1"
    held.get_data()
    held.close()


def test_a_mid_stream_error_event_has_openais_shape_and_the_client_raises_it(make_app, monkeypatch):
    """Another replica writes the session while a streamed completion runs on it: the completion's commit fails,
    and its last event is an `error` the openai client raises with param, type and code."""
    app, replica = make_app(), make_app()
    sid = app.test_client().post("/sessions").json["session_id"]
    runtime = app.extensions["nextword"].engine.model(None).runtime
    real, calls = runtime.run, []

    def run(tokens, states, with_log_probs=True):
        calls.append(tokens.shape)
        if len(calls) == 3:  # the prompt is fed, the stream is running: a write from elsewhere
            assert replica.test_client().post("/predict", json={"text": "dog", "session_id": sid}).status_code == 200
        return real(tokens, states, with_log_probs)

    monkeypatch.setattr(runtime, "run", run)
    stream = _wsgi_client(app).completions.create(model="tiny-lstm", prompt="the cat", max_tokens=5, temperature=0,
                                                  stream=True, extra_body={"session_id": sid})
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert (e.value.param, e.value.type, e.value.code) == ("session_id", "invalid_request_error", "session_conflict")
    assert len(calls) >= 3
