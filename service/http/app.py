"""Builds the Flask app: loads bundles, opens the runtimes and the session store, wires blueprints,
request ids, auth, logs, metrics and the one error table. Nothing happens at import time.

gunicorn calls `create_app()` in every worker after the fork (preload_app stays off: onnxruntime
sessions and Redis pools must not cross a fork).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from service import logs, memory, metrics
from service.bundle import discover
from service.config import ConfigError, Settings
from service.engine import Engine
from service.errors import InternalError, ServiceError
from service.http import auth, browser, openai, ops, predict, sessions
from service.http.context import Services, services
from service.http.errors import ERROR_TYPES
from service.http.protocol import (InvalidJSON, MethodNotAllowed, NotAcceptable, NotFound, PayloadTooLarge,
                                   UnlistedHTTPError)
from service.http.responses import FastJSON, error_response
from service.runtime import ModelRuntime
from service.scheduler import Scheduler
from service.state import OPERATIONS, SessionStore

log = logging.getLogger("nextword")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_HTTP_ERRORS = {404: NotFound, 405: MethodNotAllowed, 406: NotAcceptable, 413: PayloadTooLarge, 400: InvalidJSON}


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    memory.configure()  # before the models allocate: large blocks mmap'ed, few heaps (service/memory.py)
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is empty: set it, or start with `python -m service`, which starts an "
                          "embedded Redis")
    bundles = discover(settings.models_dir)
    models = {b.name: Scheduler(ModelRuntime(b, settings.device, settings.ort_threads), settings.batch_max_size,
                                settings.batch_wait_ms)
              for b in bundles}
    default = settings.default_model_of(list(models))
    metrics.start_at_zero(list(models), OPERATIONS, [kind.code for kind in ERROR_TYPES])
    store = SessionStore.from_url(settings.redis_url, settings.session_ttl_seconds)
    engine = Engine(models, store, default, settings.max_text_tokens, settings.cas_retries, settings.max_streams,
                    group_items=settings.max_batch_items)

    app = Flask("nextword")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = FastJSON(app)  # keys in insertion order
    app.extensions["nextword"] = Services(settings, engine)
    for module in (predict, sessions, ops, openai):
        app.register_blueprint(module.bp)
    _init_request_hooks(app, settings, memory.trimmer())
    auth.init_app(app, settings.api_keys)
    browser.init_app(app, settings)
    _init_error_handlers(app)
    for name, m in models.items():
        logs.log_event(log, "model loaded", model=name, architecture=m.bundle.manifest["architecture"],
                       version=m.bundle.digest[:12], provider=m.runtime.provider, vocab=m.bundle.vocab_size,
                       default=name == default)
    logs.log_event(log, "worker ready", settings=settings.describe())
    if not settings.api_keys:
        logs.log_event(log, "no API keys configured: the API is open to anyone who can reach it",
                       level=logging.WARNING)
    return app


def _init_request_hooks(app: Flask, settings: Settings, trimmer: memory.Trimmer) -> None:
    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        g.log = {}

    @app.after_request
    def finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # a template, never the raw path
        fields = {"request_id": g.get("request_id"), "method": request.method, "path": endpoint,
                  "status": response.status_code, "model": None, "tokens": None}
        if settings.log_text:  # opt-in (NEXTWORD_LOG_TEXT): raw user text stays out of logs by default
            fields["text"] = _request_text()
        extra = g.get("log", {})  # a stream adds to it while it runs
        started = g.get("started", time.perf_counter())
        method, status = request.method, str(response.status_code)

        def done() -> None:
            trimmer.note()  # freed heap memory goes back once the worker is quiet
            elapsed = time.perf_counter() - started
            metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=status).inc()
            metrics.REQUEST_LATENCY.labels(endpoint=endpoint).observe(elapsed)
            logs.log_event(log, "request", latency_ms=round(elapsed * 1000, 3), **{**fields, **extra})

        if response.is_streamed:  # after the last event
            response.call_on_close(done)
        else:  # counted before the client has the answer, so a scrape that follows it sees it
            done()
        return response


def _request_text() -> str | None:
    try:
        body = request.get_json(silent=True)
    except Exception:  # noqa: BLE001 - a body too large to read: nothing to log
        return None
    return body.get("text") if isinstance(body, dict) and isinstance(body.get("text"), str) else None


def _init_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        kind = _HTTP_ERRORS.get(error.code or 500)
        if kind is PayloadTooLarge:
            limit = services().settings.max_body_bytes
            return error_response(PayloadTooLarge(f"request body exceeds {limit} bytes"))
        if kind is MethodNotAllowed:
            response = error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods or []))
            return response
        if kind is None:
            return error_response(UnlistedHTTPError(error.description or "error", error.code or 500,
                                                    (error.name or "error").lower().replace(" ", "_")))
        return error_response(kind(error.description if kind is not NotFound else f"no endpoint {request.path}"))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.error("unhandled error", exc_info=error, extra={"fields": {"request_id": g.get("request_id")}})
        return error_response(InternalError(f"internal error; request id {g.get('request_id')}"))
