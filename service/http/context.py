"""What a request handler reaches for: the worker's settings and engine, stored on the Flask app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from service.config import Settings
from service.engine import Engine


@dataclass
class Services:
    settings: Settings
    engine: Engine


def services() -> Services:
    return current_app.extensions["nextword"]
