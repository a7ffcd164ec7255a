"""What a browser gets: the playground page at `/` (plain files in service/static/, no build step),
Swagger UI at `/docs` pointed at /openapi.json (its files ship in the flask-swagger-ui wheel: no
CDN), and CORS headers for the origins in NEXTWORD_CORS_ORIGINS. Knows Flask, not models or Redis.

The page and its assets are open endpoints (`PAGES`, which auth.py exempts): the page asks the user for
an API key and sends it only with its API calls.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask
from flask_cors import CORS
from flask_swagger_ui import get_swaggerui_blueprint

from service.config import Settings

STATIC = Path(__file__).resolve().parent.parent / "static"
bp = Blueprint("playground", __name__, static_folder=STATIC, static_url_path="/playground")

# Response headers a cross-origin page may read (the rest are hidden from its scripts by the browser).
EXPOSED_HEADERS = ["X-Request-ID", "X-Model", "X-Session-Tokens", "X-Vocab-Size", "X-Dtype", "Retry-After",
                   "Location", "ETag"]
PAGES = ("playground.index", "playground.static", "docs.show")  # for people, served without an API key
CORS_MAX_AGE_S = 600  # browsers cache a preflight this long; origins change only with a restart


@bp.get("/")
def index():
    return bp.send_static_file("playground.html")


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(get_swaggerui_blueprint(
        "/docs", "/openapi.json", blueprint_name="docs",
        config={"app_name": "nextword API", "validatorUrl": None, "tryItOutEnabled": True,
                "persistAuthorization": True, "displayRequestDuration": True}))
    if settings.cors_origins:
        # No credentials mode: API keys travel in the Authorization header, which preflight allows.
        CORS(app, origins=list(settings.cors_origins), expose_headers=EXPOSED_HEADERS, max_age=CORS_MAX_AGE_S,
             supports_credentials=False)
