"""The OpenAPI 3.1 document served at /openapi.json."""


def spec() -> dict:
    return {"openapi": "3.1.0", "info": {"title": "nextword", "version": "0.1.0"}, "paths": {}}
