#!/usr/bin/env bash
# ENTRYPOINT of the image: `docker run IMAGE train|serve|<any command>`.
# Logs the GPU driver / CUDA situation in one line, then execs the command. tini (PID 1, see the
# Dockerfile) forwards SageMaker's SIGTERM to it and reaps orphans.
#
# torch 2.10 cu128 needs NVIDIA driver >= 525 (CUDA 12 minor-version compatibility). SageMaker
# real-time hosts on g4dn/g5/p4d still default to driver 470. Fixes, best first:
#  1. endpoint config ProductionVariants[].InferenceAmiVersion=al2-ami-sagemaker-inference-gpu-3-1
#     (driver 550), or a g6/p5 instance (535);
#  2. CUDA forward-compat libraries (datacenter GPUs only) in $CUDA_COMPAT_DIR: when the host
#     driver is older than $CUDA_MIN_DRIVER and they are present, they go first on
#     LD_LIBRARY_PATH (NVIDIA Container Toolkit >= 1.17.4 no longer does this for us).
# Without either, torch sees no usable GPU and runs on CPU: this script says so loudly.
set -euo pipefail

NVIDIA_VERSION_FILE="${NVIDIA_VERSION_FILE:-/proc/driver/nvidia/version}"
CUDA_COMPAT_DIR="${CUDA_COMPAT_DIR:-/usr/local/cuda/compat}"
CUDA_MIN_DRIVER="${CUDA_MIN_DRIVER:-525}"

log() { echo "imgclf-entrypoint: $*" >&2; }

check_cuda() {
    if [ ! -r "$NVIDIA_VERSION_FILE" ]; then
        log "no NVIDIA driver visible: running on CPU"
        return 0
    fi
    local driver major
    driver="$(grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' "$NVIDIA_VERSION_FILE" | head -n1 || true)"
    major="${driver%%.*}"
    if [ -z "$major" ]; then
        log "cannot read the driver version from $NVIDIA_VERSION_FILE"
        return 0
    fi
    if [ "$major" -ge "$CUDA_MIN_DRIVER" ]; then
        log "NVIDIA driver $driver: CUDA 12.8 supported"
    elif compgen -G "$CUDA_COMPAT_DIR/libcuda.so.*" >/dev/null; then
        export LD_LIBRARY_PATH="$CUDA_COMPAT_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        log "NVIDIA driver $driver < $CUDA_MIN_DRIVER: using CUDA forward-compat libraries from $CUDA_COMPAT_DIR"
    else
        log "WARNING: NVIDIA driver $driver < $CUDA_MIN_DRIVER is too old for CUDA 12.8; torch will" \
            "fall back to CPU. Use InferenceAmiVersion=al2-ami-sagemaker-inference-gpu-3-1 (driver 550)" \
            "or add CUDA forward-compat libraries to $CUDA_COMPAT_DIR (see README)."
    fi
}

if [ "$#" -eq 0 ]; then
    echo "usage: docker run IMAGE train|serve|<command> [args...]" >&2
    exit 2
fi
check_cuda
exec "$@"
