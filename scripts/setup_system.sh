#!/usr/bin/env bash
# OS-level things the test suite needs beyond the venv, installed only when missing:
#   - a Java runtime (multi-model-server runs on it),
#   - Debian's dataset-fashion-mnist (the real sample photos),
#   - docker-registry (a registry on loopback for the build-push test),
#   - Docker engine, docker-compose, debootstrap and the base image (scripts/setup_docker.sh).
# As root (CI, a fresh VM) it installs them with apt-get; otherwise it lists what is missing and
# the tests that need it skip with a message (in CI, CI=true, those tests fail instead).
#   bash scripts/setup_system.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v java >/dev/null || missing+=(default-jre-headless)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v docker-registry >/dev/null || [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)

if [ "$(id -u)" -ne 0 ] && [ "${CI:-}" != "true" ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup_system: not root, not installing: ${missing[*]} (sudo apt-get install ${missing[*]});" \
             "tests that need them will skip" >&2
    fi
    if ! docker info >/dev/null 2>&1; then
        echo "setup_system: no Docker engine answering; container tests will skip" \
             "(run 'sudo bash scripts/setup_docker.sh' to set one up)" >&2
    fi
    exit 0
fi

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup_system: installing ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
bash "$here/setup_docker.sh"
