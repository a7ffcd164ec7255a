"""The one table from errors to HTTP: each code's status and headers (Retry-After included), each domain input's
field name on each surface, and the error bodies built from them: the service's own `{"error": {"code", "message",
"field"}}`, and OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1/. JSON responses, SSE error
events, a batch's failed items and the gunicorn worker's rejections all go through it. Knows nothing of Flask (the
worker uses it too) and nothing of how an error came about.
"""

from __future__ import annotations

from service.errors import (ClientClosedRequest, Input, InternalError, InvalidInput, ModelMismatch, ModelUnavailable,
                            Overloaded, PreconditionFailed, ServiceError, SessionConflict, SessionNotFound,
                            StateStoreFull, StateStoreUnavailable, UnknownModel)
from service.http.protocol import (ExpectationFailed, HeadersTooLarge, HTTPError, InvalidJSON, MalformedRequest,
                                   MethodNotAllowed, NotAcceptable, NotFound, PayloadTooLarge, RequestTimeout,
                                   TransferCodingNotImplemented, Unauthorized, UnlistedHTTPError, UnsupportedMediaType,
                                   URITooLong)

# The table: error -> HTTP status. Every code the service sends is here (the Python client keeps a copy).
STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400, InvalidJSON: 400, Unauthorized: 401, NotFound: 404, UnknownModel: 404, SessionNotFound: 404,
    MethodNotAllowed: 405, NotAcceptable: 406, SessionConflict: 409, ModelMismatch: 409, PreconditionFailed: 412,
    PayloadTooLarge: 413, UnsupportedMediaType: 415, ClientClosedRequest: 499,  # nginx's: nobody reads it but logs
    Overloaded: 429, InternalError: 500, StateStoreUnavailable: 503, ModelUnavailable: 503,
    MalformedRequest: 400, RequestTimeout: 408, URITooLong: 414, ExpectationFailed: 417, HeadersTooLarge: 431,
    TransferCodingNotImplemented: 501, StateStoreFull: 507,
}
ERROR_TYPES = list(STATUS)
_STATUS = {kind.code: status for kind, status in STATUS.items()}

# Seconds a client should wait before retrying (Retry-After), for the errors a moment may cure. A full Redis needs an
# operator, so state_store_full has none.
RETRY_AFTER_S = {Overloaded.code: 1, StateStoreUnavailable.code: 1, ModelUnavailable.code: 1}

# What each surface calls the inputs the domain names. The work budget's quantities (Input.TOKENS, ...) are
# named per endpoint, by the field that asks for the work (service/http/validation.py: `within_budget`).
NATIVE_FIELDS = {Input.SESSION: "session_id", Input.MODEL: "model", Input.TEXT: "text"}
OPENAI_FIELDS = {**NATIVE_FIELDS, Input.TEXT: "prompt"}

# OpenAI's error `type` by status; any other 4xx is invalid_request_error, any other 5xx server_error
OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def status(error: ServiceError) -> int:
    if isinstance(error, UnlistedHTTPError):
        return error.status
    return _STATUS.get(error.code, 500)


def headers(error: ServiceError) -> dict[str, str]:
    """The response headers the error brings: Retry-After for a transient one, and any the HTTP layer gave it."""
    out = {"Retry-After": str(RETRY_AFTER_S[error.code])} if error.code in RETRY_AFTER_S else {}
    if isinstance(error, HTTPError):
        out.update(error.headers)
    return out


def field(error: ServiceError, fields: dict[Input, str]) -> str | None:
    """The request field at fault as one surface names it: the HTTP layer's own, or the domain input's name."""
    if isinstance(error, HTTPError):
        return error.field
    return fields.get(error.input) if error.input is not None else None


def native_body(error: ServiceError) -> dict:
    return {"error": {"code": error.code, "message": error.message, "field": field(error, NATIVE_FIELDS)}}


def openai_body(error: ServiceError) -> dict:
    """OpenAI's shape: `type` by status (OPENAI_TYPES), `param` OpenAI's name of the field, `code` the service's."""
    code = status(error)
    kind = OPENAI_TYPES.get(code, "server_error" if code >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": field(error, OPENAI_FIELDS), "code": error.code}}
