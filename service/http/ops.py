"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify

from service import metrics
from service.errors import ServiceError
from service.http import answers
from service.http.api import JSON, TEXT, Reply, route
from service.http.context import services
from service.http.openapi import spec

bp = Blueprint("ops", __name__)
FULL_REPORT_S = 30.0  # /readyz says "full" this long after this worker's last write refused for want of memory


@route(bp, "GET", "/healthz", operation_id="healthz", tag="ops", open=True,
       replies=(Reply(200, "Alive.", {JSON: answers.Health}),))
def healthz():
    """Liveness: the process answers"""
    answer: answers.Health = {"status": "alive"}
    return jsonify(answer)


def _models(measure: bool) -> list[answers.ReadyModel]:
    """The loaded models, each with what one of its sessions costs in Redis (measured only with `measure`)."""
    engine = services().engine
    return [{"name": name, "provider": m.runtime.provider, "version": m.bundle.digest[:12],
             "session": engine.session_size(name, measure)} for name, m in engine.models.items()]


@route(bp, "GET", "/readyz", operation_id="readyz", tag="ops", open=True, replies=(
    Reply(200, "Ready.", {JSON: answers.Readiness}),
    Reply(503, "Not ready: Redis cannot be reached, or refuses writes (full).", {JSON: answers.Readiness}, headers=("Retry-After",))))
def readyz():
    """Readiness: every bundle loaded and Redis reachable"""
    engine = services().engine
    try:
        engine.store.ping()
    except ServiceError as error:
        return _readiness(error.message, retry_after=1)
    full_for = time.monotonic() - engine.store.full_at
    if engine.store.full_at and full_for < FULL_REPORT_S:  # reachable, but refusing writes: sessions cannot work
        return _readiness(f"full: out of memory, a write was refused {full_for:.0f} s ago", retry_after=5)
    return _readiness("ok")


def _readiness(redis: str, retry_after: int | None = None) -> Response:
    """Ready (200), or not (503 with `Retry-After`, and no Redis measurement attempted)."""
    ready = retry_after is None
    answer: answers.Readiness = {"status": "ready" if ready else "unavailable", "models": _models(measure=ready),
                                 "redis": redis}
    response = jsonify(answer)
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(retry_after)
    return response


@route(bp, "GET", "/metrics", operation_id="metrics", tag="ops", open=True, endpoint="metrics",
       replies=(Reply(200, "Prometheus text exposition format.", {TEXT: "Prometheus text exposition format."}),))
def scrape():
    """Prometheus metrics of every worker"""
    body, content_type = metrics.scrape()
    return Response(body, content_type=content_type)


@route(bp, "GET", "/openapi.json", operation_id="openapi", tag="ops", open=True,
       replies=(Reply(200, "OpenAPI 3.1.", {JSON: dict}),))
def openapi():
    """This document"""
    return jsonify(spec(services().settings))
