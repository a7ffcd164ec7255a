"""Request bodies the JSON decoder cannot take (service/http/validation.py): a clear 400, never a 500."""

from __future__ import annotations

import logging

import pytest

DEPTH = 100_000


@pytest.fixture
def big_body_client(make_app):
    return make_app(max_body_bytes=1 << 20).test_client()


@pytest.mark.parametrize("body", [
    "[" * DEPTH + "]" * DEPTH,
    '{"text": ' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "}",
    '{"text": "the", "stop": ' + "[" * DEPTH + "]" * DEPTH + "}",
    "[" * DEPTH,  # unterminated as well as deep
], ids=["array", "object", "in-a-field", "unterminated"])
@pytest.mark.parametrize("path", ["/predict", "/sessions"])
def test_any_nesting_depth_is_400_invalid_json(big_body_client, caplog, body, path):
    with caplog.at_level(logging.INFO):
        response = big_body_client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_moderate_nesting_still_parses_and_is_checked_field_by_field(big_body_client):
    response = big_body_client.post("/predict", json={"text": "the", "stop": [[["x"]]]})
    assert response.status_code == 400
    assert response.json["error"] == {"code": "invalid_input", "field": "stop",
                                      "message": response.json["error"]["message"]}
