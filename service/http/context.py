"""What a request handler reaches for: the worker's settings, engine, request shapes, work budget and each model's
lexicon (the prefix index of service/suggest.py), stored on the Flask app."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from service.budget import Budget
from service.config import Settings
from service.engine import Engine
from service.http.shapes import Shapes, for_settings
from service.suggest import Lexicon


@dataclass
class Services:
    settings: Settings
    engine: Engine
    shapes: Shapes = field(init=False)  # the request models for the settings' limits, built with the app
    lexicons: dict[str, Lexicon] = field(init=False)  # by model name, built with the app (0.1 s for 33k words)
    budget: Budget = field(init=False)  # the work one request may ask for (service/budget.py)

    def __post_init__(self) -> None:
        self.shapes = for_settings(self.settings)
        self.lexicons = {name: Lexicon(m.bundle.words) for name, m in self.engine.models.items()}
        s = self.settings
        self.budget = Budget({name: m.bundle for name, m in self.engine.models.items()}, self.engine.default_model,
                             s.max_request_tokens, s.max_request_predictions, s.max_response_bytes)


def services() -> Services:
    return current_app.extensions["nextword"]
