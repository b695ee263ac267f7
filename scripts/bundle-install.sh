#!/usr/bin/env bash
# Installs the rmt-serve GPU bundle (copied next to its parts as rmt-serve-gpu-install.sh by
# scripts/bundle-gpu.sh). Standalone: needs only bash, coreutils, tar and xz.
#
#   ./rmt-serve-gpu-install.sh <target-dir>
#
# Every part listed in SHA256SUMS (next to this script) must be present and intact before anything
# is written, so a partial upload fails here, naming the part, rather than as a truncated archive.
set -euo pipefail

SRC=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
NAME=rmt-serve-gpu.tar.xz
die() { printf 'rmt-serve-gpu-install: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 <target-dir>"
TARGET=$1
for tool in sha256sum tar xz cat; do command -v "$tool" >/dev/null || die "$tool is needed (apt-get install xz-utils for xz)"; done
[ -f "$SRC/SHA256SUMS" ] || die "SHA256SUMS is missing from $SRC"

parts=()
while read -r sum file; do
  [ -n "$sum" ] || continue
  file=${file#\*} # sha256sum's binary-mode marker
  case "$file" in "$NAME".part[0-9]*) ;; *) die "SHA256SUMS lists an unexpected file: $file" ;; esac
  [ -f "$SRC/$file" ] || die "missing part: $file (expected in $SRC)"
  got=$(sha256sum "$SRC/$file" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || die "corrupt part: $file (sha256 $got, expected $sum)"
  parts+=("$file")
done <"$SRC/SHA256SUMS"
[ ${#parts[@]} -gt 0 ] || die "SHA256SUMS lists no parts"
# A stray part (from another build) would not be in SHA256SUMS and must not be silently ignored.
for f in "$SRC/$NAME".part*; do
  [ -e "$f" ] || continue
  printf '%s\n' "${parts[@]}" | grep -qxF "$(basename "$f")" || die "part not listed in SHA256SUMS: $(basename "$f") (from another build?)"
done
echo "verified ${#parts[@]} parts"

mkdir -p "$TARGET"
TARGET=$(cd "$TARGET" && pwd)
# Parts are listed in split order (part00, part01, ...); sha256sum wrote them sorted.
(cd "$SRC" && cat "${parts[@]}") | xz -dc | tar -xf - -C "$TARGET" --strip-components=1 --no-same-owner
[ -x "$TARGET/rmt-serve-gpu" ] || die "the archive did not contain rmt-serve-gpu"

cat <<EOF
installed into $TARGET

  $TARGET/rmt-serve-gpu check           CUDA provider and host CUDA 13 / cuDNN 9 libraries
  $TARGET/rmt-serve-gpu serve           API + worker on :8080 (Redis: REDIS_URL, else localhost:6379, else the bundled redis-server)
  $TARGET/rmt-serve-gpu redis           the bundled redis-server (then: api / worker with REDIS_URL=redis://127.0.0.1:6379)
  $TARGET/rmt-serve-gpu api | worker | ingest | generate | config

  CUDA_LIB_DIR (default /usr/local/cuda-13.0/targets/x86_64-linux/lib), CUDNN_LIB_DIR (default /usr/lib/x86_64-linux-gnu),
  RMT_EXECUTION_PROVIDER (default cuda), RMT_DATA_DIR (default $TARGET/var)
EOF
