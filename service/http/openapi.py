"""The OpenAPI 3.1 document served at /openapi.json, built from the settings whose limits it states.
Knows nothing of Flask; `tests/test_openapi.py` validates it and runs schemathesis against it.

Request schemas are generated from the request models in `shapes.py`, which also validate the bodies, so a
generator that follows a schema gets 2xx and one that breaks it gets 4xx; this module adds their examples and
writes everything else (paths, responses, the other schemas, descriptions). Two limits cannot be written in JSON
Schema and are stated in descriptions: the body size (413 before the body is read), the token count of a text
(400 past `max_text_tokens`) and the work budget of a request, which sums over its fields (service/budget.py).
Errors under /v1/ have OpenAI's shape (`OpenAIError`), all others the service's (`Error`).
"""

from __future__ import annotations

from service.config import Settings
from service.http.errors import ERROR_TYPES, OPENAI_TYPES, RETRY_AFTER_S
from service.http.shapes import for_settings

VERSION = "0.1.0"
_MIME_JSON = "application/json"
_MIME_BINARY = "application/octet-stream"
_MIME_SSE = "text/event-stream"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, example=None) -> dict:
    content = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {_MIME_JSON: content}


def _header(name: str) -> dict:
    return {"$ref": f"#/components/headers/{name}"}


def _error(description: str, *codes: str, headers: dict | None = None) -> dict:
    text = description + (" Error codes: " + ", ".join(f"`{c}`" for c in codes) + "." if codes else "")
    return {"description": text, "headers": {"X-Request-ID": _header("X-Request-ID"), **(headers or {})},
            "content": _json(_ref("Error"))}


def _ok(description: str, content: dict | None, headers: dict | None = None) -> dict:
    out = {"description": description, "headers": {"X-Request-ID": _header("X-Request-ID"), **(headers or {})}}
    if content is not None:
        out["content"] = content
    return out


# Error responses shared by the operations below (each lists the ones it can actually return).
_E401 = _error("Missing or unknown API key (only when API keys are configured).", "unauthorized",
               headers={"WWW-Authenticate": _header("WWW-Authenticate")})
_E405 = _error("The path exists, not with this method.", "method_not_allowed", headers={"Allow": _header("Allow")})
_E413 = _error("The request body is larger than NEXTWORD_MAX_BODY_BYTES; it is not read.", "payload_too_large")
_E415 = _error("The body is not `application/json`.", "unsupported_media_type")
_E408 = _error("The request body did not arrive within NEXTWORD_REQUEST_READ_TIMEOUT_S (answered by the HTTP worker, "
               "which then closes the connection).", "request_timeout")
_E507 = _error("Redis is out of memory with nothing left to evict, so the session's new state cannot be written "
               "(retrying does not help until memory is freed; reads still work).", "state_store_full")


def _budget(s: Settings) -> str:
    """What the work budget refuses, for a 400's description."""
    return (f" So is a request past its work budget, counted before any work: more than {s.max_request_tokens} tokens "
            f"for the model to read or generate (NEXTWORD_MAX_REQUEST_TOKENS), more than "
            f"{s.max_request_predictions} words listed in the answer (NEXTWORD_MAX_REQUEST_PREDICTIONS), or an answer "
            f"that could pass {s.max_response_bytes} bytes (NEXTWORD_MAX_RESPONSE_BYTES); `field` names what to "
            "reduce.")


def _e400(extra: str = "") -> dict:
    return _error("The body is not a UTF-8 JSON object, has an unknown field, or a field is missing, mistyped or "
                  "out of range (`field` names it)." + extra, "invalid_json", "invalid_input")


def _e404(*codes: str) -> dict:
    return _error("Unknown model, or a session that is unknown, expired, deleted or another API key's.", *codes)


def _e409() -> dict:
    return _error("The session was made with another model or another version of its bundle (start a new session), "
                  "or it kept changing under this request (retry).", "model_mismatch", "session_conflict")


def _e412() -> dict:
    return _error("`If-Match` (or an item's `if_version`) names a version the session no longer has: nothing was "
                  "written. Read the session (GET /sessions/{session_id}) to see where it stands.",
                  "precondition_failed")


def _e429() -> dict:
    return _error("Too many concurrent generations on this worker, or too many queued model steps.", "overloaded",
                  headers={"Retry-After": _header("Retry-After")})


def _e503(*codes: str) -> dict:
    retried = " and ".join(f"`{code}`" for code in codes if code in RETRY_AFTER_S)  # the error table's
    return _error("Redis (the session store) cannot be reached, or the model runtime failed or is shutting down; "
                  "retry after `Retry-After` seconds.", *codes,
                  headers={"Retry-After": {"description": f"Seconds to wait before retrying; sent with {retried}.",
                                           "schema": {"type": "integer", "minimum": 0}}})


SESSION_SIZE = {
    "type": "object",
    "required": ["state_bytes", "redis_bytes", "sessions_per_gib"],
    "description": "What one session of this model costs in Redis (docs/limits.md sizes Redis from it).",
    "properties": {
        "state_bytes": {"type": "integer", "minimum": 1, "description": "The stored state blob: the recurrent state "
                                                                        "after and before the last token, and its id."},
        "redis_bytes": {"type": ["integer", "null"], "description": "The whole session hash as Redis counts it "
                                                                    "(MEMORY USAGE of a scratch session, measured once "
                                                                    "per worker); null while Redis cannot be asked."},
        "sessions_per_gib": {"type": ["integer", "null"], "description": "2^30 / redis_bytes."},
    },
}


def _schemas(s: Settings) -> dict:
    session_view = {
        "type": "object",
        "required": ["session_id", "model", "model_version", "tokens", "version", "created", "updated",
                     "expires_in", "expires_at"],
        "properties": {
            "session_id": {"type": "string", "description": "At least 128 random bits, URL-safe."},
            "model": {"type": "string"},
            "model_version": {"type": "string", "description": "First 12 hex digits of the bundle's model.onnx "
                                                               "sha256 the session was made with."},
            "tokens": {"type": "integer", "minimum": 0, "description": "Tokens consumed so far."},
            "version": {"type": "integer", "minimum": 0, "description": "Grows by one per write."},
            "created": {"type": "number", "description": "Unix seconds."},
            "updated": {"type": "number", "description": "Unix seconds."},
            "expires_in": {"type": "integer", "minimum": 0,
                           "description": f"Seconds until the session expires unless used again (every access "
                                          f"slides it back to NEXTWORD_SESSION_TTL_SECONDS, now {s.session_ttl_seconds})."},
            "expires_at": {"type": "number", "description": "Unix seconds."},
        },
    }
    model_info = {
        "type": "object",
        "required": ["name", "architecture", "layers", "hidden_size", "embedding_size", "vocab_size", "version",
                     "sha256", "text_convention", "metrics", "provider", "session"],
        "properties": {
            "name": {"type": "string"},
            "architecture": {"type": "string", "examples": ["lstm", "rnn_tanh", "gru"]},
            "layers": {"type": "integer"},
            "hidden_size": {"type": "integer"},
            "embedding_size": {"type": "integer"},
            "vocab_size": {"type": "integer"},
            "version": {"type": "string", "description": "First 12 hex digits of `sha256`."},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "text_convention": {"type": "string", "enum": ["wikitext", "whitespace"],
                                "description": "How raw text is split into the corpus's tokens."},
            "metrics": {"type": "object", "description": "Perplexities measured on the exported ONNX file."},
            "provider": {"type": "string", "examples": ["CPUExecutionProvider", "CUDAExecutionProvider"]},
            "session": SESSION_SIZE,
        },
    }
    token_event = {
        "type": "object",
        "required": ["index", "id", "word", "probability"],
        "properties": {"index": {"type": "integer", "minimum": 0}, "id": {"type": "integer", "minimum": 0},
                       "word": {"type": "string"}, "probability": {"type": "number", "minimum": 0, "maximum": 1}},
    }
    return {
        "Error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string", "enum": sorted({e.code for e in ERROR_TYPES}),
                             "description": "Stable, machine-readable."},
                    "message": {"type": "string", "description": "For people; names the field and the limit."},
                    "field": {"type": ["string", "null"],
                              "description": "The request field at fault (body field or path parameter), or null."},
                },
            }},
            "example": {"error": {"code": "invalid_input", "message": "`top_k` must be at most 1000",
                                  "field": "top_k"}},
        },
        "OpenAIError": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error"],
            "description": "Every error under /v1/: OpenAI's shape, which the `openai` client's exceptions read.",
            "properties": {"error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "description": "For people; names the parameter and the limit."},
                    "type": {"type": "string",
                             "enum": sorted({*OPENAI_TYPES.values(), "invalid_request_error", "server_error"}),
                             "description": "authentication_error (401), rate_limit_error (429), server_error (5xx), "
                                            "invalid_request_error (any other 4xx)."},
                    "param": {"type": ["string", "null"],
                              "description": "The OpenAI parameter at fault (`prompt`, `max_tokens`, ...), or null."},
                    "code": {"type": "string", "enum": sorted({e.code for e in ERROR_TYPES}),
                             "description": "The service's stable error code (as `code` of Error)."},
                },
            }},
            "example": {"error": {"message": "`max_tokens` must be at most 256 (NEXTWORD_MAX_GENERATE_TOKENS)",
                                  "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_input"}},
        },
        "BatchResponse": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "description": "One per item, in item order.",
                                       "items": {"oneOf": [_ref("Prediction"), _ref("ItemError")]}}},
        },
        "ItemError": {
            "type": "object",
            "additionalProperties": False,
            "required": ["error", "status"],
            "properties": {"error": {"$ref": "#/components/schemas/Error/properties/error"},
                           "status": {"type": "integer", "description": "The status /predict would have given."}},
        },
        "Prediction": {
            "type": "object",
            "required": ["model", "predictions", "tokens", "unknown"],
            "properties": {
                "model": {"type": "string"},
                "predictions": {
                    "type": "array",
                    "description": "The most likely next words, most likely first.",
                    "items": {"type": "object", "required": ["word", "id", "probability"],
                              "properties": {"word": {"type": "string"}, "id": {"type": "integer", "minimum": 0},
                                             "probability": {"type": "number", "minimum": 0, "maximum": 1}}},
                },
                "tokens": {"type": "array", "items": {"type": "string"},
                           "description": "The text as the model read it."},
                "unknown": {"type": "array", "items": {"type": "string"},
                            "description": "Tokens outside the vocabulary, read as `<unk>`."},
                "scores": {"type": "array", "description": "With `scores`: one per token, its probability given "
                                                           "the tokens before it.",
                           "items": {"type": "object", "required": ["word", "probability"],
                                     "properties": {"word": {"type": "string"},
                                                    "probability": {"type": "number", "minimum": 0,
                                                                    "maximum": 1}}}},
                "filter": {
                    "type": "object",
                    "required": ["prefix", "case_sensitive", "words_only", "matches", "mass"],
                    "description": "With a non-empty `prefix` or `words_only`: what was ranked. `predictions` "
                                   "hold those words' probabilities renormalised over them (a raw probability is "
                                   "`probability * mass`).",
                    "properties": {
                        "prefix": {"type": ["string", "null"]},
                        "case_sensitive": {"type": "boolean"},
                        "words_only": {"type": "boolean"},
                        "matches": {"type": "integer", "minimum": 0,
                                    "description": "Vocabulary words that were ranked; 0: none starts with the "
                                                   "prefix, and `predictions` is empty."},
                        "mass": {"type": "number", "minimum": 0, "maximum": 1,
                                 "description": "The probability those words had together before "
                                                "renormalising."}}},
                "session": _ref("Session"),
            },
        },
        "Session": session_view,
        "Generation": {
            "type": "object",
            "required": ["finish_reason", "text", "tokens", "model", "session", "token_details"],
            "properties": {
                "finish_reason": {"type": "string", "enum": ["length", "eos", "stop"]},
                "text": {"type": "string", "description": "The sampled words, detokenized (stop word and "
                                                          "`<eos>` left out)."},
                "tokens": {"type": "integer", "minimum": 1, "description": "Tokens sampled."},
                "model": {"type": "string"},
                "session": _ref("Session"),
                "token_details": {"type": "array", "items": _ref("TokenEvent")},
            },
        },
        "TokenEvent": token_event,
        **_openai_schemas(),
        **_requests(s),
        "ModelInfo": model_info,
        "ModelList": {
            "type": "object",
            "required": ["default", "models"],
            "properties": {"default": {"type": "string"}, "models": {"type": "array", "items": _ref("ModelInfo")}},
        },
        "ModelDetail": {
            "allOf": [_ref("ModelInfo"), {"type": "object", "required": ["manifest"], "properties": {
                "manifest": {"type": "object", "description": "The bundle's manifest.json: shapes, special tokens, "
                                                              "text convention, how it was trained and measured."}}}],
        },
        "Vocabulary": {
            "type": "object",
            "required": ["model", "size", "words", "special_tokens"],
            "properties": {
                "model": {"type": "string"},
                "size": {"type": "integer", "minimum": 1},
                "words": {"type": "array", "items": {"type": "string"},
                          "description": "Id order: `words[i]` is the word of id i, and of the i-th float32 of "
                                         "/predict's octet-stream response."},
                "special_tokens": {"type": "object", "additionalProperties": {"type": "integer"},
                                   "examples": [{"unk": 0, "eos": 1}]},
            },
        },
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}},
        "Readiness": {
            "type": "object",
            "required": ["status", "models", "redis"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "unavailable"]},
                "models": {"type": "array", "items": {
                    "type": "object", "required": ["name", "provider", "version", "session"],
                    "properties": {"name": {"type": "string"}, "provider": {"type": "string"},
                                   "version": {"type": "string"}, "session": SESSION_SIZE}}},
                "redis": {"type": "string", "description": "`ok`, or why the session store is unavailable."},
            },
        },
    }


def _openai_schemas() -> dict:
    """GET /v1/models and POST /v1/completions (service/http/openai.py): OpenAI's response shapes, as far as served."""
    logprobs = {
        "type": ["object", "null"],
        "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
        "description": "With `logprobs`: per token of `text`, its characters, its log-probability (the model's own, "
                       "before temperature and top-p; -9999 for 0), the `logprobs` most likely alternatives by the "
                       "text each would have added, and its offset in `text` (in the whole text so far when "
                       "streaming).",
        "properties": {
            "tokens": {"type": "array", "items": {"type": "string"}},
            "token_logprobs": {"type": "array", "items": {"type": "number", "maximum": 0}},
            "top_logprobs": {"type": "array", "items": {"type": "object",
                                                        "additionalProperties": {"type": "number", "maximum": 0}}},
            "text_offset": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        },
    }
    usage = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
             "properties": {"prompt_tokens": {"type": "integer", "minimum": 0},
                            "completion_tokens": {"type": "integer", "minimum": 0,
                                                  "description": "Tokens generated, a stop word or `<eos>` that "
                                                                 "ended the completion included."},
                            "total_tokens": {"type": "integer", "minimum": 0}}}
    return {
        "OpenAIModel": {
            "type": "object", "required": ["id", "object", "created", "owned_by"],
            "properties": {"id": {"type": "string", "description": "A loaded model's name."},
                           "object": {"const": "model"},
                           "created": {"type": "integer", "description": (
                               "Unix seconds: when the bundle was exported (its manifest's `export.created`), or, "
                               "for a bundle exported before that was recorded, its model.onnx file's "
                               "modification time.")},
                           "owned_by": {"const": "nextword"}},
        },
        "OpenAIError": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["message", "type", "param", "code"],
                "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                               "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
        },
        "OpenAIModelList": {
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("OpenAIModel")}},
        },
        "Completion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string", "pattern": "^cmpl-"},
                "object": {"const": "text_completion"},
                "created": {"type": "integer", "description": "Unix seconds."},
                "model": {"type": "string"},
                "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                    "type": "object", "required": ["text", "index", "logprobs", "finish_reason"],
                    "properties": {"text": {"type": "string"}, "index": {"const": 0}, "logprobs": logprobs,
                                   "finish_reason": {"enum": ["stop", "length"]}}}},
                "usage": usage,
            },
        },
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


def _requests(s: Settings) -> dict:
    """The request bodies' schemas, generated from their models, each with its example."""
    return {name: {**schema, **({"example": _EXAMPLES[name]} if name in _EXAMPLES else {})}
            for name, schema in for_settings(s).json_schemas.items()}


def _model_get(operation: str, tag: str, summary: str, description: str, schema: str, named: bool = False) -> dict:
    """GET of the model list or of one model (`named`: by the path's `name`)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "A loaded model's name (GET /models)."}
    responses = {"200": _ok(description, _json(_ref(schema))), "401": _E401, "405": _E405}
    if named:
        responses["404"] = _e404("unknown_model", "not_found")
    return {"get": {"operationId": operation, "tags": [tag], "summary": summary,
                    **({"parameters": [name]} if named else {}), "responses": responses}}


def _paths(s: Settings) -> dict:
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "From POST /sessions."}
    open_ = {"security": []}
    if_match = {"name": "If-Match", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": r'^("[0-9]{1,18}"|[0-9]{1,18}|\*)$'},
                "description": "A session's ETag (its version, quoted): write only if the session is still at that "
                               "version, else 412 with nothing written. Makes a retry after a timeout or a 503 "
                               "safe: a write that was applied is not applied twice. Ignored without a session."}
    session_links = {
        "GetSession": {"operationId": "getSession", "parameters": {"session_id": "$response.body#/session_id"}},
        "DeleteSession": {"operationId": "deleteSession", "parameters": {"session_id": "$response.body#/session_id"}},
        "Generate": {"operationId": "generate", "parameters": {"session_id": "$response.body#/session_id"}},
    }
    return {
        "/predict": {"post": {
            "operationId": "predict",
            "tags": ["predict"],
            "summary": "Next-word distribution after a text (optionally continuing a session)",
            "description": (
                "JSON by default: the `top_k` most likely next words. With `Accept: application/octet-stream` "
                "the body is the whole next-word distribution: `vocab_size` little-endian float32 "
                "probabilities in vocabulary order (GET /models/{name}/vocab), with the model in `X-Model` "
                "and the vocabulary size in `X-Vocab-Size`. With `session_id`, the text is appended to the "
                "session's context (one compare-and-set write; concurrent calls on one session all count), and "
                "the response's `ETag` is the session's new version.\n\n"
                "For a keyboard: `prefix` is the word being typed (`text` holds the complete words before it, "
                "and may be empty). Only vocabulary words starting with it are ranked, case-insensitively unless "
                "`case_sensitive`, their probabilities renormalised over them; `filter.mass` is the probability "
                "they had together. `words_only` leaves out `<unk>`, `<eos>`, punctuation and the corpus's "
                "placeholders. A prefix is never fed to a session: with `session_id` and an empty `text` the "
                "answer is the distribution after what the session has read, and nothing is written (same "
                "version, same `ETag`). The octet-stream answer and `scores` are always the raw distribution."),
            "parameters": [if_match],
            "requestBody": {"required": True, "content": _json(_ref("PredictRequest"))},
            "responses": {
                "200": _ok("The next-word distribution.", {
                    _MIME_JSON: {"schema": _ref("Prediction")},
                    _MIME_BINARY: {"schema": {"type": "string", "format": "binary",
                                              "contentMediaType": _MIME_BINARY,
                                              "description": "vocab_size float32 little-endian probabilities"}},
                }, headers={"X-Model": _header("X-Model"), "X-Vocab-Size": _header("X-Vocab-Size"),
                            "X-Dtype": _header("X-Dtype"), "X-Session-Tokens": _header("X-Session-Tokens"),
                            "ETag": _header("ETag")}),
                "400": _e400(f" A text of more than {s.max_text_tokens} tokens, or with no word, is a 400 on "
                             "`text`." + _budget(s)),
                "401": _E401, "404": _e404("unknown_model", "session_not_found"), "405": _E405,
                "406": _error("`Accept` allows neither application/json nor application/octet-stream.",
                              "not_acceptable"),
                "408": _E408, "409": _e409(), "412": _e412(), "413": _E413, "415": _E415, "429": _e429(),
                "503": _e503("state_store_unavailable", "model_unavailable"), "507": _E507,
            },
        }},
        "/predict/batch": {"post": {
            "operationId": "predictBatch",
            "tags": ["predict"],
            "summary": "Many /predict items in one request (a keyboard backend, a gateway)",
            "description": (
                "Each result is exactly what /predict would answer for its item (JSON), or `{\"error\", "
                "\"status\"}` for an item that failed; the others still apply. Items naming the same session "
                "apply in item order, as one write whose version grows by the number of items applied. A "
                "malformed item makes the whole request a 400 naming `items[n]`. A client that goes away before "
                "the answer is written has the model steps left for it skipped, and nothing of its batch is "
                "written unless the write was made before it went."),
            "requestBody": {"required": True, "content": _json(_ref("BatchRequest"))},
            "responses": {
                "200": _ok("One result per item.", _json(_ref("BatchResponse"))),
                "400": _e400(f" More than {s.max_batch_items} items is a 400 on `items`." + _budget(s)
                             + " A batch counts all its items together."),
                "401": _E401, "405": _E405, "408": _E408, "413": _E413, "415": _E415, "429": _e429(),
                "503": _e503("state_store_unavailable", "model_unavailable"),
            },
        }},
        "/models": _model_get("listModels", "models", "The loaded models and the default one",
                              "Every loaded bundle.", "ModelList"),
        "/models/{name}": _model_get("getModel", "models", "One model, with its manifest", "The model.",
                                     "ModelDetail", named=True),
        "/models/{name}/vocab": _model_get("getVocabulary", "models", "A model's vocabulary in id order",
                                           "The vocabulary.", "Vocabulary", named=True),
        "/sessions": {"post": {
            "operationId": "createSession", "tags": ["sessions"],
            "summary": "Start a session (recurrent state kept in Redis, idle ones expire)",
            "description": f"The body may be omitted. Idle sessions expire after NEXTWORD_SESSION_TTL_SECONDS "
                           f"(now {s.session_ttl_seconds}); every access slides the expiry.",
            "requestBody": {"required": False, "content": _json(_ref("CreateSessionRequest"))},
            "responses": {
                "201": {**_ok("Created.", _json(_ref("Session")),
                              headers={"Location": _header("Location"), "ETag": _header("ETag")}),
                        "links": session_links},
                "400": _e400(), "401": _E401, "404": _e404("unknown_model"), "405": _E405, "408": _E408,
                "413": _E413, "415": _E415, "503": _e503("state_store_unavailable"), "507": _E507,
            },
        }},
        "/sessions/{session_id}": {
            "get": {
                "operationId": "getSession", "tags": ["sessions"],
                "summary": "A session's model, tokens consumed and expiry (slides the expiry)",
                "parameters": [session_id],
                "responses": {"200": _ok("The session.", _json(_ref("Session")), headers={"ETag": _header("ETag")}),
                              "401": _E401,
                              "404": _e404("session_not_found", "not_found"), "405": _E405,
                              "503": _e503("state_store_unavailable")},
            },
            "delete": {
                "operationId": "deleteSession", "tags": ["sessions"], "summary": "End a session",
                "parameters": [session_id],
                "responses": {"204": _ok("Deleted.", None), "401": _E401,
                              "404": _e404("session_not_found", "not_found"), "405": _E405,
                              "503": _e503("state_store_unavailable")},
            },
        },
        "/sessions/{session_id}/generate": {"post": {
            "operationId": "generate", "tags": ["sessions"],
            "summary": "Sample a continuation of a session, streamed as Server-Sent Events or as one JSON",
            "description": (
                "With `Accept: text/event-stream`: one `event: token` per sampled word (data: TokenEvent), "
                "then `event: done` (data: Generation without `token_details`); a failure mid-stream is an "
                "`event: error` whose data is an Error. Otherwise the same generation drained into one JSON "
                "response. A generation is atomic: the session is written once, when it has ended by itself and "
                "every token was handed to the connection, holding the prompt and every token; `done` shows the "
                "session as written. A generation that fails or whose client goes away writes nothing, not even "
                "its prompt; sent again (same seed), it gives the same tokens. With `If-Match`, a session that "
                "is no longer at that version is a 412 before anything is sampled. The JSON answer's client is "
                "watched while it runs: one that goes away stops the generation at its next token."),
            "parameters": [session_id, if_match],
            "requestBody": {"required": True, "content": _json(_ref("GenerateRequest"))},
            "responses": {
                "200": _ok("The generation (JSON: `ETag` is the session's version after it).", {
                    _MIME_JSON: {"schema": _ref("Generation")},
                    _MIME_SSE: {"schema": {"type": "string", "description": (
                        "`event: token` / `data: {\"index\",\"id\",\"word\",\"probability\"}` per word, then "
                        "`event: done` / `data: {\"finish_reason\",\"text\",\"tokens\",\"model\",\"session\"}`; "
                        "or `event: error` / `data: {\"error\": {...}}`.")}},
                }),
                "400": _e400(f" `max_tokens` above {s.max_generate_tokens} is a 400, not clamped." + _budget(s)),
                "401": _E401, "404": _e404("session_not_found", "not_found"), "405": _E405, "408": _E408,
                "409": _e409(), "412": _e412(), "413": _E413, "415": _E415, "429": _e429(),
                "503": _e503("state_store_unavailable", "model_unavailable"), "507": _E507,
            },
        }},
        "/v1/completions": {"post": {
            "operationId": "createCompletion", "tags": ["openai"],
            "summary": "OpenAI-compatible completions (the `openai` client with base_url .../v1)",
            "description": (
                "OpenAI's legacy completions API over one generation. A token is a word of the model's vocabulary; "
                "`text` joins them as the model's text convention writes them. `finish_reason` is `stop` (a stop "
                "word or `<eos>`, left out of `text`) or `length`. With `stream`, `data: {chunk}` events in "
                "OpenAI's shape (`object: text_completion`, one choice whose `text` is one token, then one with "
                "the `finish_reason`), then `data: [DONE]`; a failure mid-stream is an `event: error` whose data "
                "is an OpenAIError (no [DONE]). Errors are OpenAIError objects (`message`, `type`, `param`, "
                "`code`), which the `openai` client's exceptions carry. A non-streaming request whose client goes "
                "away stops at its next token and commits nothing."),
            "requestBody": {"required": True, "content": _json(_ref("CompletionRequest"))},
            "responses": {
                "200": _ok("The completion.", {
                    _MIME_JSON: {"schema": _ref("Completion")},
                    _MIME_SSE: {"schema": {
                        "type": "object", "required": ["data"],
                        "description": "One event (OpenAPI 3.1: the schema of an event stream describes each "
                                       "event). Unnamed (`message`) events carry a chunk: `{\"id\", \"object\", "
                                       "\"created\", \"model\", \"choices\": [{\"text\", \"index\", \"logprobs\", "
                                       "\"finish_reason\"}]}` (Completion's shape, one token of text each), then "
                                       "`[DONE]`; an `error` event carries an Error.",
                        "properties": {"event": {"enum": ["message", "error"]},
                                       "data": {"type": "string"}}}},
                }),
                "400": _e400(f" `max_tokens` above {s.max_generate_tokens} is a 400, not clamped; so is an "
                             "OpenAI field at a value that is not served (`n` 2, penalties, `echo`, ...)."
                             + _budget(s) + " `logprobs` costs one more model step per token and lists its "
                             "alternatives."),
                "401": _E401, "404": _e404("unknown_model", "session_not_found"), "405": _E405, "408": _E408,
                "409": _e409(), "413": _E413, "415": _E415, "429": _e429(),
                "503": _e503("state_store_unavailable", "model_unavailable"), "507": _E507,
            },
        }},
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "tags": ["openai"],
            "summary": "Not served: the models are completion models (use /v1/completions)",
            "description": (
                "Tools that speak only OpenAI's chat API get a readable answer instead of a bare 404: a 404 in "
                "OpenAI's error shape (`type` `invalid_request_error`, `code` `not_a_chat_model`) pointing to "
                "POST /v1/completions. The body is not read."),
            "responses": {
                "404": {"description": "Always.", "headers": {"X-Request-ID": _header("X-Request-ID")},
                        "content": _json(_ref("OpenAIError"))},
                "401": _E401, "405": _E405,
            },
        }},
        "/v1/models": _model_get("listOpenAIModels", "openai", "The loaded models in OpenAI's shape (what "
                                 "`client.models.list()` reads)", "Every loaded model.", "OpenAIModelList"),
        "/v1/models/{name}": _model_get("getOpenAIModel", "openai", "One model in OpenAI's shape", "The model.",
                                        "OpenAIModel", named=True),
        "/healthz": {"get": {
            "operationId": "healthz", "tags": ["ops"], "summary": "Liveness: the process answers", **open_,
            "responses": {"200": _ok("Alive.", _json(_ref("Health"))), "405": _E405},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "tags": ["ops"],
            "summary": "Readiness: every bundle loaded and Redis reachable", **open_,
            "responses": {
                "200": _ok("Ready.", _json(_ref("Readiness"))),
                "405": _E405,
                "503": _ok("Not ready: Redis cannot be reached.", _json(_ref("Readiness")),
                           headers={"Retry-After": _header("Retry-After")}),
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["ops"], "summary": "Prometheus metrics of every worker", **open_,
            "responses": {"200": _ok("Prometheus text exposition format.",
                                     {"text/plain": {"schema": {"type": "string"}}}), "405": _E405},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["ops"], "summary": "This document", **open_,
            "responses": {"200": _ok("OpenAPI 3.1.", _json({"type": "object"})), "405": _E405},
        }},
    }


WORKER_STATUSES = ("408", "413")  # answered by the HTTP worker (service/worker.py) before the app, in Error's shape


def _openai_errors(paths: dict) -> dict:
    """Errors under /v1/ (responses.OPENAI_PREFIX) are OpenAIError objects, except what the HTTP worker answers
    before a request reaches the app (a body too large or too slow), which may be an Error."""
    for path, item in paths.items():
        if path.startswith("/v1/"):
            for operation in item.values():
                for status, response in operation["responses"].items():
                    if int(status) >= 400:
                        schema = _ref("OpenAIError")
                        if status in WORKER_STATUSES:
                            schema = {"oneOf": [schema, _ref("Error")]}
                        operation["responses"][status] = {**response, "content": _json(schema)}
    return paths


def spec(settings: Settings | None = None) -> dict:
    """The whole document; limits (top_k, max_tokens, body size, TTL) are the running service's."""
    s = settings or Settings()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nextword",
            "version": VERSION,
            "summary": "Next-word prediction with recurrent language models; per-session state in Redis.",
            "description": (
                "Every error is `{\"error\": {\"code\", \"message\", \"field\"}}` with the status listed per "
                "operation, except under /v1/, where it is OpenAI's `{\"error\": {\"message\", \"type\", "
                "\"param\", \"code\"}}`. Every request that reaches a model has a work budget, counted before any "
                f"work: at most {s.max_request_tokens} tokens read or generated, {s.max_request_predictions} words "
                f"listed and {s.max_response_bytes} bytes of answer (a 400 naming the field to reduce). When API keys are configured (NEXTWORD_API_KEYS), every endpoint except /healthz, "
                "/readyz, /metrics and /openapi.json needs `Authorization: Bearer <key>`, and a session "
                "belongs to the key that created it. Request bodies are limited to "
                f"{s.max_body_bytes} bytes (413)."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": "predict"}, {"name": "sessions"}, {"name": "models"}, {"name": "openai"}, {"name": "ops"}],
        "security": [{"bearer": []}],
        "paths": _openai_errors(_paths(s)),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from NEXTWORD_API_KEYS(_FILE)."}},
            "schemas": _schemas(s),
            "headers": {
                "X-Request-ID": {"description": "The request's id (the client's, if it sent a valid one); also in "
                                                "the logs.", "required": True, "schema": {"type": "string"}},
                "X-Model": {"description": "The model that answered.", "required": True,
                            "schema": {"type": "string"}},
                "X-Vocab-Size": {"description": "Octet-stream responses: how many float32 values the body holds.",
                                 "schema": {"type": "integer", "minimum": 1}},
                "X-Dtype": {"description": "Octet-stream responses: `float32-le`.",
                            "schema": {"type": "string", "const": "float32-le"}},
                "X-Session-Tokens": {"description": "With a session: tokens it has consumed after this request.",
                                     "schema": {"type": "integer", "minimum": 0}},
                "ETag": {"description": "With a session: its version after this request, quoted (send it back in "
                                        "If-Match).", "schema": {"type": "string"}},
                "Location": {"description": "The new session's URL.", "required": True,
                             "schema": {"type": "string"}},
                "Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                                "schema": {"type": "integer", "minimum": 0}},
                "Allow": {"description": "The methods this path supports.", "required": True,
                          "schema": {"type": "string"}},
                "WWW-Authenticate": {"description": "The Bearer challenge.", "required": True,
                                     "schema": {"type": "string"}},
            },
        },
    }

