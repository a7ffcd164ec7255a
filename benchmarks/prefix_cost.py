"""What `prefix` adds to a /predict request: the service (both shipped bundles, a private Redis) under the typing
load of `make bench`, with and without the word in progress, alternated `--rounds` times (other load on the machine
then hits both alike). Prints each round and the medians; docs/typing.md reports them.

Run:  python benchmarks/prefix_cost.py [--seconds 4] [--rounds 5] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import SESSIONS, Service, _sessions, prefix_cost  # noqa: E402
from service.bundle import load_bundle  # noqa: E402
from service.process.redis_server import RedisServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/wikitext2-lstm")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    bundle_dir = Path(args.bundle)
    bundle = load_bundle(bundle_dir)
    words = [w for w in bundle.words[:2000] if w.isalpha()][:500]  # as `make bench` types
    with tempfile.TemporaryDirectory(prefix="nextword-prefix-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis", persist=False)
        service = None
        try:
            service = Service(bundle_dir.parent, redis.start(), workdir, args.workers, "cpu")
            ids = _sessions(service.url, SESSIONS)
            prefix_cost(service, ids, words, args.connections, 1, workdir)  # warm-up
            rounds = []
            for n in range(args.rounds):
                r = prefix_cost(service, ids, words, args.connections, args.seconds, workdir)
                rounds.append(r)
                print(json.dumps({"round": n, **{k: {m: v[m] for m in ("requests_per_s", "p50_ms", "worker_cpu_ms",
                                                                        "non_2xx")} for k, v in r.items()}}),
                      flush=True)
        finally:
            if service is not None:
                service.stop()
            redis.stop()
    med = {k: {m: statistics.median(r[k][m] for r in rounds) for m in ("requests_per_s", "p50_ms", "worker_cpu_ms")}
           for k in ("unprefixed", "prefixed")}
    ratio = {m: round(med["prefixed"][m] / med["unprefixed"][m], 3) for m in ("p50_ms", "worker_cpu_ms")}
    ratio["requests_per_s"] = round(med["unprefixed"]["requests_per_s"] / med["prefixed"]["requests_per_s"], 3)
    print(json.dumps({"medians": med, "cost_ratio_prefixed_over_unprefixed": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
