#!/usr/bin/env bash
# Run the matrix-js-sdk interop suite against a locally spawned Paracord.
# Needs Node >= 20 and a built server (PARACORD_BIN, or
# $HOME/.cache/paracord/target/debug/paracord).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund
fi
npm test
