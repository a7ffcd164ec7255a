#!/usr/bin/env bash
# Trains the two shipped models (models/wikitext2-lstm, models/wikitext2-rnn) at once on one CUDA GPU
# within a wall-clock budget, then writes weights-only float16 checkpoints in parts of <= 15 MiB.
#
#   training/gpu_recipe.sh DATA OUT            # the real run: DATA = WikiText-2 folder, OUT = results folder
#   training/gpu_recipe.sh DATA OUT --smoke    # the same commands on CPU, 2 steps per epoch (a check, not a model)
#
# Needs only python3 with torch, numpy and tqdm (no pip install): run it from the repository root.
# OUT receives 7 files: NAME.log (the command, per-epoch progress, timing, the checkpoint's sha256) and
# NAME/checkpoint.pt.part-NN for NAME in wikitext2-lstm (3 parts) and wikitext2-rnn (2 parts).
# Afterwards, here: training/after_gpu.sh OUT DATA (exports both bundles and measures them with onnxruntime).
#
# Throughput estimate behind the sizes (H200, TF32 matmuls, cuDNN): WikiText-2 train is 2.09 M tokens;
# the LSTM at batch 64 x bptt 70 takes 467 steps per epoch, estimated at ~10-15 ms each (two cuDNN layers
# over 70 steps plus a 4480 x 400 x 33278 softmax), i.e. ~5-7 s per epoch and ~40 epochs in 4.5 minutes;
# the RNN (batch 64 x bptt 35, 933 steps) is cheaper per step. Measured on the first H200 run, both sharing
# the GPU: LSTM ~150 k tokens/s (~30 ms a step, 14 s an epoch, 16 epochs), RNN ~205 k tokens/s (21 epochs).
# The cosine schedule follows the wall clock, so each run ends at its low learning rate either way.
set -euo pipefail

DATA=${1:?usage: training/gpu_recipe.sh DATA OUT [--smoke]}
OUT=${2:?usage: training/gpu_recipe.sh DATA OUT [--smoke]}
MODE=${3:-}
BUDGET_MINUTES=${BUDGET_MINUTES:-4.5}  # each model; startup, final test and packing add ~30 s
LIMIT_SECONDS=${LIMIT_SECONDS:-390}    # hard stop (SIGINT keeps best.pt) should a run overshoot its budget
RUNS=${RUNS:-${TMPDIR:-/tmp}/nextword-runs}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

COMMON=(--optimizer adam --schedule cosine --lr-floor 0.02 --warmup-steps 200 --weight-decay 1.2e-6
        --softmax full --tied --layers 2 --batch-size 64 --eval-batch-size 10 --epochs 200 --seed 1111)
if [[ "$MODE" == "--smoke" ]]; then
  RUN=(--device cpu --threads 1 --budget-minutes 0 --epochs 2 --max-steps 2 ${SMOKE_ARGS:-})
  LIMIT_SECONDS=600
else
  RUN=(--device cuda --threads 4 --budget-minutes "$BUDGET_MINUTES")
  # Fail in seconds, not minutes, when the machine is not what the recipe needs.
  "$PYTHON" -c "import sys, torch, numpy, tqdm
if not torch.cuda.is_available():
    sys.exit('error: the GPU recipe needs a CUDA GPU, and torch ' + torch.__version__ + ' sees none; '
             'run \`make train\` for the CPU recipe instead')
print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
  [[ -f "$DATA/train.txt" && -f "$DATA/valid.txt" && -f "$DATA/test.txt" ]] || { echo "no corpus in $DATA" >&2; exit 2; }
fi
# 2x650 LSTM, 400-wide tied embedding through a projection: 19.7 M parameters, 39 MB as float16.
LSTM=(--architecture lstm --embedding-size 400 --hidden-size 650 --bptt 70 --lr 2e-3 --clip 0.5
      --dropout 0.4 --dropout-input 0.3 --dropout-hidden 0.2 --dropout-embedding 0.1 --weight-drop 0.25)
# 2x768 tanh RNN, 256-wide tied embedding through a projection: 10.7 M parameters, 21 MB as float16.
RNN=(--architecture rnn_tanh --embedding-size 256 --hidden-size 768 --bptt 35 --lr 1e-3 --clip 0.25
     --dropout 0.3 --dropout-input 0.2 --dropout-hidden 0.15 --dropout-embedding 0.05 --weight-drop 0.15)

mkdir -p "$OUT" "$RUNS"
one() {  # NAME ARGS...: train (stopped by SIGINT after LIMIT_SECONDS at the latest), then pack best.pt
  local name=$1; shift
  local log="$OUT/$name.log"
  local cmd=("$PYTHON" -m training train --data "$DATA" --out "$RUNS/$name" "${COMMON[@]}" "$@" "${RUN[@]}")
  {
    echo "# $(date -u +%FT%TZ) $(uname -n) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
    echo "# ${cmd[*]}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    local started=$SECONDS
    timeout -s INT "$LIMIT_SECONDS" "${cmd[@]}" || echo "# train exited with status $?"
    echo "# train wall time $((SECONDS - started)) s"
    "$PYTHON" -m training compact --checkpoint "$RUNS/$name/best.pt" --out "$OUT/$name" --dtype float16 --part-mib 15
    echo "# $(date -u +%FT%TZ) done"
  } >"$log" 2>&1
}

one wikitext2-lstm "${LSTM[@]}" &
lstm=$!
one wikitext2-rnn "${RNN[@]}" &
rnn=$!
status=0
wait $lstm || status=1
wait $rnn || status=1
for name in wikitext2-lstm wikitext2-rnn; do
  echo "== $name"
  grep -E "^(#|epoch [0-9]+:|best valid|wall-clock|error|\{)|Traceback|Error" "$OUT/$name.log" | tail -n 40 || true
done
ls -l "$OUT" "$OUT"/*/ || true
exit $status
