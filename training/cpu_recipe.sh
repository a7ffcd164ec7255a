#!/usr/bin/env bash
# `make train`: trains an LSTM and a tanh RNN with the CPU recipes (training/config.py, RECIPES) on any machine,
# each within a wall-clock budget, then exports both as bundles and measures them through onnxruntime.
#
#   training/cpu_recipe.sh DATA RUNS MODELS     # DATA: a corpus folder; RUNS: checkpoints; MODELS: the bundles
#   NEXTWORD_MODELS_DIR=MODELS make serve       # then serve them
#
# Both train at once, each on half the cores (THREADS to change it), for BUDGET_MINUTES (default 25, the recipes'
# own budget) plus start-up and the final test; the exports (perplexity of the written files, through onnxruntime)
# take a few minutes more. The recipes were sized for a 2-core machine and a ~1 M-token corpus (docs/training.md):
# on WikiText-2 (2 M tokens) 25 minutes is about 2-3 epochs on 2 cores; more cores or minutes make better models.
# The shipped models/ come from the GPU recipe instead (`make train DEVICE=cuda`, training/gpu_recipe.sh).
set -euo pipefail

DATA=${1:?usage: training/cpu_recipe.sh DATA RUNS MODELS}
RUNS=${2:?usage: training/cpu_recipe.sh DATA RUNS MODELS}
MODELS=${3:?usage: training/cpu_recipe.sh DATA RUNS MODELS}
PYTHON=${PYTHON:-.venv/bin/python}
BUDGET_MINUTES=${BUDGET_MINUTES:-25}
CORES=$(nproc 2>/dev/null || echo 2)
THREADS=${THREADS:-$(( CORES > 1 ? CORES / 2 : 1 ))}
CONTEXT_WINDOW=${CONTEXT_WINDOW:-200}
TRAIN_ARGS=${TRAIN_ARGS:-}  # more `train` options for both, e.g. "--epochs 1 --max-steps 2" for a check of the path
export PYTHONUNBUFFERED=1

mkdir -p "$RUNS" "$MODELS"
one() {  # NAME ARCHITECTURE: train with the architecture's recipe, then export and measure the bundle
  local name=$1 arch=$2
  "$PYTHON" -m training train --data "$DATA" --architecture "$arch" --out "$RUNS/$name" --device cpu \
    --threads "$THREADS" --budget-minutes "$BUDGET_MINUTES" $TRAIN_ARGS >"$RUNS/$name.log" 2>&1
  "$PYTHON" -m training export --checkpoint "$RUNS/$name/best.pt" --out "$MODELS/$name" --data "$DATA" \
    --context-window "$CONTEXT_WINDOW" >>"$RUNS/$name.log" 2>&1
}

echo "training wikitext2-lstm and wikitext2-rnn on CPU, $THREADS threads each, ${BUDGET_MINUTES} min each;" \
     "progress in $RUNS/*.log"
one wikitext2-lstm lstm &
lstm=$!
one wikitext2-rnn rnn_tanh &
rnn=$!
status=0
wait $lstm || { status=1; echo "wikitext2-lstm failed: see $RUNS/wikitext2-lstm.log" >&2; }
wait $rnn || { status=1; echo "wikitext2-rnn failed: see $RUNS/wikitext2-rnn.log" >&2; }
[[ $status == 0 ]] || exit $status
"$PYTHON" -m training summary "$MODELS/wikitext2-lstm" "$MODELS/wikitext2-rnn"
echo "serve them: NEXTWORD_MODELS_DIR=$MODELS make serve"
