#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer).
#
#   ./scripts/fuzz.sh                    every target for $FUZZ_SECONDS (10) each:
#                                        the smoke run the test command does
#   ./scripts/fuzz.sh TARGET SECONDS     one target, longer (by hand)
#   ./scripts/fuzz.sh --merge TARGET     fold what a long run found
#                                        (fuzz/target/corpus/TARGET) into the
#                                        committed corpus, minimised
#
# Runs on stable Rust: no sanitizer (`--sanitizer none`; the code is safe
# Rust, libFuzzer still catches panics, hangs and memory blow-ups). New
# inputs go to fuzz/target/corpus/TARGET; the committed corpus in
# fuzz/corpus/TARGET is only read. A crash is saved under
# fuzz/artifacts/TARGET/ and fails the run: turn it into a regression test
# (tests/it/hostile.rs or the unit tests next to the code) and fix it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
TARGETS=(decode_event config rule_file rule_expr baseline rules_test_file)

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (one-off, about 2 minutes)"
  cargo install cargo-fuzz --locked
fi

dict_for() {
  case "$1" in
    decode_event|baseline) echo "-dict=dicts/json.dict" ;;
    rule_expr) echo "-dict=dicts/sql.dict" ;;
    *) echo "-dict=dicts/yaml.dict" ;;
  esac
}

cd fuzz
FLAGS=(--sanitizer none --dev)
# The limits a smoke run enforces: 2 GiB of memory, 20 s per input.
LIMITS=(-rss_limit_mb=2048 -timeout=20 -print_final_stats=1)

run_target() {
  local target="$1" seconds="$2" output="target/fuzz-$1.log"
  mkdir -p "target/corpus/$target"
  log "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run "${FLAGS[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
    "${LIMITS[@]}" "$(dict_for "$target")" -max_total_time="$seconds" >"$output" 2>&1; then
    tail -n 60 "$output"
    log "$target FAILED: the input that failed is under fuzz/artifacts/$target/ (full log: fuzz/$output)"
    return 1
  fi
  # libFuzzer's final statistics: runs, corpus, peak memory.
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$output" | tr '\n' ' '
  echo
}

if [ "${1:-}" = "--merge" ]; then
  target="${2:?usage: fuzz.sh --merge TARGET}"
  cargo fuzz run "${FLAGS[@]}" "$target" "corpus/$target" "target/corpus/$target" -- -merge=1 "$(dict_for "$target")"
  exit 0
fi

log "building the fuzz targets (instrumented; the first build takes several minutes)"
cargo fuzz build "${FLAGS[@]}"
if [ $# -ge 1 ]; then
  run_target "$1" "${2:-600}"
  exit 0
fi
start=$(date +%s)
for target in "${TARGETS[@]}"; do
  run_target "$target" "${FUZZ_SECONDS:-10}"
done
log "fuzz smoke run: ${#TARGETS[@]} targets, $(( $(date +%s) - start ))s, no crash"
