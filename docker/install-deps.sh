#!/bin/sh
# Run inside an image build (docker/Dockerfile*), in /app holding package.json and package-lock.json:
# production dependencies only, then everything another platform would need is removed.
#
# NPM_CA_FILE: a CA bundle for npm's TLS where outbound TLS is intercepted (mount it into the build).
set -eu
if [ -n "${NPM_CA_FILE:-}" ]; then export NODE_EXTRA_CA_CERTS="$NPM_CA_FILE"; fi
# onnxruntime-node's own install step (a NuGet fetch of CUDA 12 binaries) never runs: package.json's
# allowScripts denies it (npm >= 11.16); with an older npm in the base image it runs and exits at once
# on ONNXRUNTIME_NODE_INSTALL=skip, which its install script reads.
export ONNXRUNTIME_NODE_INSTALL=skip
npm ci --omit=dev --no-audit --no-fund --no-update-notifier --loglevel=error
npm cache clean --force 2>/dev/null
arch="$(node -p process.arch)"
# onnxruntime-node ships every platform's build (about 240 MB); keep linux/<arch>.
ort=node_modules/onnxruntime-node/bin/napi-v6
find "$ort" -mindepth 2 -maxdepth 2 -type d ! -path "$ort/linux/$arch" -exec rm -rf {} +
find "$ort" -mindepth 1 -maxdepth 1 -type d ! -name linux -exec rm -rf {} +
test -f "$ort/linux/$arch/libonnxruntime.so.1"
# Other native prebuilds (node-gyp-build layout): keep linux-<arch> only.
find node_modules -type d -name prebuilds -prune | while read -r d; do
  find "$d" -mindepth 1 -maxdepth 1 -type d ! -name "linux-$arch*" -exec rm -rf {} +
done
