"""POST /predict and the model listing: text in, next-word distribution out."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from service.errors import NotAcceptable
from service.http.context import services
from service.http.validation import integer, json_body, string
from service.sampling import top_k

bp = Blueprint("predict", __name__)
BINARY = "application/octet-stream"


def _wants_binary() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", BINARY])
    if best is None and request.accept_mimetypes:
        raise NotAcceptable("this endpoint answers application/json or application/octet-stream")
    return best == BINARY


@bp.post("/predict")
def predict():
    binary = _wants_binary()
    settings, engine = services().settings, services().engine
    body = json_body({"text", "model", "top_k", "session_id"})
    text = string(body, "text", required=True, max_length=settings.max_body_bytes)
    model = string(body, "model", max_length=200)
    k = integer(body, "top_k", 10, 1, settings.max_top_k)
    session_id = string(body, "session_id", max_length=200)
    result = engine.predict(text, model=model, session_id=session_id, owner=g.owner)
    g.log.update(model=result.model, tokens=len(result.reading.tokens))
    headers = {"X-Model": result.model}
    if result.session:
        headers["X-Session-Tokens"] = str(result.session["tokens"])
    if binary:
        probs = np.exp(result.log_probs.astype(np.float64)).astype("<f4")  # (vocab,) little-endian float32
        headers.update({"X-Vocab-Size": str(probs.size), "X-Dtype": "float32-le"})
        return Response(probs.tobytes(), mimetype=BINARY, headers=headers)
    bundle = engine.runtime(result.model).bundle
    ids, probs = top_k(result.log_probs, k)
    payload = {
        "model": result.model,
        "predictions": [{"word": bundle.words[i], "id": int(i), "probability": float(p)} for i, p in zip(ids, probs)],
        "tokens": result.reading.tokens,
        "unknown": result.reading.unknown,
    }
    if result.session:
        payload["session"] = result.session
    response = jsonify(payload)
    response.headers.update(headers)
    return response


@bp.get("/models")
def models():
    engine = services().engine
    return jsonify({"default": engine.default_model, "models": [
        {**rt.bundle.info(), "provider": rt.provider} for rt in engine.runtimes.values()]})


@bp.get("/models/<name>")
def model(name: str):
    rt = services().engine.runtime(name)
    return jsonify({**rt.bundle.info(), "provider": rt.provider, "manifest": rt.bundle.manifest})


@bp.get("/models/<name>/vocab")
def vocab(name: str):
    bundle = services().engine.runtime(name).bundle
    return jsonify({"model": bundle.name, "size": bundle.vocab_size, "words": list(bundle.words),
                    "special_tokens": bundle.manifest["special_tokens"]})
