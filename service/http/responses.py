"""How domain objects look on the wire: the one conversion of errors into JSON responses and SSE error events,
session and prediction views (the dicts `answers.py` declares), ETags, Server-Sent Events and the timing of their
tokens. Knows Flask's response objects, not the engine's insides.

An error has two shapes. The service's own, `{"error": {"code", "message", "field"}}`, everywhere but under
`/v1/`, where OpenAI's is spoken, `{"error": {"message", "type", "param", "code"}}`, so that the `openai`
package's exceptions carry `param` (the OpenAI name of the field at fault: `prompt`, not `text`), `type` and
`code` (the service's code). The status and headers are the same in both: all of it comes from the one error
table (service/http/errors.py).
"""

from __future__ import annotations

import re
import time

import orjson
from flask import Response, has_request_context, jsonify, request
from flask.json.provider import JSONProvider

from service import metrics
from service.errors import ServiceError
from service.http import answers, errors
from service.http.protocol import InvalidField
from service.sampling import top_k
from service.state import SessionRecord
from service.suggest import Lexicon, Query

SSE = "text/event-stream"
_IF_MATCH = re.compile(r'"([0-9]{1,18})"|([0-9]{1,18})')
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold events back
OPENAI_PREFIX = "/v1/"  # the OpenAI surface, whose errors have OpenAI's shape


class FastJSON(JSONProvider):
    """Flask's JSON (`jsonify`, `request.get_json`) through orjson, the one encoder of JSON bodies and SSE events
    (`dumps`): encoding is a large share of a request's Python time, and orjson's is a fraction of the standard
    library's (docs/benchmarks.md). The output is standard JSON: keys in insertion order, UTF-8 text unescaped,
    floats in their shortest round-trip form; NaN and Infinity are refused on the way in (RFC 8259)."""

    def dumps(self, obj, **kwargs) -> str:
        return dumps(obj)

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs) -> Response:
        return self._app.response_class(orjson.dumps(self._prepare_response_obj(args, kwargs)) + b"\n",
                                        mimetype="application/json")


def error_body(error: ServiceError) -> dict:
    """The error in the shape of the surface the request came to (OpenAI's under /v1/)."""
    if has_request_context() and (request.path + "/").startswith(OPENAI_PREFIX):
        return errors.openai_body(error)
    return errors.native_body(error)


def error_response(error: ServiceError) -> Response:
    """The JSON error body with the status and headers (Retry-After, WWW-Authenticate...) of the error table."""
    metrics.ERRORS.labels(code=error.code).inc()
    response = jsonify(error_body(error))
    response.status_code = errors.status(error)
    response.headers.update(errors.headers(error))
    return response


def error_item(error: ServiceError) -> dict:
    """A failed item of a batch: the same error object, with the status it would have had alone."""
    metrics.ERRORS.labels(code=error.code).inc()
    return {**errors.native_body(error), "status": errors.status(error)}


def dumps(obj) -> str:
    """JSON text as the app writes it (FastJSON)."""
    return orjson.dumps(obj).decode()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {dumps(data)}\n\n"


def sse_data(data: dict) -> str:
    """An event without a name (a `message`, as OpenAI's stream chunks are)."""
    return f"data: {dumps(data)}\n\n"


def sse_error(error: ServiceError) -> str:
    """A stream that fails after its first event ends with the same JSON an error response carries (OpenAI's shape
    under /v1/; call it while the request's context lasts, as a `stream_with_context` generator does)."""
    metrics.ERRORS.labels(code=error.code).inc()
    return sse("error", error_body(error))


class StreamTimer:
    """Time to first token and between tokens of one stream, as its client's connection sees them (when each token
    is handed over), into the stream metrics."""

    def __init__(self, model: str, started: float):
        self.first = metrics.STREAM_FIRST_TOKEN.labels(model=model)
        self.between = metrics.STREAM_INTER_TOKEN.labels(model=model)
        self.last = started  # time.perf_counter() when the request began
        self.count = 0

    def token(self) -> None:
        now = time.perf_counter()
        (self.between if self.count else self.first).observe(now - self.last)
        self.last, self.count = now, self.count + 1


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(header: str | None) -> int | None:
    """The version an If-Match header names: a session's ETag (a quoted integer; bare digits are taken too). `*` or
    no header: no precondition."""
    if header is None or header == "*":
        return None
    match = _IF_MATCH.fullmatch(header)
    if match is None:
        raise InvalidField('If-Match must be a session\'s ETag, a quoted version number such as "7"', field="If-Match")
    return int(match.group(1) or match.group(2))


def session_view(record: SessionRecord) -> answers.Session:
    return {"session_id": record.session_id, "model": record.model, "model_version": record.digest[:12],
            "tokens": record.tokens, "version": record.version, "created": record.created,
            "updated": record.updated, "expires_in": record.expires_in, "expires_at": time.time() + record.expires_in}


def session_response(record: SessionRecord, status: int = 200) -> Response:
    response = jsonify(session_view(record))
    response.status_code = status
    response.headers["ETag"] = etag(record.version)
    return response


def prediction_view(prediction, words: tuple[str, ...], k: int, lexicon: Lexicon | None = None,
                    query: Query | None = None) -> answers.Prediction:
    """What /predict answers in JSON for one prediction (also one result of /predict/batch). With a query that
    filters (a prefix, words only), its candidates ranked by the lexicon, and `filter` saying what was kept."""
    ranked = lexicon.rank(prediction.log_probs, k, query) if query is not None and query.filters else None
    ids, probs = (ranked.ids, ranked.probabilities) if ranked is not None else top_k(prediction.log_probs, k)
    out: answers.Prediction = {"model": prediction.model,
           "predictions": [{"word": words[i], "id": i, "probability": p} for i, p in zip(ids.tolist(), probs.tolist())],
           "tokens": prediction.reading.tokens,
           "unknown": prediction.reading.unknown}
    if ranked is not None:
        out["filter"] = {"prefix": query.prefix, "case_sensitive": query.case_sensitive,
                         "words_only": query.words_only, "matches": ranked.candidates, "mass": ranked.mass}
    if prediction.scores is not None:
        out["scores"] = [{"word": w, "probability": p}
                         for w, p in zip(prediction.reading.tokens, prediction.scores.tolist())]
    if prediction.session is not None:
        out["session"] = session_view(prediction.session)
    return out
