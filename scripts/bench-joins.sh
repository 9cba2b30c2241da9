#!/usr/bin/env bash
# The long-horizon label join at volume: N predictions (default 10,000,000)
# over two days of event time, each labelled 20-24 h later, replayed with
# `label_horizon: 24h` twice: the join in memory (no state dir) and the
# join on disk (a state dir: the RocksDB join store, `state.join_memory`
# 256 MiB), which takes a checkpoint every N/4 predictions. Prints wall
# time, events/s (predictions and labels) and peak RSS of each, the
# checkpoint at the most pending joins (time, size), the store's peak size,
# whether the two runs' rows are byte-identical, and whether every label
# joined and each window's accuracy equals numpy's over the same events.
#
# Usage: scripts/bench-joins.sh [N]     (needs numpy; installs it if missing)
# BENCH_DATA=DIR keeps the generated events in DIR and reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000000}
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install -q numpy
cargo build --release --quiet
bin=$PWD/target/release/driftwatch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=${BENCH_DATA:-$work/data}
mkdir -p "$data"
[ -s "$data/expected.json" ] && [ "$(wc -l < "$data/predictions.ndjson")" = "$n" ] \
    || python3 scripts/join-bench-data.py "$data" "$n" 2 7
ln -s "$data/predictions.ndjson" "$data/labels.ndjson" "$data/expected.json" "$work/"
cat > "$work/memory.yaml" <<'YAML'
windows: {size: 1h, allowed_lateness: 10s, label_horizon: 24h}
pipeline: {batch_size: 8192, max_pending_joins: 100000000}
models: [{name: fraud, task: binary_classification}]
YAML
sed 's/^models/state: {dir: state, join_memory: 256MB}\nmodels/' "$work/memory.yaml" > "$work/disk.yaml"
echo "events: $n predictions + $n labels ($(du -chL "$work"/*.ndjson | tail -1 | cut -f1)), $(nproc) cores"
for mode in memory disk; do
    checkpoints=()
    [ "$mode" = disk ] && checkpoints=(--checkpoint-every "$(( (n + 3) / 4 ))")
    # The store's size on disk, sampled every second while the replay runs.
    ( peak=0; while sleep 1; do
        size=$(du -sb "$work"/state/replay-joins-* 2>/dev/null | awk '{s += $1} END {print s + 0}')
        [ "$size" -gt "$peak" ] && peak=$size && echo "$peak" > "$work/store-peak"
      done ) & sampler=$!
    (cd "$work" && /usr/bin/time -f "%e %M" -o "time-$mode" "$bin" replay --config "$mode.yaml" \
        --predictions predictions.ndjson --labels labels.ndjson --out "rows-$mode.ndjson" "${checkpoints[@]}" 2> "log-$mode")
    kill "$sampler" 2>/dev/null || true
    read -r seconds kb < "$work/time-$mode"
    echo "$mode: ${seconds} s wall, $(awk -v n="$n" -v s="$seconds" 'BEGIN { printf "%.0f", 2 * n / s }') events/s, peak RSS $((kb / 1024)) MB"
    grep -E "^(labels|checkpoints):" "$work/log-$mode" || tail -2 "$work/log-$mode"
done
[ -f "$work/store-peak" ] && echo "join store on disk at its peak: $(( $(cat "$work/store-peak") / 1024 / 1024 )) MB"
if cmp -s "$work/rows-memory.ndjson" "$work/rows-disk.ndjson"; then
    echo "rows: byte-identical ($(wc -l < "$work/rows-disk.ndjson") rows)"
else
    echo "rows: DIFFER between the memory and the disk join" >&2
    exit 1
fi
python3 - "$work" "$n" <<'PY'
import datetime, json, sys
work, n = sys.argv[1], int(sys.argv[2])
expected = json.load(open(f"{work}/expected.json"))
seen, labeled = 0, 0
for line in open(f"{work}/rows-disk.ndjson"):
    row = json.loads(line)
    if row["metric"] != "accuracy" or row["segment"] != "":
        continue
    start = int(datetime.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00")).timestamp() * 1000)
    want = expected[str(start)]
    assert abs(row["value"] - want["accuracy"]) < 1e-12, (row, want)
    assert row["sample_count"] == want["labeled"], (row, want)
    seen += 1
    labeled += row["sample_count"]
assert seen == len(expected), f"{seen} accuracy rows, numpy has {len(expected)} windows"
assert labeled == n, f"{labeled} of {n} labels joined"
print(f"accuracy: all {seen} windows equal numpy's; {labeled} of {n} labels joined, none evicted")
PY
