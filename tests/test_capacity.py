"""Capacity limits that apply: beyond NEXTWORD_MAX_STREAMS a generation is refused at once (429 with Retry-After),
and health checks are always answered, however many generations are open (issue: floods)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.test_generate import PACE_MS, PROMPT


def test_200_concurrent_generations_leave_health_checks_answered(service_factory):
    # one worker with 32 streams; every tick takes >= PACE_MS, so a 16-token generation holds its slot for about a
    # second and the flood really overflows the limit
    service = service_factory(workers=1, NEXTWORD_BATCH_WAIT_MS=str(PACE_MS), NEXTWORD_MAX_STREAMS="32")
    sids = [requests.post(service.url + "/sessions", timeout=10).json()["session_id"] for _ in range(200)]
    polls: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or len(polls) < 5:  # at least five polls, however fast the flood went
            started = time.perf_counter()
            response = requests.get(service.url + "/healthz", timeout=10)
            polls.append(time.perf_counter() - started if response.status_code == 200 else float("inf"))
            stop.wait(0.1)

    def generate(sid: str) -> tuple[int, str | None]:
        response = requests.post(f"{service.url}/sessions/{sid}/generate", timeout=60,
                                 json={"text": PROMPT, "max_tokens": 16, "seed": 1})
        return response.status_code, response.headers.get("Retry-After")

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(generate, sids))
    finally:
        # the flood can end within half a second (the worker reads whole requests, so the streams reach the
        # scheduler together and tick without waiting for peers): poll a little past it, five polls at least
        deadline = time.monotonic() + 5
        while len(polls) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        poller.join()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429}, statuses  # none 5xx, none hung (a hang would raise a timeout above)
    assert statuses.count(429) > 0 and statuses.count(200) >= 32, statuses
    assert all(retry == "1" for status, retry in answers if status == 429)
    assert len(polls) >= 5 and max(polls) < 1.0, polls  # every poll answered, none waited behind the streams
    assert "Traceback" not in service.log()
