"""Session endpoints: create, inspect, delete, and generate (SSE or drained JSON)."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from service import metrics
from service.engine import Done, Generation, Token
from service.errors import InternalError, ServiceError
from service.http.context import services
from service.http.responses import (SSE, SSE_HEADERS, etag, if_match, session_response, session_view, sse,
                                    sse_error)
from service.http.validation import integer, json_body, number, string, string_list
from service.sampling import SamplingParams

bp = Blueprint("sessions", __name__)
log = logging.getLogger("nextword")


def _optional_json(allowed: set[str]) -> dict:
    """POST /sessions may come with no body at all."""
    if not request.get_data(cache=True) and request.mimetype in ("", "application/json"):
        return {}
    return json_body(allowed)


@bp.post("/sessions")
def create():
    body = _optional_json({"model"})
    record = services().engine.create_session(string(body, "model", max_length=200), g.owner)
    g.log.update(model=record.model)
    response = session_response(record, status=201)
    response.headers["Location"] = f"/sessions/{record.session_id}"
    return response


@bp.get("/sessions/<session_id>")
def show(session_id: str):
    return session_response(services().engine.session_info(session_id, g.owner))


@bp.delete("/sessions/<session_id>")
def delete(session_id: str):
    services().engine.delete_session(session_id, g.owner)
    return Response(status=204)


def _token(token: Token) -> dict:
    return {"index": token.index, "id": token.id, "word": token.word, "probability": token.probability}


def _done(done: Done) -> dict:
    return {"finish_reason": done.finish_reason, "text": done.text, "tokens": done.tokens, "model": done.model,
            "session": session_view(done.session)}


class _Timing:
    """Time to first token and between tokens, as the client's connection sees them (when each is handed over)."""

    def __init__(self, model: str, started: float):
        self.first = metrics.STREAM_FIRST_TOKEN.labels(model=model)
        self.between = metrics.STREAM_INTER_TOKEN.labels(model=model)
        self.last = started
        self.count = 0

    def token(self) -> None:
        now = time.perf_counter()
        (self.between if self.count else self.first).observe(now - self.last)
        self.last, self.count = now, self.count + 1


@bp.post("/sessions/<session_id>/generate")
def generate(session_id: str):
    started = time.perf_counter()
    settings = services().settings
    stream = request.accept_mimetypes.best_match(["application/json", SSE]) == SSE
    body = json_body({"text", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop"})
    prompt = string(body, "text", max_length=settings.max_body_bytes, words=True)
    max_tokens = integer(body, "max_tokens", min(32, settings.max_generate_tokens), 1, settings.max_generate_tokens,
                         " (NEXTWORD_MAX_GENERATE_TOKENS)")
    params = SamplingParams(
        temperature=number(body, "temperature", 1.0, 0.0, 100.0, low_open=True),
        top_k=integer(body, "top_k", 0, 0, 1_000_000),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=integer(body, "seed", None, 0, 2**63 - 1),
    )
    stop = string_list(body, "stop", max_items=16)
    version = if_match(request.headers.get("If-Match"))
    generation = services().engine.start_generation(session_id, g.owner, prompt, params, max_tokens, stop, version)
    g.log.update(model=generation.model, greedy=params.greedy,
                 tokens=len(generation.reading.tokens) if generation.reading else 0, generated=0)
    timing = _Timing(generation.model, started)
    if not stream:
        with generation:
            tokens, done = [], None
            for event in generation:
                if isinstance(event, Token):
                    timing.token()
                    tokens.append(_token(event))
                else:
                    done = event
        g.log["generated"] = done.tokens
        response = jsonify({**_done(done), "token_details": tokens})
        response.headers["ETag"] = etag(done.session.version)
        return response
    return _event_stream(generation, timing, g.log)


def _event_stream(generation: Generation, timing: _Timing, log_fields: dict) -> Response:
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
