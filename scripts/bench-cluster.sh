#!/usr/bin/env bash
# Scale-out (docs/SCALING.md): a backlog of simulated fraud-model events
# (25 features) on three predictions partitions of a real Kafka-protocol
# broker (Tansu, in memory), read by one instance alone (no `cluster:`)
# and by clusters of 1, 2 and 3 instances (each a group of its own, with
# a partials topic of its own): how long until every event is counted,
# events/s, the partials topic's traffic (records, bytes, bytes a record
# and an event) and each instance's peak RSS. Everything shares this
# machine's cores, the broker too, so more instances are not faster here;
# the figure is what the partials topic costs.
#
# Usage: scripts/bench-cluster.sh [EVENTS]   (default 300000; needs tansu,
# which ./scripts/test.sh installs)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-300000}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet
bin=$PWD/target/release/driftwatch
work=$(mktemp -d)
# shellcheck source=scripts/lib-tansu.sh
source scripts/lib-tansu.sh
start_tansu "$work"
trap 'kill $broker 2>/dev/null; pkill -P $$ driftwatch 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 3 predictions >/dev/null
tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 1 labels >/dev/null
rate=50000
"$bin" simulate --brokers "127.0.0.1:$port" --rate "$rate" --duration "$(( (events + rate - 1) / rate ))s" --seed 7 \
    >"$work/simulate.log" 2>&1
# The simulator paces itself by the wall clock: it may make a few less.
events=$(grep -o 'simulated [0-9]* predictions' "$work/simulate.log" | awk '{print $2}')
echo "backlog: $events events on 3 partitions, $(nproc) cores"

# Sums a /metrics family over the instances listening at "$@".
metric() {
    local name=$1 filter=$2 total=0 address
    shift 2
    for address in "$@"; do
        total=$(( total + $(curl -s "http://$address/metrics" \
            | awk -v name="$name" -v filter="$filter" '$1 ~ "^"name"($|\\{)" && $0 ~ filter { n += $2 } END { printf "%d", n }') ))
    done
    echo "$total"
}

for setup in alone 1 2 3; do
    if [ "$setup" = alone ]; then count=1; cluster=""; else count=$setup; cluster="cluster: {partials_topic: partials-$setup}"; fi
    pids=()
    addresses=()
    start=$(date +%s.%N)
    for i in $(seq "$count"); do
        cat >"$work/$setup-$i.yaml" <<YAML
kafka: {brokers: "127.0.0.1:$port", group_id: bench-$setup, options: {auto.offset.reset: earliest}}
$cluster
windows: {size: 5m, allowed_lateness: 10s}
pipeline: {batch_size: 8192}
http: {listen: "127.0.0.1:0"}
output: {window_metrics: $work/rows-$setup-$i.ndjson}
models: [{name: fraud}]
YAML
        /usr/bin/time -f "%M" -o "$work/rss-$setup-$i" "$bin" run --config "$work/$setup-$i.yaml" >"$work/$setup-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in $(seq "$count"); do
        address=""
        for _ in $(seq 600); do
            address=$(grep 'HTTP API listening' "$work/$setup-$i.log" | grep -o '127\.0\.0\.1:[0-9]*' | head -1 || true)
            [ -n "$address" ] && break
            sleep 0.1
        done
        addresses+=("$address")
    done
    counted=0
    while [ "$counted" -lt "$events" ]; do
        sleep 0.2
        counted=$(metric driftwatch_events_total 'topic="predictions"' "${addresses[@]}")
    done
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    records=$(metric driftwatch_partials_published_total '' "${addresses[@]}")
    bytes=$(metric driftwatch_partials_published_bytes_total '' "${addresses[@]}")
    for pid in "${pids[@]}"; do kill -TERM "$(pgrep -P "$pid" driftwatch || echo "$pid")" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    rss=$(for i in $(seq "$count"); do echo "$(( $(cat "$work/rss-$setup-$i") / 1024 ))"; done | paste -sd/)
    name="instance alone"; [ "$setup" = alone ] || name="cluster of $setup"
    line="$name: $counted events in ${seconds} s, $(awk -v n="$counted" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }') events/s, peak RSS $rss MB"
    if [ "$setup" != alone ]; then
        line="$line; partials: $records records, $bytes bytes ($(( bytes / (records > 0 ? records : 1) )) a record, $(awk -v b="$bytes" -v n="$counted" 'BEGIN { printf "%.1f", b / n }') an event)"
    fi
    echo "$line"
done
