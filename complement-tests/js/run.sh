#!/usr/bin/env bash
# Run the matrix-js-sdk interop suite against a locally spawned Paracord.
# Needs Node >= 20, a built server (PARACORD_BIN, or
# $HOME/.cache/paracord/target/debug/paracord) and, for the end-to-end encryption test,
# paracord-cli (PARACORD_CLI_BIN, or debug/paracord-cli under CARGO_TARGET_DIR), which is
# built here when it is missing. Idempotent: npm and cargo only run when something is missing
# or out of date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paracord/target}"
cli="${PARACORD_CLI_BIN:-$CARGO_TARGET_DIR/debug/paracord-cli}"
if [[ ! -x "$cli" && -z "${PARACORD_CLI_BIN:-}" ]]; then
  # On its own, not with the server: matrix-sdk's ruma features must not reach the server.
  (cd ../.. && cargo build -p paracord-cli --ignore-rust-version)
fi
npm test
