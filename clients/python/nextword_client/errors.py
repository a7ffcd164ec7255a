"""Typed errors of the Python client: one class per error code the service sends, plus the two ways a
call can fail without an answer (no connection, a stream cut short). Knows no HTTP library, and imports
nothing of the service: this distribution installs alone (`pip install ./clients/python`).

`CODES` is the client's own copy of the service's error table; tests/test_client.py checks it against the
service's (`service/http/errors.py`), so a code added there fails that test until it is added here.
`SessionNotFound` has `.code == "session_not_found"` and `.status == 404`. A code this client does not
know (a newer server) is still an `APIError`.
"""

from __future__ import annotations


class NextwordError(Exception):
    """Base of everything the client raises."""


class APIError(NextwordError):
    """The service answered with an error body: `{"error": {"code", "message", "field"}}`."""

    code = "error"
    status = 0

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 field: str | None = None, retry_after: float | None = None, request_id: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field  # the request field at fault, or None
        self.retry_after = retry_after  # seconds, from a Retry-After header (429, 503)
        self.request_id = request_id  # the X-Request-ID the service logged this call under

    def __str__(self) -> str:
        where = f" (field `{self.field}`)" if self.field else ""
        return f"{self.code} [{self.status}]: {self.message}{where}"


class TransportError(NextwordError):
    """No answer: the service could not be reached, or it did not answer within the timeout."""


class StreamInterrupted(NextwordError):
    """A generation stream ended before its `done` event (connection lost, server gone).

    `tokens` are the tokens received before the cut. By the commit rule (docs/api.md, "What a generation
    commits") a generation is atomic: a cut stream wrote nothing, unless the generation had already ended
    and committed in the instant before the cut. So send the same request again with `if_version` set to the
    session's version before it: the same seed gives the same tokens, and a generation that did commit
    makes the retry `PreconditionFailed` instead of applying it twice.
    """

    def __init__(self, message: str, session_id: str, tokens: list):
        super().__init__(message)
        self.session_id = session_id
        self.tokens = tokens


# (class name, code, HTTP status, when the service answers with it)
CODES = (
    ("InvalidInput", "invalid_input", 400, "A request field is missing, mistyped or out of range (see `.field`)."),
    ("InvalidJSON", "invalid_json", 400, "The request body is not valid UTF-8 JSON."),
    ("Unauthorized", "unauthorized", 401, "The API key is missing or unknown."),
    ("NotFound", "not_found", 404, "No such endpoint."),
    ("UnknownModel", "unknown_model", 404, "No model of that name is served."),
    ("SessionNotFound", "session_not_found", 404, "The session is unknown, expired, evicted or another key's."),
    ("MethodNotAllowed", "method_not_allowed", 405, "The endpoint exists, not with that method."),
    ("NotAcceptable", "not_acceptable", 406, "No representation matches the Accept header."),
    ("SessionConflict", "session_conflict", 409, "The session kept changing under this request; retry it."),
    ("ModelMismatch", "model_mismatch", 409, "The session was made with another model, or another version of it."),
    ("PreconditionFailed", "precondition_failed", 412, "The session is no longer at `if_version`; nothing was written."),
    ("PayloadTooLarge", "payload_too_large", 413, "The request body is over the service's size limit."),
    ("UnsupportedMediaType", "unsupported_media_type", 415, "The request body must be JSON."),
    ("Overloaded", "overloaded", 429, "Too many streams or queued steps; retry after `.retry_after` seconds."),
    ("InternalError", "internal", 500, "A bug in the service; quote `.request_id` when reporting it."),
    ("StateStoreUnavailable", "state_store_unavailable", 503, "The service cannot reach Redis; retry later."),
    ("ModelUnavailable", "model_unavailable", 503, "The model runtime failed or is shutting down; retry later."),
    ("MalformedRequest", "malformed_request", 400, "The HTTP request itself broke the protocol."),
    ("RequestTimeout", "request_timeout", 408, "The request's head or body arrived too slowly."),
    ("URITooLong", "uri_too_long", 414, "The request line is over the size limit."),
    ("ExpectationFailed", "expectation_failed", 417, "An Expect header other than 100-continue."),
    ("HeadersTooLarge", "headers_too_large", 431, "Too many or too large header fields."),
    ("TransferCodingNotImplemented", "transfer_coding_not_implemented", 501, "A Transfer-Encoding other than chunked."),
    ("StateStoreFull", "state_store_full", 507, "Redis is out of memory; an operator must free or add memory."),
    ("ClientClosedRequest", "client_closed_request", 499,
     "The client left before its answer was written (the service's logs and metrics; no client receives it)."),
)

_BY_CODE: dict[str, type[APIError]] = {
    code: type(name, (APIError,), {"code": code, "status": status, "__doc__": doc, "__module__": __name__})
    for name, code, status, doc in CODES
}
globals().update({cls.__name__: cls for cls in _BY_CODE.values()})
ERROR_CLASSES = tuple(_BY_CODE.values())


def api_error(body, status: int | None = None, retry_after: str | None = None,
              request_id: str | None = None) -> APIError:
    """The typed error for an error body (a response's JSON, or an SSE `error` event's data).

    `status` is None for an SSE error event (it has none); the code's own status is used then.
    A body that is not the service's error shape (a proxy's HTML page) becomes an `APIError` with
    code `http_<status>`.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return APIError(f"unexpected response (HTTP {status})", code=f"http_{status}", status=status,
                        request_id=request_id)
    cls = _BY_CODE.get(error["code"], APIError)
    try:
        wait = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date: rare, and not worth a parser here
        wait = None
    return cls(str(error.get("message", "")), code=error["code"], status=status if status is not None else cls.status,
               field=error.get("field"), retry_after=wait, request_id=request_id)
