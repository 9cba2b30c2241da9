#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing
# (idempotent: each step is skipped when already done), then runs every test.
# Tests start their own servers (a Tansu Kafka broker per test, on loopback
# ports) and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Tansu: a Kafka-protocol broker, used by the Kafka integration tests.
if ! command -v tansu >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/tansu" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "installing tansu (one-off, about 10 minutes)"
    cargo install tansu --locked --features dynostore
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
log "tansu: $(command -v tansu)"

log "cargo test (unit, integration, benches as smoke tests)"
cargo test --locked --all-targets "$@"
log "cargo test --doc"
cargo test --locked --doc "$@"
