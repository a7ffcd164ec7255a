"""Reads a request body and validates it against its shape (`shapes.py`), and checks its cost against the work
budget; every failure is a 400 that names the field. Knows Flask's request and pydantic's errors, nothing of what
the fields mean."""

from __future__ import annotations

import json
import typing

from flask import request
from pydantic import BaseModel, ValidationError

from service.budget import Budget, Cost
from service.errors import Input, InvalidInput
from service.http.protocol import InvalidField, InvalidJSON, UnsupportedMediaType
from service.http.shapes import M, Setting

# What a pydantic error type says, after the field's name (`top_k` must be at most 1000).
_PHRASES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be strictly greater than {gt}",
    "less_than_equal": "must be at most {le}",
    "string_too_long": "is longer than {max_length} characters",
    "string_too_short": "must be at least {min_length} characters long",
    "too_short": "must have at least {min_length} items",
    "too_long": "has {actual_length} items; the limit is {max_length}",
}
_LIMITS = {"less_than_equal", "string_too_long", "too_long"}  # failures of a limit that a setting may set


def json_body() -> dict:
    """The request's JSON object; 415 for another content type, 400 for bad UTF-8 or JSON or a non-object."""
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
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse(shape: type[M], body: dict) -> M:
    """The body as its shape, or an InvalidField naming the first field at fault."""
    try:
        return shape.model_validate(body)
    except ValidationError as e:
        raise _invalid(shape, e.errors(include_url=False, include_input=False)) from None


def within_budget(budget: Budget, cost: Cost, tokens: str, predictions: str, answer: str | None = None,
                  what: str = "this request") -> None:
    """`budget.check`; a refusal names this endpoint's field that asks for the quantity past its limit (the
    tokens read or generated, the words listed, the answer's bytes: by default the predictions' field)."""
    try:
        budget.check(cost, what)
    except InvalidInput as e:
        fields = {Input.TOKENS: tokens, Input.PREDICTIONS: predictions, Input.ANSWER: answer or predictions}
        raise InvalidField(e.message, field=fields[e.input]) from None


def _invalid(shape: type[BaseModel], errors: list[dict]) -> InvalidField:
    """The error a client sees first, as the fields are read: an object's unknown fields before its fields, which
    come in declaration order, and a batch's items in item order."""
    errors = [{**e, "loc": (*e["loc"], e["ctx"]["field"])} if "field" in e.get("ctx", {}) else e
              for e in errors]  # a check of a whole object names its field (shapes.invalid)
    ranked = []
    for n, error in enumerate(errors):
        field, holder, info = _locate(shape, error["loc"])
        ranked.append((holder, error["type"] != "extra_forbidden", n, field, info, error))
    holder, _, _, field, info, error = min(ranked, key=lambda r: r[:3])
    path = _path(error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(_model_at(shape, error["loc"][:-1]).model_fields))
        return InvalidField(f"unknown field `{path}`; allowed: {allowed}", field=field)
    ctx = error.get("ctx", {})
    if error["type"] == "invalid":  # one of the checks in shapes.py
        message = f"`{path}` {error['msg']}"
    elif error["type"] in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        message = f"`{path}` must not be empty"
    elif error["type"] in _PHRASES:
        message = f"`{path}` {_PHRASES[error['type']].format(**ctx)}"
    else:
        message = f"`{path}`: {error['msg']}"
    setting = next((m.env for m in (info.metadata if info else ()) if isinstance(m, Setting)), None)
    if setting and error["type"] in _LIMITS:
        message += f" ({setting})"
    return InvalidField(message, field=field)


def _locate(shape: type[BaseModel], loc: tuple) -> tuple[str | None, tuple, object]:
    """(the field an error names, the location of the object holding that field, the field's FieldInfo or None).
    The field is a top-level field, or `items[3].text` inside a list of objects; inside a list of strings or a
    nested object the error names the list or the object (`stop`, `stream_options`)."""
    model, field, holder, info, i = shape, "", (), None, 0
    while i < len(loc) and isinstance(loc[i], str):
        field += f".{loc[i]}" if field else loc[i]
        info = model.model_fields.get(loc[i])
        i += 1
        item = _list_item_model(info.annotation) if info is not None else None
        if item is None or i >= len(loc) or not isinstance(loc[i], int):
            break
        field, holder, model, i = f"{field}[{loc[i]}]", loc[:i + 1], item, i + 1
    return field or None, holder, info


def _list_item_model(annotation) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _model_at(shape: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model of the object at `loc` (a list of objects' item, or a nested object)."""
    model = shape
    for part in loc:
        if isinstance(part, str):
            annotation = model.model_fields[part].annotation
            model = _list_item_model(annotation) or annotation
    return model


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
