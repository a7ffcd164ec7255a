"""Every setting of the service, read from the environment in one place. Knows nothing else.

No other module reads a setting from `os.environ`. One variable is read elsewhere, by design:
PROMETHEUS_MULTIPROC_DIR, which the launcher in `__main__` sets before Python starts; prometheus_client
reads it when metrics are declared, and `service/metrics.py` checks it to know whether a scrape must sum
the workers' files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


def _get(env: dict, name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _number(env: dict, name: str, default, low, high, kind: type = int):
    raw = _get(env, name, str(default))
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}")
    return value


def _int(env: dict, name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int)


def _float(env: dict, name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float)


def _size(env: dict, name: str, default: str) -> str:
    """A redis.conf memory size: digits with an optional kb/mb/gb unit ("0" = no limit)."""
    raw = _get(env, name, default).lower()
    if not re.fullmatch(r"[0-9]+(kb|mb|gb|k|m|g|b)?", raw):
        raise ConfigError(f"{name}={raw!r} must be a size such as 256mb or 2gb")
    return raw


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = _get(env, name, "true" if default else "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


@dataclass(frozen=True)
class Settings:
    bind: str = "127.0.0.1:8000"  # loopback by default: exposing the port is a deliberate act
    models_dir: Path = Path("models")  # every sub-folder with a manifest.json is served
    default_model: str = ""  # "" = wikitext2-lstm if present, else the first bundle by name
    device: str = "auto"  # auto: CUDA when onnxruntime can start it, else CPU; cpu; cuda (fail if unavailable)
    redis_url: str = field(default="", repr=False)  # "" = embedded redis-server with data in redis_dir; may hold a password
    redis_dir: Path = Path("var/redis")  # embedded Redis data: sessions survive a restart of `make serve`
    workers: int = 2  # gunicorn processes; each loads every bundle once
    threads: int = 48  # gthread threads per worker: open streams + other requests in progress (idle ones cost ~nothing)
    ort_threads: int = 1  # onnxruntime intra-op threads per model; workers x this should not exceed cores
    session_ttl_seconds: int = 3600  # idle sessions expire; every access slides the expiry
    max_text_tokens: int = 512  # tokens one request may feed
    max_body_bytes: int = 64 * 1024  # larger request bodies get 413 before they are parsed
    max_top_k: int = 1000  # largest top_k a client may ask for
    max_generate_tokens: int = 256  # ceiling on max_tokens of one generation (above it: 400, not clamped)
    max_streams: int = 32  # concurrent generations per worker (each holds a thread); beyond: 429 at once
    max_batch_items: int = 256  # items in one POST /predict/batch; beyond: 400
    batch_max_size: int = 64  # rows per onnxruntime call; past ~64 throughput gains are small
    batch_wait_ms: float = 0.0  # how long every call waits for more rows (a queue delay); 0: none
    batch_gather_ms: float = 5.0  # how long a call may wait for session steps already on their way (never when idle)
    cas_retries: int = 64  # re-runs of a step whose session changed underneath it, before 409
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty = open service (logged at startup)
    log_level: str = "info"
    log_text: bool = False  # log raw user text; off by default (privacy)
    graceful_timeout: int = 30  # seconds in-flight requests get after SIGTERM
    prometheus_dir: Path = Path("var/prometheus")  # PROMETHEUS_MULTIPROC_DIR when the launcher sets it
    cors_origins: tuple[str, ...] = ()  # none: only same-origin pages (the playground at /) may call the API from a browser
    request_read_timeout_s: float = 5.0  # a request's head, and then its body, must each arrive within this; else 408
    redis_maxmemory: str = "256mb"  # memory limit of the embedded Redis (redis.conf size); sessions idle longest go first

    def __post_init__(self) -> None:
        reserved = max(2, self.threads // 4)  # threads streams may never take: /healthz, /predict, ... stay served
        if self.max_streams > self.threads - reserved:
            raise ConfigError(f"NEXTWORD_MAX_STREAMS={self.max_streams} would leave fewer than {reserved} of "
                              f"NEXTWORD_THREADS={self.threads} for other requests (health checks included): raise "
                              "the threads or lower the streams")

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        device = _get(env, "NEXTWORD_DEVICE", cls.device).lower()
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"NEXTWORD_DEVICE={device!r} must be auto, cpu or cuda")
        keys = [k.strip() for k in _get(env, "NEXTWORD_API_KEYS", "").split(",") if k.strip()]
        key_file = _get(env, "NEXTWORD_API_KEYS_FILE", "")
        if key_file:
            try:
                text = Path(key_file).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"NEXTWORD_API_KEYS_FILE: cannot read {key_file}: {e.strerror}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        log_level = _get(env, "NEXTWORD_LOG_LEVEL", cls.log_level).lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"NEXTWORD_LOG_LEVEL={log_level!r} must be debug, info, warning or error")
        return cls(
            bind=_get(env, "NEXTWORD_BIND", cls.bind),
            models_dir=Path(_get(env, "NEXTWORD_MODELS_DIR", str(cls.models_dir))),
            default_model=_get(env, "NEXTWORD_DEFAULT_MODEL", cls.default_model),
            device=device,
            redis_url=_get(env, "REDIS_URL", cls.redis_url),
            redis_dir=Path(_get(env, "NEXTWORD_REDIS_DIR", str(cls.redis_dir))),
            workers=_int(env, "NEXTWORD_WORKERS", cls.workers, 1, 64),
            threads=_int(env, "NEXTWORD_THREADS", cls.threads, 1, 1024),
            ort_threads=_int(env, "NEXTWORD_ORT_THREADS", cls.ort_threads, 1, 256),
            session_ttl_seconds=_int(env, "NEXTWORD_SESSION_TTL_SECONDS", cls.session_ttl_seconds, 1, 30 * 86400),
            max_text_tokens=_int(env, "NEXTWORD_MAX_TEXT_TOKENS", cls.max_text_tokens, 1, 100_000),
            max_body_bytes=_int(env, "NEXTWORD_MAX_BODY_BYTES", cls.max_body_bytes, 256, 64 << 20),
            max_top_k=_int(env, "NEXTWORD_MAX_TOP_K", cls.max_top_k, 1, 1_000_000),
            max_generate_tokens=_int(env, "NEXTWORD_MAX_GENERATE_TOKENS", cls.max_generate_tokens, 1, 100_000),
            max_streams=_int(env, "NEXTWORD_MAX_STREAMS", cls.max_streams, 1, 100_000),
            max_batch_items=_int(env, "NEXTWORD_MAX_BATCH_ITEMS", cls.max_batch_items, 1, 100_000),
            batch_max_size=_int(env, "NEXTWORD_BATCH_MAX_SIZE", cls.batch_max_size, 1, 4096),
            batch_wait_ms=_float(env, "NEXTWORD_BATCH_WAIT_MS", cls.batch_wait_ms, 0.0, 1000.0),
            batch_gather_ms=_float(env, "NEXTWORD_BATCH_GATHER_MS", cls.batch_gather_ms, 0.0, 1000.0),
            cas_retries=_int(env, "NEXTWORD_CAS_RETRIES", cls.cas_retries, 0, 10_000),
            api_keys=tuple(keys),
            log_level=log_level,
            log_text=_bool(env, "NEXTWORD_LOG_TEXT", cls.log_text),
            graceful_timeout=_int(env, "NEXTWORD_GRACEFUL_TIMEOUT", cls.graceful_timeout, 1, 3600),
            prometheus_dir=Path(_get(env, "PROMETHEUS_MULTIPROC_DIR", str(cls.prometheus_dir))),
            cors_origins=_origins(env, "NEXTWORD_CORS_ORIGINS"),
            request_read_timeout_s=_float(env, "NEXTWORD_REQUEST_READ_TIMEOUT_S", cls.request_read_timeout_s, 0.1,
                                          3600.0),
            redis_maxmemory=_size(env, "NEXTWORD_REDIS_MAXMEMORY", cls.redis_maxmemory),
        )

    def describe(self) -> dict:
        """Settings safe to log: API keys reduced to a count."""
        out = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name != "api_keys"}
        out["api_keys"] = f"{len(self.api_keys)} configured" if self.api_keys else "none (open service)"
        out["redis_url"] = _redact_url(self.redis_url) if self.redis_url else "embedded"
        return out


def _origins(env: dict, name: str) -> tuple[str, ...]:
    """Comma-separated browser origins (`https://app.example.com`, `http://localhost:3000`), or `*` for any."""
    origins = tuple(o.strip().rstrip("/") for o in _get(env, name, "").split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s?#@]+", origin):
            raise ConfigError(f"{name}: {origin!r} is not an origin (scheme://host[:port], no path) or *")
    return origins


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

    Read from `Settings`' own source (the comment on each field, the variable `from_env` reads for it), so the
    help cannot drift from the code."""
    import inspect

    source = inspect.getsource(Settings)
    comments = dict(re.findall(r"^    (\w+): [^=\n]+= [^\n]*?  # ([^\n]+)$", source, re.M))
    variables = dict(re.findall(r'^            (\w+)=[^\n]*?"((?:NEXTWORD|REDIS|PROMETHEUS)_\w+)"', source, re.M))
    variables.update((name, var) for name, var in re.findall(r'^        (\w+) = _get\(env, "(\w+)"', source, re.M)
                     if name not in variables)
    variables["api_keys"] = "NEXTWORD_API_KEYS, NEXTWORD_API_KEYS_FILE"
    defaults = Settings()
    lines = []
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        lines.append(f"  {variables.get(f.name, f.name)} (default: {shown or 'empty'})\n"
                     f"      {comments.get(f.name, '')}".rstrip())
    return "\n".join(lines)
