"""The request shapes (service/http/shapes.py) read through service/http/validation.py: the served document's
request schemas accept exactly the bodies the service accepts, and a refusal names the field at fault."""

from __future__ import annotations

import jsonschema
import pytest

from service.config import Settings
from service.errors import InvalidInput
from service.http.openapi import spec
from service.http.shapes import for_settings
from service.http.validation import parse

SETTINGS = Settings(max_top_k=7, max_generate_tokens=9, max_batch_items=3)
SHAPES = for_settings(SETTINGS)
MODELS = {"PredictRequest": SHAPES.predict, "BatchRequest": SHAPES.batch, "CreateSessionRequest": SHAPES.create_session,
          "GenerateRequest": SHAPES.generate, "CompletionRequest": SHAPES.completion}

# (schema, body): each is accepted by both the schema and the validator, or by neither
BODIES = [
    ("PredictRequest", {"text": "the cat"}),
    ("PredictRequest", {"text": "the", "top_k": 3.0}),  # JSON has one number type
    ("PredictRequest", {"text": "the", "top_k": 2.5}),
    ("PredictRequest", {"text": "the", "top_k": True}),
    ("PredictRequest", {"text": "the", "top_k": "3"}),
    ("PredictRequest", {"text": "the", "top_k": 7}),
    ("PredictRequest", {"text": "the", "top_k": 8}),
    ("PredictRequest", {"text": "the", "top_k": None, "model": None, "session_id": None, "scores": None}),
    ("PredictRequest", {"text": None}),
    ("PredictRequest", {"text": " \t\n"}),
    ("PredictRequest", {"text": "the\x00cat"}),
    ("PredictRequest", {"text": "\u200b\ufe0f"}),
    ("PredictRequest", {"text": "the", "scores": 1}),
    ("PredictRequest", {"text": "the", "model": ""}),
    ("PredictRequest", {"text": "the", "model": "x" * 201}),
    ("PredictRequest", {"text": "the", "if_version": 1}),
    ("PredictRequest", {"text": "", "prefix": "Ja"}),
    ("PredictRequest", {"text": "", "prefix": ""}),
    ("PredictRequest", {"text": ""}),
    ("PredictRequest", {"text": "", "prefix": None}),
    ("PredictRequest", {"text": "the", "prefix": "x" * 100, "case_sensitive": True, "words_only": True}),
    ("PredictRequest", {"text": "the", "prefix": "x" * 101}),
    ("PredictRequest", {"text": "the", "prefix": "a b"}),
    ("PredictRequest", {"text": "the", "prefix": "a\x00"}),
    ("PredictRequest", {"text": "the", "prefix": "\u200d"}),
    ("PredictRequest", {"text": "the", "prefix": "Ja\u0301n"}),
    ("PredictRequest", {"text": "the", "prefix": 1}),
    ("PredictRequest", {"text": "the", "words_only": "true"}),
    ("BatchRequest", {"items": [{"text": "", "prefix": "a", "session_id": "s"}, {"text": "b", "prefix": "c"}]}),
    ("BatchRequest", {"items": [{"text": "a"}, {"text": ""}]}),
    ("BatchRequest", {"items": [{"text": "a"}, {"text": "b", "session_id": "s", "if_version": 0, "top_k": 7}]}),
    ("BatchRequest", {"items": []}),
    ("BatchRequest", {"items": [{"text": "a"}] * 4}),
    ("BatchRequest", {"items": ["a"]}),
    ("BatchRequest", {"items": [{"text": "a", "scores": True}]}),
    ("BatchRequest", {"items": [{"text": "a", "if_version": -1}]}),
    ("BatchRequest", {"items": [{"text": "a", "if_version": None}]}),
    ("CreateSessionRequest", {}),
    ("CreateSessionRequest", {"model": 5}),
    ("GenerateRequest", {}),
    ("GenerateRequest", {"temperature": 0}),
    ("GenerateRequest", {"temperature": 1e-9, "top_p": 1, "top_k": 0, "seed": 2**63 - 1, "max_tokens": 9}),
    ("GenerateRequest", {"top_p": 0}),
    ("GenerateRequest", {"max_tokens": 10}),
    ("GenerateRequest", {"seed": 2**63}),
    ("GenerateRequest", {"stop": [" .", "and"]}),
    ("GenerateRequest", {"stop": [" "]}),
    ("GenerateRequest", {"stop": ["x" * 101]}),
    ("GenerateRequest", {"stop": ["x"] * 17}),
    ("GenerateRequest", {"stop": "."}),
    ("GenerateRequest", {"text": ""}),
    ("CompletionRequest", {"prompt": ""}),
    ("CompletionRequest", {"prompt": ["the cat"]}),
    ("CompletionRequest", {"prompt": [""]}),
    ("CompletionRequest", {"prompt": ["a", "b"]}),
    ("CompletionRequest", {"prompt": [1]}),
    ("CompletionRequest", {"prompt": "  "}),
    ("CompletionRequest", {"prompt": None}),
    ("CompletionRequest", {"prompt": "a", "n": 1.0, "best_of": 1, "echo": False, "frequency_penalty": 0.0,
                           "presence_penalty": 0, "logit_bias": {}, "suffix": None, "user": "u", "stream": True,
                           "stream_options": {"include_usage": True}, "logprobs": 5, "temperature": 2, "top_p": 0}),
    ("CompletionRequest", {"prompt": "a", "n": 2}),
    ("CompletionRequest", {"prompt": "a", "n": True}),
    ("CompletionRequest", {"prompt": "a", "echo": 0}),
    ("CompletionRequest", {"prompt": "a", "presence_penalty": 0.5}),
    ("CompletionRequest", {"prompt": "a", "logit_bias": {"5": 1}}),
    ("CompletionRequest", {"prompt": "a", "suffix": ""}),
    ("CompletionRequest", {"prompt": "a", "stop": "\n"}),
    ("CompletionRequest", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
    ("CompletionRequest", {"prompt": "a", "stop": [""]}),
    ("CompletionRequest", {"prompt": "a", "stream_options": {"include_usage": 1}}),
    ("CompletionRequest", {"prompt": "a", "stream_options": {"other": True}}),
    ("CompletionRequest", {"prompt": "a", "logprobs": 6}),
    ("CompletionRequest", {"prompt": "a", "temperature": 2.5}),
    ("CompletionRequest", {"prompt": "a", "user": "u" * 257}),
    ("CompletionRequest", {"prompt": "a", "top_k": 5}),
]


@pytest.fixture(scope="module")
def components() -> dict:
    return spec(SETTINGS)["components"]


def _accepted(model, body: dict) -> bool:
    try:
        parse(model, body)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("name, body", BODIES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BODIES)])
def test_the_document_accepts_what_the_service_accepts(components, name, body):
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    assert by_schema is _accepted(MODELS[name], body)


def test_the_table_holds_both_outcomes_for_every_shape():
    for name, model in MODELS.items():
        outcomes = {_accepted(model, body) for n, body in BODIES if n == name}
        assert outcomes == {True, False}, name


# (shape, body, field, words the message holds)
ERRORS = [
    ("predict", {"text": "the", "top_k": 8}, "top_k", ["`top_k`", "at most 7", "NEXTWORD_MAX_TOP_K"]),
    ("predict", {"text": "the", "top_k": "8"}, "top_k", ["`top_k`", "integer"]),
    ("predict", {"top_k": 0}, "text", ["`text`", "required"]),  # fields in order
    ("predict", {"text": "", "nope": 1}, "nope", ["unknown field `nope`", "allowed: case_sensitive, model, prefix, scores"]),  # unknown first
    ("predict", {"text": "\u200b"}, "text", ["`text`", "no words"]),
    ("batch", {"items": [{"text": "a"}] * 4}, "items", ["`items`", "4 items", "limit is 3",
                                                        "NEXTWORD_MAX_BATCH_ITEMS"]),
    ("batch", {"items": []}, "items", ["`items`", "empty"]),
    ("batch", {"items": [{"text": "a"}, "b", {"nope": 1}]}, "items[1]", ["`items[1]`", "object"]),
    ("batch", {"items": [{"text": "a"}, {"text": "b"}, {"top_k": 0, "nope": 1}]}, "items[2].nope",
     ["unknown field `items[2].nope`", "if_version"]),
    ("batch", {"items": [{"text": "a"}, {"text": "b"}, {"text": "c", "top_k": 0}]}, "items[2].top_k",
     ["`items[2].top_k`", "at least 1"]),
    ("generate", {"max_tokens": 10}, "max_tokens", ["`max_tokens`", "at most 9", "NEXTWORD_MAX_GENERATE_TOKENS"]),
    ("generate", {"temperature": 0}, "temperature", ["`temperature`", "strictly greater than 0"]),
    ("generate", {"stop": ["a", " "]}, "stop", ["`stop[1]`", "blank"]),
    ("completion", {"prompt": ["a", "b"]}, "prompt", ["`prompt`", "list of one string"]),
    ("completion", {"prompt": "a", "n": 2}, "n", ["`n`", "must be 1", "one choice"]),
    ("completion", {"prompt": "a", "logit_bias": {"5": 1}}, "logit_bias", ["`logit_bias`", "biases"]),
    ("completion", {"prompt": "a", "stream_options": {"other": 1}}, "stream_options",
     ["unknown field `stream_options.other`", "allowed: include_usage"]),
    ("completion", {"prompt": "a", "stream_options": {"include_usage": "yes"}}, "stream_options",
     ["`stream_options.include_usage`", "true or false"]),
]


@pytest.mark.parametrize("shape, body, field, words", ERRORS, ids=[f"{e[0]}-{e[2]}-{i}" for i, e in enumerate(ERRORS)])
def test_a_refusal_names_the_field(shape, body, field, words):
    with pytest.raises(InvalidInput) as e:
        parse(getattr(SHAPES, shape), body)
    assert e.value.field == field
    for word in words:
        assert word in e.value.message


def test_null_is_the_default_and_values_come_out_as_their_types():
    req = parse(SHAPES.generate, {"temperature": None, "top_k": 3.0, "stop": [" . "], "seed": None})
    assert (req.temperature, req.top_k, req.stop, req.seed, req.max_tokens) == (1.0, 3, ["."], None, 9)
    assert type(req.top_k) is int
    req = parse(SHAPES.completion, {"prompt": ["the cat"], "stop": "x", "temperature": 1})
    assert (req.prompt, req.stop, type(req.temperature)) == ("the cat", ["x"], float)


def test_models_are_built_once_per_set_of_limits():
    assert for_settings(Settings(max_top_k=7, max_generate_tokens=9, max_batch_items=3)) is SHAPES
    assert for_settings(Settings(max_top_k=8)).predict is not SHAPES.predict
