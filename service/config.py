"""Every setting of the service, read from the environment in one place. Knows nothing else.

Each field is read from the variable NEXTWORD_<FIELD> (REDIS_URL and PROMETHEUS_MULTIPROC_DIR keep their
customary names). pydantic parses and range-checks the values; a value is stripped first, and a blank one
means the default. Any failure is one ConfigError naming the variable, in the words of `_WORDING`.
`Settings(...)` holds exactly its arguments (tests and the OpenAPI document build one); only `from_env`
reads the environment. pydantic takes an integer written `3.0`, and a boolean written `t`, `y`, `f` or `n`.

Why pydantic and not pydantic-settings (2.16): its environment source matches variable
names case-insensitively (`nextword_workers=5` was read as NEXTWORD_WORKERS), and with `case_sensitive=True`
in the field's own case (it then looked for `NEXTWORD_workers`); it reads only `os.environ` (a mapping, as
`from_env` takes one, needs overriding its private `_load_env_vars`); it parses a tuple as JSON unless
marked `NoDecode`; and it skips an empty value but not a blank one. What it adds over pydantic is the one
line in `from_env` that looks each variable up.

No other module reads a setting from `os.environ`. One variable is read elsewhere, by design:
PROMETHEUS_MULTIPROC_DIR, which the launcher in `__main__` sets before Python starts; prometheus_client
reads it when metrics are declared, and `service/metrics.py` checks it to know whether a scrape must sum
the workers' files.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_PREFIX = "NEXTWORD_"
_SIZE = r"^[0-9]+(kb|mb|gb|k|m|g|b)?$"  # a redis.conf memory size; "0" = no limit
PREFERRED_DEFAULT = "wikitext2-lstm"  # the shipped bundle a request without `model` gets, when it is served
_UNPREFIXED = {"redis_url": "REDIS_URL", "prometheus_dir": "PROMETHEUS_MULTIPROC_DIR"}  # their customary names


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bind: str = "127.0.0.1:8000"  # loopback by default: exposing the port is a deliberate act
    models_dir: Path = Path("models")  # every sub-folder with a manifest.json is served
    default_model: str = ""  # "" = wikitext2-lstm if present, else the first bundle by name
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA if onnxruntime can start it, else CPU; cuda: or fail
    redis_url: str = Field("", repr=False)  # "" = embedded redis-server with data in redis_dir; may hold a password
    redis_dir: Path = Path("var/redis")  # embedded Redis data: sessions survive a restart of `make serve`
    workers: int = Field(2, ge=1, le=64)  # gunicorn processes; each loads every bundle once
    connections: int = Field(4096, ge=16, le=100_000)  # open connections per worker (a greenlet each), idle ones included
    ort_threads: int = Field(1, ge=1, le=256)  # onnxruntime intra-op threads per model; workers x this <= cores
    session_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)  # idle sessions expire; every access slides the expiry
    max_text_tokens: int = Field(512, ge=1, le=100_000)  # tokens one request may feed
    max_body_bytes: int = Field(64 * 1024, ge=256, le=64 << 20)  # larger request bodies get 413 before they are parsed
    max_top_k: int = Field(1000, ge=1, le=1_000_000)  # largest top_k a client may ask for
    max_generate_tokens: int = Field(256, ge=1, le=100_000)  # ceiling on max_tokens of a generation (400 above it)
    max_streams: int = Field(1024, ge=1, le=100_000)  # open generations per worker (~0.1 MB each); beyond: 429 at once
    max_batch_items: int = Field(256, ge=1, le=100_000)  # items in one POST /predict/batch; beyond: 400
    max_request_tokens: int = Field(4096, ge=1, le=10_000_000)  # tokens one request may have the model read or generate (every item, prompt, max_tokens and replay); beyond: 400 before any work (docs/limits.md)
    max_request_predictions: int = Field(4096, ge=1, le=10_000_000)  # words one answer may list (sum of top_k over items, scores, token details, logprobs); beyond: 400 before any work
    max_response_bytes: int = Field(4 << 20, ge=64 * 1024, le=1 << 30)  # bound on one answer's bytes, estimated from the request and the vocabularies; beyond: 400 before any work
    batch_max_size: int = Field(256, ge=1, le=4096)  # rows per onnxruntime call; every open stream advances each tick in calls of at most this
    batch_wait_ms: float = Field(0.0, ge=0.0, le=1000.0)  # how long every call waits for more rows (a queue delay)
    cas_retries: int = Field(64, ge=0, le=10_000)  # re-runs of a step whose session changed underneath it, before 409
    api_keys: tuple[str, ...] = Field((), repr=False)  # empty = open service (logged at startup)
    api_keys_file: Path | None = None  # one more API key per line (`#` starts a comment line); read at startup
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # of the service's JSON log lines
    log_text: bool = False  # log raw user text; off by default (privacy)
    graceful_timeout: int = Field(30, ge=1, le=3600)  # seconds in-flight requests get after SIGTERM
    prometheus_dir: Path = Path("var/prometheus")  # PROMETHEUS_MULTIPROC_DIR when the launcher sets it
    cors_origins: tuple[str, ...] = ()  # none: only same-origin pages (the playground at /) may call the API from a browser
    request_read_timeout_s: float = Field(5.0, ge=0.1, le=3600.0)  # for a request's head, then for its body; else 408
    send_timeout_s: float = Field(30.0, ge=0.1, le=3600.0)  # a client that takes no bytes this long is cut off (streams too)
    redis_maxmemory: str = Field("256mb", pattern=_SIZE)  # memory limit of the embedded Redis (redis.conf size); sessions idle longest go first

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError("; ".join(map(_explain, e.errors()))) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(**{name: env[variable] for name, variable in variables().items() if variable in env})

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, values: dict) -> dict:
        """Strips every text value and drops blank ones (the default applies); adds NEXTWORD_API_KEYS_FILE's keys."""
        values = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()
                  if not (isinstance(v, str) and not v.strip())}
        keys = list(_split(values.get("api_keys", ())))
        if path := values.get("api_keys_file"):
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"NEXTWORD_API_KEYS_FILE: cannot read {path}: {e.strerror}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return {**values, "api_keys": tuple(keys)}

    @field_validator("device", "log_level", "redis_maxmemory", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value) -> tuple[str, ...]:
        """Browser origins (`https://app.example.com`, `http://localhost:3000`), or `*` for any."""
        origins = tuple(o.rstrip("/") for o in _split(value))
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#@]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or *")
        return origins

    @model_validator(mode="after")
    def _connections_left_for_requests(self) -> Settings:
        reserved = max(8, self.connections // 8)  # connections streams may never take: /healthz, /predict stay served
        if self.max_streams > self.connections - reserved:
            raise ValueError(f"NEXTWORD_MAX_STREAMS={self.max_streams} would leave fewer than {reserved} of "
                             f"NEXTWORD_CONNECTIONS={self.connections} for other requests (health checks included): "
                             "raise the connections or lower the streams")
        return self

    def default_model_of(self, names: list[str]) -> str:
        """The model a request that names none gets: NEXTWORD_DEFAULT_MODEL, else wikitext2-lstm if served, else the
        first of `names` by name. ConfigError for a configured name that is not among them."""
        fallback = PREFERRED_DEFAULT if PREFERRED_DEFAULT in names else sorted(names)[0]
        if self.default_model and self.default_model not in names:
            raise ConfigError(f"NEXTWORD_DEFAULT_MODEL={self.default_model!r} is not a bundle in the models folder; "
                              f"choose one of {', '.join(sorted(names))}, or leave it empty for {fallback!r}")
        return self.default_model or fallback

    def describe(self) -> dict:
        """Settings safe to log: API keys reduced to a count."""
        out = {name: str(getattr(self, name)) for name in type(self).model_fields if name != "api_keys"}
        out["api_keys"] = f"{len(self.api_keys)} configured" if self.api_keys else "none (open service)"
        out["redis_url"] = _redact_url(self.redis_url) if self.redis_url else "embedded"
        return out


def variables() -> dict[str, str]:
    """Field name -> the environment variable it is read from."""
    return {name: _UNPREFIXED.get(name, _PREFIX + name.upper()) for name in Settings.model_fields}


def _split(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


# pydantic's error types in the service's own words, which operators (and the launcher's test) know
_WORDING = {"int_parsing": "is not an integer", "int_from_float": "is not an integer", "float_parsing": "is not a number",
            "bool_parsing": "must be true or false", "string_pattern_mismatch": "must be a size such as 256mb or 2gb"}


def _explain(error: dict) -> str:
    """One pydantic error as `VARIABLE='value' what is wrong`."""
    kind, context = error["type"], error.get("ctx", {})
    if not error["loc"]:  # raised by a validator of the whole model, in a message that names the variables
        return str(context.get("error", error["msg"]))
    name = str(error["loc"][0])
    variable, value = variables().get(name, name), error["input"]
    if kind in ("greater_than_equal", "less_than_equal"):
        bounds = Settings.model_fields[name].metadata  # [Ge(ge=low), Le(le=high)]
        return f"{variable}={value} must be between {bounds[0].ge} and {bounds[1].le}"
    if kind == "literal_error":
        return f"{variable}={value!r} must be {context['expected'].replace(chr(39), '')}"
    if kind == "value_error":
        return f"{variable}: {context['error']}"
    return f"{variable}={value!r} {_WORDING.get(kind, error['msg'])}"


def _redact_url(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:***@{host}"


def settings_help() -> str:
    """One line per setting: its environment variable, default and meaning, for `python -m service --help`.

    The meaning is the comment on the field's line in this file, so the help cannot drift from the code."""
    comments = dict(re.findall(r"^    (\w+): [^=\n]+= [^\n]*?  # ([^\n]+)$", inspect.getsource(Settings), re.M))
    defaults = Settings()
    lines = []
    for name, variable in variables().items():
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else "" if default is None else str(default)
        lines.append(f"  {variable} (default: {shown or 'empty'})\n      {comments.get(name, '')}".rstrip())
    return "\n".join(lines)
