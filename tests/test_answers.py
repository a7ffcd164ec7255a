"""service/http/answers.py: what the routes build is what the document declares for them. Each answer of a real app
is checked against its operation's declared schema, closed (no key beyond the declared ones), so a builder and its
TypedDict cannot drift apart in either direction."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from service.http import answers
from service.http.api import JSON, OPERATIONS
from service.http.openapi import spec


def _closed(node):
    """Every object schema that lists its properties, with `additionalProperties: false`."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    return [_closed(v) for v in node] if isinstance(node, list) else node


@pytest.fixture(scope="module")
def closed_document() -> dict:
    document = spec()
    return {**document, "components": {**document["components"],
                                       "schemas": _closed(copy.deepcopy(document["components"]["schemas"]))}}


def _check(document: dict, path: str, method: str, response) -> None:
    """The answer against the schema its operation declares for its status (or the error schema of its surface)."""
    declared = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = declared["content"][JSON]["schema"]
    errors = sorted(Draft202012Validator({**document, **schema}).iter_errors(response.json), key=str)
    assert not errors, f"{method.upper()} {path} {response.status_code}: {errors[0].message} at {list(errors[0].path)}"


def test_every_answer_is_what_its_operation_declares(client, closed_document):
    session = client.post("/sessions", json={})
    _check(closed_document, "/sessions", "post", session)
    sid = session.json["session_id"]
    calls = [
        ("/predict", "post", {"json": {"text": "the cat", "session_id": sid, "scores": True}}),
        ("/predict", "post", {"json": {"text": "the", "prefix": "a", "words_only": True}}),
        ("/predict", "post", {"json": {"text": "the", "top_k": 0}}),  # an error
        ("/predict/batch", "post", {"json": {"items": [{"text": "the"}, {"text": "a", "session_id": "nope"}]}}),
        ("/sessions/{session_id}", "get", {}),
        ("/sessions/{session_id}/generate", "post", {"json": {"max_tokens": 3, "seed": 1}}),
        ("/models", "get", {}),
        ("/models/{name}", "get", {}),
        ("/models/{name}/vocab", "get", {}),
        ("/models/{name}", "get", {"name": "nope"}),  # an error
        ("/v1/models", "get", {}),
        ("/v1/models/{name}", "get", {}),
        ("/v1/completions", "post", {"json": {"prompt": "the", "max_tokens": 3, "logprobs": 2, "seed": 1}}),
        ("/v1/completions", "post", {"json": {"prompt": "the", "max_tokens": 0}}),  # an error in OpenAI's shape
        ("/v1/chat/completions", "post", {"json": {}}),
        ("/healthz", "get", {}),
        ("/readyz", "get", {}),
    ]
    name = client.get("/models").json["default"]
    seen = set()
    for path, method, kwargs in calls:
        url = path.format(session_id=sid, name=kwargs.pop("name", name))
        response = getattr(client, method)(url, **kwargs)
        assert response.status_code < 500, (url, response.json)
        _check(closed_document, path, method, response)
        seen.add((path, method))
    json_answers = {(op.path, op.method) for op in OPERATIONS for r in op.replies if JSON in r.body
                    and r.body[JSON] is not dict}
    assert json_answers <= seen | {("/sessions", "post")}, json_answers - seen  # every declared JSON answer is tried


def test_the_builders_are_annotated_with_the_declarations():
    """The hot path builds plain dicts (no validation per request): its functions say which declaration they build."""
    from service.http import responses
    assert responses.session_view.__annotations__["return"] == "answers.Session"
    assert responses.prediction_view.__annotations__["return"] == "answers.Prediction"
    assert set(answers.Prediction.__required_keys__) == {"model", "predictions", "tokens", "unknown"}
    assert set(answers.Prediction.__optional_keys__) == {"filter", "scores", "session"}
