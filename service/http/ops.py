"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import metrics
from service.errors import ServiceError
from service.http.context import services
from service.http.openapi import spec

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz():
    engine = services().engine
    models = [{"name": name, "provider": m.runtime.provider, "version": m.bundle.digest[:12]}
              for name, m in engine.models.items()]
    try:
        engine.store.ping()
    except ServiceError as error:
        response = jsonify({"status": "unavailable", "models": models, "redis": error.message})
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response
    return jsonify({"status": "ready", "models": models, "redis": "ok"})


@bp.get("/metrics", endpoint="metrics")  # the name auth.OPEN_ENDPOINTS lists
def scrape():
    body, content_type = metrics.scrape()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return jsonify(spec(services().settings))
