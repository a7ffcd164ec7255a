#!/usr/bin/env bash
# Turns what training/gpu_recipe.sh wrote into the shipped bundles, on CPU, here:
#
#   training/after_gpu.sh RESULTS DATA [MODELS]   # RESULTS: the recipe's OUT folder; MODELS: default models/
#
# `export` joins each checkpoint's parts, exports ONNX with float16 weights (computed in float32), checks
# onnxruntime against PyTorch, and records in manifest.json the valid/test perplexity it measures through
# onnxruntime on the written file (state carried, and state reset at every line) and the context profile.
set -euo pipefail

RESULTS=${1:?usage: training/after_gpu.sh RESULTS DATA [MODELS]}
DATA=${2:?usage: training/after_gpu.sh RESULTS DATA [MODELS]}
MODELS=${3:-models}
PYTHON=${PYTHON:-.venv/bin/python}
CONTEXT_WINDOW=${CONTEXT_WINDOW:-200}

pids=()
for name in wikitext2-lstm wikitext2-rnn; do  # both at once: each export is one onnxruntime thread, mostly
  "$PYTHON" -m training export --checkpoint "$RESULTS/$name" --out "$MODELS/$name" --data "$DATA" \
    --context-window "$CONTEXT_WINDOW" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
du -cb "$MODELS"/wikitext2-lstm/* "$MODELS"/wikitext2-rnn/* | tail -n 1 \
  | awk '{ printf "both bundles: %.1f MB on disk (limit 64 MB)\n", $1 / 1e6; exit ($1 > 64e6) }'
