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
