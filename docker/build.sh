#!/usr/bin/env bash
# Builds an rmt-serve image with podman and prints its build time and size.
#
#   bash docker/build.sh [cpu|cuda] [tag]        (defaults: cpu, localhost/rmt-serve:<version>[-cuda])
#
# BASE: the Node base image (default node:24-bookworm-slim from Docker Hub). When it cannot be pulled
# (no registry), a base is built from Debian's packages by docker/base/node-base.sh instead.
# CUDA_BASE: the CUDA runtime base of the cuda image (see docker/Dockerfile.cuda).
# NPM_CA_FILE: a CA bundle for npm inside the build, mounted from the host (default: the host's bundle
# when NODE_EXTRA_CA_CERTS names one, for hosts whose outbound TLS is intercepted).
# NO_CACHE=1: build every layer again (for timing a cold build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
flavor="${1:-cpu}"
version="$(node -p "require('./package.json').version")"
case "$flavor" in
  cpu) file=docker/Dockerfile; tag="${2:-localhost/rmt-serve:$version}" ;;
  cuda) file=docker/Dockerfile.cuda; tag="${2:-localhost/rmt-serve:$version-cuda}" ;;
  *) echo "usage: docker/build.sh [cpu|cuda] [tag]" >&2; exit 2 ;;
esac

base="${BASE:-docker.io/library/node:24-bookworm-slim}"
if ! podman image exists "$base" && ! podman pull --quiet "$base" >/dev/null 2>&1; then
  echo "build: cannot pull $base; building a Node base from Debian's packages" >&2
  base=localhost/rmt-node-base:24
  bash docker/base/node-base.sh "$base"
fi
args=(--build-arg "BASE=$base")
if [ "${NO_CACHE:-0}" = 1 ]; then args+=(--no-cache); fi
if [ "$flavor" = cuda ] && [ -n "${CUDA_BASE:-}" ]; then args+=(--build-arg "CUDA_BASE=$CUDA_BASE"); fi
ca="${NPM_CA_FILE:-${NODE_EXTRA_CA_CERTS:-}}"
if [ -n "$ca" ] && [ -f "$ca" ]; then
  args+=(--build-arg "NPM_CA_FILE=/run/host-ca.crt" --volume "$(readlink -f "$ca"):/run/host-ca.crt:ro")
fi

start=$(date +%s)
podman build --quiet --file "$file" "${args[@]}" --tag "$tag" . >/dev/null
secs=$(( $(date +%s) - start ))
size=$(podman image inspect "$tag" --format '{{.Size}}')
base_size=$(podman image inspect "$base" --format '{{.Size}}' 2>/dev/null || echo 0)
echo "build: $tag ($flavor) in ${secs} s: $(( size / 1000000 )) MB, of which base $base $(( base_size / 1000000 )) MB"
