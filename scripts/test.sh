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

# Real receivers and scrapers: Alertmanager (notification tests), Prometheus
# (dashboard queries), Chromium (the status page), all Debian packages; and
# an SMTP server (aiosmtpd, from PyPI). The CI examples (examples/ci/) are
# checked with shellcheck (Debian) and check-jsonschema (PyPI, pinned: its
# vendored GitHub and GitLab schemas change with its version); junitparser
# and markdown (PyPI) read `driftwatch gate`'s reports.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
[ -x /usr/bin/prometheus-alertmanager ] || command -v alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
[ -x /usr/bin/prometheus ] || command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# The join store (RocksDB, built from source by the rocksdb crate) needs a
# C++ compiler, and libclang for its bindings.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  log "installing aiosmtpd"
  python3 -m pip install -q aiosmtpd
fi
check_jsonschema_version=0.39.0
if [ "$(python3 -m check_jsonschema --version 2>/dev/null | awk '{print $NF}')" != "$check_jsonschema_version" ]; then
  log "installing check-jsonschema $check_jsonschema_version"
  python3 -m pip install -q "check-jsonschema==$check_jsonschema_version"
fi
# The Kubernetes manifests (deploy/kubernetes/) are checked with
# kubernetes-validate (PyPI, pinned: its schemas change with its version).
kubernetes_validate_version=1.31.0
if [ "$(python3 -m kubernetes_validate --version 2>/dev/null)" != "$kubernetes_validate_version" ]; then
  log "installing kubernetes-validate $kubernetes_validate_version"
  python3 -m pip install -q "kubernetes-validate==$kubernetes_validate_version"
fi
# The consumers `driftwatch gate`'s reports are read with (JUnit XML, Markdown).
if ! python3 -c 'import junitparser, markdown' >/dev/null 2>&1; then
  log "installing junitparser and markdown"
  python3 -m pip install -q junitparser markdown
fi

log "cargo test (unit, integration, benches as smoke tests)"
cargo test --locked --all-targets "$@"
log "cargo test --doc"
cargo test --locked --doc "$@"

# A new user's first day, end to end (examples/first-day/README.md), with
# the debug binary `cargo test` built.
log "first-day walkthrough"
[ -x target/debug/driftwatch ] || { log "target/debug/driftwatch is missing"; exit 1; }
DRIFTWATCH_BIN=target/debug/driftwatch ./scripts/first-day.sh

# Fuzzing smoke run: every cargo-fuzz target for a few seconds (installs
# cargo-fuzz when missing; stable Rust, no sanitizer). Longer runs by hand:
# ./scripts/fuzz.sh TARGET SECONDS.
log "fuzz smoke run"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ./scripts/fuzz.sh
