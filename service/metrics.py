"""Prometheus metrics of the service, declared once at module level. The only module that knows
prometheus_client.

Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` is set before Python starts (see `service.__main__`),
so every worker writes its samples to files there and a scrape sums them. Labels are small fixed
sets: endpoint templates, model names, status codes, error codes, Redis operations; never a
session id or a raw path.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

# Sub-millisecond to tens of seconds: a cached /healthz and a long stream fit the same buckets.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("nextword_http_requests_total", "HTTP requests answered.", ["endpoint", "method", "status"])
REQUEST_LATENCY = Histogram("nextword_http_request_duration_seconds", "Time to answer an HTTP request: until the "
                            "response is built (for a stream: until its last event).", ["endpoint"],
                            buckets=LATENCY_BUCKETS)
ERRORS = Counter("nextword_errors_total", "Error responses and stream error events, by error code.", ["code"])

MODEL_STEP_LATENCY = Histogram("nextword_model_step_duration_seconds", "Wall time of one batched onnxruntime call.",
                               ["model"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("nextword_model_batch_size", "Rows in one onnxruntime call.", ["model"], buckets=BATCH_BUCKETS)
BATCH_WAIT = Histogram("nextword_batch_wait_seconds", "Time a step waited in the queue before its batch ran.",
                       ["model"], buckets=LATENCY_BUCKETS)
TOKENS_READ = Counter("nextword_tokens_read_total", "Input tokens fed to a model.", ["model"])
TOKENS_GENERATED = Counter("nextword_tokens_generated_total", "Tokens sampled by generation.", ["model"])

STREAM_FIRST_TOKEN = Histogram("nextword_stream_time_to_first_token_seconds", "From request start to the first "
                               "generated token.", ["model"], buckets=LATENCY_BUCKETS)
STREAM_INTER_TOKEN = Histogram("nextword_stream_inter_token_seconds", "Between consecutive generated tokens.",
                               ["model"], buckets=LATENCY_BUCKETS)
ACTIVE_STREAMS = Gauge("nextword_active_streams", "Generations in progress.", multiprocess_mode="livesum")

SESSIONS_CREATED = Counter("nextword_sessions_created_total", "Sessions created.", ["model"])
SESSIONS_DELETED = Counter("nextword_sessions_deleted_total", "Sessions deleted by clients.", ["model"])
SESSIONS_EXPIRED = Counter("nextword_sessions_expired_total", "Sessions Redis removed when their idle TTL ran "
                           "out, counted by the one process per Redis holding the expiry watcher lease (sum over "
                           "replicas).")
EXPIRY_WATCHER = Gauge("nextword_session_expiry_watcher", "1 in the process that holds the expiry watcher lease and "
                       "is subscribed to Redis expiry events; the sum over all replicas should be 1.",
                       multiprocess_mode="livesum")
SESSION_CONFLICTS = Counter("nextword_session_write_conflicts_total", "Compare-and-set writes that lost a race "
                            "(the step is re-run on the fresh state).", ["model"])

REDIS_LATENCY = Histogram("nextword_redis_command_duration_seconds", "Redis round trips by operation.",
                          ["operation"], buckets=LATENCY_BUCKETS)
REDIS_ERRORS = Counter("nextword_redis_errors_total", "Failed Redis calls by operation.", ["operation"])

MODEL_INFO = Gauge("nextword_model_info", "Loaded models (value 1), with version, architecture and provider.",
                   ["model", "version", "architecture", "provider"], multiprocess_mode="max")


def start_at_zero(models: list[str], redis_operations: tuple[str, ...], error_codes: list[str]) -> None:
    """Creates, at 0, every counter series whose labels are known at start (each model, each Redis operation, each
    error code), so the first scrape already has them and a dashboard or an alert on `rate()` or `increase()` reads 0,
    not "no data". Only the request counter waits for its first request: its status label is not known before."""
    for model in models:
        for counter in (TOKENS_READ, TOKENS_GENERATED, SESSIONS_CREATED, SESSIONS_DELETED, SESSION_CONFLICTS):
            counter.labels(model=model)
    for operation in redis_operations:
        REDIS_ERRORS.labels(operation=operation)
    for code in error_codes:
        ERRORS.labels(code=code)


# Every name here is a classic Prometheus name, so the text format 0.0.4 carries it unchanged, and every
# Prometheus (and promtool) reads it; prometheus_client's CONTENT_TYPE_LATEST would announce 1.0.0.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def scrape() -> tuple[bytes, str]:
    """Exposition text for /metrics: all workers' samples when multiprocess mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE


def mark_process_dead(pid: int) -> None:
    """gunicorn child_exit hook: a dead worker's live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
