"""`make bench`: the service against its own ceilings, measured in one run on this machine.

Run:  python benchmarks/bench.py [--bundle models/wikitext2-lstm] [--seconds 4] [--out benchmarks/results]

What it measures, in this order (each a few seconds; about 2 minutes in all on 2 cores):
  engine   the bundle in-process through onnxruntime, W processes x 1 thread (W = NEXTWORD_WORKERS, default
           2), T=1 steps at batch 1..256: the most tokens/s the model itself allows.
  floor    a bare Flask endpoint that parses a small JSON body and answers a small JSON object under W gthread
           workers x 16 threads (the fixed reference of the ideal), and for comparison under gthread x 48,
           gunicorn's gevent worker and the service's own worker (service.process.worker.GreenletWorker).
  typing   the service (`python -m service`, both shipped bundles, a private Redis): `POST /predict` with one
           vocabulary word to a random one of 512 sessions, at 1, 8 and 64 connections.
  streams  32 connections each running SSE generations of 64 tokens (temperature 1) on random sessions;
           tokens, time to first token and batch sizes read from the service's own /metrics.
  batch    `POST /predict/batch` with 64 single-word items on random sessions, 4 connections.
  gthread  typing at 64 connections and 32 streams again, with the service under gunicorn's plain gthread worker
           (48 threads; GUNICORN_CMD_ARGS overrides the worker class): the thread model beside the greenlet one.
  capacity 1 024 concurrent SSE generations of 64 tokens on distinct sessions (one client thread, raw sockets),
           /healthz polled every 0.2 s meanwhile: statuses, time to first token, inter-token time, mean batch.
Load comes from wrk (Debian package `wrk`), which costs far less CPU than a Python client would.
Prints a table with the ratios the performance issue asks for, writes results.json and a PNG plot.
Never part of `make test`: no test asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.bundle import load_bundle  # noqa: E402
from service.process.redis_server import RedisServer  # noqa: E402
from tests.servers import free_port  # noqa: E402

ENGINE_BATCHES = (1, 8, 16, 32, 64, 256)
TYPING_CONNECTIONS = (1, 8, 64)
SESSIONS = 512
CAPACITY_STREAMS = 1024


# --- engine -------------------------------------------------------------------------------------------------------

def _engine_worker(bundle_dir: str, batch: int, seconds: float, device: str, start, out) -> None:
    from service.runtime import open_session

    bundle = load_bundle(Path(bundle_dir))
    session = open_session(bundle, device, threads=1)
    tensors, layers, hidden = bundle.state_shape
    rng = np.random.default_rng(batch)
    feed = {"tokens": rng.integers(bundle.vocab_size, size=(batch, 1)).astype(np.int64)}
    for i, _ in bundle.state_pairs:
        feed[i] = rng.normal(0, 0.1, size=(layers, batch, hidden)).astype(np.float32)
    outputs = ["log_probs", *[o for _, o in bundle.state_pairs]]
    session.run(outputs, feed)  # warm-up
    start.wait()
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        session.run(outputs, feed)
        steps += 1
    out.put((steps * batch, time.perf_counter() - began, steps))


def engine(bundle_dir: Path, workers: int, seconds: float, device: str) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for batch in ENGINE_BATCHES:
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_engine_worker, args=(str(bundle_dir), batch, seconds, device, start, out))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        time.sleep(2.0)  # let every process load the model before the clock starts
        start.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        tokens = sum(r[0] / r[1] for r in results)
        step_ms = 1000 * sum(r[1] / r[2] for r in results) / len(results)
        rows.append({"batch": batch, "tokens_per_s": round(tokens, 1), "step_ms": round(step_ms, 3)})
        print(f"engine  batch {batch:>4}: {tokens:>9.0f} tokens/s  ({step_ms:.2f} ms per call)", flush=True)
    return rows


# --- wrk ------------------------------------------------------------------------------------------------------------

def wrk(url: str, script: str, connections: int, seconds: float, workdir: Path) -> dict:
    path = workdir / f"wrk-{abs(hash(script))}.lua"
    path.write_text(script)
    threads = min(2, connections)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(path),
           "--timeout", "10s", url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    text = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = _duration_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = _duration_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    counted = re.search(r"^ITEMS (\d+) FAILED (\d+)$", text, re.M)  # from BATCH_COUNTER, when the script has it
    measured = re.search(r"requests in ([\d.]+\w+),", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "",
            "seconds": _duration_ms(measured.group(1)) / 1000 if measured else seconds,
            **({"items": (int(counted.group(1)), int(counted.group(2)))} if counted else {})}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise RuntimeError(f"wrk printed a latency this script cannot read: {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}[unit]


def _lua_post(path_expr: str, body_expr: str, setup: str = "", headers: str = "") -> str:
    return f"""
{setup}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
math.randomseed(os.time())
request = function()
  return wrk.format(nil, {path_expr}, nil, {body_expr})
end
"""


# Counts, in wrk's own Lua, the items of the batch answers and those that failed (each failed item carries its own
# "status"), so the batch's tokens/s is what was applied: an item re-run after a lost race is counted once.
BATCH_COUNTER = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) answered = 0; failed = 0 end
function response(status, headers, body)
  if status == 200 then
    answered = answered + 64
    local _, n = string.gsub(body, '"status":', '')
    failed = failed + n
  end
end
function done(summary, latency, requests)
  local a, f = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("answered"); f = f + t:get("failed") end
  io.write(string.format("ITEMS %d FAILED %d\\n", a, f))
end
"""


# --- floor ----------------------------------------------------------------------------------------------------------

FLOOR_APP = '''
from flask import Flask, jsonify, request

app = Flask("floor")


@app.post("/echo")
def echo():
    body = request.get_json()
    return jsonify({"ok": True, "text": body.get("text"), "n": len(body)})
'''


FLOOR_VARIANTS = (("gthread", 48), ("gevent", 1), ("service.process.worker.GreenletWorker", 1))


def floor(workers: int, threads: int, seconds: float, workdir: Path, worker_class: str = "gthread",
          connections: tuple[int, ...] = TYPING_CONNECTIONS) -> list[dict]:
    """The bare app under gunicorn with `worker_class` (threads apply to gthread only)."""
    (workdir / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--chdir", str(workdir), "-k", worker_class, "-w",
                             str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}", "--log-level",
                             "warning", "floor_app:app"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: requests.post(url + "/echo", json={"text": "x"}, timeout=1).ok)
        script = _lua_post('"/echo"', '\'{"text":"the","session_id":"abcdefghijklmnopqrstuvwxyz012345"}\'')
        rows = []
        for c in connections:
            r = wrk(url, script, c, seconds, workdir)
            rows.append({"connections": c, **r})
            print(f"floor   {c:>3} connections: {r['requests_per_s']:>8.0f} requests/s  p50 {r['p50_ms']:.2f} ms"
                  f"  ({worker_class}{f' x {threads}' if worker_class == 'gthread' else ''})", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- the service ----------------------------------------------------------------------------------------------------

class Service:
    def __init__(self, models_dir: Path, redis_url: str, workdir: Path, workers: int, device: str,
                 gunicorn_args: str = ""):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "NEXTWORD_BIND": f"127.0.0.1:{self.port}", "NEXTWORD_MODELS_DIR": str(models_dir),
               "REDIS_URL": redis_url, "NEXTWORD_WORKERS": str(workers), "NEXTWORD_DEVICE": device,
               "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prom"), "NEXTWORD_LOG_LEVEL": "warning",
               "GUNICORN_CMD_ARGS": gunicorn_args}
        self.log = (workdir / "service.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        _wait(lambda: requests.get(self.url + "/readyz", timeout=1).ok, timeout=120)

    def metrics(self) -> dict[str, float]:
        """Sums of every sample by name (labels dropped) from /metrics."""
        out: dict[str, float] = {}
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                key = name.split("{", 1)[0] + ("{" + name.split("{", 1)[1] if "le=" in name else "")
                key = re.sub(r',?model="[^"]*"', "", key).replace("{,", "{")
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("timed out waiting for a server")


def _sessions(url: str, n: int) -> list[str]:
    with requests.Session() as http:
        return [http.post(url + "/sessions", json={}, timeout=10).json()["session_id"] for _ in range(n)]


def _lua_list(values: list[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


def _histogram_quantile(m0: dict, m1: dict, name: str, q: float) -> float | None:
    """Quantile from the delta of a cumulative histogram's buckets (linear inside a bucket), in ms."""
    buckets = []
    for key, value in m1.items():
        match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if match:
            buckets.append((float(match.group(1)), value - m0.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, low, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return low * 1000
            return 1000 * (low + (le - low) * (rank - below) / max(count - below, 1e-9))
        low, below = le, count
    return None


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (0 once it is gone), from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        out += children.get(todo[0], [])
        todo = todo[1:] + children.get(todo[0], [])
    return out


def _cpu_per_request(before: dict, after: dict, requests_done: float) -> dict:
    """CPU ms per request by role, from `_cpu_seconds` snapshots {role: [(user, sys), ...]}."""
    out = {}
    for role in before:
        for i, kind in enumerate(("user", "sys")):
            spent = sum(a[i] for a in after[role]) - sum(b[i] for b in before[role])
            out[f"{role}_{kind}_ms"] = round(1000 * spent / max(requests_done, 1), 3)
    return out


def _delta(m0: dict, m1: dict, name: str) -> float:
    return m1.get(name, 0.0) - m0.get(name, 0.0)


def _typing_run(service: Service, script: str, c: int, seconds: float, workdir: Path, roles: dict) -> dict:
    m0 = service.metrics()
    cpu0 = {role: [_cpu_seconds(p) for p in pids] for role, pids in roles.items()}
    r = wrk(service.url, script, c, seconds, workdir)
    cpu1 = {role: [_cpu_seconds(p) for p in pids] for role, pids in roles.items()}
    m1 = service.metrics()
    r["cpu_per_request"] = _cpu_per_request(cpu0, cpu1, r["requests_per_s"] * r["seconds"])
    r["mean_batch"] = _mean_batch(m0, m1)
    print(f"typing  {c:>3} connections: {r['requests_per_s']:>8.0f} tokens/s    p50 {r['p50_ms']:.2f} ms  "
          f"mean batch {r['mean_batch']}  non-2xx {r['non_2xx']}", flush=True)
    return {"connections": c, **r}


def _streams_run(service: Service, script: str, seconds: float, workdir: Path) -> dict:
    m0 = service.metrics()
    began = time.perf_counter()
    r = wrk(service.url, script, 32, max(seconds, 6), workdir)
    elapsed = time.perf_counter() - began
    m1 = service.metrics()
    s = {"connections": 32, "generations_per_s": r["requests_per_s"],
         "tokens_per_s": round(_delta(m0, m1, "nextword_tokens_generated_total") / elapsed, 1),
         "ttft_p50_ms": _histogram_quantile(m0, m1, "nextword_stream_time_to_first_token_seconds", 0.5),
         "ttft_p99_ms": _histogram_quantile(m0, m1, "nextword_stream_time_to_first_token_seconds", 0.99),
         "mean_batch": _mean_batch(m0, m1), "non_2xx": r["non_2xx"]}
    print(f"streams  32 connections: {s['tokens_per_s']:>8.0f} tokens/s    TTFT p50 {s['ttft_p50_ms']:.1f} ms  "
          f"mean batch {s['mean_batch']}  non-2xx {s['non_2xx']}", flush=True)
    return s


def _mean_batch(m0: dict, m1: dict) -> float:
    return round(_delta(m0, m1, "nextword_model_batch_size_sum")
                 / max(_delta(m0, m1, "nextword_model_batch_size_count"), 1), 2)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def capacity(service: Service, streams: int = CAPACITY_STREAMS, tokens: int = 64, timeout: float = 600) -> dict:
    """`streams` SSE generations at once on distinct sessions, each on its own socket, all read by one thread;
    /healthz polled every 0.2 s by another. Times are this client's: when the bytes of an event arrived."""
    ids = _sessions(service.url, streams)
    body = json.dumps({"max_tokens": tokens, "temperature": 1}).encode()
    sel = selectors.DefaultSelector()
    polls: list[float] = []
    stop = threading.Event()
    processes = _descendants(service.proc.pid)  # the launcher's gunicorn and its workers
    rest_mb = sum(map(_rss_mb, processes))
    peak_mb = [rest_mb]

    def poll() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                began = time.perf_counter()
                ok = http.get(service.url + "/healthz", timeout=30).status_code == 200
                polls.append(time.perf_counter() - began if ok else float("inf"))
                peak_mb[0] = max(peak_mb[0], sum(map(_rss_mb, processes)))
                stop.wait(0.2)

    m0 = service.metrics()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    state = {}
    began = time.perf_counter()
    for sid in ids:
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        sock.sendall(f"POST /sessions/{sid}/generate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                     .encode() + body)
        sock.setblocking(False)
        state[sock] = {"sent": time.perf_counter(), "head": None, "rest": b"", "tokens": [], "done": False}
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            sock, st = key.fileobj, state[key.fileobj]
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            now = time.perf_counter()
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            st["rest"] += data
            if st["head"] is None and b"\r\n" in st["rest"]:
                st["head"] = st["rest"].split(b"\r\n", 1)[0].decode("latin-1")
            *events, st["rest"] = st["rest"].split(b"\n\n")
            for event in events:
                if b"event: token" in event:
                    st["tokens"].append(now)
                elif b"event: done" in event:
                    st["done"] = True
    elapsed = time.perf_counter() - began
    stop.set()
    poller.join(30)
    m1 = service.metrics()
    for sock in list(sel.get_map()):
        sel.unregister(sock)
        sock.close()
    statuses: dict[str, int] = {}
    for st in state.values():
        code = st["head"].split()[1] if st["head"] else "none"
        statuses[code] = statuses.get(code, 0) + 1
    ttft = [1000 * (st["tokens"][0] - st["sent"]) for st in state.values() if st["tokens"]]
    itl = [1000 * (st["tokens"][-1] - st["tokens"][0]) / (len(st["tokens"]) - 1) for st in state.values()
           if len(st["tokens"]) > 1]
    out = {"streams": streams, "tokens": tokens, "statuses": statuses,
           "completed": sum(st["done"] for st in state.values()), "seconds": round(elapsed, 1),
           "tokens_per_s": round(sum(len(st["tokens"]) for st in state.values()) / elapsed, 1),
           "mean_batch": _mean_batch(m0, m1), "healthz_max_ms": round(1000 * max(polls), 1) if polls else None,
           "healthz_polls": len(polls), "ttft_p50_ms": _percentile(ttft, 50), "ttft_p99_ms": _percentile(ttft, 99),
           "inter_token_p50_ms": _percentile(itl, 50), "inter_token_p99_ms": _percentile(itl, 99),
           "rss_rest_mb": round(rest_mb, 1), "rss_peak_mb": round(peak_mb[0], 1),
           "kb_per_stream": round(1024 * (peak_mb[0] - rest_mb) / streams, 1)}
    print(f"capacity {streams} streams: statuses {statuses}, {out['completed']} completed in {out['seconds']} s, "
          f"{out['tokens_per_s']:.0f} tokens/s, mean batch {out['mean_batch']}, /healthz worst "
          f"{out['healthz_max_ms']} ms over {len(polls)} polls, TTFT p50 {out['ttft_p50_ms']} ms p99 "
          f"{out['ttft_p99_ms']} ms, inter-token p50 {out['inter_token_p50_ms']} ms p99 {out['inter_token_p99_ms']} ms, "
          f"gunicorn RSS {out['rss_rest_mb']} -> {out['rss_peak_mb']} MB ({out['kb_per_stream']} KB a stream)",
          flush=True)
    return out


def service_runs(models_dir: Path, bundle, workers: int, seconds: float, device: str, workdir: Path,
                 gunicorn_args: str = "", full: bool = True) -> dict:
    """The service's runs; `full=False` (another worker class) runs typing at 64 connections and the streams only."""
    redis = RedisServer(workdir / "redis", persist=False)
    service = None
    try:
        service = Service(models_dir, redis.start(), workdir, workers, device, gunicorn_args)
        ids = _sessions(service.url, SESSIONS)
        words = [w for w in bundle.words[:2000] if w.isalpha()][:500]
        setup = f"ids = {_lua_list(ids)}\nwords = {_lua_list(words)}"
        out: dict = {"typing": [], "streams": {}, "batch": {}}

        typing = _lua_post('"/predict"', '\'{"text":"\' .. words[math.random(#words)] .. \'","session_id":"\' '
                           '.. ids[math.random(#ids)] .. \'"}\'', setup)
        roles = {"workers": _descendants(service.proc.pid), "redis": [redis.pid]}
        for c in TYPING_CONNECTIONS if full else (64,):
            out["typing"].append(_typing_run(service, typing, c, seconds, workdir, roles))

        streams = _lua_post('"/sessions/" .. ids[math.random(#ids)] .. "/generate"',
                            '\'{"max_tokens":64,"temperature":1}\'', setup,
                            'wrk.headers["Accept"] = "text/event-stream"')
        out["streams"] = _streams_run(service, streams, seconds, workdir)
        if not full:
            return out

        # 64 different sessions per request (a partial shuffle), as a gateway sends one pending word per user;
        # concurrent requests still share sessions now and then, and those items are re-run after a lost race.
        item = '\'{"text":"\' .. words[math.random(#words)] .. \'","session_id":"\' .. ids[i] .. \'"}\''
        batch_body = f"""(function() local t = {{}}
  for i = 1, 64 do local j = math.random(i, #ids); ids[i], ids[j] = ids[j], ids[i]; t[i] = {item} end
  return '{{"items":[' .. table.concat(t, ",") .. ']}}' end)()"""
        batch = _lua_post('"/predict/batch"', batch_body, setup) + BATCH_COUNTER
        r = wrk(service.url, batch, 4, seconds, workdir)
        answered, failed = r["items"]  # items in 200 answers, and those of them that carried an error
        out["batch"] = {"connections": 4, "items": 64, "requests_per_s": r["requests_per_s"],
                        "tokens_per_s": round((answered - failed) / r["seconds"], 1), "failed_items": failed,
                        "p50_ms": r["p50_ms"], "non_2xx": r["non_2xx"]}
        print(f"batch     4 connections: {out['batch']['tokens_per_s']:>8.0f} tokens/s    p50 "
              f"{r['p50_ms']:.2f} ms  failed items {failed}  non-2xx {r['non_2xx']}", flush=True)
        out["capacity"] = capacity(service)
        return out
    finally:
        if service is not None:
            service.stop()
        redis.stop()


def prefix_cost(service: "Service", ids: list[str], words: list[str], connections: int, seconds: float,
                workdir: Path) -> dict:
    """The typing load (one vocabulary word to a random session) with and without the word in progress: each
    request of the second also sends `prefix`, the first one or two letters of another vocabulary word, and
    `words_only`. Requests/s and p50 as wrk reports them, and the workers' CPU per request (what a prefix adds to
    each request, less sensitive than throughput to other load on the machine). docs/typing.md reports the ratio
    from benchmarks/prefix_cost.py, which runs this a few times, alternating."""
    prefixes = sorted({w[:n] for w in words for n in (1, 2) if len(w) > n})
    setup = f"ids = {_lua_list(ids)}\nwords = {_lua_list(words)}\nprefixes = {_lua_list(prefixes)}"
    word = '\'{"text":"\' .. words[math.random(#words)] .. \'","session_id":"\' .. ids[math.random(#ids)] .. \'"'
    bodies = {"unprefixed": word + "}'",
              "prefixed": word + ',"prefix":"\' .. prefixes[math.random(#prefixes)] .. \'","words_only":true}\''}
    workers = _descendants(service.proc.pid)
    out = {}
    for name, body in bodies.items():
        before = {"workers": [_cpu_seconds(p) for p in workers]}
        r = wrk(service.url, _lua_post('"/predict"', body, setup), connections, seconds, workdir)
        after = {"workers": [_cpu_seconds(p) for p in workers]}
        cpu = _cpu_per_request(before, after, r["requests_per_s"] * r["seconds"])
        out[name] = {**r, "worker_cpu_ms": round(cpu["workers_user_ms"] + cpu["workers_sys_ms"], 3)}
    return out


# --- report ---------------------------------------------------------------------------------------------------------

def report(results: dict) -> str:
    eng = {r["batch"]: r for r in results["engine"]}
    fl = {r["connections"]: r for r in results["floor"]}
    ty = {r["connections"]: r for r in results["service"]["typing"]}
    ideal = 1 / (1 / eng[32]["tokens_per_s"] + 1 / fl[64]["requests_per_s"])
    lines = [f"bundle {results['bundle']}, device {results['device']}, {results['workers']} workers, "
             f"{results['cpus']} CPUs", "",
             "| what | measured | against | ratio | target |", "|---|---|---|---|---|"]
    t64 = ty[64]["requests_per_s"]
    lines.append(f"| typing, 64 connections | {t64:.0f} tokens/s | ideal 1/(1/engine@32 + 1/floor@64) = "
                 f"{ideal:.0f} | {t64 / ideal:.2f} | >= 0.60 |")
    budget = eng[1]["step_ms"] + fl[1]["p50_ms"] + 1.5
    lines.append(f"| typing, 1 connection, p50 | {ty[1]['p50_ms']:.2f} ms | engine step {eng[1]['step_ms']:.2f} + "
                 f"floor p50 {fl[1]['p50_ms']:.2f} + 1.5 = {budget:.2f} ms | {ty[1]['p50_ms'] / budget:.2f} | <= 1.00 |")
    s = results["service"]["streams"]
    lines.append(f"| 32 streams (64 tokens, T=1) | {s['tokens_per_s']:.0f} tokens/s | engine@16 x "
                 f"{results['workers']} workers = {eng[16]['tokens_per_s']:.0f} | "
                 f"{s['tokens_per_s'] / eng[16]['tokens_per_s']:.2f} | >= 0.70 |")
    b = results["service"]["batch"]
    lines.append(f"| batch endpoint (64 items, 4 connections) | {b['tokens_per_s']:.0f} tokens/s | engine@32 x "
                 f"{results['workers']} workers = {eng[32]['tokens_per_s']:.0f} | "
                 f"{b['tokens_per_s'] / eng[32]['tokens_per_s']:.2f} | >= 0.60 |")
    c = results["service"]["capacity"]
    lines.append(f"| {c['streams']} streams at once ({c['tokens']} tokens) | {c['completed']} completed, statuses "
                 f"{c['statuses']}, mean batch {c['mean_batch']} | {c['streams']} with 200, mean batch 128 | "
                 f"{c['mean_batch'] / 128:.2f} | >= 1.00 |")
    lines += ["", f"time to first token under 32 streams: p50 {s['ttft_p50_ms']:.1f} ms, p99 {s['ttft_p99_ms']:.1f} "
              f"ms; mean onnxruntime batch {s['mean_batch']}",
              f"{c['streams']} streams at once: {c['tokens_per_s']:.0f} tokens/s, time to first token p50 "
              f"{c['ttft_p50_ms']} ms, p99 {c['ttft_p99_ms']} ms; inter-token time p50 {c['inter_token_p50_ms']} ms, "
              f"p99 {c['inter_token_p99_ms']} ms; /healthz worst {c['healthz_max_ms']} ms over {c['healthz_polls']} "
              f"polls; gunicorn's resident memory {c['rss_rest_mb']} MB at rest, {c['rss_peak_mb']} MB at the peak "
              f"({c['kb_per_stream']} KB an open stream)", "",
              "| connections | service tokens/s | p50 ms | mean batch | floor requests/s | floor p50 ms |",
              "|---|---|---|---|---|---|"]
    for c in TYPING_CONNECTIONS:
        lines.append(f"| {c} | {ty[c]['requests_per_s']:.0f} | {ty[c]['p50_ms']:.2f} | {ty[c]['mean_batch']} | "
                     f"{fl[c]['requests_per_s']:.0f} | {fl[c]['p50_ms']:.2f} |")
    cpu = ty[64].get("cpu_per_request")
    if cpu:
        floor_ms = 1000 * results["cpus"] / fl[64]["requests_per_s"]
        row_ms = 1000 * results["workers"] / eng[32]["tokens_per_s"]
        lines += ["", f"CPU per request, typing at 64 connections: workers {cpu['workers_user_ms']:.2f} ms user + "
                  f"{cpu['workers_sys_ms']:.2f} ms system, Redis {cpu['redis_user_ms'] + cpu['redis_sys_ms']:.2f} ms; "
                  f"the ideal charges {floor_ms + row_ms:.2f} ms (floor {floor_ms:.2f} ms on {results['cpus']} CPUs, "
                  f"a model row at batch 32 {row_ms:.2f} ms)"]
    lines += ["", "| worker class | floor app, 64 connections, requests/s | service typing, 64 connections, tokens/s "
              "| service, 32 streams, tokens/s |", "|---|---|---|---|",
              f"| gthread x 16 | {fl[64]['requests_per_s']:.0f} | | |"]
    alt = results["service_gthread"]
    for name, rows in results["floor_variants"].items():
        service = f"{ty[64]['requests_per_s']:.0f} | {s['tokens_per_s']:.0f}" if name.endswith("GreenletWorker") else (
            f"{alt['typing'][0]['requests_per_s']:.0f} | {alt['streams']['tokens_per_s']:.0f}"
            if name == "gthread x 48" else " | ")
        lines.append(f"| {name} | {rows[0]['requests_per_s']:.0f} | {service} |")
    lines += ["", "| engine batch | tokens/s | ms per call |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['tokens_per_s']:.0f} | {r['step_ms']:.2f} |" for r in results["engine"]]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ty = results["service"]["typing"]
    fl = results["floor"]
    eng = {r["batch"]: r["tokens_per_s"] for r in results["engine"]}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [r["connections"] for r in ty]
    ax.plot(xs, [r["requests_per_s"] for r in ty], "o-", label="service: POST /predict, one word to a session")
    ax.plot(xs, [r["requests_per_s"] for r in fl], "s--", label="floor: bare Flask JSON endpoint (requests/s)")
    ax.axhline(eng[32], color="tab:green", linestyle=":", label="engine in-process, batch 32")
    ax.axhline(eng[1], color="tab:olive", linestyle=":", label="engine in-process, batch 1")
    s = results["service"]["streams"]
    ax.plot([32], [s["tokens_per_s"]], "D", color="tab:red", label="service: 32 SSE streams (generated tokens/s)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("tokens (or requests) per second")
    ax.set_title(f"{results['bundle']} on {results['cpus']} CPUs, {results['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/wikitext2-lstm")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each measurement")
    p.add_argument("--workers", type=int, default=int(os.environ.get("NEXTWORD_WORKERS", "2")))
    p.add_argument("--device", default=os.environ.get("NEXTWORD_DEVICE", "cpu"))
    p.add_argument("--out", default="benchmarks/results", help="folder for results.json and bench.png")
    p.add_argument("--only", choices=("all", "engine"), default="all",
                   help="engine: only the in-process engine table (e.g. the CPU side of a GPU/CPU ratio)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    random.seed(0)
    bundle_dir = Path(args.bundle)
    bundle = load_bundle(bundle_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nextword-bench-") as tmp:
        workdir = Path(tmp)
        results = {"bundle": bundle.name, "device": args.device, "workers": args.workers, "cpus": os.cpu_count(),
                   "seconds": args.seconds, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        results["engine"] = engine(bundle_dir, args.workers, args.seconds, args.device)
        if args.only == "engine":
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nwrote {out / 'results.json'}")
            return 0
        results["floor"] = floor(args.workers, 16, args.seconds, workdir)
        results["floor_variants"] = {
            f"{kind} x {threads}" if kind == "gthread" else kind: floor(args.workers, threads, args.seconds, workdir,
                                                                         worker_class=kind, connections=(64,))
            for kind, threads in FLOOR_VARIANTS}
        results["service"] = service_runs(bundle_dir.parent, bundle, args.workers, args.seconds, args.device,
                                          workdir)
        results["service_gthread"] = service_runs(bundle_dir.parent, bundle, args.workers, args.seconds,
                                                  args.device, workdir, "--worker-class gthread --threads 48",
                                                  full=False)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (out / "results.md").write_text(table + "\n")
    plot(results, out / "bench.png")
    print("\n" + table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
