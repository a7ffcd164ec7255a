"""POST /predict, POST /predict/batch and the model listing: text in, next-word distribution out, ranked whole or
over the completions of the word being typed (`prefix`) and the words a person would pick (`words_only`). Every
request is costed against the work budget (service/budget.py) before the engine sees it."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from service.budget import Cost
from service.engine import BatchItem
from service.errors import ClientClosedRequest, ServiceError
from service.http.context import services
from service.http.disconnect import watching
from service.http.protocol import InvalidField, NotAcceptable
from service.http.responses import error_item, etag, if_match, prediction_view
from service.http.validation import json_body, parse, within_budget
from service.suggest import Query

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
    engine = services().engine
    req = parse(services().shapes.predict, json_body())
    query = _query(req)
    if binary and query.filters:
        field = "prefix" if query.prefix else "words_only"
        raise InvalidField(f"`{field}` ranks the JSON answer; application/octet-stream is always the raw "
                           "distribution (filter it with GET /models/{name}/vocab)", field=field)
    budget, session = services().budget, req.session_id is not None
    if binary:
        within_budget(budget, budget.vector(req.text, req.model, session, req.scores), "text", "text", "Accept")
    else:
        within_budget(budget, budget.item(req.text, req.model, req.top_k, session, req.scores), "text", "top_k")
    version = if_match(request.headers.get("If-Match"))  # checked always, meaningful with a session only
    result = engine.predict(req.text, model=req.model, session_id=req.session_id, owner=g.owner, scores=req.scores,
                            if_version=version if req.session_id is not None else None)
    g.log.update(model=result.model, tokens=len(result.reading.tokens))
    headers = {"X-Model": result.model}
    if result.session is not None:
        headers.update({"X-Session-Tokens": str(result.session.tokens), "ETag": etag(result.session.version)})
    if binary:
        probs = np.exp(np.asarray(result.log_probs, dtype=np.float64)).astype("<f4")  # (vocab,) little-endian float32
        headers.update({"X-Vocab-Size": str(probs.size), "X-Dtype": "float32-le"})
        return Response(probs.tobytes(), mimetype=BINARY, headers=headers)
    response = jsonify(_view(result, req.top_k, query))
    response.headers.update(headers)
    return response


@bp.post("/predict/batch")
def predict_batch():
    """Many items in one request: each result is what /predict answers for it, or its error with its status. A
    client that goes away before the answer is written has the model work left for it skipped (engine's rule)."""
    engine, budget = services().engine, services().budget
    req = parse(services().shapes.batch, json_body())  # a malformed item makes the request malformed: 400 naming it
    cost = sum((budget.item(i.text, i.model, i.top_k, i.session_id is not None) for i in req.items), Cost())
    within_budget(budget, cost, "items", "items", what=f"this batch of {len(req.items)} items")
    items = [BatchItem(text=i.text, session_id=i.session_id, model=i.model, top_k=i.top_k,
                       if_version=i.if_version if i.session_id is not None else None) for i in req.items]
    with watching() as client:
        results = engine.predict_batch(items, g.owner, client)
        if client.cancelled:  # nobody reads the answer: it is not built
            raise ClientClosedRequest("the client went away before its answer was written")
    out = [error_item(r) if isinstance(r, ServiceError) else _view(r, item.top_k, _query(given))
           for r, item, given in zip(results, items, req.items)]
    g.log.update(items=len(items), failed=sum(isinstance(r, ServiceError) for r in results))
    return jsonify({"results": out})


def _query(req) -> Query:
    """The word in progress and the word filter of a request (or of one batch item)."""
    return Query(req.prefix, req.case_sensitive, req.words_only)


def _view(result, k: int, query: Query) -> dict:
    return prediction_view(result, services().engine.model(result.model).bundle.words, k,
                           services().lexicons[result.model], query)


@bp.get("/models")
def models():
    engine = services().engine
    return jsonify({"default": engine.default_model, "models": [
        {**m.bundle.info(), "provider": m.runtime.provider, "session": engine.session_size(name)}
        for name, m in engine.models.items()]})


@bp.get("/models/<name>")
def model(name: str):
    engine = services().engine
    m = engine.model(name)
    return jsonify({**m.bundle.info(), "provider": m.runtime.provider, "session": engine.session_size(m.bundle.name),
                    "manifest": m.bundle.manifest})


@bp.get("/models/<name>/vocab")
def vocab(name: str):
    bundle = services().engine.model(name).bundle
    return jsonify({"model": bundle.name, "size": bundle.vocab_size, "words": list(bundle.words),
                    "special_tokens": bundle.manifest["special_tokens"]})
