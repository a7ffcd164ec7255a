"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify

from service import metrics
from service.errors import ServiceError
from service.http.context import services
from service.http.openapi import spec

bp = Blueprint("ops", __name__)
FULL_REPORT_S = 30.0  # /readyz says "full" this long after this worker's last write refused for want of memory


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "alive"})


def _models(measure: bool) -> list:
    """The loaded models, each with what one of its sessions costs in Redis (measured only with `measure`)."""
    engine = services().engine
    return [{"name": name, "provider": m.runtime.provider, "version": m.bundle.digest[:12],
             "session": engine.session_size(name, measure)} for name, m in engine.models.items()]


@bp.get("/readyz")
def readyz():
    engine = services().engine
    try:
        engine.store.ping()
    except ServiceError as error:
        response = jsonify({"status": "unavailable", "models": _models(measure=False), "redis": error.message})
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response
    full_for = time.monotonic() - engine.store.full_at
    if engine.store.full_at and full_for < FULL_REPORT_S:  # reachable, but refusing writes: sessions cannot work
        response = jsonify({"status": "unavailable", "models": _models(measure=False),
                            "redis": f"full: out of memory, a write was refused {full_for:.0f} s ago"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    return jsonify({"status": "ready", "models": _models(measure=True), "redis": "ok"})


@bp.get("/metrics", endpoint="metrics")  # the name auth.OPEN_ENDPOINTS lists
def scrape():
    body, content_type = metrics.scrape()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec(services().settings))
