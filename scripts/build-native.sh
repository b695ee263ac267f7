#!/usr/bin/env bash
# npm run native:build: the onnxruntime IO-binding addon (src/engine/native/ort-bound-session.cc) into
# build/native/ort-bound-session.node. Needs g++; the headers come from npm (node-addon-api and
# node-api-headers, dev dependencies; onnxruntime's C/C++ API headers from the package the CUDA
# provider's publisher ships them in, pinned to the same onnxruntime release as the provider).
# At run time the addon loads onnxruntime-node's own libonnxruntime (src/engine/ort-native.ts). Built on
# Debian 12 it needs glibc >= 2.34 and libstdc++ with GLIBCXX_3.4.29 (gcc 11) on the host; linking
# libstdc++ statically would pull in glibc 2.36 symbols (arc4random), so it stays dynamic.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HEADERS_PKG=com.github.asus4.onnxruntime@0.4.9
CACHE=node_modules/.cache/rmt-native
OUT=build/native/ort-bound-session.node
command -v g++ >/dev/null || { echo "build-native: g++ is needed (Debian: apt-get install g++)" >&2; exit 1; }
inc=$CACHE/include
if [ ! -f "$inc/onnxruntime_cxx_api.h" ]; then
  mkdir -p "$CACHE" && rm -rf "$CACHE/x"
  (cd "$CACHE" && npm pack --silent "$HEADERS_PKG" >/dev/null)
  mkdir -p "$CACHE/x" && tar -xzf "$CACHE"/com.github.asus4.onnxruntime-*.tgz -C "$CACHE/x" \
    --wildcards '*/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/*'
  mkdir -p "$inc" && cp "$CACHE"/x/package/Plugins/*/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/*.h "$inc/"
  rm -rf "$CACHE/x" "$CACHE"/*.tgz
fi
mkdir -p "$(dirname "$OUT")"
g++ -std=c++17 -O2 -fPIC -shared -Wall -Wno-unused-parameter -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS \
  -I node_modules/node-api-headers/include -I node_modules/node-addon-api -I "$inc" \
  -o "$OUT.tmp" src/engine/native/ort-bound-session.cc -ldl
mv "$OUT.tmp" "$OUT"
echo "built $OUT"
