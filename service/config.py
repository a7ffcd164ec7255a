"""Every setting of the service, read from the environment in one place. Knows nothing else.

Each field is read from the variable NEXTWORD_<FIELD> (REDIS_URL and PROMETHEUS_MULTIPROC_DIR keep their
customary names). pydantic parses and range-checks the values; a value is stripped first, and a blank one
means the default. Any failure is one ConfigError naming the variable, in the words of `_WORDING`.
`Settings(...)` holds exactly its arguments (tests and the OpenAPI document build one); only `from_env`
reads the environment. pydantic takes an integer written `3.0`, and a boolean written `t`, `y`, `f` or `n`.

Each field's `description` is the one account of its setting: `python -m service --help` prints it
(`settings_help`), and the table of docs/configuration.md is generated from it (`python -m service.config --write
docs/configuration.md`; tests/test_config.py holds the page to it).

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

import os
import re
import sys
import textwrap
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

    bind: str = Field("127.0.0.1:8000", description=(
        "listen address; loopback by default: exposing the port is a deliberate act"))
    models_dir: Path = Field(Path("models"), description=(
        "every sub-folder with a `manifest.json` is served; re-read on SIGHUP "
        "([reloading models](operations.md#reloading-models))"))
    default_model: str = Field("", description=(
        "model used when a request names none; empty: `wikitext2-lstm` if present, else the first bundle by name"))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "`auto` (CUDA when onnxruntime can start it, else CPU), `cpu`, `cuda` (fails at startup without CUDA)"))
    redis_url: str = Field("", repr=False, description=(  # may hold a password: kept out of repr
        "the session store: `redis://`, `rediss://`, `unix://`, `redis+sentinel://` or `redis+cluster://` "
        "([Redis topologies](operations.md#redis-topologies)); must answer at start; empty: an embedded Redis "
        "with its data in NEXTWORD_REDIS_DIR"))
    redis_dir: Path = Field(Path("var/redis"), description=(
        "data folder of the embedded Redis: sessions survive a restart of `make serve`"))
    workers: int = Field(2, ge=1, le=64, description="gunicorn processes; each loads every bundle once")
    connections: int = Field(4096, ge=16, le=100_000, description=(
        "open connections per worker, idle and streaming ones included (a greenlet each); at least an eighth "
        "(and 8) are kept from streams, so health checks and `/predict` are always served (startup fails "
        "otherwise)"))
    ort_threads: int = Field(1, ge=1, le=256, description=(
        "onnxruntime intra-op threads per model; keep workers × this ≤ cores"))
    session_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400, description=(
        "idle sessions expire; every access slides the expiry"))
    max_text_tokens: int = Field(512, ge=1, le=100_000, description="tokens one request may feed (400 above)")
    max_body_bytes: int = Field(64 * 1024, ge=256, le=64 << 20, description=(
        "request body limit: larger bodies get 413 before they are read"))
    max_top_k: int = Field(1000, ge=1, le=1_000_000, description="largest `top_k` a client may ask for")
    max_generate_tokens: int = Field(256, ge=1, le=100_000, description=(
        "ceiling on `max_tokens` of a generation (400 above it)"))
    max_streams: int = Field(1024, ge=1, le=100_000, description=(
        "concurrent generations per worker (a memory and latency bound: every open stream, about 0.7 MB "
        "(docs/limits.md), advances each tick); beyond it a generation is refused at once with 429 and "
        "`Retry-After: 1`"))
    max_batch_items: int = Field(256, ge=1, le=100_000, description="items in one `POST /predict/batch` (400 above)")
    max_request_tokens: int = Field(4096, ge=1, le=10_000_000, description=(
        "tokens one request may have the model read or generate, all items, prompt, `max_tokens` and `logprobs` "
        "replay together (400 before any work; [limits](limits.md))"))
    max_request_predictions: int = Field(4096, ge=1, le=10_000_000, description=(
        "words one answer may list: items × `top_k`, scores, token details, `logprobs` alternatives (400 before "
        "any work)"))
    max_response_bytes: int = Field(4 << 20, ge=64 * 1024, le=1 << 30, description=(
        "bound on one answer's bytes, estimated from the request and the vocabularies (400 before any work)"))
    batch_max_size: int = Field(256, ge=1, le=4096, description=(
        "rows per onnxruntime call; a tick over more open streams takes several calls"))
    batch_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description=(
        "how long every scheduler call waits for more rows, busy or not (a queue delay); 0: whatever queued while "
        "the last call ran forms the next one"))
    cas_retries: int = Field(64, ge=0, le=10_000, description=(
        "re-runs of a step that lost a race on its session (it changed underneath) before a 409"))
    api_keys: tuple[str, ...] = Field((), repr=False, description=(
        "comma-separated API keys; with none (and no NEXTWORD_API_KEYS_FILE) the service is open, which is "
        "logged at startup"))
    api_keys_file: Path | None = Field(None, description=(
        "a file of more API keys, one a line (`#` starts a comment line); read at startup"))
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description=(
        "of the service's JSON log lines: `debug`, `info`, `warning`, `error`"))
    log_text: bool = Field(False, description="include raw user text in request logs; off by default (privacy)")
    graceful_timeout: int = Field(30, ge=1, le=3600, description="seconds in-flight requests get after SIGTERM")
    prometheus_dir: Path = Field(Path("var/prometheus"), description=(
        "metrics files of all workers; wiped at start (the launcher sets the variable before Python starts)"))
    cors_origins: tuple[str, ...] = Field((), description=(
        "comma-separated origins (`https://app.example.com`) or `*` whose browser pages may call the API; empty: "
        "none (the playground at `/` is same-origin and needs none)"))
    request_read_timeout_s: float = Field(5.0, ge=0.1, le=3600.0, description=(
        "deadline for a request's head, and then for its body; else 408 ([slow clients](operations.md#slow-clients))"))
    send_timeout_s: float = Field(30.0, ge=0.1, le=3600.0, description=(
        "a client that takes no bytes for this long is cut off, a stream's reader included (its generation then "
        "commits nothing)"))
    redis_maxmemory: str = Field("256mb", pattern=_SIZE, description=(
        "memory limit of the embedded Redis (a redis.conf size; 0: none); sessions idle longest are evicted first "
        "([Redis memory](operations.md#redis-memory))"))

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


def _default(name: str) -> str:
    """A field's default as a person writes the variable; "" for none."""
    default = Settings.model_fields[name].default
    return ",".join(default) if isinstance(default, tuple) else "" if default is None else str(default)


def settings_help() -> str:
    """One entry per setting: its environment variable, default and description, for `python -m service --help`
    (a Markdown link of a description becomes the page's path)."""
    lines = []
    for name, variable in variables().items():
        meaning = re.sub(r"\[([^]]+)\]\(([^)]+)\)", r"docs/\2", Settings.model_fields[name].description)
        lines.append(f"  {variable} (default: {_default(name) or 'empty'})\n"
                     + textwrap.fill(meaning, 110, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                       break_on_hyphens=False, break_long_words=False))
    return "\n".join(lines)


TABLE_START, TABLE_END = "<!-- settings: generated by `python -m service.config --write docs/configuration.md` -->", \
    "<!-- settings: end -->"


def settings_table() -> str:
    """The Markdown table of every setting (variable, default, description) that docs/configuration.md holds."""
    rows = [f"| `{variable}` | {f'`{_default(name)}`' if _default(name) else 'empty'} | "
            f"{Settings.model_fields[name].description} |" for name, variable in variables().items()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def with_table(page: str) -> str:
    """`page` with the text between its TABLE_START and TABLE_END lines replaced by `settings_table()`."""
    head, found, rest = page.partition(TABLE_START + "\n")
    _, end, tail = rest.partition(TABLE_END)
    if not (found and end):
        raise ValueError(f"the page has no {TABLE_START!r} ... {TABLE_END!r} block")
    return f"{head}{TABLE_START}\n{settings_table()}\n{TABLE_END}{tail}"


def main(argv: list[str]) -> int:
    """`python -m service.config`: print the table; with `--write PAGE`, rewrite the page's table in place."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        page = Path(argv[1])
        page.write_text(with_table(page.read_text(encoding="utf-8")), encoding="utf-8")
    elif argv:
        print("usage: python -m service.config [--write docs/configuration.md]", file=sys.stderr)
        return 2
    else:
        print(settings_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
