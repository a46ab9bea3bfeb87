#!/usr/bin/env bash
# The whole loop in containers, the way SageMaker runs it:
#   build the image -> sample data -> `train` (docker-compose) -> `serve` -> evaluate the
#   held-out split through /invocations (smctl evaluate --url: report.html) -> tear down.
#   bash scripts/demo.sh          (what `make demo` runs)
# Env: IMAGE (default `make -s image-name`), SAMPLE_DIR (sample_data/fashion), DEMO_DIR
# (local/demo), HP (hyperparameters, NAME=VALUE ...), SERVE_PORT (8080), SKIP_BUILD=1, PY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
IMAGE="${IMAGE:-$(make -s image-name)}"
SAMPLE_DIR="${SAMPLE_DIR:-sample_data/fashion}"
DEMO_DIR="${DEMO_DIR:-local/demo}"
# weights=none: no ImageNet weights offline. 28 px photos: 32 px crops train fast on a CPU.
HP="${HP:-epochs=6 weights=none arch=resnet18 image-size=32 batch-size=64 optimizer=adamw lr=0.002}"
export IMGCLF_IMAGE="$IMAGE" DATA_DIR="$SAMPLE_DIR" JOB_DIR="$DEMO_DIR" HP HOSTS=1 PYTHON="$PY"
export SERVE_PORT="${SERVE_PORT:-8080}"
step() { printf '\n=== %s\n' "$*"; }

t0=$SECONDS
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    step "build $IMAGE"
    make -s build IMAGE="$IMAGE" >/dev/null
fi
step "sample data in $SAMPLE_DIR"
[ -d "$SAMPLE_DIR/test" ] || "$PY" scripts/make_sample_data.py --out "$SAMPLE_DIR"

trap 'step "tear down"; bash scripts/local.sh down >/dev/null 2>&1 || true' EXIT
step "train in the container (the local job runner: docker run IMAGE train; $HP)"
bash scripts/local.sh train 2>&1 | grep -E "^epoch [0-9]|^average test|Reporting training|ERROR" || true
[ -f "$DEMO_DIR/algo-1/output/success" ] || { echo "training failed: $(cat "$DEMO_DIR/algo-1/output/failure" 2>/dev/null)"; exit 1; }

step "serve (docker-compose service serve on 127.0.0.1:$SERVE_PORT)"
bash scripts/local.sh serve

step "evaluate the served model on the held-out images ($SAMPLE_DIR/test)"
PYTHONPATH=code:scripts "$PY" -m smctl evaluate --data "$SAMPLE_DIR/test" \
    --url "http://127.0.0.1:$SERVE_PORT" --output "$DEMO_DIR/eval"
echo "artifacts: $DEMO_DIR/algo-1/model (model.pt, model.json), $DEMO_DIR/algo-1/output/data (metrics, curves, reports, evaluation/)"
echo "evaluation of the endpoint: $DEMO_DIR/eval/report.html (evaluation.json, predictions.csv)"
echo "demo took $((SECONDS - t0))s"
