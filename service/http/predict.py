"""POST /predict, POST /predict/batch and the model listing: text in, next-word distribution out."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from service.engine import BatchItem
from service.errors import InvalidInput, NotAcceptable, ServiceError
from service.http.context import services
from service.http.responses import error_item, etag, if_match, prediction_view
from service.http.validation import boolean, integer, json_body, string

bp = Blueprint("predict", __name__)
BINARY = "application/octet-stream"
_ITEM_FIELDS = {"text", "model", "top_k", "session_id", "if_version"}


def _wants_binary() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", BINARY])
    if best is None and request.accept_mimetypes:
        raise NotAcceptable("this endpoint answers application/json or application/octet-stream")
    return best == BINARY


@bp.post("/predict")
def predict():
    binary = _wants_binary()
    settings, engine = services().settings, services().engine
    body = json_body({"text", "model", "top_k", "session_id", "scores"})
    text = string(body, "text", required=True, max_length=settings.max_body_bytes, words=True)
    model = string(body, "model", max_length=200)
    k = integer(body, "top_k", 10, 1, settings.max_top_k)
    session_id = string(body, "session_id", max_length=200)
    scores = boolean(body, "scores", False)
    version = if_match(request.headers.get("If-Match"))  # checked always, meaningful with a session only
    result = engine.predict(text, model=model, session_id=session_id, owner=g.owner, scores=scores,
                            if_version=version if session_id is not None else None)
    g.log.update(model=result.model, tokens=len(result.reading.tokens))
    headers = {"X-Model": result.model}
    if result.session is not None:
        headers.update({"X-Session-Tokens": str(result.session.tokens), "ETag": etag(result.session.version)})
    if binary:
        probs = np.exp(np.asarray(result.log_probs, dtype=np.float64)).astype("<f4")  # (vocab,) little-endian float32
        headers.update({"X-Vocab-Size": str(probs.size), "X-Dtype": "float32-le"})
        return Response(probs.tobytes(), mimetype=BINARY, headers=headers)
    response = jsonify(prediction_view(result, engine.model(result.model).bundle.words, k))
    response.headers.update(headers)
    return response


@bp.post("/predict/batch")
def predict_batch():
    """Many items in one request: each result is what /predict answers for it, or its error with its status."""
    settings, engine = services().settings, services().engine
    body = json_body({"items"})
    raw = body.get("items")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("`items` must be a non-empty list of objects", field="items")
    if len(raw) > settings.max_batch_items:
        raise InvalidInput(f"`items` has {len(raw)} items; the limit is {settings.max_batch_items} "
                           "(NEXTWORD_MAX_BATCH_ITEMS)", field="items")
    items = []
    for n, item in enumerate(raw):  # a malformed item makes the request malformed: 400 naming it
        try:
            items.append(_batch_item(item, settings))
        except InvalidInput as e:
            e.field = f"items[{n}]" + (f".{e.field}" if e.field else "")
            e.message = f"items[{n}]: {e.message}"
            raise
    results = engine.predict_batch(items, g.owner)
    out = [error_item(r) if isinstance(r, ServiceError) else
           prediction_view(r, engine.model(r.model).bundle.words, item.top_k) for r, item in zip(results, items)]
    g.log.update(items=len(items), failed=sum(isinstance(r, ServiceError) for r in results))
    return jsonify({"results": out})


def _batch_item(item, settings) -> BatchItem:
    if not isinstance(item, dict):
        raise InvalidInput("each item must be an object with `text`")
    for name in item:
        if name not in _ITEM_FIELDS:
            raise InvalidInput(f"unknown field `{name}`; allowed: {', '.join(sorted(_ITEM_FIELDS))}", field=name)
    session_id = string(item, "session_id", max_length=200)
    version = integer(item, "if_version", None, 0, 2**62)
    return BatchItem(text=string(item, "text", required=True, max_length=settings.max_body_bytes, words=True),
                     session_id=session_id, model=string(item, "model", max_length=200),
                     if_version=version if session_id is not None else None,
                     top_k=integer(item, "top_k", 10, 1, settings.max_top_k))


@bp.get("/models")
def models():
    engine = services().engine
    return jsonify({"default": engine.default_model, "models": [
        {**m.bundle.info(), "provider": m.runtime.provider} for m in engine.models.values()]})


@bp.get("/models/<name>")
def model(name: str):
    m = services().engine.model(name)
    return jsonify({**m.bundle.info(), "provider": m.runtime.provider, "manifest": m.bundle.manifest})


@bp.get("/models/<name>/vocab")
def vocab(name: str):
    bundle = services().engine.model(name).bundle
    return jsonify({"model": bundle.name, "size": bundle.vocab_size, "words": list(bundle.words),
                    "special_tokens": bundle.manifest["special_tokens"]})
