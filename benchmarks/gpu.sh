#!/usr/bin/env bash
# The GPU figures the performance issue asks for, as one call on a lent GPU machine (about 8 minutes):
# `make bench` on CUDA (engine table, typing, streams, batch endpoint, the 1 024-stream capacity run), then the
# CPU engine rows of the same machine for the GPU/CPU ratios at batch 64 and 256. Writes under $OUT (the device
# tool's folder) or benchmarks/results-gpu. Needs wrk and the project's venv (make install-dev) on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
NEXTWORD_DEVICE=cuda make bench BENCH_ARGS="--device cuda --out $out/cuda" 2>&1 | tee "$out/cuda.log"
make bench BENCH_ARGS="--only engine --device cpu --out $out/cpu" 2>&1 | tee "$out/cpu.log"
