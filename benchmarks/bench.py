"""`make bench`: the service against its own ceilings, measured in one run on this machine.

Run:  python benchmarks/bench.py [--bundle models/wikitext2-lstm] [--seconds 4] [--out benchmarks/results]

What it measures, in this order (each a few seconds; about 2 minutes in all on 2 cores):
  engine   the bundle in-process through onnxruntime, W processes x 1 thread (W = NEXTWORD_WORKERS, default
           2), T=1 steps at batch 1..256: the most tokens/s the model itself allows.
  floor    a bare Flask endpoint that parses a small JSON body and answers a small JSON object, under the
           same gunicorn settings as the service (W gthread workers x 16 threads): the most requests/s the
           HTTP stack allows.
  typing   the service (`python -m service`, both shipped bundles, a private Redis): `POST /predict` with one
           vocabulary word to a random one of 512 sessions, at 1, 8 and 64 connections.
  streams  32 connections each running SSE generations of 64 tokens (temperature 1) on random sessions;
           tokens, time to first token and batch sizes read from the service's own /metrics.
  batch    `POST /predict/batch` with 64 single-word items on random sessions, 4 connections.
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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.bundle import load_bundle  # noqa: E402
from service.redis_server import RedisServer  # noqa: E402
from tests.servers import free_port  # noqa: E402

ENGINE_BATCHES = (1, 8, 16, 32, 64, 256)
TYPING_CONNECTIONS = (1, 8, 64)
SESSIONS = 512


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


def floor(workers: int, threads: int, seconds: float, workdir: Path, worker_class: str = "gthread",
          connections: tuple[int, ...] = TYPING_CONNECTIONS) -> list[dict]:
    """The bare app under gunicorn; `worker_class` service.worker.BufferingWorker measures what the service's
    slow-client protection costs on top of gthread."""
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
                  f"  ({worker_class})", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- the service ----------------------------------------------------------------------------------------------------

class Service:
    def __init__(self, models_dir: Path, redis_url: str, workdir: Path, workers: int, device: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "NEXTWORD_BIND": f"127.0.0.1:{self.port}", "NEXTWORD_MODELS_DIR": str(models_dir),
               "REDIS_URL": redis_url, "NEXTWORD_WORKERS": str(workers), "NEXTWORD_DEVICE": device,
               "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prom"), "NEXTWORD_LOG_LEVEL": "warning"}
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


def service_runs(models_dir: Path, bundle, workers: int, seconds: float, device: str, workdir: Path) -> dict:
    redis = RedisServer(workdir / "redis", persist=False)
    service = None
    try:
        service = Service(models_dir, redis.start(), workdir, workers, device)
        ids = _sessions(service.url, SESSIONS)
        words = [w for w in bundle.words[:2000] if w.isalpha()][:500]
        setup = f"ids = {_lua_list(ids)}\nwords = {_lua_list(words)}"
        out: dict = {"typing": [], "streams": {}, "batch": {}}

        typing = _lua_post('"/predict"', '\'{"text":"\' .. words[math.random(#words)] .. \'","session_id":"\' '
                           '.. ids[math.random(#ids)] .. \'"}\'', setup)
        roles = {"workers": _descendants(service.proc.pid), "redis": [redis.pid]}
        for c in TYPING_CONNECTIONS:
            m0 = service.metrics()
            cpu0 = {role: [_cpu_seconds(p) for p in pids] for role, pids in roles.items()}
            r = wrk(service.url, typing, c, seconds, workdir)
            cpu1 = {role: [_cpu_seconds(p) for p in pids] for role, pids in roles.items()}
            m1 = service.metrics()
            r["cpu_per_request"] = _cpu_per_request(cpu0, cpu1, r["requests_per_s"] * r["seconds"])
            r["mean_batch"] = round(_delta(m0, m1, "nextword_model_batch_size_sum")
                                    / max(_delta(m0, m1, "nextword_model_batch_size_count"), 1), 2)
            out["typing"].append({"connections": c, **r})
            print(f"typing  {c:>3} connections: {r['requests_per_s']:>8.0f} tokens/s    p50 {r['p50_ms']:.2f} ms  "
                  f"mean batch {r['mean_batch']}  non-2xx {r['non_2xx']}", flush=True)

        streams = _lua_post('"/sessions/" .. ids[math.random(#ids)] .. "/generate"',
                            '\'{"max_tokens":64,"temperature":1}\'', setup,
                            'wrk.headers["Accept"] = "text/event-stream"')
        m0 = service.metrics()
        began = time.perf_counter()
        r = wrk(service.url, streams, 32, max(seconds, 6), workdir)
        elapsed = time.perf_counter() - began
        m1 = service.metrics()
        tokens = _delta(m0, m1, "nextword_tokens_generated_total")
        out["streams"] = {
            "connections": 32, "generations_per_s": r["requests_per_s"], "tokens_per_s": round(tokens / elapsed, 1),
            "ttft_p50_ms": _histogram_quantile(m0, m1, "nextword_stream_time_to_first_token_seconds", 0.5),
            "ttft_p99_ms": _histogram_quantile(m0, m1, "nextword_stream_time_to_first_token_seconds", 0.99),
            "mean_batch": round(_delta(m0, m1, "nextword_model_batch_size_sum")
                                / max(_delta(m0, m1, "nextword_model_batch_size_count"), 1), 2),
            "non_2xx": r["non_2xx"]}
        s = out["streams"]
        print(f"streams  32 connections: {s['tokens_per_s']:>8.0f} tokens/s    TTFT p50 {s['ttft_p50_ms']:.1f} ms  "
              f"mean batch {s['mean_batch']}  non-2xx {s['non_2xx']}", flush=True)

        # 64 different sessions per request (a partial shuffle), as a gateway sends one pending word per user;
        # concurrent requests still share sessions now and then, and those items are re-run after a lost race.
        item = '\'{"text":"\' .. words[math.random(#words)] .. \'","session_id":"\' .. ids[i] .. \'"}\''
        batch_body = f"""(function() local t = {{}}
  for i = 1, 64 do local j = math.random(i, #ids); ids[i], ids[j] = ids[j], ids[i]; t[i] = {item} end
  return '{{"items":[' .. table.concat(t, ",") .. ']}}' end)()"""
        batch = _lua_post('"/predict/batch"', batch_body, setup) + BATCH_COUNTER
        probe = requests.post(service.url + "/predict/batch", json={"items": [{"text": "the"}]}, timeout=10)
        if probe.status_code == 404:
            print("batch   POST /predict/batch is not served by this version: skipped", flush=True)
        else:
            r = wrk(service.url, batch, 4, seconds, workdir)
            answered, failed = r["items"]  # items in 200 answers, and those of them that carried an error
            out["batch"] = {"connections": 4, "items": 64, "requests_per_s": r["requests_per_s"],
                            "tokens_per_s": round((answered - failed) / r["seconds"], 1), "failed_items": failed,
                            "p50_ms": r["p50_ms"], "non_2xx": r["non_2xx"]}
            print(f"batch     4 connections: {out['batch']['tokens_per_s']:>8.0f} tokens/s    p50 "
                  f"{r['p50_ms']:.2f} ms  failed items {failed}  non-2xx {r['non_2xx']}", flush=True)
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
                 f"{s['tokens_per_s'] / eng[16]['tokens_per_s']:.2f} | >= 0.50 |")
    b = results["service"].get("batch") or {}
    if b:
        lines.append(f"| batch endpoint (64 items, 4 connections) | {b['tokens_per_s']:.0f} tokens/s | engine@64 = "
                     f"{eng[64]['tokens_per_s']:.0f} | {b['tokens_per_s'] / eng[64]['tokens_per_s']:.2f} | >= 0.50 |")
    lines += ["", f"time to first token under 32 streams: p50 {s['ttft_p50_ms']:.1f} ms, p99 {s['ttft_p99_ms']:.1f} "
              f"ms; mean onnxruntime batch {s['mean_batch']}", "",
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
    buffered = {r["connections"]: r for r in results.get("floor_buffering", [])}
    if 64 in buffered:
        lines.append(f"the floor app under service.worker.BufferingWorker (slow-client protection), 64 connections: "
                     f"{buffered[64]['requests_per_s']:.0f} requests/s against {fl[64]['requests_per_s']:.0f} under "
                     f"gthread")
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
        results["floor_buffering"] = floor(args.workers, 16, args.seconds, workdir,
                                           worker_class="service.worker.BufferingWorker", connections=(64,))
        results["service"] = service_runs(bundle_dir.parent, bundle, args.workers, args.seconds, args.device,
                                          workdir)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (out / "results.md").write_text(table + "\n")
    plot(results, out / "bench.png")
    print("\n" + table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
