#!/usr/bin/env bash
# Runs the crash test (durability::sigkill_at_random_moments…) N times with
# random seeds against a real broker and reports how many passed, with the
# seed of each failure (replay one with DRIFTWATCH_CRASH_SEED=SEED; set
# DRIFTWATCH_KEEP_TEST_DIRS=1 to keep its logs and state). Not part of CI:
# about a minute a run on a 2-core machine.
#   ./scripts/crash-seeds.sh [RUNS]   (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50}"
export PATH="$HOME/.cargo/bin:$PATH"
command -v tansu >/dev/null || { echo "tansu is missing: run ./scripts/test.sh once (it installs it)" >&2; exit 2; }
cargo test --locked --test it --no-run >/dev/null 2>&1
logs="$(mktemp -d)"
passed=0
failed=()
for run in $(seq 1 "$runs"); do
  log="$logs/run-$run.log"
  seed="$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
  if DRIFTWATCH_CRASH_SEED="$seed" cargo test --locked --test it durability::sigkill_at_random_moments -- --nocapture >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "run $run: pass ($(grep -o 'crash test seed [0-9]*' "$log"))"
  else
    failed+=("$seed")
    echo "run $run: FAIL (seed $seed, log $log)"
  fi
done
echo "crash test: $passed of $runs passed${failed:+; failing seeds: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
