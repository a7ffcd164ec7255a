"""The service's domain errors: what went wrong, in the domain's words, and which input it concerns. Knows nothing
of HTTP: no status, header or request field name is chosen here or where these errors are raised.

Each error has a stable `code`, a message for people, and `input`: the input it concerns (an `Input`: the session,
the model, the text, ...), or None. The HTTP layer turns them into responses, SSE error events and OpenAI's error
shape through one table (service/http/errors.py): a status and headers (Retry-After included) per code, and each
`Input`'s field name on each surface (`text` is /predict's `text` and OpenAI's `prompt`). Errors of the HTTP
protocol itself (a bad body, a slow head, an unknown route) live in service/http/protocol.py.
"""

from __future__ import annotations

from enum import Enum


class Input(str, Enum):
    """What an error concerns, as the domain calls it; each surface names it its own way."""

    SESSION = "session"
    MODEL = "model"
    TEXT = "text"  # the words to read: a prediction's text, a generation's prompt
    TOKENS = "tokens"  # the work a request asks for: tokens the model would read or generate
    PREDICTIONS = "predictions"  # the work a request asks for: words its answer would list
    ANSWER = "answer"  # the work a request asks for: bytes its answer could take


class ServiceError(Exception):
    """Base of the service's errors; raised as itself, a failure nobody classified (code `internal`)."""

    code = "internal"

    def __init__(self, message: str, input: Input | None = None):
        super().__init__(message)
        self.message = message
        self.input = input


class InvalidInput(ServiceError):
    """An input is missing, malformed or past a limit."""
    code = "invalid_input"


class UnknownModel(ServiceError):
    """No bundle of that name is loaded."""
    code = "unknown_model"


class SessionNotFound(ServiceError):
    """Unknown, expired or foreign session."""
    code = "session_not_found"


class SessionConflict(ServiceError):
    """The session kept changing under this request."""
    code = "session_conflict"


class ModelMismatch(ServiceError):
    """The session was made with another model or bundle."""
    code = "model_mismatch"


class PreconditionFailed(ServiceError):
    """The caller named a version the session no longer has: nothing was written."""
    code = "precondition_failed"


class ClientClosedRequest(ServiceError):
    """The caller went away before its answer was written; the work left for it was skipped."""
    code = "client_closed_request"


class Overloaded(ServiceError):
    """Too many concurrent streams or queued steps; a moment later there may be room."""
    code = "overloaded"


class InternalError(ServiceError):
    """A bug; logged with the request id, never shown."""
    code = "internal"


class StateStoreUnavailable(ServiceError):
    """Redis cannot be reached; it may be back in a moment."""
    code = "state_store_unavailable"


class ModelUnavailable(ServiceError):
    """The model runtime failed or is shutting down; another try may reach one that runs."""
    code = "model_unavailable"


class StateStoreFull(ServiceError):
    """Redis is out of memory and evicts nothing more: an operator must act, so a retry does not help."""
    code = "state_store_full"
