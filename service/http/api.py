"""What each route declares about itself, in one decorator beside its code: its path and method, request shape,
answers (status, body per media type, headers), the domain errors it can raise, and whether it is open (no API
key). The Flask route is registered from the same declaration, so a route cannot exist undeclared; `openapi.py`
writes the document from `OPERATIONS`, and `auth.py` exempts `open_endpoints()`. Knows Flask's blueprints, not the
routes' work.

A route's docstring is its summary (first paragraph) and description (the rest, Markdown); `{name}` of a setting there (and in
`notes`) is written as the running service's value.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Blueprint

from service.errors import ServiceError

JSON, BINARY, SSE, TEXT = "application/json", "application/octet-stream", "text/event-stream", "text/plain"


@dataclass(frozen=True)
class Reply:
    """One answer of an operation: its status, what it means, its body by media type (a TypedDict of
    `answers.py`; `dict` for any JSON object; a string: a body that is not JSON, described), and its headers (names
    of the document's header components)."""

    status: int
    description: str
    body: dict[str, type | str] = field(default_factory=dict)
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    endpoint: str  # Flask's name for it: `blueprint.function`
    method: str
    path: str  # OpenAPI's form: /sessions/{session_id}
    operation_id: str
    tag: str
    summary: str
    description: str
    request: str | None  # the attribute of `shapes.Shapes` naming its body, if it takes one
    body_required: bool
    replies: tuple[Reply, ...]
    errors: tuple[type[ServiceError], ...]
    headers: tuple[str, ...]  # request headers it reads (If-Match)
    notes: dict[int, str]  # what an error status means here, beyond its usual description
    budget: bool  # costed against the work budget (service/budget.py) before any work
    open: bool  # served without an API key

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


OPERATIONS: list[Operation] = []  # every declared route, in declaration order (the document's order)


def route(bp: Blueprint, method: str, rule: str, *, operation_id: str, tag: str, replies: tuple[Reply, ...],
          request: str | None = None, body_required: bool = True, errors: tuple[type[ServiceError], ...] = (),
          headers: tuple[str, ...] = (), notes: dict[int, str] | None = None, budget: bool = False,
          open: bool = False, endpoint: str | None = None) -> Callable:  # noqa: A002 - the declaration's word
    """Registers the view on `bp` for `method` and `rule`, and declares it as an operation of the API."""

    def register(view: Callable) -> Callable:
        name = endpoint or view.__name__
        bp.add_url_rule(rule, name, view, methods=[method])
        summary, _, description = inspect.cleandoc(view.__doc__ or "").partition("\n\n")
        OPERATIONS.append(Operation(
            endpoint=f"{bp.name}.{name}", method=method.lower(),
            path=re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", (bp.url_prefix or "") + rule),
            operation_id=operation_id, tag=tag, summary=" ".join(summary.split()),
            description=re.sub(r"(?<!\n)\n(?!\n)", " ", description.strip()),  # paragraphs unwrapped
            request=request, body_required=body_required, replies=replies, errors=errors, headers=headers,
            notes=notes or {}, budget=budget, open=open))
        return view

    return register


def open_endpoints() -> set[str]:
    """The endpoints declared open: served without an API key."""
    return {op.endpoint for op in OPERATIONS if op.open}
