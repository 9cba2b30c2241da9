#!/usr/bin/env bash
# A long fuzzing campaign on one core: builds the targets once, copies the
# binaries aside (so later edits and rebuilds do not disturb the run), then
# runs each target for the given minutes in turn, keeping what it finds in
# fuzz/target/corpus/TARGET. Usage: scripts/fuzz-campaign.sh TARGET=MINUTES...
# e.g. scripts/fuzz-campaign.sh decode_event=30 config=20
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
cargo fuzz build --sanitizer none --dev >/dev/null
bin=$(mktemp -d)
cp target/x86_64-unknown-linux-gnu/debug/{decode_event,config,rule_file,rule_expr,baseline,rules_test_file} "$bin/"
for spec in "$@"; do
  target=${spec%%=*} minutes=${spec#*=}
  case "$target" in
    decode_event|baseline) dict=dicts/json.dict ;;
    rule_expr) dict=dicts/sql.dict ;;
    *) dict=dicts/yaml.dict ;;
  esac
  mkdir -p "target/corpus/$target" "artifacts/$target"
  echo "==> $target for ${minutes} min ($(date -u +%H:%M))"
  "$bin/$target" -artifact_prefix="artifacts/$target/" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
    -dict="$dict" -max_total_time=$((minutes * 60)) "target/corpus/$target" "corpus/$target" \
    >"target/campaign-$target.log" 2>&1 || echo "==> $target stopped with a finding: see fuzz/artifacts/$target/"
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "target/campaign-$target.log" | tr '\n' ' '; echo
done
