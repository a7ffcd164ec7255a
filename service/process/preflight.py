"""Checks that the settings can serve, before anything listens: the models folder and its bundles, the default
model, the Redis URL, and (for an external Redis) that it answers. Knows nothing of HTTP, onnxruntime or sessions.

The launcher (`python -m service`) runs `check_models` and `check_redis` before it starts the embedded Redis or
gunicorn, so a misconfiguration is one line naming the setting and what to do, exit status 2, and no port ever
opened; without them every gunicorn worker would print a traceback after "Listening at". The default model comes
from `Settings.default_model_of`, as in `create_app`, so the launcher and the workers cannot disagree about it.
"""

from __future__ import annotations

import time
from pathlib import Path

from service.bundle import Bundle, BundleError, discover
from service.config import ConfigError, Settings
from service.redis_client import SCHEMES, connect

REDIS_WAIT_S = 5.0  # how long an external Redis may take to answer at start (a container started beside it)
_TRAIN_HINT = "`make train` or `python -m training export` (docs/training.md)"


def check_models(settings: Settings) -> list[Bundle]:
    """The bundles NEXTWORD_MODELS_DIR serves (each checked against its manifest), or ConfigError saying what to do."""
    folder = Path(settings.models_dir)
    shown = f"NEXTWORD_MODELS_DIR={str(folder)!r}"
    if not folder.exists():
        raise ConfigError(f"{shown}: no such folder; point it at a folder of model bundles (the repository's "
                          f"models/ has two), or make one with {_TRAIN_HINT}")
    if not folder.is_dir():
        raise ConfigError(f"{shown} is a file, not a folder of model bundles")
    try:
        bundles = discover(folder)
    except BundleError as e:
        if "no bundle" in str(e):
            raise ConfigError(f"{shown} holds no bundle (a sub-folder with manifest.json, model.onnx and "
                              f"vocab.txt); copy one in, or make one with {_TRAIN_HINT}") from None
        raise ConfigError(f"{shown}: {e}; fix or remove that bundle") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read it ({e.strerror or e})") from None
    settings.default_model_of([b.name for b in bundles])
    return bundles


def check_redis_url(url: str) -> None:
    """ConfigError unless `url` has one of the schemes service/redis_client.py builds a client for."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"REDIS_URL={_redacted(url)!r} is not a Redis URL: use redis://host:6379/0, rediss:// (TLS), "
                          f"unix:///path/redis.sock, redis+sentinel://host:port,…/master or redis+cluster://host:port,…"
                          f" (docs/configuration.md), or leave it empty for the embedded Redis")


def check_redis(settings: Settings, wait_s: float = REDIS_WAIT_S) -> None:
    """For an external Redis (REDIS_URL set): a usable URL, and a PING answered within `wait_s` seconds."""
    url = settings.redis_url
    if not url:
        return
    check_redis_url(url)
    deadline = time.monotonic() + wait_s
    while True:
        client = None
        try:
            client = connect(url)  # a cluster client asks its nodes for the slot map here
            client.ping()
            return
        except ValueError as e:  # a URL redis-py cannot use: host:port lists, a database on a cluster, ...
            raise ConfigError(f"REDIS_URL={_redacted(url)!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever kept Redis from answering, the advice is the same
            if time.monotonic() >= deadline:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"REDIS_URL={_redacted(url)!r}: Redis did not answer within {wait_s:g} s ({reason}); "
                                  "start it, fix the URL, or leave REDIS_URL empty for the embedded Redis") from None
        finally:
            if client is not None:
                client.close()
        time.sleep(0.25)


def _redacted(url: str) -> str:
    return Settings(redis_url=url).describe()["redis_url"] if url else url
