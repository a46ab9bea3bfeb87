#!/usr/bin/env bash
# Make sure the Dockerfile's base image exists: nothing to do when the tag is there; else pull
# it; where no registry is reachable (this build machine, air-gapped sites) create it from
# Debian's mirror with debootstrap. Safe to call before every build (`make build` does).
#   bash scripts/bootstrap_base_image.sh [TAG]        # default debian:bookworm-slim
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default from the tag,
# bookworm), BOOTSTRAP_NO_PULL=1 (skip the pull), PULL_TIMEOUT_S (120).
# Needs root (debootstrap) and about 30 s.
set -euo pipefail

TAG="${1:-${BASE_IMAGE:-debian:bookworm-slim}}"
SUITE="${SUITE:-$(echo "${TAG#*:}" | cut -d- -f1)}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "bootstrap_base_image: $TAG exists, nothing to do"
    exit 0
fi
# Where a registry is reachable (most laptops) a pull is all it takes; here it fails at once.
if [ "${BOOTSTRAP_NO_PULL:-0}" != 1 ] && timeout "${PULL_TIMEOUT_S:-120}" "$DOCKER" pull -q "$TAG" >/dev/null 2>&1; then
    echo "bootstrap_base_image: pulled $TAG"
    exit 0
fi
command -v debootstrap >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
if ! command -v debootstrap >/dev/null; then
    echo "bootstrap_base_image: cannot pull $TAG and debootstrap is not installed" \
         "(apt-get install debootstrap)" >&2
    exit 1
fi

rootfs="$(mktemp -d /tmp/rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "bootstrap_base_image: debootstrap $SUITE from $MIRROR -> $TAG"
# minbase: essential packages + apt only, the closest thing to the -slim images.
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >/dev/null
# The same trims as Debian's official -slim images: no apt lists, no docs/man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
tar -C "$rootfs" -c . | "$DOCKER" import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$TAG" >/dev/null
echo "bootstrap_base_image: created $TAG ($("$DOCKER" image inspect -f '{{.Size}}' "$TAG") bytes)"
