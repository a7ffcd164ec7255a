"""Domain errors raised deep in the service, each with its HTTP status and stable code. Knows nothing of Flask.

Every `ServiceError` carries what the edge needs: `status`, `code`, a message that names the field, the field,
and an optional retry hint in seconds. Only `service/http` turns them into responses (the JSON body
`{"error": {"code", "message", "field"}}`, a `Retry-After` header from `retry_after`) and into SSE error events;
under /v1/ the body is OpenAI's `{"error": {"message", "type", "param", "code"}}` (`to_openai`).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A bug; logged with the request id, never shown."""

    status = 500
    code = "internal"

    def __init__(self, message: str, field: str | None = None, retry_after: int | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after  # seconds a client should wait before retrying; None: no hint
        self.headers = headers or {}  # extra HTTP headers, set only by the HTTP layer (WWW-Authenticate)

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def to_openai(self) -> dict:
        """OpenAI's shape: `type` by status (OPENAI_TYPES), `param` the OpenAI name of the field, `code` ours."""
        kind = OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": OPENAI_PARAMS.get(self.field, self.field),
                          "code": self.code}}


# OpenAI's error `type` by status; any other 4xx is invalid_request_error, any other 5xx server_error
OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
OPENAI_PARAMS = {"text": "prompt"}  # a field in the engine's words -> OpenAI's parameter


# The table: domain error -> (HTTP status, stable error code).

class InvalidInput(ServiceError):
    """A request field is missing, mistyped or out of range."""
    status, code = 400, "invalid_input"


class InvalidJSON(ServiceError):
    """The body is not valid UTF-8 JSON."""
    status, code = 400, "invalid_json"


class Unauthorized(ServiceError):
    """Missing or unknown API key."""
    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    """No such endpoint."""
    status, code = 404, "not_found"


class UnknownModel(ServiceError):
    """No bundle of that name is loaded."""
    status, code = 404, "unknown_model"


class SessionNotFound(ServiceError):
    """Unknown, expired or foreign session."""
    status, code = 404, "session_not_found"


class MethodNotAllowed(ServiceError):
    """The endpoint exists, not with that method."""
    status, code = 405, "method_not_allowed"


class NotAcceptable(ServiceError):
    """No representation matches the Accept header."""
    status, code = 406, "not_acceptable"


class SessionConflict(ServiceError):
    """The session kept changing under this request."""
    status, code = 409, "session_conflict"


class ModelMismatch(ServiceError):
    """The session was made with another model or bundle."""
    status, code = 409, "model_mismatch"


class PreconditionFailed(ServiceError):
    """If-Match (or an item's if_version) names a version the session no longer has: nothing was written."""
    status, code = 412, "precondition_failed"


class PayloadTooLarge(ServiceError):
    """The request body exceeds the size limit."""
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """The body must be JSON."""
    status, code = 415, "unsupported_media_type"


class ClientClosedRequest(ServiceError):
    """The client went away before its answer was written; the work left for it was skipped. Nobody reads the
    answer: the status (nginx's 499) is for logs and metrics."""
    status, code = 499, "client_closed_request"


class Overloaded(ServiceError):
    """Too many concurrent streams or queued steps."""
    status, code = 429, "overloaded"


class InternalError(ServiceError):
    """A bug; logged with the request id, never shown."""
    status, code = 500, "internal"


class StateStoreUnavailable(ServiceError):
    """Redis cannot be reached."""
    status, code = 503, "state_store_unavailable"


class ModelUnavailable(ServiceError):
    """The model runtime failed or is shutting down."""
    status, code = 503, "model_unavailable"


# Rejected by the HTTP worker (service/worker.py) before a request reaches the app.

class MalformedRequest(ServiceError):
    """The HTTP request line, headers or chunked framing break the protocol."""
    status, code = 400, "malformed_request"


class RequestTimeout(ServiceError):
    """The request's head or body did not arrive in time (NEXTWORD_REQUEST_READ_TIMEOUT_S)."""
    status, code = 408, "request_timeout"


class URITooLong(ServiceError):
    """The request line exceeds the size limit."""
    status, code = 414, "uri_too_long"


class ExpectationFailed(ServiceError):
    """An Expect header other than 100-continue."""
    status, code = 417, "expectation_failed"


class HeadersTooLarge(ServiceError):
    """Too many or too large header fields."""
    status, code = 431, "headers_too_large"


class TransferCodingNotImplemented(ServiceError):
    """A Transfer-Encoding other than chunked."""
    status, code = 501, "transfer_coding_not_implemented"


class StateStoreFull(ServiceError):
    """Redis is out of memory and evicts nothing more; an operator must act, so no Retry-After."""
    status, code = 507, "state_store_full"


ERROR_TYPES = [InvalidInput, InvalidJSON, Unauthorized, NotFound, UnknownModel, SessionNotFound, MethodNotAllowed,
               NotAcceptable, SessionConflict, ModelMismatch, PreconditionFailed, PayloadTooLarge,
               UnsupportedMediaType, ClientClosedRequest, Overloaded, InternalError, StateStoreUnavailable, ModelUnavailable,
               MalformedRequest, RequestTimeout, URITooLong, ExpectationFailed, HeadersTooLarge,
               TransferCodingNotImplemented, StateStoreFull]
