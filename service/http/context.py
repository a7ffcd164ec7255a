"""What a request handler reaches for: the worker's settings, engine and request shapes, stored on the Flask app."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from service.config import Settings
from service.engine import Engine
from service.http.shapes import Shapes, for_settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    shapes: Shapes = field(init=False)  # the request models for the settings' limits, built with the app

    def __post_init__(self) -> None:
        self.shapes = for_settings(self.settings)


def services() -> Services:
    return current_app.extensions["nextword"]
