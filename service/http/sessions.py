"""Session endpoints: create, inspect, delete, and generate (SSE or drained JSON)."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from service.engine import Done, Generation, Token
from service.errors import (InternalError, ModelMismatch, ModelUnavailable, Overloaded, PreconditionFailed,
                            ServiceError, SessionConflict, SessionNotFound, StateStoreFull, StateStoreUnavailable,
                            UnknownModel)
from service.http import answers
from service.http.api import JSON, Reply, route
from service.http.context import services
from service.http.disconnect import watching
from service.http.responses import (SSE, SSE_HEADERS, StreamTimer, etag, if_match, session_response, session_view, sse,
                                    sse_error)
from service.http.validation import json_body, parse, within_budget
from service.sampling import SamplingParams

bp = Blueprint("sessions", __name__)
log = logging.getLogger("nextword")


def _optional_json() -> dict:
    """POST /sessions may come with no body at all."""
    if not request.get_data(cache=True) and request.mimetype in ("", "application/json"):
        return {}
    return json_body()


@route(bp, "POST", "/sessions", operation_id="createSession", tag="sessions", request="create_session",
       body_required=False, errors=(UnknownModel, StateStoreUnavailable, StateStoreFull),
       replies=(Reply(201, "Created.", {JSON: answers.Session}, headers=("Location", "ETag")),))
def create():
    """Start a session (recurrent state kept in Redis, idle ones expire)

    The body may be omitted. Idle sessions expire after NEXTWORD_SESSION_TTL_SECONDS (now {session_ttl_seconds});
    every access slides the expiry.
    """
    req = parse(services().shapes.create_session, _optional_json())
    record = services().engine.create_session(req.model, g.owner)
    g.log.update(model=record.model)
    response = session_response(record, status=201)
    response.headers["Location"] = f"/sessions/{record.session_id}"
    return response


@route(bp, "GET", "/sessions/<session_id>", operation_id="getSession", tag="sessions",
       errors=(SessionNotFound, StateStoreUnavailable),
       replies=(Reply(200, "The session.", {JSON: answers.Session}, headers=("ETag",)),))
def show(session_id: str):
    """A session's model, tokens consumed and expiry (slides the expiry)"""
    return session_response(services().engine.session_info(session_id, g.owner))


@route(bp, "DELETE", "/sessions/<session_id>", operation_id="deleteSession", tag="sessions",
       errors=(SessionNotFound, StateStoreUnavailable), replies=(Reply(204, "Deleted."),))
def delete(session_id: str):
    """End a session"""
    services().engine.delete_session(session_id, g.owner)
    return Response(status=204)


def _token(token: Token) -> answers.TokenEvent:
    return {"index": token.index, "id": token.id, "word": token.word, "probability": token.probability}


def _done(done: Done) -> answers.Done:
    return {"finish_reason": done.finish_reason, "text": done.text, "tokens": done.tokens, "model": done.model,
            "session": session_view(done.session)}


@route(bp, "POST", "/sessions/<session_id>/generate", operation_id="generate", tag="sessions", request="generate",
       headers=("If-Match",), budget=True,
       errors=(SessionNotFound, ModelMismatch, SessionConflict, PreconditionFailed, Overloaded, StateStoreUnavailable,
               ModelUnavailable, StateStoreFull),
       replies=(Reply(200, "The generation (JSON: `ETag` is the session's version after it).", {
           JSON: answers.Generation, SSE: answers.GenerateEvent}),),
       notes={400: "`max_tokens` above {max_generate_tokens} is a 400, not clamped."})
def generate(session_id: str):
    """Sample a continuation of a session, streamed as Server-Sent Events or as one JSON

    With `Accept: text/event-stream`: one `event: token` per sampled word (data: TokenEvent), then `event: done`
    (data: Done, the Generation without `token_details`); a failure mid-stream is an `event: error` whose data is an
    Error. Otherwise the same generation drained into one JSON response. A generation is atomic: the session is
    written once, when it has ended by itself and every token was handed to the connection, holding the prompt and
    every token; `done` shows the session as written. A generation that fails or whose client goes away writes
    nothing, not even its prompt; sent again (same seed), it gives the same tokens. With `If-Match`, a session that
    is no longer at that version is a 412 before anything is sampled. The JSON answer's client is watched while it
    runs: one that goes away stops the generation at its next token.
    """
    started = time.perf_counter()
    stream = request.accept_mimetypes.best_match(["application/json", SSE]) == SSE
    req = parse(services().shapes.generate, json_body())
    budget = services().budget
    within_budget(budget, budget.generation(req.text, None, req.max_tokens, session=True), "max_tokens",
                  "max_tokens", what="this generation")
    params = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed)
    version = if_match(request.headers.get("If-Match"))
    if stream:  # a client that leaves mid-stream is noticed at the next write (the WSGI server closes the response)
        generation = services().engine.start_generation(session_id, g.owner, req.text, params, req.max_tokens,
                                                        req.stop, version)
        return _event_stream(generation, _started(generation, params, started), g.log)
    with watching() as client:  # drained: nothing is written until the end, so the client is watched meanwhile
        generation = services().engine.start_generation(session_id, g.owner, req.text, params, req.max_tokens,
                                                        req.stop, version, cancel=client)
        timing = _started(generation, params, started)
        with generation:
            tokens, done = [], None
            for event in generation:
                if isinstance(event, Token):
                    timing.token()
                    tokens.append(_token(event))
                else:
                    done = event
        g.log["generated"] = done.tokens
        answer: answers.Generation = {**_done(done), "token_details": tokens}
        response = jsonify(answer)
        response.headers["ETag"] = etag(done.session.version)
        return response


def _started(generation: Generation, params: SamplingParams, started: float) -> StreamTimer:
    g.log.update(model=generation.model, greedy=params.greedy,
                 tokens=len(generation.reading.tokens) if generation.reading else 0, generated=0)
    return StreamTimer(generation.model, started)


def _event_stream(generation: Generation, timing: StreamTimer, log_fields: dict) -> Response:
    """The generation as Server-Sent Events. The WSGI server closes the response when the client goes away (or
    after the last event): that one close cancels the stream and frees its slot."""

    def events():
        try:
            for event in generation:
                if isinstance(event, Token):
                    timing.token()
                    log_fields["generated"] += 1
                    yield sse("token", _token(event))
                else:
                    yield sse("done", _done(event))
        except ServiceError as error:
            yield sse_error(error)
        except Exception:  # noqa: BLE001 - logged; the client gets the same JSON error as a 500 would carry
            log.exception("generation failed")
            yield sse_error(InternalError("internal error during generation"))

    response = Response(stream_with_context(events()), mimetype=SSE, headers=SSE_HEADERS)
    response.call_on_close(generation.close)
    return response
