"""`make image-smoke`: runs the built CPU image the way production does and checks that it serves.
Knows the image only from the outside (docker and HTTP); knows nothing of the service's code.

    python3 deploy/image_smoke.py nextword:0.1.0

The container runs with a read-only root file system, /tmp as its only writable path (a tmpfs, as
the Kubernetes emptyDir), no capabilities, and the embedded Redis (no REDIS_URL); its port is
published on 127.0.0.1 only. Checks, in order: it runs as uid 10001 and cannot write outside /tmp;
/readyz answers 200 with every model on the CPU provider and Redis ok; a stateless /predict
returns the requested number of predictions; a session's /generate streams `token` events and
ends with `done`, and the session then holds the prompt and the generated tokens. The container is
removed at the end, also on failure; its log is printed when a check fails. Standard library only,
so it runs with any Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

READY_TIMEOUT_S = 180  # model loading in 2 workers on a busy 2-core machine; the image allows 60 s + 3 x 15 s


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def request(base: str, method: str, path: str, body: dict | None = None, accept: str = "application/json",
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event, data) pairs of a complete text/event-stream body."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"ok   {what}")


def smoke(image: str, name: str) -> None:
    docker("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp:rw,size=256m",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--publish", "127.0.0.1::8000", image)
    port = docker("port", name, "8000/tcp").splitlines()[0].rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}"

    check(docker("exec", name, "id", "-u") == "10001", "runs as uid 10001")
    denied = subprocess.run(["docker", "exec", name, "touch", "/app/probe"], capture_output=True, timeout=60)
    check(denied.returncode != 0, "the root file system is read-only (/app not writable)")

    deadline, status, body = time.monotonic() + READY_TIMEOUT_S, 0, b""
    while time.monotonic() < deadline:
        try:
            status, _, body = request(base, "GET", "/readyz", timeout=5)
        except OSError:  # not listening yet, or the connection reset while gunicorn starts
            status = 0
        if status == 200:
            break
        if docker("inspect", "--format", "{{.State.Running}}", name) != "true":
            raise AssertionError("the container exited before it was ready")
        time.sleep(1)
    check(status == 200, f"/readyz answers 200 within {READY_TIMEOUT_S} s")
    ready = json.loads(body)
    check(ready["redis"] == "ok" and ready["models"], f"/readyz: redis ok, models {[m['name'] for m in ready['models']]}")
    providers = {m["provider"] for m in ready["models"]}
    check(providers == {"CPUExecutionProvider"}, f"every model on the CPU provider ({providers})")

    status, _, body = request(base, "POST", "/predict", {"text": "The game began development in", "top_k": 3})
    predictions = json.loads(body).get("predictions", [])
    check(status == 200 and len(predictions) == 3, f"/predict answers 3 predictions: {[p['word'] for p in predictions]}")

    status, _, body = request(base, "POST", "/sessions", {})
    check(status == 201 or status == 200, f"POST /sessions answers {status}")
    sid = json.loads(body)["session_id"]
    status, headers, raw = request(base, "POST", f"/sessions/{sid}/generate",
                                   {"text": "The game was released in", "max_tokens": 8, "seed": 7},
                                   accept="text/event-stream", timeout=60)
    events = sse_events(raw)
    kinds = [kind for kind, _ in events]
    check(status == 200 and headers.get("Content-Type", "").startswith("text/event-stream"),
          "/generate answers 200 text/event-stream")
    tokens = [data["word"] for kind, data in events if kind == "token"]
    check(tokens and kinds[-1] == "done" and kinds.count("done") == 1,
          f"the stream sends {len(tokens)} token events, then done: {' '.join(tokens)}")
    done = events[-1][1]
    status, _, body = request(base, "GET", f"/sessions/{sid}")
    consumed = json.loads(body)["tokens"]
    check(status == 200 and consumed == 5 + done["tokens"],
          f"the session holds the prompt and the generated tokens ({consumed} = 5 + {done['tokens']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="the image to run, e.g. nextword:0.1.0")
    args = parser.parse_args()
    name = f"nextword-smoke-{int(time.time())}"
    try:
        smoke(args.image, name)
    except (AssertionError, KeyError, ValueError) as error:
        print(f"FAIL {error}", file=sys.stderr)
        logs = subprocess.run(["docker", "logs", "--tail", "40", name], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=60)
        print(logs.stdout, file=sys.stderr)
        return 1
    finally:
        docker("rm", "--force", name, check=False)
    print(f"image-smoke: {args.image} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
