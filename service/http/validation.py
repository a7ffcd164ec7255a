"""Reads and checks request bodies; every failure names the field. Knows Flask's request, nothing else."""

from __future__ import annotations

import json
import math

from flask import request

from service.errors import InvalidInput, InvalidJSON, UnsupportedMediaType
from service.tokenizer import has_word

_MISSING = object()


def json_body(allowed: set[str]) -> dict:
    """The request's JSON object; 415 for another content type, 400 for bad UTF-8/JSON or unknown fields."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(f"send the body as application/json, not {request.mimetype or 'nothing'!r}")
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise InvalidJSON(f"body is not valid JSON: {e}") from None
    except RecursionError:  # the decoder recurses per nesting level; no field of ours nests more than twice
        raise InvalidJSON("body is nested too deeply to parse") from None
    if not isinstance(body, dict):
        raise InvalidJSON("body must be a JSON object")
    for name in body:
        if name not in allowed:
            raise InvalidInput(f"unknown field `{name}`; allowed: {', '.join(sorted(allowed))}", field=name)
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def string(body: dict, name: str, required: bool = False, max_length: int = 1 << 20, words: bool = False):
    """A string field: not blank, no NUL, at most max_length; with `words`, holding at least one word."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidInput(f"`{name}` is required", field=name)
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"`{name}` must be a string", field=name)
    if not value.strip():
        raise InvalidInput(f"`{name}` must not be empty", field=name)
    if len(value) > max_length:
        raise InvalidInput(f"`{name}` is longer than {max_length} characters", field=name)
    if "\x00" in value:
        raise InvalidInput(f"`{name}` contains a NUL character", field=name)
    if words and not has_word(value):
        raise InvalidInput(f"`{name}` has no words", field=name)
    return value


def boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"`{name}` must be true or false", field=name)
    return value


def integer(body: dict, name: str, default: int | None, low: int, high: int, high_hint: str = "") -> int | None:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, float) and value.is_integer():  # JSON has one number type: 3.0 is the integer 3
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"`{name}` must be an integer", field=name)
    if value < low:
        raise InvalidInput(f"`{name}` must be at least {low}", field=name)
    if value > high:
        raise InvalidInput(f"`{name}` must be at most {high}{high_hint}", field=name)
    return value


def number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"`{name}` must be a number", field=name)
    if (value <= low) if low_open else (value < low):
        raise InvalidInput(f"`{name}` must be {'strictly greater than' if low_open else 'at least'} {low}",
                           field=name)
    if value > high:
        raise InvalidInput(f"`{name}` must be at most {high}", field=name)
    return float(value)


def string_list(body: dict, name: str, max_items: int, max_length: int = 100) -> list[str]:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidInput(f"`{name}` must be a list of non-empty strings", field=name)
    if len(value) > max_items:
        raise InvalidInput(f"`{name}` has more than {max_items} items", field=name)
    if any(len(v) > max_length for v in value):
        raise InvalidInput(f"`{name}` items must be at most {max_length} characters", field=name)
    return [v.strip() for v in value]
