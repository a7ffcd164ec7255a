"""gunicorn configuration for nextword, grouped as gunicorn's example config is. Reads settings
through `service.config` only; `python -m service` sets PROMETHEUS_MULTIPROC_DIR and REDIS_URL
before gunicorn starts.
"""

from service import metrics
from service.config import Settings

_settings = Settings.from_env()

# --- server socket
bind = [_settings.bind]
backlog = 2048

# --- workers: gthread = one thread per in-flight request or stream; onnxruntime releases the GIL
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
preload_app = False  # onnxruntime sessions and Redis pools must be built after the fork
timeout = 120  # a worker silent this long is restarted; streams keep the worker's heartbeat alive
graceful_timeout = _settings.graceful_timeout  # SIGTERM: in-flight requests and streams get this long
keepalive = 5

# --- logging: the app writes JSON request lines itself
accesslog = None
errorlog = "-"
loglevel = _settings.log_level


# --- hooks
def child_exit(server, worker):
    """A dead worker's live gauges stop counting in the multiprocess registry."""
    metrics.mark_process_dead(worker.pid)
