"""Benchmark: session-step throughput with the batching scheduler vs one onnxruntime call per step.

Run:  python benchmarks/batching.py --bundle models/wikitext2-lstm [--concurrency 1,4,16,64] [--seconds 4]

C client threads each feed single tokens to their own recurrent state as fast as they can (what C
users typing at once look like to one worker). The baseline is the same runtime with
batch_max_size=1, measured in the same run, so the printed ratio is independent of the machine.
Prints one JSON line per concurrency level and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.bundle import load_bundle  # noqa: E402
from service.runtime import ModelRuntime  # noqa: E402


def throughput(runtime: ModelRuntime, clients: int, seconds: float) -> tuple[float, float]:
    """(steps per second, mean rows per onnxruntime call) with `clients` threads stepping for `seconds`."""
    calls = []
    original = runtime.run_batch

    def counting(tokens, states):
        calls.append(tokens.shape[0])
        return original(tokens, states)

    runtime.run_batch = counting
    stop = time.perf_counter() + seconds
    counts = [0] * clients
    vocab = runtime.bundle.vocab_size

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        state = runtime.zero_state()
        while time.perf_counter() < stop:
            _, state = runtime.step(rng.integers(vocab, size=1), state)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    runtime.run_batch = original
    return sum(counts) / elapsed, (sum(calls) / len(calls) if calls else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/wikitext2-lstm")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--wait-ms", type=float, default=0.0, help="NEXTWORD_BATCH_WAIT_MS of the batched runtime")
    args = p.parse_args()
    bundle = load_bundle(Path(args.bundle))
    batched = ModelRuntime(bundle, device="cpu", threads=args.threads, batch_max=64, batch_wait_ms=args.wait_ms)
    single = ModelRuntime(bundle, device="cpu", threads=args.threads, batch_max=1)
    rows = []
    for clients in (int(c) for c in args.concurrency.split(",")):
        base, _ = throughput(single, clients, args.seconds)
        fast, mean_batch = throughput(batched, clients, args.seconds)
        row = {"bundle": bundle.name, "clients": clients, "wait_ms": args.wait_ms, "baseline_steps_per_s": round(base, 1),
               "batched_steps_per_s": round(fast, 1), "speedup": round(fast / base, 2),
               "mean_batch": round(mean_batch, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'clients':>7} {'unbatched/s':>12} {'batched/s':>10} {'speedup':>8} {'mean batch':>10}")
    for r in rows:
        print(f"{r['clients']:>7} {r['baseline_steps_per_s']:>12} {r['batched_steps_per_s']:>10} "
              f"{r['speedup']:>7}x {r['mean_batch']:>10}")
    batched.close()
    single.close()


if __name__ == "__main__":
    main()
