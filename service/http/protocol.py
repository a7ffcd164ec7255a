"""Errors of the HTTP layer itself: a body that is not JSON, a missing API key, an unknown route, a method or
representation not served, and what the gunicorn worker refuses before a request reaches the app (a malformed or
slow request, a head or body too large, codings it does not speak). Knows nothing of Flask: the worker imports it.

Unlike the domain's errors (service/errors.py), these name the request field at fault as the request names it
(`items[3].text`, `If-Match`), and may carry response headers of their own (`WWW-Authenticate`).
"""

from __future__ import annotations

from service.errors import InvalidInput, ServiceError


class HTTPError(ServiceError):
    """An error the HTTP layer raises, with the request field at fault (or None) and any headers of its own."""

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.field = field
        self.headers = headers or {}


class InvalidField(HTTPError, InvalidInput):
    """A request field is missing, mistyped or out of range (code `invalid_input`, as the domain's)."""


class InvalidJSON(HTTPError):
    """The body is not valid UTF-8 JSON."""
    code = "invalid_json"


class Unauthorized(HTTPError):
    """Missing or unknown API key."""
    code = "unauthorized"


class NotFound(HTTPError):
    """No such endpoint."""
    code = "not_found"


class MethodNotAllowed(HTTPError):
    """The endpoint exists, not with that method."""
    code = "method_not_allowed"


class NotAcceptable(HTTPError):
    """No representation matches the Accept header."""
    code = "not_acceptable"


class PayloadTooLarge(HTTPError):
    """The request body exceeds the size limit."""
    code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    """The body must be JSON, sent without a content coding."""
    code = "unsupported_media_type"


class MalformedRequest(HTTPError):
    """The HTTP request line, headers or chunked framing break the protocol."""
    code = "malformed_request"


class RequestTimeout(HTTPError):
    """The request's head or body did not arrive in time (NEXTWORD_REQUEST_READ_TIMEOUT_S)."""
    code = "request_timeout"


class URITooLong(HTTPError):
    """The request line exceeds the size limit."""
    code = "uri_too_long"


class ExpectationFailed(HTTPError):
    """An Expect header other than 100-continue."""
    code = "expectation_failed"


class HeadersTooLarge(HTTPError):
    """Too many or too large header fields."""
    code = "headers_too_large"


class TransferCodingNotImplemented(HTTPError):
    """A Transfer-Encoding other than chunked."""
    code = "transfer_coding_not_implemented"


class UnlistedHTTPError(HTTPError):
    """An HTTP error Flask raised that no class here names: it keeps its own status and a code made from its name."""

    def __init__(self, message: str, status: int, code: str):
        super().__init__(message)
        self.status, self.code = status, code
