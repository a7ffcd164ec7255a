"""Every JSON body the API answers, declared once as a TypedDict: the routes and `responses.py` build these dicts
(annotated with these types), and the served OpenAPI document's response schemas are generated from the same
declarations (`openapi.py`); tests/test_answers.py holds what the builders make to them. Knows nothing of Flask, the
engine or HTTP statuses.

Why TypedDict and not pydantic models: an answer stays a plain dict that orjson encodes, with no validation or
model instance per request (/predict answers thousands a second; a TypedDict costs nothing at run time), while
pydantic still writes its JSON Schema, docstring and `Field(description=...)` included.
"""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from typing_extensions import NotRequired, TypedDict

from service.http.errors import ERROR_TYPES

NOT_A_CHAT_MODEL = "not_a_chat_model"  # the OpenAI surface's own code: /v1/chat/completions is not served
CODES = sorted({e.code for e in ERROR_TYPES})
_CLOSED = ConfigDict(extra="forbid")  # written `additionalProperties: false`: clients may rely on these keys only

Probability = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
LogProb = Annotated[float, Field(le=0)]
Unix = Annotated[float, Field(description="Unix seconds.")]


class ErrorDetail(TypedDict):
    __pydantic_config__ = _CLOSED
    code: Annotated[str, Field(description="Stable, machine-readable.", json_schema_extra={"enum": CODES})]
    message: Annotated[str, Field(description="For people; names the field and the limit.")]
    field: Annotated[str | None, Field(description="The request field at fault (body field or path parameter), "
                                                   "or null.")]


class Error(TypedDict):
    """Every error outside /v1/."""

    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra={"example": {"error": {
        "code": "invalid_input", "message": "`top_k` must be at most 1000", "field": "top_k"}}})
    error: ErrorDetail


class ItemError(TypedDict):
    """A failed item of a batch."""

    __pydantic_config__ = _CLOSED
    error: ErrorDetail
    status: Annotated[int, Field(description="The status /predict would have given.")]


class OpenAIErrorDetail(TypedDict):
    __pydantic_config__ = _CLOSED
    message: Annotated[str, Field(description="For people; names the parameter and the limit.")]
    type: Annotated[Literal["authentication_error", "invalid_request_error", "rate_limit_error", "server_error"],
                    Field(description="authentication_error (401), rate_limit_error (429), server_error (5xx), "
                                      "invalid_request_error (any other 4xx).")]
    param: Annotated[str | None, Field(description="The OpenAI parameter at fault (`prompt`, `max_tokens`, ...), "
                                                   "or null.")]
    code: Annotated[str, Field(description="The service's stable error code (as `code` of Error), or "
                                           f"`{NOT_A_CHAT_MODEL}`.",
                               json_schema_extra={"enum": sorted([*CODES, NOT_A_CHAT_MODEL])})]


class OpenAIError(TypedDict):
    """Every error under /v1/: OpenAI's shape, which the `openai` client's exceptions read."""

    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra={"example": {"error": {
        "message": "`max_tokens` must be at most 256 (NEXTWORD_MAX_GENERATE_TOKENS)", "type": "invalid_request_error",
        "param": "max_tokens", "code": "invalid_input"}}})
    error: OpenAIErrorDetail


class Session(TypedDict):
    session_id: Annotated[str, Field(description="At least 128 random bits, URL-safe.")]
    model: str
    model_version: Annotated[str, Field(description="First 12 hex digits of the bundle's model.onnx sha256 the "
                                                    "session was made with.")]
    tokens: Annotated[Count, Field(description="Tokens consumed so far.")]
    version: Annotated[Count, Field(description="Grows by one per write.")]
    created: Unix
    updated: Unix
    expires_in: Annotated[Count, Field(description="Seconds until the session expires unless used again (every "
                                                   "access slides it back to NEXTWORD_SESSION_TTL_SECONDS, now "
                                                   "{session_ttl_seconds}).")]
    expires_at: Unix


class Word(TypedDict):
    word: str
    id: Count
    probability: Probability


class Score(TypedDict):
    word: str
    probability: Probability


class Filter(TypedDict):
    """With a non-empty `prefix` or `words_only`: what was ranked. `predictions` hold those words' probabilities
    renormalised over them (a raw probability is `probability * mass`)."""

    prefix: str | None
    case_sensitive: bool
    words_only: bool
    matches: Annotated[Count, Field(description="Vocabulary words that were ranked; 0: none starts with the prefix, "
                                                "and `predictions` is empty.")]
    mass: Annotated[Probability, Field(description="The probability those words had together before "
                                                   "renormalising.")]


class Prediction(TypedDict):
    model: str
    predictions: Annotated[list[Word], Field(description="The most likely next words, most likely first.")]
    tokens: Annotated[list[str], Field(description="The text as the model read it.")]
    unknown: Annotated[list[str], Field(description="Tokens outside the vocabulary, read as `<unk>`.")]
    filter: NotRequired[Filter]
    scores: NotRequired[Annotated[list[Score], Field(description=(
        "With `scores`: one per token, its probability given the tokens before it."))]]
    session: NotRequired[Session]


class BatchResponse(TypedDict):
    results: Annotated[list[Prediction | ItemError], Field(description="One per item, in item order.")]


class TokenEvent(TypedDict):
    """One sampled word (an SSE `token` event's data)."""

    index: Count
    id: Count
    word: str
    probability: Probability


class Done(TypedDict):
    """How a generation ended (an SSE `done` event's data), with the session as written."""

    finish_reason: Literal["length", "eos", "stop"]
    text: Annotated[str, Field(description="The sampled words, detokenized (stop word and `<eos>` left out).")]
    tokens: Annotated[int, Field(ge=1, description="Tokens sampled.")]
    model: str
    session: Session


class Generation(Done):
    token_details: list[TokenEvent]


class GenerateEvent(TypedDict):
    """One Server-Sent Event (OpenAPI 3.1: the schema of an event stream describes each event): `token` events
    whose data is a TokenEvent, then `done` (a Done); or an `error` whose data is an Error."""

    event: Literal["token", "done", "error"]
    data: str


class SessionSize(TypedDict):
    """What one session of this model costs in Redis (docs/limits.md sizes Redis from it)."""

    state_bytes: Annotated[int, Field(ge=1, description="The stored state blob: the recurrent state after and before "
                                                        "the last token, and its id.")]
    redis_bytes: Annotated[int | None, Field(description="The whole session hash as Redis counts it (MEMORY USAGE of "
                                                         "a scratch session, measured once per worker); null while "
                                                         "Redis cannot be asked.")]
    sessions_per_gib: Annotated[int | None, Field(description="2^30 / redis_bytes.")]


class ModelInfo(TypedDict):
    name: str
    architecture: Annotated[str, Field(examples=["lstm", "rnn_tanh", "gru"])]
    layers: int
    hidden_size: int
    embedding_size: int
    vocab_size: int
    version: Annotated[str, Field(description="First 12 hex digits of `sha256`.")]
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
    text_convention: Annotated[Literal["wikitext", "whitespace"], Field(
        description="How raw text is split into the corpus's tokens.")]
    metrics: Annotated[dict[str, Any], Field(description="Perplexities measured on the exported ONNX file.")]
    provider: Annotated[str, Field(examples=["CPUExecutionProvider", "CUDAExecutionProvider"])]
    session: SessionSize


class ModelList(TypedDict):
    default: str
    models: list[ModelInfo]


class ModelDetail(ModelInfo):
    manifest: Annotated[dict[str, Any], Field(description="The bundle's manifest.json: shapes, special tokens, text "
                                                          "convention, how it was trained and measured.")]


class Vocabulary(TypedDict):
    model: str
    size: Annotated[int, Field(ge=1)]
    words: Annotated[list[str], Field(description="Id order: `words[i]` is the word of id i, and of the i-th float32 "
                                                  "of /predict's octet-stream response.")]
    special_tokens: Annotated[dict[str, int], Field(examples=[{"unk": 0, "eos": 1}])]


class Health(TypedDict):
    status: Literal["alive"]


class ReadyModel(TypedDict):
    name: str
    provider: str
    version: str
    session: SessionSize


class Readiness(TypedDict):
    status: Literal["ready", "unavailable"]
    models: list[ReadyModel]
    redis: Annotated[str, Field(description="`ok`, or why the session store is unavailable.")]


class OpenAIModel(TypedDict):
    id: Annotated[str, Field(description="A loaded model's name.")]
    object: Literal["model"]
    created: Annotated[int, Field(description="Unix seconds: when the bundle was exported (its manifest's "
                                              "`export.created`), or, for a bundle exported before that was "
                                              "recorded, its model.onnx file's modification time.")]
    owned_by: Literal["nextword"]


class OpenAIModelList(TypedDict):
    object: Literal["list"]
    data: list[OpenAIModel]


class Logprobs(TypedDict):
    """With `logprobs`: per token of `text`, its characters, its log-probability (the model's own, before
    temperature and top-p; -9999 for 0), the `logprobs` most likely alternatives by the text each would have
    added, and its offset in `text` (in the whole text so far when streaming)."""

    tokens: list[str]
    token_logprobs: list[LogProb]
    top_logprobs: list[dict[str, LogProb]]
    text_offset: list[Count]


class Choice(TypedDict):
    text: str
    index: Literal[0]
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length"]


class Usage(TypedDict):
    prompt_tokens: Count
    completion_tokens: Annotated[Count, Field(description="Tokens generated, a stop word or `<eos>` that ended the "
                                                          "completion included.")]
    total_tokens: Count


class Completion(TypedDict):
    id: Annotated[str, Field(pattern="^cmpl-")]
    object: Literal["text_completion"]
    created: Annotated[int, Field(description="Unix seconds.")]
    model: str
    choices: Annotated[list[Choice], Field(min_length=1, max_length=1)]
    usage: Usage


class CompletionEvent(TypedDict):
    """One Server-Sent Event (OpenAPI 3.1: the schema of an event stream describes each event). Unnamed (`message`)
    events carry a chunk: a Completion of one token of text (its choice's `finish_reason` null until the last),
    without `usage` unless `include_usage` asked for it (a last chunk with `usage` and no choices), then `[DONE]`;
    an `error` event carries an OpenAIError."""

    event: NotRequired[Literal["message", "error"]]
    data: str
