"""Every JSON request body the API takes, declared once as a pydantic model: the validators and the request schemas
of the served OpenAPI document both come from these declarations. Knows the settings' limits and what text the
tokenizer keeps; knows nothing of Flask, HTTP statuses or the engine (`validation.py` turns a failure into an
`InvalidInput` naming the field).

Why pydantic (v2): its validators are compiled once (in Rust) from the declarations, and `models_json_schema`
writes JSON Schema 2020-12, the dialect of OpenAPI 3.1, so the document cannot drift from what is accepted. Where
it is not exactly what the API promises, ours is kept on top:
- JSON is parsed by the standard library (`validation.json_body`), not by pydantic's parser, which accepts
  `NaN` and `Infinity` (not JSON: a 400 `invalid_json` here) and rejects lone surrogate escapes that are valid
  JSON. Models therefore validate Python objects, in strict mode: `"5"` is not an integer, `true` is not a number.
- JSON has one number type, so an integral float (`3.0`) is the integer 3 (`_integral`).
- An optional field sent as `null` takes its default, as if absent (`Body._null_is_absent`); the document says so
  by making every optional field nullable (`DocumentSchema`).
- Text rules pydantic has no words for are small functions here, each stated in the schema as well: not blank, no
  NUL, at least one word the tokenizer keeps (the `text` pattern, computed from the tokenizer once per process).

The limits come from the settings (text length, top_k, max_tokens, batch items), so the models are built per set of
limits, once (`for_settings`, cached), at app creation; never per request.
"""

import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import GenerateJsonSchema, WithJsonSchema, models_json_schema
from pydantic_core import PydanticCustomError

from service.config import Settings
from service.tokenizer import dropped, has_word

NAME_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"  # names (model, session_id, user): not blank, no NUL
MAX_LOGPROBS = 5  # OpenAI's limit for completions
MAX_OPENAI_STOP = 4  # OpenAI's limit
MAX_GENERATE_STOP = 16  # stop words of one generation: each is compared with every sampled word
MAX_STOP_LENGTH = 100  # characters of a stop word; no word of a vocabulary is longer
MAX_PREFIX_LENGTH = 100  # characters of a word in progress; WikiText-2's longest word has 20


@dataclass(frozen=True)
class Setting:
    """Marks a limit that comes from a setting: a message about that limit names the variable."""

    env: str


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class _Schema:
    """Adds JSON Schema keywords that a validator function here enforces (the schema only states them). A callable
    value is computed when a document is written, not when a model is built."""

    keywords: dict

    def __get_pydantic_json_schema__(self, core_schema, handler):
        extra = {k: v() if callable(v) else v for k, v in self.keywords.items()}
        return {**handler(core_schema), **extra}


def invalid(phrase: str, field: str | None = None) -> PydanticCustomError:
    """A failure of one of the checks below; `validation.py` prefixes the field (`top_k` must be ...). A check of
    the whole object names the field it concerns."""
    return PydanticCustomError("invalid", "{phrase}", {"phrase": phrase, **({"field": field} if field else {})})


def _integral(value):
    return int(value) if type(value) is float and value.is_integer() else value


def _name(value: str) -> str:
    if not value.strip():
        raise invalid("must not be empty")
    if "\x00" in value:
        raise invalid("contains a NUL character")
    return value


def _text(value: str) -> str:
    _name(value)
    if not has_word(value):
        raise invalid("has no words")
    return value


def _text_or_empty(value: str) -> str:
    return value if value == "" else _text(value)


def _same(value):
    return value


def _prefix(value: str) -> str:
    if any(dropped(ch) for ch in value):
        raise invalid("must be the start of one word: no whitespace, control or format characters")
    return value


def _empty_text_needs_prefix(request):
    """`text` may be empty only with `prefix`: the first word of a line, or a word after what a session has read."""
    if request.text == "" and request.prefix is None:
        raise invalid("must not be empty (it may be empty only with `prefix`, the word being typed)", field="text")
    return request


def _stop_word(value: str) -> str:
    if not value.strip():
        raise invalid("must not be blank")
    return value.strip()


def _one_prompt(value):
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise invalid("must be a string or a list of one string (n = 1; token ids are not supported)")
        return value[0]
    return value


def _one_or_more(value):
    return [value] if isinstance(value, str) else value


@functools.cache
def text_pattern() -> str:
    """Not blank, no NUL, and at least one character the tokenizer keeps (it drops control and format characters
    and variation selectors), so a text matching it always has a word."""
    return f"^[^\\x00]*[^{_dropped_class()}][^\\x00]*$"


@functools.cache
def prefix_pattern() -> str:
    """Only characters the tokenizer keeps: the start of one word."""
    return f"^[^{_dropped_class()}]*$"


@functools.cache
def _dropped_class() -> str:
    """The ranges of a regex character class holding what the tokenizer drops or splits on. Lone surrogates (Cs)
    are left out of the class: they are not Unicode scalar values, and regex engines that work on those (Rust's,
    used by schemathesis) refuse a pattern naming them."""
    spans, start = [], None
    for code in range(0x110001):
        ch = chr(code) if code < 0x110000 else ""
        gone = bool(ch) and dropped(ch)
        if gone and start is None:
            start = code
        elif not gone and start is not None:
            spans.append((start, code - 1))
            start = None
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in spans)


def _escape(code: int) -> str:
    if code < 0x80 and chr(code).isalnum():
        return chr(code)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return chr(code)  # astral: the literal character (no escape means the same in Python and ECMA-262 regexes)


Number = Annotated[float, Field(allow_inf_nan=False)]


def Integer(ge: int, le: int, setting: str | None = None):  # noqa: N802 - a type
    """An integer in [ge, le]. JSON has one number type: 3.0 is the integer 3."""
    marks = (Setting(setting),) if setting else ()
    return Annotated[(int, Field(ge=ge, le=le), BeforeValidator(_integral), *marks)]


def Name(max_length: int = 200, description: str | None = None):  # noqa: N802 - a type
    return Annotated[str, Field(min_length=1, max_length=max_length, description=description),
                     AfterValidator(_name), _Schema({"pattern": NAME_PATTERN})]


def Only(value, why: str):  # noqa: N802 - a type
    """An OpenAI field accepted only at the value that changes nothing (clients such as LangChain send it)."""

    def check(v):  # 1.0 is 1, but true is not 1
        if isinstance(v, bool) != isinstance(value, bool) or v != value:
            raise invalid(f"must be {json.dumps(value)} (or absent): {why}")
        return v

    schema = {"type": "null"} if value is None else {"type": "object", "maxProperties": 0} if value == {} else {
        "enum": [value]}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]


class Body(BaseModel):
    """A request body: unknown fields are refused, types are strict, null means absent."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


M = TypeVar("M", bound=Body)


class DocumentSchema(GenerateJsonSchema):
    """JSON Schema as the document writes it: no titles; a field with a default is nullable (null means absent),
    written as a type list where it can be."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def model_schema(self, schema):
        out = super().model_schema(schema)
        out.pop("title", None)
        return out

    def typed_dict_schema(self, schema):  # the answers (service/http/answers.py)
        out = super().typed_dict_schema(schema)
        out.pop("title", None)
        return out

    def nullable_schema(self, schema):
        return _or_null(self.generate_inner(schema["schema"]))

    def default_schema(self, schema):
        out = super().default_schema(schema)
        default = {k: out.pop(k) for k in ("default", "description") if k in out}
        return {**_or_null(out), **default}


def _or_null(schema: dict) -> dict:
    if schema.get("type") == "null" or "null" in (schema.get("type") if isinstance(schema.get("type"), list)
                                                  else ()):
        return schema
    if "const" in schema:
        rest = {k: v for k, v in schema.items() if k not in ("const", "type")}
        return {"enum": [schema["const"], None], **rest}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


@dataclass(frozen=True)
class Shapes:
    """The request models for one set of limits."""

    predict: type[Body]
    batch: type[Body]
    create_session: type[Body]
    generate: type[Body]
    completion: type[Body]

    @functools.cached_property
    def json_schemas(self) -> dict:
        """Each model's JSON Schema by name (those of nested models too), refs pointing at OpenAPI components."""
        models = [self.predict, self.batch, self.create_session, self.generate, self.completion]
        _, top = models_json_schema([(m, "validation") for m in models], schema_generator=DocumentSchema,
                                    ref_template="#/components/schemas/{model}")
        return top["$defs"]


def for_settings(settings: Settings) -> Shapes:
    """The request models for these settings' limits (built once per distinct set of limits)."""
    return _build(settings.max_body_bytes, settings.max_top_k, settings.max_generate_tokens, settings.max_batch_items,
                  settings.max_text_tokens)


@functools.lru_cache(maxsize=16)
def _build(max_body_bytes: int, max_top_k: int, max_generate_tokens: int, max_batch_items: int,
           max_text_tokens: int) -> Shapes:
    Text = Annotated[str, Field(min_length=1, max_length=max_body_bytes), Setting("NEXTWORD_MAX_BODY_BYTES"),  # noqa
                     AfterValidator(_text), _Schema({"pattern": text_pattern})]
    EmptyOrText = Annotated[str, Field(max_length=max_body_bytes), AfterValidator(_text_or_empty)]  # noqa: N806
    EmptyOrTextSchema = Literal[""] | Text  # noqa: N806 - how the document states EmptyOrText
    TopK = Integer(1, max_top_k, "NEXTWORD_MAX_TOP_K")  # noqa: N806
    MaxTokens = Integer(1, max_generate_tokens, "NEXTWORD_MAX_GENERATE_TOKENS")  # noqa: N806
    Seed = Integer(0, 2**63 - 1)  # noqa: N806
    Model = Name(description="A loaded model (GET /models); default: the service's default model, or the "  # noqa
                             "session's.")

    class TextRequest(Body):
        model_config = ConfigDict(json_schema_extra={  # what _empty_text_needs_prefix checks
            "if": {"properties": {"text": {"const": ""}}, "required": ["text"]},
            "then": {"properties": {"prefix": {"type": "string"}}, "required": ["prefix"]}})

        text: Annotated[EmptyOrText, BeforeValidator(_same, json_schema_input_type=EmptyOrTextSchema), Field(
            description=(
                "Raw text: the complete words before the next one, split the way the model's corpus was split "
                "(see the model's `text_convention`); each line break is an `<eos>`. At most "
                f"{max_text_tokens} tokens after splitting (NEXTWORD_MAX_TEXT_TOKENS; more is a 400 on `text`), "
                "and at least one word, except with `prefix`: then it may be empty, for the first word of a line "
                "or, with a session, for a word after what the session has read (nothing is written). With a "
                "session, the text is appended to the session's context."))]
        model: Model = None
        top_k: Annotated[TopK, Field(description="How many predictions the JSON response lists (default 10; "
                                                 "clipped to the vocabulary size).")] = 10
        session_id: Name(description="Continue this session: the text is fed after its state, and the new state is "
                                     "stored.") = None
        prefix: Annotated[str, Field(max_length=MAX_PREFIX_LENGTH, description=(
            "The characters typed so far of the next word: only vocabulary words that start with them are ranked "
            "(in the vocabulary's spelling), their probabilities renormalised over those words; `filter` in the "
            "answer says how many matched (0: an empty list) and the mass they had. Never fed to a session: send "
            "the word in `text` once it is complete. Empty: every word. The JSON answer only.")),
            AfterValidator(_prefix), _Schema({"pattern": prefix_pattern})] = None
        case_sensitive: Annotated[bool, Field(description=(
            "Match `prefix` case-sensitively (default: case-insensitively, `ja` finds January).")) ] = False
        words_only: Annotated[bool, Field(description=(
            "Rank only words a person would pick: no `<unk>`, `<eos>`, punctuation, or WikiText's `@-@` `@,@` "
            "`@.@`; probabilities renormalised over the words, their mass in `filter`. The JSON answer only (the "
            "octet-stream answer and `scores` are always the raw distribution)."))] = False

        _check = model_validator(mode="after")(_empty_text_needs_prefix)

    class PredictRequest(TextRequest):
        """The body of POST /predict."""

        scores: Annotated[bool, Field(description=(
            "Also give each token's probability given everything before it (`scores`): the session's context, or, "
            "without a session, the start of a line. Costs one model step per token."))] = False

    class BatchItem(TextRequest):
        """One item of POST /predict/batch: what /predict takes, with `if_version` for If-Match."""

        if_version: Annotated[Integer(0, 2**62), Field(description=(
            "As If-Match on /predict: the session's version this item expects (after the batch's earlier items "
            "on it)."))] = None

    class BatchRequest(Body):
        """The body of POST /predict/batch."""

        items: Annotated[list[BatchItem], Field(
            min_length=1, max_length=max_batch_items,
            description=f"At most {max_batch_items} items (NEXTWORD_MAX_BATCH_ITEMS). Items naming the same "
                        "session apply in item order."), Setting("NEXTWORD_MAX_BATCH_ITEMS")]

    class CreateSessionRequest(Body):
        """The body of POST /sessions (it may be omitted)."""

        model: Name(description="Default: the service's default model.") = None

    class GenerateRequest(Body):
        """The body of POST /sessions/{session_id}/generate."""

        text: Annotated[Text, Field(description=(
            "Prompt appended to the session before sampling (same rules as /predict's `text`). Without it, "
            "sampling continues from the session's last token (or from a line start for a new session)."))] = None
        max_tokens: Annotated[MaxTokens, Field(description=(
            f"Tokens to sample at most (default {min(32, max_generate_tokens)}; the ceiling is "
            "NEXTWORD_MAX_GENERATE_TOKENS, above it is a 400)."))] = min(32, max_generate_tokens)
        temperature: Annotated[Number, Field(gt=0, le=100, description=(
            "Default 1; at or below 1e-5 sampling is greedy."))] = 1.0
        top_k: Annotated[Integer(0, 1_000_000), Field(description=(
            "Sample among the k most likely words; 0 (default) = all."))] = 0
        top_p: Annotated[Number, Field(gt=0, le=1, description="Nucleus sampling mass; 1 (default) = all.")] = 1.0
        seed: Annotated[Seed, Field(description="Same seed, same session state and parameters: same words.")] = None
        stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH),
                                       AfterValidator(_stop_word), _Schema({"pattern": r"\S"})]],
                        Field(max_length=MAX_GENERATE_STOP, description=(
                            "Words that end the generation (not included in `text`)."))] = []

    class StreamOptions(Body):
        include_usage: Annotated[bool, Field(description="A last chunk with `usage` and no choices.")] = False

    neutral = "Accepted only at the value that changes nothing (OpenAI clients may send it)."
    OneStop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]  # noqa: N806
    Stops = Annotated[list[OneStop], Field(max_length=MAX_OPENAI_STOP)]  # noqa: N806

    class CompletionRequest(Body):
        """The body of POST /v1/completions: OpenAI's legacy completions request, as far as it is served."""

        model: Model = None
        prompt: Annotated[EmptyOrText, BeforeValidator(
            _one_prompt, json_schema_input_type=EmptyOrTextSchema | Annotated[list[EmptyOrTextSchema],
                                                                               Field(min_length=1, max_length=1)]),
            Field(description="A string, or a list of one string (n = 1; token ids are not supported). Read as "
                              f"/predict's `text` (at most {max_text_tokens} tokens, else a 400 on `prompt`). "
                              "Empty: start at the beginning of a line, or continue the session where it stands.")]
        max_tokens: Annotated[MaxTokens, Field(description=(
            f"Words to generate at most (default {min(16, max_generate_tokens)}; the ceiling is "
            "NEXTWORD_MAX_GENERATE_TOKENS, above it is a 400)."))] = min(16, max_generate_tokens)
        temperature: Annotated[Number, Field(ge=0, le=2, description="Default 1; 0 is greedy.")] = 1.0
        top_p: Annotated[Number, Field(ge=0, le=1, description=(
            "Nucleus sampling mass; 1 (default) = all; 0 = greedy."))] = 1.0
        stop: Annotated[Stops, BeforeValidator(_one_or_more, json_schema_input_type=OneStop | Stops),
                        Field(description=(
                "Up to 4. A stop that is one word as the model reads text ends the completion at that word (left "
                "out of `text`); line breaks are `<eos>`, which always ends it. A stop of several words never "
                "matches (the model generates whole words)."))] = []
        seed: Annotated[Seed, Field(description="Same seed, prompt and parameters: same completion.")] = None
        n: Annotated[Only(1, "one choice per request"), Field(description=neutral)] = 1
        best_of: Annotated[Only(1, "one candidate per request"), Field(description=neutral)] = 1
        frequency_penalty: Annotated[Only(0, "penalties are not supported"), Field(description=neutral)] = 0
        presence_penalty: Annotated[Only(0, "penalties are not supported"), Field(description=neutral)] = 0
        echo: Annotated[Only(False, "the prompt is not echoed"), Field(description=neutral)] = False
        logit_bias: Annotated[Only({}, "biases are not supported"), Field(description=neutral)] = None
        suffix: Annotated[Only(None, "insertion is not supported"), Field(description=neutral)] = None
        logprobs: Annotated[Integer(0, MAX_LOGPROBS), Field(description=(
            "Log-probabilities of the chosen tokens and this many alternatives per token (one more model step per "
            "token)."))] = None
        stream: Annotated[bool, Field(description=(
            "Server-Sent Events: `data: {chunk}` per token, then `data: [DONE]`."))] = False
        stream_options: Annotated[StreamOptions, Field(description=(
            "`include_usage`: a last chunk with `usage` and no choices."))] = None
        user: Name(256, description="Ignored.") = None
        session_id: Name(description=(
            "Not OpenAI's: continue this session (POST /sessions). The prompt and the generated words are "
            "committed to it as a generation commits; without it the completion runs on a temporary session that "
            "is deleted after it.")) = None

    return Shapes(PredictRequest, BatchRequest, CreateSessionRequest, GenerateRequest, CompletionRequest)

