"""POST /predict and the model endpoints, through the Flask test client on real tiny bundles."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.tokenizer import tokenize

BINARY = "application/octet-stream"


def distribution(client, body: dict) -> tuple[np.ndarray, dict]:
    """The full next-word distribution (octet-stream) and the response headers."""
    r = client.post("/predict", json=body, headers={"Accept": BINARY})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == BINARY
    return np.frombuffer(r.data, dtype="<f4"), r.headers


def test_predict_json_shape(client):
    r = client.post("/predict", json={"text": "the cat eats"})
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    body = r.json
    assert body["model"] == "tiny-lstm"  # the configured default
    assert r.headers["X-Model"] == "tiny-lstm"
    assert body["tokens"] == ["the", "cat", "eats"]
    assert body["unknown"] == []
    predictions = body["predictions"]
    assert len(predictions) == 10  # default top_k
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p <= 1 for p in probabilities)
    assert sum(probabilities) <= 1 + 1e-6
    assert len({p["word"] for p in predictions}) == 10
    assert "session" not in body


def test_predict_is_deterministic(client):
    a = client.post("/predict", json={"text": "a dog barks"}).json
    b = client.post("/predict", json={"text": "a dog barks"}).json
    assert a == b


def test_top_k_and_vocabulary_order(client):
    vocab = client.get("/models/tiny-lstm/vocab").json
    assert vocab["model"] == "tiny-lstm"
    assert vocab["size"] == len(vocab["words"]) == 51
    assert vocab["words"][vocab["special_tokens"]["unk"]] == "<unk>"
    assert vocab["words"][vocab["special_tokens"]["eos"]] == "<eos>"

    three = client.post("/predict", json={"text": "the bird", "top_k": 3}).json["predictions"]
    assert len(three) == 3
    assert client.post("/predict", json={"text": "the bird", "top_k": 3.0}).json["predictions"] == three  # JSON's 3.0
    everything = client.post("/predict", json={"text": "the bird", "top_k": 1000}).json["predictions"]
    assert len(everything) == vocab["size"]  # clipped to the vocabulary
    assert abs(sum(p["probability"] for p in everything) - 1) < 1e-4
    assert three == everything[:3]
    for p in everything:
        assert vocab["words"][p["id"]] == p["word"]


def test_octet_stream_is_the_whole_distribution(client):
    probs, headers = distribution(client, {"text": "my friend reads"})
    vocab = client.get("/models/tiny-lstm/vocab").json
    assert headers["X-Model"] == "tiny-lstm"
    assert int(headers["X-Vocab-Size"]) == vocab["size"] == probs.size
    assert headers["X-Dtype"] == "float32-le"
    assert abs(float(probs.sum(dtype=np.float64)) - 1) < 1e-4
    assert (probs >= 0).all()
    top = client.post("/predict", json={"text": "my friend reads", "top_k": 5}).json["predictions"]
    order = np.argsort(-probs, kind="stable")[:5]
    assert [vocab["words"][i] for i in order] == [p["word"] for p in top]
    for p in top:
        assert abs(probs[p["id"]] - p["probability"]) <= 1e-6


@pytest.mark.parametrize("accept, binary", [
    ("application/json", False),
    ("*/*", False),
    ("application/octet-stream", True),
    ("application/json;q=0.5, application/octet-stream", True),
    ("text/html, application/octet-stream;q=0.1", True),
])
def test_content_negotiation(client, accept, binary):
    r = client.post("/predict", json={"text": "the cat"}, headers={"Accept": accept})
    assert r.status_code == 200
    assert r.mimetype == (BINARY if binary else "application/json")


def test_not_acceptable(client):
    r = client.post("/predict", json={"text": "the cat"}, headers={"Accept": "text/html"})
    assert r.status_code == 406
    assert r.json["error"]["code"] == "not_acceptable"


def test_model_choice_changes_the_answer(client):
    lstm, _ = distribution(client, {"text": "the baker bakes"})
    rnn, headers = distribution(client, {"text": "the baker bakes", "model": "tiny-rnn"})
    assert headers["X-Model"] == "tiny-rnn"
    assert lstm.size == rnn.size
    assert np.abs(lstm - rnn).max() > 1e-3  # two different networks
    assert client.post("/predict", json={"text": "the baker", "model": "tiny-rnn"}).json["model"] == "tiny-rnn"


def test_default_model_is_configurable(make_app):
    app = make_app(default_model="tiny-rnn")
    assert app.test_client().post("/predict", json={"text": "the cat"}).json["model"] == "tiny-rnn"
    assert app.test_client().get("/models").json["default"] == "tiny-rnn"


def test_text_is_split_like_the_corpus(client, models_dir):
    convention = json.loads((models_dir / "tiny-lstm" / "manifest.json").read_text())["text"]["convention"]
    assert convention == "wikitext"
    text = "The cat's toy-box, 1,000.5 fish!\nzebra"
    body = client.post("/predict", json={"text": text}).json
    assert body["tokens"] == tokenize(text, convention)
    assert body["tokens"] == ["The", "cat", "'s", "toy", "@-@", "box", ",", "1", "@,@", "000", "@.@", "5", "fish",
                              "!", "<eos>", "zebra"]
    assert "<eos>" not in body["unknown"] and "fish" not in body["unknown"]
    assert {"The", "zebra", "'s", "!"} <= set(body["unknown"])


def test_unknown_words_read_as_unk(client):
    body = client.post("/predict", json={"text": "the zebra"}).json
    assert body["unknown"] == ["zebra"]
    same = client.post("/predict", json={"text": "the <unk>"}).json
    assert same["unknown"] == []  # typed literally, it is the token itself
    assert same["predictions"] == body["predictions"]


def test_models_listing(client):
    body = client.get("/models").json
    assert body["default"] == "tiny-lstm"
    names = {m["name"]: m for m in body["models"]}
    assert set(names) == {"tiny-lstm", "tiny-rnn"}
    assert names["tiny-lstm"]["architecture"] == "lstm"
    assert names["tiny-rnn"]["architecture"] == "rnn_tanh"
    assert names["tiny-lstm"]["vocab_size"] == 51
    one = client.get("/models/tiny-rnn").json
    assert one["name"] == "tiny-rnn" and one["manifest"]["architecture"] == "rnn_tanh"
    assert len(one["sha256"]) == 64 and one["version"] == one["sha256"][:12]


@pytest.mark.parametrize("path", ["/models/nope", "/models/nope/vocab"])
def test_unknown_model_endpoints(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.json["error"]["code"] == "unknown_model"


def test_batched_predictions_equal_single_ones(app, monkeypatch):
    """Concurrent requests share onnxruntime batches; each row must equal the same request run alone."""
    client = app.test_client()
    texts = ["the cat", "a dog", "my friend", "the", "our teacher"] * 4  # two lengths: 1 and 2 tokens
    alone = {t: distribution(client, {"text": t})[0] for t in set(texts)}
    scheduler = app.extensions["nextword"].engine.model(None)
    real, rows, first = scheduler.runtime.run, [], threading.Event()

    def run(tokens, states, with_log_probs=True):
        if not first.is_set():  # hold the first call until every other request has queued its step
            first.set()
            deadline = time.monotonic() + 10
            while scheduler._queue.qsize() < len(texts) - 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        rows.append(tokens.shape[0])
        return real(tokens, states, with_log_probs)

    monkeypatch.setattr(scheduler.runtime, "run", run)
    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(lambda t: distribution(app.test_client(), {"text": t})[0], texts))
    assert max(rows) >= 8, rows  # they did share calls
    for text, probs in zip(texts, together):
        assert np.abs(probs - alone[text]).max() <= 1e-5


# -- the word in progress (`prefix`) and words only ------------------------------------------------------------------

def vocabulary(client, model: str = "tiny-lstm") -> list[str]:
    return client.get(f"/models/{model}/vocab").json["words"]


def expected_ranking(probs: np.ndarray, ids: list[int], k: int) -> tuple[list[int], float]:
    """The candidates' ids by descending probability (ties by id), and their mass, from the raw distribution."""
    ranked = sorted(ids, key=lambda i: (-float(probs[i]), i))
    return ranked[:k], float(probs[ids].astype(np.float64).sum())


@pytest.mark.parametrize("prefix, case_sensitive, match", [
    ("b", False, lambda w: w.lower().startswith("b")),
    ("B", False, lambda w: w.lower().startswith("b")),
    ("ba", True, lambda w: w.startswith("ba")),
    ("", False, lambda w: True),
])
def test_prefix_ranks_the_completions_renormalised(client, prefix, case_sensitive, match):
    words = vocabulary(client)
    probs, _ = distribution(client, {"text": "the baker"})
    candidates = [i for i, w in enumerate(words) if match(w)]
    assert 1 < len(candidates)
    top, mass = expected_ranking(probs, candidates, 4)
    body = client.post("/predict", json={"text": "the baker", "prefix": prefix, "case_sensitive": case_sensitive,
                                         "top_k": 4}).json
    assert [p["id"] for p in body["predictions"]] == top
    assert [p["word"] for p in body["predictions"]] == [words[i] for i in top]  # the vocabulary's spelling
    for p in body["predictions"]:
        assert p["probability"] == pytest.approx(probs[p["id"]] / mass, rel=1e-4)
    if prefix:
        assert body["filter"] == {"prefix": prefix, "case_sensitive": case_sensitive, "words_only": False,
                                  "matches": len(candidates), "mass": pytest.approx(mass, rel=1e-4)}
    else:  # an empty prefix filters nothing: the unfiltered answer
        assert "filter" not in body
        assert body == client.post("/predict", json={"text": "the baker", "top_k": 4}).json


def test_a_prefix_that_matches_nothing_is_an_empty_list(client):
    for body in ({"text": "the cat", "prefix": "B", "case_sensitive": True}, {"text": "the cat", "prefix": "zz"}):
        r = client.post("/predict", json=body)
        assert r.status_code == 200
        assert r.json["predictions"] == []
        assert r.json["filter"]["matches"] == 0 and r.json["filter"]["mass"] == 0


def test_words_only_drops_what_no_one_would_pick(client):
    words = vocabulary(client)
    dropped = {"<unk>", "<eos>", "."}
    assert dropped <= set(words)
    probs, _ = distribution(client, {"text": "the cat eats fish"})  # a line's end: `.` and <eos> are likely
    everything = client.post("/predict", json={"text": "the cat eats fish", "top_k": 1000}).json["predictions"]
    assert dropped & {p["word"] for p in everything[:3]}  # raw, they rank high
    body = client.post("/predict", json={"text": "the cat eats fish", "top_k": 1000, "words_only": True}).json
    kept = [i for i, w in enumerate(words) if w not in dropped]
    top, mass = expected_ranking(probs, kept, 1000)
    assert [p["id"] for p in body["predictions"]] == top
    assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1, abs=1e-5)
    assert body["filter"]["mass"] == pytest.approx(mass, rel=1e-4) and body["filter"]["matches"] == len(kept)
    # with a prefix: both filters
    body = client.post("/predict", json={"text": "the cat", "prefix": "<", "words_only": True}).json
    assert body["predictions"] == [] and body["filter"]["matches"] == 0
    # the raw distribution is still there, as before
    assert np.array_equal(distribution(client, {"text": "the cat eats fish"})[0], probs)


def test_the_first_word_of_a_line(client):
    """An empty text with a prefix: the distribution at the start of a line (after an <eos>)."""
    words = vocabulary(client)
    probs, _ = distribution(client, {"text": "<eos>"})
    body = client.post("/predict", json={"text": "", "prefix": "", "words_only": True, "top_k": 3}).json
    top, _ = expected_ranking(probs, [i for i, w in enumerate(words) if w not in ("<unk>", "<eos>", ".")], 3)
    assert [p["id"] for p in body["predictions"]] == top
    assert body["tokens"] == [] and body["unknown"] == []


def test_a_prefix_with_a_session_writes_nothing(client):
    sid = client.post("/sessions", json={}).json["session_id"]
    fresh = client.post("/predict", json={"text": "", "prefix": "a", "session_id": sid}).json
    assert fresh["session"]["tokens"] == 0 and fresh["session"]["version"] == 0
    assert fresh["predictions"] == client.post("/predict", json={"text": "", "prefix": "a"}).json["predictions"]

    fed = client.post("/predict", json={"text": "my friend", "prefix": "r", "session_id": sid})
    assert fed.json["session"]["tokens"] == 2 and fed.headers["ETag"] == '"1"'
    stateless = client.post("/predict", json={"text": "my friend", "prefix": "r"}).json
    assert fed.json["predictions"] == stateless["predictions"] and fed.json["filter"] == stateless["filter"]
    for prefix in ("r", "re", "rea", "x"):  # typing the next word letter by letter
        r = client.post("/predict", json={"text": "", "prefix": prefix, "session_id": sid})
        assert r.status_code == 200
        assert r.json["session"]["tokens"] == 2 and r.headers["ETag"] == '"1"'
        alone = client.post("/predict", json={"text": "my friend", "prefix": prefix}).json
        assert r.json["predictions"] == alone["predictions"]
        assert r.json["filter"]["mass"] == pytest.approx(alone["filter"]["mass"], rel=1e-5)
    assert client.get(f"/sessions/{sid}").json["version"] == 1
    # the same empty text with scores: no tokens, no scores
    scored = client.post("/predict", json={"text": "", "prefix": "r", "session_id": sid, "scores": True}).json
    assert scored["scores"] == [] and scored["session"]["version"] == 1
    # If-Match still guards it
    r = client.post("/predict", json={"text": "", "prefix": "r", "session_id": sid}, headers={"If-Match": '"0"'})
    assert r.status_code == 412
    r = client.post("/predict", json={"text": "", "prefix": "r", "session_id": "nope" * 8})
    assert r.status_code == 404 and r.json["error"]["code"] == "session_not_found"


def test_batch_items_take_a_prefix_in_order(client):
    sid = client.post("/sessions", json={}).json["session_id"]
    items = [{"text": "", "prefix": "t", "session_id": sid},  # before anything: a line start
             {"text": "the", "session_id": sid, "prefix": "c"},
             {"text": "", "prefix": "ca", "session_id": sid},  # after "the"
             {"text": "cat", "session_id": sid, "words_only": True},
             {"text": "", "prefix": "e", "session_id": sid, "top_k": 2},  # after "the cat"
             {"text": "", "prefix": "b"},  # stateless, at a line start
             {"text": "a dog", "prefix": "B", "case_sensitive": True}]
    results = client.post("/predict/batch", json={"items": items}).json["results"]
    expected = [("", "t", {}), ("the", "c", {}), ("the", "ca", {}), ("the cat", None, {"words_only": True}),
                ("the cat", "e", {"top_k": 2}), ("", "b", {}), ("a dog", "B", {"case_sensitive": True})]
    for result, (text, prefix, extra) in zip(results, expected, strict=True):
        alone = client.post("/predict", json={"text": text, "prefix": prefix, **extra}).json
        assert result["predictions"] == alone["predictions"]
        assert result.get("filter", {}).get("matches") == alone.get("filter", {}).get("matches")
    assert [r["session"]["version"] for r in results[:5]] == [0, 1, 1, 2, 2]
    assert client.get(f"/sessions/{sid}").json["tokens"] == 2


@pytest.mark.parametrize("body, field, words", [
    ({"text": "the", "prefix": "x" * 101}, "prefix", ["`prefix`", "longer than 100"]),
    ({"text": "the", "prefix": 5}, "prefix", ["`prefix`", "string"]),
    ({"text": "the", "prefix": ["a"]}, "prefix", ["`prefix`", "string"]),
    ({"text": "the", "prefix": "ca\x07"}, "prefix", ["`prefix`", "control"]),
    ({"text": "the", "prefix": "ca t"}, "prefix", ["`prefix`", "one word"]),
    ({"text": "the", "prefix": "\u200bca"}, "prefix", ["`prefix`", "format"]),
    ({"text": "the", "case_sensitive": "yes"}, "case_sensitive", ["`case_sensitive`", "true or false"]),
    ({"text": "the", "words_only": 1}, "words_only", ["`words_only`", "true or false"]),
    ({"text": ""}, "text", ["`text`", "empty", "`prefix`"]),
    ({"text": "", "prefix": None}, "text", ["`text`", "empty"]),
    ({"text": " ", "prefix": "a"}, "text", ["`text`", "empty"]),
])
def test_bad_prefix_requests_name_the_field(client, body, field, words):
    r = client.post("/predict", json=body)
    assert r.status_code == 400, r.get_data(as_text=True)
    error = r.json["error"]
    assert error["code"] == "invalid_input" and error["field"] == field
    assert all(w in error["message"] for w in words), error["message"]
    batch = client.post("/predict/batch", json={"items": [{"text": "a"}, body]})
    assert batch.status_code == 400 and batch.json["error"]["field"] == f"items[1].{field}"


@pytest.mark.parametrize("body, field", [({"text": "the", "prefix": "c"}, "prefix"),
                                         ({"text": "the", "words_only": True}, "words_only")])
def test_the_octet_stream_answer_stays_raw(client, body, field):
    r = client.post("/predict", json=body, headers={"Accept": BINARY})
    assert r.status_code == 400 and r.json["error"]["field"] == field
    assert "raw distribution" in r.json["error"]["message"]


def test_prefix_and_words_only_read_device_resident_rows(make_app):
    """On CUDA a distribution stays on the device (service/heads.py); the same heads run on the CPU provider."""
    from service.heads import Heads

    resident, plain = make_app(), make_app()
    for scheduler in resident.extensions["nextword"].engine.models.values():
        rt = scheduler.runtime
        rt.heads = Heads(rt.bundle.vocab_size, rt.session.get_providers(), "cpu", frozenset({rt.bundle.unk}))
    for body in ({"text": "the cat", "prefix": "e"}, {"text": "the cat eats fish", "words_only": True},
                 {"text": "", "prefix": "a", "words_only": True, "case_sensitive": True}):
        got, want = (app.test_client().post("/predict", json=body).json for app in (resident, plain))
        assert [p["id"] for p in got["predictions"]] == [p["id"] for p in want["predictions"]]
        assert [p["probability"] for p in got["predictions"]] == pytest.approx(
            [p["probability"] for p in want["predictions"]], rel=1e-5)
        assert got["filter"]["mass"] == pytest.approx(want["filter"]["mass"], rel=1e-5)
