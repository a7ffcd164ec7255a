"""service.offload with the scheduler in a gevent-patched process, as under gunicorn's gevent worker: model calls and
sampling run on native threads, and the event loop keeps running while they do.

The patched process is a child (monkey-patching pytest itself would change every other test); it prints what it saw as
JSON. The fake model holds its thread in a blocking (unpatched) sleep, as onnxruntime holds a core: run on the event
loop, it would stall the heartbeat greenlet for the whole call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.offload import offloader

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
from gevent import monkey
monkey.patch_all()

import json, threading, time
import gevent
import numpy as np
from service.sampling import SamplingParams
from service.scheduler import Scheduler, Stream
from tests.test_engine import FakeRuntime

blocking_sleep = monkey.get_original("time", "sleep")
real_ident = monkey.get_original("threading", "get_ident")
loop_thread = real_ident()
CALL_S = 0.25


class SlowRuntime(FakeRuntime):
    def __init__(self):
        super().__init__()
        self.threads = []

    def run(self, tokens, states, with_log_probs=True):
        self.threads.append(real_ident())
        blocking_sleep(CALL_S)
        return super().run(tokens, states, with_log_probs)


gaps = []

def heartbeat():
    last = time.perf_counter()
    while True:
        gevent.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now

beat = gevent.spawn(heartbeat)
runtime = SlowRuntime()
scheduler = Scheduler(runtime)
log_probs, state = scheduler.step(np.array([2, 3]))          # a step (a group call)
stream = Stream(state, log_probs, SamplingParams(seed=1), 3, frozenset(), runtime.bundle.eos)
scheduler.start(stream)                                        # three ticks: sampling, then a call each
kinds = []
while not kinds or kinds[-1] not in ("end", "error"):
    kinds.append(stream.next_event(10)[0])
beat.kill()
scheduler.close()
print(json.dumps({"calls": len(runtime.threads), "on_loop": sum(t == loop_thread for t in runtime.threads),
                  "worst_gap_s": max(gaps), "beats": len(gaps), "kinds": kinds}))
'''


def test_model_calls_never_run_on_the_event_loop():
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["kinds"] == ["token", "token", "token", "end"]
    assert seen["calls"] == 4 and seen["on_loop"] == 0
    # four calls of 0.25 s: on the loop, the heartbeat would miss a 0.25 s stretch four times
    assert seen["beats"] > 100 and seen["worst_gap_s"] < 0.1, seen


def test_without_gevent_calls_run_in_place():
    import threading

    ran_on = []
    run = offloader()
    assert run(lambda x: ran_on.append(threading.get_ident()) or x * 2, 21) == 42
    assert ran_on == [threading.get_ident()]
