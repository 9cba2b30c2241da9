#!/usr/bin/env bash
# Replay of 1,000,000 simulated fraud-model events (25 features) dealt over
# four files, with --lanes 1 and --lanes 2: wall time, events/s and peak
# RSS of each, and whether their rows are byte-identical.
#
# Usage: scripts/bench-replay.sh [EVENTS]   (default 1000000)
# DRIFTWATCH_BIN=path/to/driftwatch measures that binary instead of
# building target/release/driftwatch (to compare builds).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
bin=${DRIFTWATCH_BIN:-target/release/driftwatch}
if [ -z "${DRIFTWATCH_BIN:-}" ]; then
    cargo build --release --quiet
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
duration=$(( (events + 999) / 1000 ))
"$bin" simulate --out "$work/all.ndjson" --rate 1000 --duration "${duration}s" --seed 7 >/dev/null 2>&1
head -n "$events" "$work/all.ndjson" | awk -v dir="$work" '{ print > (dir "/predictions-" (NR % 4) ".ndjson") }'
cat > "$work/bench.yaml" <<'YAML'
windows: {size: 5m, allowed_lateness: 10s}
pipeline: {batch_size: 8192}
models: [{name: fraud}]
YAML
count=$(cat "$work"/predictions-*.ndjson | wc -l)
echo "events: $count in 4 files ($(du -ch "$work"/predictions-*.ndjson | tail -1 | cut -f1)), $(nproc) cores"
for lanes in 1 2; do
    /usr/bin/time -f "%e %M" -o "$work/time-$lanes" "$bin" replay --config "$work/bench.yaml" \
        --predictions "$work"/predictions-{0,1,2,3}.ndjson --lanes "$lanes" --out "$work/rows-$lanes.ndjson" 2>/dev/null
    read -r seconds kb < "$work/time-$lanes"
    echo "lanes $lanes: ${seconds} s wall, $(awk -v n="$count" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }') events/s, peak RSS $((kb / 1024)) MB"
done
if cmp -s "$work/rows-1.ndjson" "$work/rows-2.ndjson"; then
    echo "rows: byte-identical ($(wc -l < "$work/rows-1.ndjson") rows)"
else
    echo "rows: DIFFER between --lanes 1 and --lanes 2" >&2
    exit 1
fi
