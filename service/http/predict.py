"""POST /predict, POST /predict/batch and the model listing: text in, next-word distribution out, ranked whole or
over the completions of the word being typed (`prefix`) and the words a person would pick (`words_only`). Every
request is costed against the work budget (service/budget.py) before the engine sees it."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from service.budget import Cost
from service.engine import BatchItem
from service.errors import (ClientClosedRequest, ModelMismatch, ModelUnavailable, Overloaded,
                            PreconditionFailed, ServiceError, SessionConflict, SessionNotFound, StateStoreFull,
                            StateStoreUnavailable, UnknownModel)
from service.http import answers
from service.http.api import BINARY, JSON, Reply, route
from service.http.context import services
from service.http.disconnect import watching
from service.http.protocol import InvalidField, NotAcceptable
from service.http.responses import error_item, etag, if_match, prediction_view
from service.http.validation import json_body, parse, within_budget
from service.suggest import Query

bp = Blueprint("predict", __name__)
_SESSION_ERRORS = (UnknownModel, SessionNotFound, ModelMismatch, SessionConflict, PreconditionFailed, Overloaded,
                   StateStoreUnavailable, ModelUnavailable, StateStoreFull)  # a step, with or without a session


def _wants_binary() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", BINARY])
    if best is None and request.accept_mimetypes:
        raise NotAcceptable("this endpoint answers application/json or application/octet-stream")
    return best == BINARY


@route(bp, "POST", "/predict", operation_id="predict", tag="predict", request="predict", headers=("If-Match",),
       replies=(Reply(200, "The next-word distribution.", {
           JSON: answers.Prediction, BINARY: "vocab_size float32 little-endian probabilities"},
           headers=("X-Model", "X-Vocab-Size", "X-Dtype", "X-Session-Tokens", "ETag")),),
       errors=(NotAcceptable, *_SESSION_ERRORS), budget=True,
       notes={400: "A text of more than {max_text_tokens} tokens, or with no word, is a 400 on `text`."})
def predict():
    """Next-word distribution after a text (optionally continuing a session)

    JSON by default: the `top_k` most likely next words. With `Accept: application/octet-stream` the body is the whole
    next-word distribution: `vocab_size` little-endian float32 probabilities in vocabulary order (GET
    /models/{name}/vocab), with the model in `X-Model` and the vocabulary size in `X-Vocab-Size`. With `session_id`,
    the text is appended to the session's context (one compare-and-set write; concurrent calls on one session all
    count), and the response's `ETag` is the session's new version.

    For a keyboard: `prefix` is the word being typed (`text` holds the complete words before it, and may be empty).
    Only vocabulary words starting with it are ranked, case-insensitively unless `case_sensitive`, their
    probabilities renormalised over them; `filter.mass` is the probability they had together. `words_only` leaves
    out `<unk>`, `<eos>`, punctuation and the corpus's placeholders. A prefix is never fed to a session: with
    `session_id` and an empty `text` the answer is the distribution after what the session has read, and nothing is
    written (same version, same `ETag`). The octet-stream answer and `scores` are always the raw distribution.
    """
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


@route(bp, "POST", "/predict/batch", operation_id="predictBatch", tag="predict", request="batch",
       replies=(Reply(200, "One result per item.", {JSON: answers.BatchResponse}),),
       errors=(Overloaded, StateStoreUnavailable, ModelUnavailable), budget=True,
       notes={400: "More than {max_batch_items} items is a 400 on `items`; a batch counts all its items together."})
def predict_batch():
    """Many /predict items in one request (a keyboard backend, a gateway)

    Each result is exactly what /predict would answer for its item (JSON), or `{"error", "status"}` for an item that
    failed; the others still apply. Items naming the same session apply in item order, as one write whose version
    grows by the number of items applied. A malformed item makes the whole request a 400 naming `items[n]`. A client
    that goes away before the answer is written has the model steps left for it skipped, and nothing of its batch
    is written unless the write was made before it went.
    """
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
    out: list[answers.Prediction | answers.ItemError] = [
        error_item(r) if isinstance(r, ServiceError) else _view(r, item.top_k, _query(given))
        for r, item, given in zip(results, items, req.items)]
    g.log.update(items=len(items), failed=sum(isinstance(r, ServiceError) for r in results))
    answer: answers.BatchResponse = {"results": out}
    return jsonify(answer)


def _query(req) -> Query:
    """The word in progress and the word filter of a request (or of one batch item)."""
    return Query(req.prefix, req.case_sensitive, req.words_only)


def _view(result, k: int, query: Query) -> answers.Prediction:
    return prediction_view(result, services().engine.model(result.model).bundle.words, k,
                           services().lexicons[result.model], query)


def _model_info(name: str) -> answers.ModelInfo:
    engine = services().engine
    m = engine.model(name)
    return {**m.bundle.info(), "provider": m.runtime.provider, "session": engine.session_size(m.bundle.name)}


@route(bp, "GET", "/models", operation_id="listModels", tag="models",
       replies=(Reply(200, "Every loaded bundle.", {JSON: answers.ModelList}),))
def models():
    """The loaded models and the default one"""
    engine = services().engine
    answer: answers.ModelList = {"default": engine.default_model,
                                 "models": [_model_info(name) for name in engine.models]}
    return jsonify(answer)


@route(bp, "GET", "/models/<name>", operation_id="getModel", tag="models", errors=(UnknownModel,),
       replies=(Reply(200, "The model.", {JSON: answers.ModelDetail}),))
def model(name: str):
    """One model, with its manifest"""
    answer: answers.ModelDetail = {**_model_info(name), "manifest": services().engine.model(name).bundle.manifest}
    return jsonify(answer)


@route(bp, "GET", "/models/<name>/vocab", operation_id="getVocabulary", tag="models", errors=(UnknownModel,),
       replies=(Reply(200, "The vocabulary.", {JSON: answers.Vocabulary}),))
def vocab(name: str):
    """A model's vocabulary in id order"""
    bundle = services().engine.model(name).bundle
    answer: answers.Vocabulary = {"model": bundle.name, "size": bundle.vocab_size, "words": list(bundle.words),
                                  "special_tokens": bundle.manifest["special_tokens"]}
    return jsonify(answer)
