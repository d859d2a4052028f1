#!/usr/bin/env bash
# Builds python_mps.wasm from app.py against Reel's WIT (componentize-py, pinned in tests/run).
set -euo pipefail
cd "$(dirname "$0")"
# pip install --user puts it in ~/.local/bin.
command -v componentize-py >/dev/null || export PATH="$HOME/.local/bin:$PATH"
out=${1:-python_mps.wasm}
componentize-py -d ../../wit -w naming-plugin componentize app -o "$out"
