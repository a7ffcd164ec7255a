"""Typed errors of the Python client: one class per error code the service sends, plus the two ways a
call can fail without an answer (no connection, a stream cut short). Knows no HTTP library.

The classes are built from the service's own table (`service/errors.py`), so every code has one home
and a code added there is a class here: `SessionNotFound` has `.code == "session_not_found"` and
`.status == 404`. A code this client does not know (a newer server) is still an `APIError`.
"""

from __future__ import annotations

from service.errors import ERROR_TYPES


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

    `tokens` are the tokens received before the cut. By the README's commit rule ("What a generation
    commits") a generation is atomic: a cut stream wrote nothing, unless the generation had already ended
    and committed in the instant before the cut. So send the same request again with `if_version` set to the
    session's version before it: the same seed gives the same tokens, and a generation that did commit
    makes the retry `PreconditionFailed` instead of applying it twice.
    """

    def __init__(self, message: str, session_id: str, tokens: list):
        super().__init__(message)
        self.session_id = session_id
        self.tokens = tokens


_BY_CODE: dict[str, type[APIError]] = {
    kind.code: type(kind.__name__, (APIError,), {"code": kind.code, "status": kind.status, "__doc__": kind.__doc__,
                                                 "__module__": __name__})
    for kind in ERROR_TYPES
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
