"""service/http/browser.py: the playground page and Swagger UI are served from package files with no
outside URL, open without an API key, and CORS answers preflight and simple requests for the origins
in NEXTWORD_CORS_ORIGINS only. In-process (Flask test client) on the real Redis and tiny bundles.
"""

from __future__ import annotations

import re

import pytest

from service.config import ConfigError, Settings

ORIGIN = "http://app.example:3000"


@pytest.fixture
def make_client(make_app):
    return lambda **overrides: make_app(**overrides).test_client()


def _outside_urls(text: str) -> list[str]:
    """src/href/url() targets and fetched URLs that leave the page's own origin."""
    return re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+|url\(\s*["']?(?:https?:)?//[^)]+""", text)


def test_the_playground_and_its_assets_are_served_without_outside_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/playground/playground.js" in html and "/playground/playground.css" in html
    for asset, mimetype in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        response = client.get(f"/playground/{asset}")
        assert response.status_code == 200 and response.mimetype == mimetype, asset
        assert _outside_urls(response.get_data(as_text=True)) == [], asset
    assert _outside_urls(html) == []
    assert client.get("/playground/missing.js").status_code == 404


def test_docs_is_swagger_ui_on_the_openapi_document_from_packaged_files(client):
    assert client.get("/docs").status_code == 308  # to /docs/
    page = client.get("/docs/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '"url": "/openapi.json"' in html and "/docs/swagger-ui-bundle.js" in html
    assert '"validatorUrl": null' in html  # no badge fetched from the public validator
    assert _outside_urls(html) == []
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000 and b"SwaggerUIBundle" in bundle.data
    assert client.get("/docs/swagger-ui.css").status_code == 200


def test_pages_are_open_when_the_api_needs_a_key(make_client):
    client = make_client(api_keys=("sesame",))
    for path in ("/", "/playground/playground.js", "/docs/", "/docs/swagger-ui-bundle.js", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_no_cors_headers_by_default(client):
    preflight = client.options("/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    simple = client.get("/models", headers={"Origin": ORIGIN})
    assert simple.status_code == 200 and "Access-Control-Allow-Origin" not in simple.headers


def test_cors_preflight_and_requests_for_a_configured_origin(make_client):
    client = make_client(cors_origins=(ORIGIN, "https://other.example"), api_keys=("sesame",))
    preflight = client.options("/predict", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert preflight.status_code == 200  # no key on a preflight: browsers never send one
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert {"content-type", "authorization"} <= {
        h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in preflight.headers

    answer = client.post("/predict", json={"text": "the cat"},
                         headers={"Origin": ORIGIN, "Authorization": "Bearer sesame"})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in answer.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Request-ID", "X-Model", "Retry-After"} <= exposed
    assert "Origin" in answer.headers.get("Vary", "")

    refused = client.post("/predict", json={"text": "the cat"}, headers={"Origin": ORIGIN})
    assert refused.status_code == 401  # the page can read why: the error carries the CORS headers too
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert refused.get_json()["error"]["code"] == "unauthorized"

    stranger = client.options("/predict", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_cors_wildcard(make_client):
    client = make_client(cors_origins=("*",))
    response = client.get("/models", headers={"Origin": "https://anywhere.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://anywhere.example"  # reflected, Vary: Origin
    assert "Origin" in response.headers["Vary"]


def test_cors_origins_setting():
    assert Settings.from_env({}).cors_origins == ()
    env = {"NEXTWORD_CORS_ORIGINS": " https://a.example , http://localhost:3000/ ,,"}
    assert Settings.from_env(env).cors_origins == ("https://a.example", "http://localhost:3000")
    assert Settings.from_env({"NEXTWORD_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    for bad in ("a.example", "https://a.example/path", "ftp://a.example", "https://user@a.example"):
        with pytest.raises(ConfigError, match="NEXTWORD_CORS_ORIGINS"):
            Settings.from_env({"NEXTWORD_CORS_ORIGINS": bad})
