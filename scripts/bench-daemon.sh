#!/usr/bin/env bash
# The daemon (`driftwatch run`) reading a backlog of simulated fraud-model
# events (25 features) from a real Kafka-protocol broker (Tansu, in memory)
# on four predictions partitions, with pipeline.lanes 1 and 2: how long
# until every event is counted, events/s, and the daemon's peak RSS. The
# backlog is produced first (`driftwatch simulate --brokers`), so the
# figure is the daemon's reading, decoding and aggregating, with the
# broker serving fetches on the same cores.
#
# Usage: scripts/bench-daemon.sh [EVENTS]   (default 400000; needs tansu,
# which ./scripts/test.sh installs)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-400000}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
bin=$PWD/target/release/driftwatch
work=$(mktemp -d)
# shellcheck source=scripts/lib-tansu.sh
source scripts/lib-tansu.sh
start_tansu "$work"
trap 'kill $broker 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 4 predictions >/dev/null
tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 1 labels >/dev/null
rate=50000
started=$(date +%s.%N)
"$bin" simulate --brokers "127.0.0.1:$port" --rate "$rate" --duration "$(( (events + rate - 1) / rate ))s" --seed 7 \
    >"$work/simulate.log" 2>&1
produced=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
# The simulator paces itself by the wall clock: it may make a few less.
events=$(grep -o 'simulated [0-9]* predictions' "$work/simulate.log" | awk '{print $2}')
echo "backlog: $events events produced in ${produced} s to 4 partitions, $(nproc) cores"
for lanes in 1 2; do
    cat >"$work/run-$lanes.yaml" <<YAML
kafka: {brokers: "127.0.0.1:$port", group_id: bench-$lanes, options: {auto.offset.reset: earliest}}
windows: {size: 5m, allowed_lateness: 10s}
pipeline: {batch_size: 8192, lanes: $lanes}
http: {listen: "127.0.0.1:0"}
output: {window_metrics: $work/rows-$lanes.ndjson}
models: [{name: fraud}]
YAML
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$work/rss-$lanes" "$bin" run --config "$work/run-$lanes.yaml" >"$work/run-$lanes.log" 2>&1 &
    daemon=$!
    address=""
    for _ in $(seq 600); do
        address=$(grep 'HTTP API listening' "$work/run-$lanes.log" | grep -o '127\.0\.0\.1:[0-9]*' | head -1 || true)
        [ -n "$address" ] && break
        sleep 0.1
    done
    counted=0
    while [ "$counted" -lt "$events" ]; do
        sleep 0.2
        counted=$(curl -s "http://$address/metrics" | awk '/^driftwatch_events_total\{.*topic="predictions"/ { n += $2 } END { printf "%d", n }')
    done
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    kill -TERM "$(pgrep -P "$daemon" driftwatch || echo "$daemon")" 2>/dev/null || true
    wait "$daemon" || true
    echo "lanes $lanes: $counted events in ${seconds} s, $(awk -v n="$counted" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }') events/s, peak RSS $(( $(cat "$work/rss-$lanes") / 1024 )) MB"
done
