"""GET /openapi.json: a valid OpenAPI 3.1 document that covers every route, and that a real server
under gunicorn honours, as checked by a bounded `schemathesis run --checks all`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from service.http.answers import NOT_A_CHAT_MODEL
from service.http.errors import ERROR_TYPES
from service.http.openapi import spec

SCHEMATHESIS_SEED = int(os.environ.get("NEXTWORD_SCHEMATHESIS_SEED", "20240601"))  # fixed: a CI run is repeatable
SCHEMATHESIS_EXAMPLES = int(os.environ.get("NEXTWORD_SCHEMATHESIS_EXAMPLES", "15"))
API_KEY = "schemathesis-key"

# 413 is how a body past the size limit is rejected before it is read (schemathesis' default list of
# rejection statuses lacks it); nothing else is relaxed.
SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "406", "409", "413", "415"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
"""


@pytest.fixture
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def test_document_is_valid_openapi_31(document):
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.partition(".")[0] in ("playground", "docs"):
            continue  # pages for people (service/http/browser.py), not API operations
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


def test_every_route_is_documented_and_nothing_else(app, document):
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    assert documented == _routes(app)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"] and operation["responses"], (path, method)
            assert "405" in operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                    schema = response["content"]["application/json"]["schema"]
                    if not path.startswith("/v1/"):
                        assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
                    elif status in ("408", "413"):  # the HTTP worker's answers, before the app: either shape
                        assert schema == {"oneOf": [{"$ref": "#/components/schemas/OpenAIError"},
                                                    {"$ref": "#/components/schemas/Error"}]}, (path, method, status)
                    else:  # OpenAI's errors under /v1/
                        assert schema == {"$ref": "#/components/schemas/OpenAIError"}, (path, method, status)


def test_statuses_and_media_types(document):
    paths = document["paths"]
    predict = paths["/predict"]["post"]["responses"]
    assert set(predict) == {"200", "400", "401", "404", "405", "406", "408", "409", "412", "413", "415", "429", "503",
                            "507"}
    assert set(predict["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert {"X-Model", "X-Vocab-Size", "ETag"} <= set(predict["200"]["headers"])
    generate = paths["/sessions/{session_id}/generate"]["post"]
    assert set(generate["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "404", "409", "412", "429", "503"} <= set(generate["responses"])
    assert [p["name"] for p in generate["parameters"]] == ["session_id", "If-Match"]
    assert set(paths["/predict/batch"]["post"]["responses"]) >= {"200", "400", "413", "429", "503"}
    assert "201" in paths["/sessions"]["post"]["responses"]
    assert "204" in paths["/sessions/{session_id}"]["delete"]["responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    schemas = document["components"]["schemas"]
    for shape, extra in (("Error", set()), ("OpenAIError", {NOT_A_CHAT_MODEL})):  # /v1/chat/completions' own code
        detail = schemas[shape]["properties"]["error"]["$ref"].rpartition("/")[2]
        assert set(schemas[detail]["properties"]["code"]["enum"]) == {e.code for e in ERROR_TYPES} | extra


def test_request_bodies_are_closed_and_complete(document):
    schemas = document["components"]["schemas"]
    fields = {"PredictRequest": {"text", "model", "top_k", "session_id", "scores", "prefix", "case_sensitive",
                                 "words_only"},
              "BatchRequest": {"items"},
              "CreateSessionRequest": {"model"},
              "GenerateRequest": {"text", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop"}}
    for name, expected in fields.items():
        assert schemas[name]["additionalProperties"] is False, name
        assert set(schemas[name]["properties"]) == expected, name
    assert schemas["PredictRequest"]["required"] == ["text"]


def test_security_scheme_and_open_endpoints(document):
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearer": []}]
    for path, item in document["paths"].items():
        for operation in item.values():
            is_open = path in ("/healthz", "/readyz", "/metrics", "/openapi.json")
            assert (operation.get("security") == []) is is_open, path
            assert ("401" in operation["responses"]) is not is_open, path


def test_limits_are_the_running_services(make_settings):
    doc = spec(make_settings(max_top_k=7, max_generate_tokens=9, max_body_bytes=4096))
    schemas = doc["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["top_k"]["maximum"] == 7
    assert schemas["GenerateRequest"]["properties"]["max_tokens"]["maximum"] == 9
    assert schemas["GenerateRequest"]["properties"]["text"]["maxLength"] == 4096
    empty, text = schemas["PredictRequest"]["properties"]["text"]["anyOf"]  # "" (with `prefix`), or a text
    assert empty == {"const": "", "type": "string"} and text["maxLength"] == 4096


@pytest.mark.parametrize("text", ["a", "  the cat ", "!", "\u0301", "\U0001F600", "\ue000", "x\u200b", "\t\n\r ",
                                  " ", "\u200b", "\ufe0f", "\u0007\u200d", "\u2028", "a\x00", "\x00", "\U000E0001"])
def test_text_pattern_is_what_the_server_accepts(client, document, text):
    """The schema's `text` pattern matches exactly the texts /predict reads (it cannot say "at most 512
    tokens", which its description states instead)."""
    pattern = document["components"]["schemas"]["PredictRequest"]["properties"]["text"]["anyOf"][1]["pattern"]
    response = client.post("/predict", json={"text": text})
    assert response.status_code in (200, 400)
    assert (re.search(pattern, text) is not None) is (response.status_code == 200), response.json


def test_schemathesis_finds_nothing(service_factory, tmp_path):
    """Every check of a bounded schemathesis run against the real service (with API keys on, so the
    auth checks mean something)."""
    # The work budget sums over fields (items x top_k, ...), which no schema can state: room enough that a request
    # the schemas allow is never refused for it (tests/test_budget.py covers the budget).
    service = service_factory(workers=1, NEXTWORD_API_KEYS=API_KEY, NEXTWORD_MAX_STREAMS="2",
                              NEXTWORD_MAX_REQUEST_TOKENS="10000000", NEXTWORD_MAX_REQUEST_PREDICTIONS="10000000",
                              NEXTWORD_MAX_RESPONSE_BYTES=str(1 << 30))
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [binary, "--config-file", str(config), "--no-color", "run", f"{service.url}/openapi.json",
               "--checks", "all", "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--workers", "1",
               "--seed", str(SCHEMATHESIS_SEED), "--generation-database", "none", "--request-timeout", "30",
               "--header", f"Authorization: Bearer {API_KEY}", "--report", "junit",
               "--report-junit-path", str(tmp_path / "schemathesis.xml")]
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    print(output[-20000:])
    print(f"schemathesis took {elapsed:.1f} s")
    assert run.returncode == 0, output[-12000:]
    assert "unhandled error" not in service.log() and "Traceback" not in service.log()
