"""Session endpoints: create, inspect, delete, and generate (SSE or drained JSON)."""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from service import metrics
from service.errors import ServiceError
from service.http.context import services
from service.http.validation import integer, json_body, number, string, string_list
from service.sampling import GREEDY_TEMPERATURE, SamplingParams

bp = Blueprint("sessions", __name__)
log = logging.getLogger("nextword")
SSE = "text/event-stream"


def _optional_json(allowed: set[str]) -> dict:
    """POST /sessions may come with no body at all."""
    if not request.get_data(cache=True) and request.mimetype in ("", "application/json"):
        return {}
    return json_body(allowed)


@bp.post("/sessions")
def create():
    body = _optional_json({"model"})
    session = services().engine.create_session(string(body, "model", max_length=200), g.owner)
    g.log.update(model=session["model"])
    response = jsonify(session)
    response.status_code = 201
    response.headers["Location"] = f"/sessions/{session['session_id']}"
    return response


@bp.get("/sessions/<session_id>")
def show(session_id: str):
    return jsonify(services().engine.session_info(session_id, g.owner))


@bp.delete("/sessions/<session_id>")
def delete(session_id: str):
    services().engine.delete_session(session_id, g.owner)
    return Response(status=204)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@bp.post("/sessions/<session_id>/generate")
def generate(session_id: str):
    started = time.perf_counter()
    settings = services().settings
    stream = request.accept_mimetypes.best_match(["application/json", SSE]) == SSE
    body = json_body({"text", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop"})
    prompt = string(body, "text", max_length=settings.max_body_bytes)
    max_tokens = integer(body, "max_tokens", min(32, settings.max_generate_tokens), 1, settings.max_generate_tokens,
                         " (NEXTWORD_MAX_GENERATE_TOKENS)")
    temperature = number(body, "temperature", 1.0, 0.0, 100.0, low_open=True)
    params = SamplingParams(
        temperature=temperature,
        top_k=integer(body, "top_k", 0, 0, 1_000_000),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=integer(body, "seed", None, 0, 2**63 - 1),
    )
    stop = string_list(body, "stop", max_items=16)
    generation = services().engine.start_generation(session_id, g.owner, prompt, params, max_tokens, stop, started)
    g.log.update(model=generation.runtime.bundle.name, greedy=temperature <= GREEDY_TEMPERATURE,
                 tokens=len(generation.reading.tokens) if generation.reading else 0, generated=0)
    if not stream:
        try:
            result = generation.drain()
            g.log["generated"] = result["tokens"]
            return jsonify(result)
        finally:
            generation.close()

    log_fields = g.log  # the request log line is written after the last event, with these

    def events():
        try:
            for event in generation:
                if event["event"] == "token":
                    log_fields["generated"] += 1
                yield _sse(event["event"], event["data"])
        except ServiceError as error:
            metrics.ERRORS.labels(code=error.code).inc()
            yield _sse("error", error.to_dict())
        except Exception:  # noqa: BLE001 - logged; the client gets the same JSON error as a 500 would carry
            log.exception("generation failed")
            yield _sse("error", {"error": {"code": "internal", "message": "internal error during generation",
                                           "field": None}})

    response = Response(stream_with_context(events()), mimetype=SSE,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(generation.close)
    return response
