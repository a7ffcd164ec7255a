"""The OpenAPI 3.1 document served at /openapi.json, written from what the routes declare (`api.OPERATIONS`), the
request shapes (`shapes.py`) and the answers (`answers.py`), with the running service's limits. Knows nothing of
Flask or of what a route does; `tests/test_openapi.py` validates the document and runs schemathesis against it.

Hand-written here is only what no declaration holds: what each error status means and the headers it carries,
the parameters and headers the operations share, the errors every operation of a kind can answer (405 anywhere,
401 where a key is needed, 400/408/413/415 with a body, 404 under a path parameter), and the request examples.
Two limits cannot be written in JSON Schema and are stated in descriptions: the body size (413 before the body is
read), the token count of a text (400 past `max_text_tokens`) and the work budget of a request, which sums over
its fields (service/budget.py). Errors under /v1/ have OpenAI's shape (`OpenAIError`), all others the service's.
"""

from __future__ import annotations

import functools
import re

from pydantic import TypeAdapter

from service.config import Settings
from service.errors import InvalidInput, ServiceError
from service.http import answers
from service.http.errors import STATUS
from service.http.api import BINARY, JSON, OPERATIONS, Operation, Reply
from service.http.protocol import (InvalidJSON, MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout,
                                   Unauthorized, UnsupportedMediaType)
from service.http.responses import OPENAI_PREFIX
from service.http.shapes import DocumentSchema, for_settings

VERSION = "0.1.0"
_TAGS = ("predict", "sessions", "models", "openai", "ops")  # the document's order
WORKER_STATUSES = (408, 413)  # answered by the HTTP worker (service/process/worker.py) before the app: Error's shape

# What an error status means, and the headers it carries (its codes are listed from the operation's errors).
_STATUS = {
    400: ("The body is not a UTF-8 JSON object, has an unknown field, or a field is missing, mistyped or out of range "
          "(`field` names it).", ()),
    401: ("Missing or unknown API key (only when API keys are configured).", ("WWW-Authenticate",)),
    404: ("Unknown model, or a session that is unknown, expired, deleted or another API key's.", ()),
    405: ("The path exists, not with this method.", ("Allow",)),
    406: ("`Accept` allows neither application/json nor application/octet-stream.", ()),
    408: ("The request body did not arrive within NEXTWORD_REQUEST_READ_TIMEOUT_S (answered by the HTTP worker, which "
          "then closes the connection).", ()),
    409: ("The session was made with another model or another version of its bundle (start a new session), or it kept "
          "changing under this request (retry).", ()),
    412: ("`If-Match` (or an item's `if_version`) names a version the session no longer has: nothing was written. Read "
          "the session (GET /sessions/{session_id}) to see where it stands.", ()),
    413: ("The request body is larger than NEXTWORD_MAX_BODY_BYTES; it is not read.", ()),
    415: ("The body is not `application/json`.", ()),
    429: ("Too many concurrent generations on this worker, or too many queued model steps.", ("Retry-After",)),
    503: ("Redis (the session store) cannot be reached, or the model runtime failed; retry after `Retry-After` seconds "
          "when it is sent.", ("Retry-After-Optional",)),
    507: ("Redis is out of memory with nothing left to evict, so the session's new state cannot be written (retrying "
          "does not help until memory is freed; reads still work).", ()),
}
_BUDGET = ("So is a request past its work budget, counted before any work: more than {max_request_tokens} tokens for "
           "the model to read or generate (NEXTWORD_MAX_REQUEST_TOKENS), more than {max_request_predictions} words "
           "listed in the answer (NEXTWORD_MAX_REQUEST_PREDICTIONS), or an answer that could pass "
           "{max_response_bytes} bytes (NEXTWORD_MAX_RESPONSE_BYTES); `field` names what to reduce.")
_HEADERS = {  # name -> (description, schema, required)
    "X-Request-ID": ("The request's id (the client's, if it sent a valid one); also in the logs.", "string", True),
    "X-Model": ("The model that answered.", "string", True),
    "X-Vocab-Size": ("Octet-stream responses: how many float32 values the body holds.", {"minimum": 1}, False),
    "X-Dtype": ("Octet-stream responses: `float32-le`.", {"type": "string", "const": "float32-le"}, False),
    "X-Session-Tokens": ("With a session: tokens it has consumed after this request.", {"minimum": 0}, False),
    "ETag": ("With a session: its version after this request, quoted (send it back in If-Match).", "string", False),
    "Location": ("The new session's URL.", "string", True),
    "Retry-After": ("Seconds to wait before retrying.", {"minimum": 0}, True),
    "Retry-After-Optional": ("Seconds to wait before retrying; sent with `state_store_unavailable` and "
                             "`model_unavailable`.", {"minimum": 0}, False),
    "Allow": ("The methods this path supports.", "string", True),
    "WWW-Authenticate": ("The Bearer challenge.", "string", True),
}
_PARAMETERS = {
    "session_id": {"in": "path", "required": True, "schema": {"type": "string"}, "description": "From POST /sessions."},
    "name": {"in": "path", "required": True, "schema": {"type": "string"},
             "description": "A loaded model's name (GET /models)."},
    "If-Match": {"in": "header", "required": False,
                 "schema": {"type": "string", "pattern": r'^("[0-9]{1,18}"|[0-9]{1,18}|\*)$'},
                 "description": "A session's ETag (its version, quoted): write only if the session is still at that "
                                "version, else 412 with nothing written. Makes a retry after a timeout or a 503 safe: "
                                "a write that was applied is not applied twice. Ignored without a session."},
}
_EXAMPLES = {
    "PredictRequest": {"text": "The game began development in", "prefix": "Ja", "words_only": True, "top_k": 5},
    "BatchRequest": {"items": [{"text": "the"}, {"text": "cat"}]},
    "CreateSessionRequest": {"model": "wikitext2-lstm"},
    "GenerateRequest": {"text": "the cat", "max_tokens": 8, "temperature": 0.8, "top_p": 0.95, "seed": 7,
                        "stop": ["."]},
    "CompletionRequest": {"model": "wikitext2-lstm", "prompt": "The game began development in", "max_tokens": 8,
                          "temperature": 0.8, "seed": 7, "logprobs": 2},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _status(kind: type[ServiceError]) -> int:
    return STATUS[kind]


def _header_refs(names: tuple[str, ...]) -> dict:
    refs = {name.removesuffix("-Optional"): {"$ref": f"#/components/headers/{name}"} for name in names}
    return {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}, **refs}


def _content(body: dict) -> dict:
    """A reply's body per media type: a TypedDict as its schema, `dict` as any object, a string as described text."""
    out = {}
    for mime, shape in body.items():
        if isinstance(shape, str):
            schema = {"type": "string", "description": shape}
            if mime == BINARY:
                schema.update({"format": "binary", "contentMediaType": BINARY})
        else:
            schema = {"type": "object"} if shape is dict else _ref(shape.__name__)
        out[mime] = {"schema": schema}
    return out


def _errors(op: Operation) -> dict[int, list[type[ServiceError]]]:
    """The operation's error statuses, each with its kinds: what it declares, and what every such operation has."""
    kinds = [*op.errors, MethodNotAllowed, *(() if op.open else (Unauthorized,))]
    if op.request:
        kinds += [InvalidJSON, InvalidInput, RequestTimeout, PayloadTooLarge, UnsupportedMediaType]
    if op.path_parameters:
        kinds.append(NotFound)
    by_status: dict[int, list[type[ServiceError]]] = {}
    for kind in kinds:
        if kind not in by_status.setdefault(_status(kind), []):
            by_status[_status(kind)].append(kind)
    return by_status


def _error(op: Operation, status: int, kinds: list) -> dict:
    meaning, headers = _STATUS[status]
    text = " ".join([meaning, *([op.notes[status]] if status in op.notes else []),
                     *([_BUDGET] if status == 400 and op.budget else []),
                     "Error codes: " + ", ".join(f"`{k.code}`" for k in kinds) + "."])
    schema = _ref("OpenAIError") if op.path.startswith(OPENAI_PREFIX) else _ref("Error")
    if op.path.startswith(OPENAI_PREFIX) and status in WORKER_STATUSES:
        schema = {"oneOf": [schema, _ref("Error")]}
    return {"description": text, "headers": _header_refs(headers), "content": {JSON: {"schema": schema}}}


def _reply(reply: Reply, links: dict) -> dict:
    out = {"description": reply.description, "headers": _header_refs(reply.headers)}
    if reply.body:
        out["content"] = _content(reply.body)
    if links and reply.status == 201:
        out["links"] = links
    return out


def _links(body: dict) -> dict:
    """What a created resource's fields open: every operation whose path parameter is one of them."""
    fields = {name for shape in body.values() if isinstance(shape, type) and shape is not dict
              for name in getattr(shape, "__annotations__", {})}
    return {op.operation_id[0].upper() + op.operation_id[1:]: {
        "operationId": op.operation_id, "parameters": {p: f"$response.body#/{p}" for p in op.path_parameters}}
        for op in OPERATIONS if op.path_parameters and set(op.path_parameters) <= fields}


def _operation(op: Operation, s: Settings) -> dict:
    out = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.open:
        out["security"] = []
    parameters = [*op.path_parameters, *op.headers]
    if parameters:
        out["parameters"] = [{"name": name, **_PARAMETERS[name]} for name in parameters]
    if op.request:
        shape = getattr(for_settings(s), op.request).__name__
        out["requestBody"] = {"required": op.body_required, "content": {JSON: {"schema": _ref(shape)}}}
    responses = {str(r.status): _reply(r, _links(r.body)) for r in op.replies}
    for status, kinds in sorted(_errors(op).items()):
        responses.setdefault(str(status), _error(op, status, kinds))
    out["responses"] = responses
    return out


@functools.cache
def _answer_schemas() -> dict:
    """The answers' JSON Schemas by name (nested ones too), generated from their TypedDicts."""
    shapes = {answers.Error, answers.OpenAIError, answers.Done} | {  # every error; the SSE `done` event
        shape for op in OPERATIONS for r in op.replies for shape in r.body.values()
        if isinstance(shape, type) and shape is not dict}
    adapters = [(shape.__name__, "serialization", TypeAdapter(shape)) for shape in sorted(shapes, key=str)]
    _, top = TypeAdapter.json_schemas(adapters, ref_template="#/components/schemas/{model}",
                                      schema_generator=DocumentSchema)
    return top["$defs"]


def _with_settings(node, s: Settings):
    """Every description and summary with `{setting}` written as the setting's value."""
    if isinstance(node, dict):
        return {k: _fill(v, s) if k in ("description", "summary") and isinstance(v, str) else _with_settings(v, s)
                for k, v in node.items()}
    return [_with_settings(v, s) for v in node] if isinstance(node, list) else node


def _fill(text: str, s: Settings) -> str:
    return re.sub(r"{(\w+)}", lambda m: str(getattr(s, m[1])) if m[1] in Settings.model_fields else m[0], text)


def spec(settings: Settings | None = None) -> dict:
    """The whole document; limits (top_k, max_tokens, body size, TTL) are the running service's."""
    from service.http import app  # noqa: F401 - importing the route modules declares every operation

    s = settings or Settings()
    requests = {name: {**schema, **({"example": _EXAMPLES[name]} if name in _EXAMPLES else {})}
                for name, schema in for_settings(s).json_schemas.items()}
    paths: dict[str, dict] = {}
    for op in sorted(OPERATIONS, key=lambda op: _TAGS.index(op.tag)):  # stable: declaration order within a tag
        paths.setdefault(op.path, {})[op.method] = _operation(op, s)
    *others, last = [op.path for op in OPERATIONS if op.open]
    open_paths = f"{', '.join(others)} and {last}"
    return _with_settings({
        "openapi": "3.1.0",
        "info": {
            "title": "nextword",
            "version": VERSION,
            "summary": "Next-word prediction with recurrent language models; per-session state in Redis.",
            "description": (
                "Every error is `{\"error\": {\"code\", \"message\", \"field\"}}` with the status listed per "
                "operation, except under /v1/, where it is OpenAI's `{\"error\": {\"message\", \"type\", "
                "\"param\", \"code\"}}`. Every request that reaches a model has a work budget, counted before any "
                "work: at most {max_request_tokens} tokens read or generated, {max_request_predictions} words listed "
                "and {max_response_bytes} bytes of answer (a 400 naming the field to reduce). When API keys are "
                f"configured (NEXTWORD_API_KEYS), every endpoint except {open_paths} needs `Authorization: Bearer "
                "<key>`, and a session belongs to the key that created it. Request bodies are limited to "
                "{max_body_bytes} bytes (413)."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": tag} for tag in _TAGS],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from NEXTWORD_API_KEYS(_FILE)."}},
            "schemas": {**_answer_schemas(), **requests},
            "headers": {name: {"description": text, **({"required": True} if required else {}),
                               "schema": {"type": "string"} if schema == "string" else {"type": "integer", **schema}
                               if "type" not in schema else schema}
                        for name, (text, schema, required) in _HEADERS.items()},
        },
    }, s)
