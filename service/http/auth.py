"""Bearer API keys: who may call the API, and which sessions are whose. Knows Flask, not Redis.

Keys are compared as SHA-256 digests with `hmac.compare_digest` against every configured key (no
early exit). The digest, never the key, is what the rest of the service sees (`g.owner`), so a
session in Redis is owned by a hash. Without keys the service is open and every owner is "".
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask, g, request

from service.http import api, browser
from service.http.protocol import Unauthorized


def open_endpoints() -> set[str]:
    """What is served without a key: the operations declared open (service/http/api.py) and the pages for people,
    which ask for a key themselves (browser.PAGES)."""
    return api.open_endpoints() | set(browser.PAGES)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def init_app(app: Flask, keys: tuple[str, ...]) -> None:
    digests = [key_digest(k).encode() for k in keys]
    open_ = open_endpoints()

    @app.before_request
    def authenticate() -> None:
        g.owner = ""
        # OPTIONS is a CORS preflight or Flask's automatic answer: it carries no key and reaches no data
        if not digests or request.endpoint in open_ or request.endpoint is None or request.method == "OPTIONS":
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send `Authorization: Bearer <API key>`",
                               headers={"WWW-Authenticate": 'Bearer realm="nextword"'})
        presented = key_digest(token.strip()).encode()
        match = False
        for digest in digests:
            match |= hmac.compare_digest(presented, digest)
        if not match:
            raise Unauthorized("unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        g.owner = presented.decode()
