#!/usr/bin/env bash
# Make Docker usable on a Debian machine where nothing runs yet (CI, fresh VM), then make sure
# the base image exists. Idempotent and quick when everything is already there:
#   bash scripts/setup_docker.sh
# - installs Debian's docker.io, docker-compose (v1) and debootstrap if one of them is missing
#   (apt-get update first; needs root or sudo);
# - starts dockerd in the background if `docker info` fails, and waits for it;
# - bootstraps the base image with scripts/bootstrap_base_image.sh (only when the tag is missing).
# Set SKIP_BASE_IMAGE=1 to skip the last step.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# /usr/bin/docker is Debian's client: it has BuildKit (secrets, cache mounts); a second client
# in /usr/local/bin may lack buildx. Prefer Debian's when present.
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}"
DOCKERD_WAIT_S="${DOCKERD_WAIT_S:-60}"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
# A docker *client* alone is not enough (fresh machines here ship /usr/local/bin/docker without an
# engine): install Debian's engine unless one answers already or dockerd is installed.
if ! "${DOCKER:-docker}" info >/dev/null 2>&1 && ! command -v dockerd >/dev/null \
        && [ ! -x /usr/sbin/dockerd ]; then
    missing+=(docker.io)
fi
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup_docker: installing ${missing[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    DOCKER="$(command -v /usr/bin/docker || command -v docker)"
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
    if pgrep -x dockerd >/dev/null; then
        echo "setup_docker: dockerd is running but not answering yet; waiting"
    else
        log="$(mktemp /tmp/dockerd.XXXXXX.log)"
        echo "setup_docker: starting dockerd (log: $log)"
        sudo_ setsid dockerd >"$log" 2>&1 < /dev/null &
    fi
    for _ in $(seq "$DOCKERD_WAIT_S"); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! "$DOCKER" info >/dev/null 2>&1; then
        echo "setup_docker: dockerd did not answer within ${DOCKERD_WAIT_S}s" >&2
        [ -n "${log:-}" ] && tail -n 30 "$log" >&2
        exit 1
    fi
fi
echo "setup_docker: $("$DOCKER" version --format 'engine {{.Server.Version}}, client {{.Client.Version}}')"

if [ "${SKIP_BASE_IMAGE:-0}" != 1 ]; then
    bash "$here/bootstrap_base_image.sh"
fi
