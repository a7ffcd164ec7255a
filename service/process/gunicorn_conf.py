"""gunicorn configuration for nextword, grouped as gunicorn's example config is. Reads settings
through `service.config` only; `python -m service` sets PROMETHEUS_MULTIPROC_DIR and REDIS_URL
before gunicorn starts.
"""

import logging

from service import logs, metrics
from service.config import Settings

_settings = Settings.from_env()

# --- server socket
bind = [_settings.bind]
backlog = 2048

# --- workers: gevent (a greenlet per connection, request and stream; model calls on native threads), requests read
#     whole under deadlines before the app sees them (service/process/worker.py)
worker_class = "service.process.worker.GreenletWorker"
workers = _settings.workers
worker_connections = _settings.connections
preload_app = False  # onnxruntime sessions and Redis pools must be built after the fork
timeout = 120  # a worker silent this long is restarted; streams keep the worker's heartbeat alive
graceful_timeout = _settings.graceful_timeout  # SIGTERM: in-flight requests and streams get this long
keepalive = 5
control_socket_disable = True  # gunicorn's admin socket lives in $HOME and would be shared by every instance

# --- logging: JSON lines on stderr for gunicorn's own messages too; the app writes one line per request
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},  # replaced by the app's line
    },
}


# --- hooks: one job each
def when_ready(server):
    """Startup line from the master: what this service runs with (secrets redacted)."""
    described = _settings.describe()
    logs.log_event(logging.getLogger("nextword"), "service starting", bind=bind, workers=workers,
                   connections=worker_connections, worker_class=worker_class, models_dir=described["models_dir"],
                   device=described["device"], redis_url=described["redis_url"],
                   session_ttl_seconds=_settings.session_ttl_seconds, api_keys=described["api_keys"],
                   prometheus_dir=described["prometheus_dir"], log_text=_settings.log_text)


_expiry_watcher = None  # per worker process, set after the fork


def post_worker_init(worker):
    """Every worker offers to count session expirations; a Redis lease lets one process per Redis do it."""
    global _expiry_watcher
    from service.redis_client import is_cluster
    from service.state import ExpiryWatcher

    if is_cluster(_settings.redis_url):  # keyspace events are per node: one watcher would see a third of them
        logs.log_event(logging.getLogger("nextword"), "session expirations are not counted on Redis Cluster")
        return
    _expiry_watcher = ExpiryWatcher.from_url(_settings.redis_url).start()


def worker_exit(server, worker):
    """Hand the expiry watcher's lease back, so another worker takes over at once."""
    if _expiry_watcher is not None:
        _expiry_watcher.stop()


def child_exit(server, worker):
    """A dead worker's live gauges stop counting in the multiprocess registry."""
    metrics.mark_process_dead(worker.pid)
