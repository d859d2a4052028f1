#!/usr/bin/env bash
# Builds js_mps.wasm from app.js against Reel's WIT with jco (QuickJS, synchronous: Reel's
# engine runs components without the async ABI), at the version package-lock.json pins.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-js_mps.wasm}
[ -x node_modules/.bin/jco ] || npm ci --no-audit --no-fund >/dev/null
node_modules/.bin/jco componentize app.js --wit ../../wit --world-name naming-plugin --backend qjs \
    --backend-qjs-disable-async -o "$out" >/dev/null
