"""Domain errors raised deep in the service, and the one table that maps them to HTTP.

The HTTP layer turns any `ServiceError` into `{"error": {"code", "message", "field"}}` with
`status`; a stream turns it into an `event: error` with the same JSON. Knows nothing of Flask.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def _error(name: str, status: int, code: str, doc: str) -> type[ServiceError]:
    return type(name, (ServiceError,), {"status": status, "code": code, "__doc__": doc})


# The table: domain error -> (HTTP status, stable error code).
InvalidInput = _error("InvalidInput", 400, "invalid_input", "A request field is missing, mistyped or out of range.")
InvalidJSON = _error("InvalidJSON", 400, "invalid_json", "The body is not valid UTF-8 JSON.")
Unauthorized = _error("Unauthorized", 401, "unauthorized", "Missing or unknown API key.")
NotFound = _error("NotFound", 404, "not_found", "No such endpoint.")
UnknownModel = _error("UnknownModel", 404, "unknown_model", "No bundle of that name is loaded.")
SessionNotFound = _error("SessionNotFound", 404, "session_not_found", "Unknown, expired or foreign session.")
MethodNotAllowed = _error("MethodNotAllowed", 405, "method_not_allowed", "The endpoint exists, not with that method.")
NotAcceptable = _error("NotAcceptable", 406, "not_acceptable", "No representation matches the Accept header.")
SessionConflict = _error("SessionConflict", 409, "session_conflict", "The session kept changing under this request.")
ModelMismatch = _error("ModelMismatch", 409, "model_mismatch", "The session was made with another model or bundle.")
PayloadTooLarge = _error("PayloadTooLarge", 413, "payload_too_large", "The request body exceeds the size limit.")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "unsupported_media_type", "The body must be JSON.")
Overloaded = _error("Overloaded", 429, "overloaded", "Too many concurrent streams or queued steps.")
InternalError = _error("InternalError", 500, "internal", "A bug; logged with the request id, never shown.")
StateStoreUnavailable = _error("StateStoreUnavailable", 503, "state_store_unavailable", "Redis cannot be reached.")
ModelUnavailable = _error("ModelUnavailable", 503, "model_unavailable", "The model runtime failed.")

ERROR_TYPES = [InvalidInput, InvalidJSON, Unauthorized, NotFound, UnknownModel, SessionNotFound, MethodNotAllowed,
               NotAcceptable, SessionConflict, ModelMismatch, PayloadTooLarge, UnsupportedMediaType, Overloaded,
               InternalError, StateStoreUnavailable, ModelUnavailable]
