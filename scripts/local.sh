#!/usr/bin/env bash
# Local mode with docker-compose.yml, like SageMaker local mode (the Makefile's local-* targets
# and scripts/demo.sh call this):
#
#   scripts/local.sh train       # one host: the local job runner (python -m smctl.local train:
#                                # docker run IMAGE train, RUNNER=host: on the host);
#                                # HOSTS=2: JOB_DIR/algo-N trees + compose (algo-1+algo-2)
#   scripts/local.sh serve       # start `serve` on 127.0.0.1:SERVE_PORT with MODEL_DIR, wait for /ping
#   scripts/local.sh down        # stop and remove the containers and the network
#
# Env (defaults): IMGCLF_IMAGE (required: `make -s image-name`), DATA_DIR (sample_data/fashion),
# JOB_DIR (local/train), MODEL_DIR (JOB_DIR/algo-1/model), HOSTS (1), HP ("epochs=2 weights=none":
# space-separated NAME=VALUE hyperparameters), SERVE_PORT (8080), GPU (empty; 1 = add
# docker-compose.gpu.yml), COMPOSE (`docker compose` when present, else docker-compose),
# COMPOSE_PROJECT_NAME (imgclf).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${IMGCLF_IMAGE:?set IMGCLF_IMAGE (make -s image-name)}"
DATA_DIR="${DATA_DIR:-sample_data/fashion}"
JOB_DIR="${JOB_DIR:-local/train}"
MODEL_DIR="${MODEL_DIR:-$JOB_DIR/algo-1/model}"
HOSTS="${HOSTS:-1}"
HP="${HP:-epochs=2 weights=none}"
SERVE_PORT="${SERVE_PORT:-8080}"
PYTHON="${PYTHON:-python3}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-imgclf}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
if [ -z "${COMPOSE:-}" ]; then
    if "$DOCKER" compose version >/dev/null 2>&1; then COMPOSE="$DOCKER compose"; else COMPOSE=docker-compose; fi
fi
files=(-f docker-compose.yml)
[ -n "${GPU:-}" ] && files+=(-f docker-compose.gpu.yml)

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
export IMGCLF_IMAGE SERVE_PORT
export DATA_DIR="$(abspath "$DATA_DIR")" JOB_DIR="$(abspath "$JOB_DIR")" MODEL_DIR="$(abspath "$MODEL_DIR")"
compose() { $COMPOSE "${files[@]}" --profile multihost "$@"; }

train() {
    for ch in train valid test; do
        [ -d "$DATA_DIR/$ch" ] || { echo "local.sh: $DATA_DIR/$ch is missing (make sample-data?)" >&2; exit 1; }
    done
    local hp=() hpflags=()
    for kv in $HP; do hp+=(-H "$kv"); hpflags+=(--hp "$kv"); done
    if [ "$HOSTS" = 1 ]; then
        # The local job runner: docker run IMAGE train with JOB_DIR/algo-1 mounted (and on the
        # host with RUNNER=host); hyperparameters checked against train.py's parser first.
        PYTHONPATH="$PWD/code:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m smctl.local train \
            --data "$DATA_DIR" --job-dir "$JOB_DIR" --runner "${RUNNER:-container}" \
            --image "$IMGCLF_IMAGE" ${GPU:+--gpus} "${hpflags[@]}"
        return
    elif [ "$HOSTS" = 2 ]; then
        # Two hosts stay on docker-compose: its network resolves algo-1/algo-2 for the rendezvous.
        "$PYTHON" scripts/local_mode.py prepare --job-dir "$JOB_DIR" --hosts "$HOSTS" "${hp[@]}" >/dev/null
        # Not --abort-on-container-exit: algo-2 may finish before algo-1 has saved the model.
        compose up --no-color algo-1 algo-2
        local rc=0 code
        for svc in algo-1 algo-2; do
            code="$("$DOCKER" inspect -f "{{.State.ExitCode}}" "$(compose ps -a -q "$svc")")"
            echo "local.sh: $svc exited with $code"
            [ "$code" = 0 ] || rc=1
        done
        compose rm -f -s algo-1 algo-2 >/dev/null 2>&1 || true
        return "$rc"
    else
        echo "local.sh: HOSTS must be 1 or 2 (docker-compose.yml defines algo-1 and algo-2)" >&2
        exit 2
    fi
}

serve() {
    [ -f "$MODEL_DIR/model.json" ] || { echo "local.sh: no model in $MODEL_DIR (make local-train first)" >&2; exit 1; }
    compose up -d serve
    if ! "$PYTHON" scripts/local_mode.py wait --url "http://127.0.0.1:$SERVE_PORT" --timeout "${SERVE_WAIT_S:-120}"; then
        compose logs --tail=50 serve >&2
        exit 1
    fi
    echo "local.sh: serving $MODEL_DIR on http://127.0.0.1:$SERVE_PORT (/ping, /invocations)"
}

down() { compose down --remove-orphans; }

case "${1:-}" in
    train|serve|down) "$1" ;;
    *) echo "usage: $0 train|serve|down" >&2; exit 2 ;;
esac
