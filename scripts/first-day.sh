#!/usr/bin/env bash
# A new user's first day, end to end (examples/first-day/README.md):
# the shop's own event layout, two models (a binary classifier with
# segments and a regression model), baselines built from the shop's
# training files, rules, a webhook receiver, the daemon against a real
# Kafka-protocol broker (Tansu), and `replay` of the same events, whose
# rows must agree with the daemon's.
#
# Builds nothing: it runs $DRIFTWATCH_BIN (default target/debug/driftwatch,
# which `cargo test` builds). Needs tansu (./scripts/test.sh installs it)
# and python3. Every process it starts is stopped when it exits; its work
# directory is removed on success and kept (and named) on failure, or
# always with FIRST_DAY_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'first-day: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

bin=${DRIFTWATCH_BIN:-target/debug/driftwatch}
case $bin in /*) ;; *) bin=$repo/$bin ;; esac
[ -x "$bin" ] || fail "$bin does not exist: run cargo build (or set DRIFTWATCH_BIN)"
tansu=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
[ -x "$tansu" ] || fail "tansu is not installed: ./scripts/test.sh installs it"
helpers=$repo/scripts/first_day_helpers.py

work=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-first-day.XXXXXX")
pids=()
succeeded=false
cleanup() {
  local index pid
  # The last started first: the daemon before the broker it reads.
  for ((index = ${#pids[@]} - 1; index >= 0; index--)); do
    pid=${pids[index]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$succeeded" = true ] && [ "${FIRST_DAY_KEEP:-0}" != 1 ]; then
    rm -rf "$work"
  else
    log "work directory kept: $work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs "$@" until it succeeds, for at most $2 seconds; $1 says what for.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ $? -ge 2 ] && fail "$what: gave up (see above)"
    if [ -n "${daemon:-}" ] && ! kill -0 "$daemon" 2>/dev/null; then
      fail "the daemon exited while waiting for $what (daemon.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The user's directory: configs, rules and training files as committed.
cp -a examples/first-day/. "$work/"
cd "$work"
mkdir -p baselines out

log "1. baselines from the shop's training files"
"$bin" baseline build --quiet --model checkout_fraud --version 2025-12 \
  --input training/checkout_fraud_train.csv \
  --label-column chargeback --prediction-column flagged --score-column fraud_probability \
  --exclude order_id,region --out baselines/checkout_fraud.json
"$bin" baseline build --quiet --model delivery_eta --version 7 --task regression \
  --input training/delivery_eta_train.ndjson \
  --label-column actual_minutes --prediction-column eta_minutes --out baselines/delivery_eta.json

log "2. a webhook receiver standing in for the retraining CI"
python3 "$helpers" hook-receiver hooks hook.port 2>webhook.log &
pids+=($!)
wait_for "the webhook receiver" 10 test -s hook.port

log "3. a Kafka-protocol broker (Tansu, in memory) and the shop's topics"
broker_port=$(free_port)
broker=tcp://127.0.0.1:$broker_port
"$tansu" broker --listener-url "$broker" --advertised-listener-url "$broker" \
  --storage-engine memory://tansu/ --silent </dev/null >broker.log 2>&1 &
pids+=($!)
wait_for "the broker to listen" 30 bash -c "exec 2>/dev/null 3<>/dev/tcp/127.0.0.1/$broker_port"
for topic in shop.predictions shop.outcomes shop.driftwatch-rejected; do
  "$tansu" topic create --broker "$broker" --partitions 1 "$topic" >/dev/null
done

export FIRST_DAY_BROKERS=127.0.0.1:$broker_port
export FIRST_DAY_HOOK_URL=http://127.0.0.1:$(cat hook.port)/retrain
export FIRST_DAY_HTTP_LISTEN=127.0.0.1:0

log "4. config check and rules check"
"$bin" config check --config driftwatch.yaml >config-check.yaml
"$bin" rules check rules.yaml --config driftwatch.yaml

log "5. the daemon"
# Created here: the daemon's redirect may not have run yet when the first
# grep looks (grep exits 2 on a missing file, which ends the wait).
: >daemon.log
"$bin" --log-format json run --config driftwatch.yaml 2>daemon.log &
daemon=$!
pids+=($daemon)
wait_for "the daemon's HTTP API" 60 grep -q 'HTTP API listening' daemon.log
api=http://$(grep -m1 'HTTP API listening' daemon.log | sed -E 's/.*"address":"([^"]+)".*/\1/')
log "   API at $api"

log "6. an hour of the shop's traffic (amounts drift from minute 30)"
python3 generate.py events events
predictions=$(wc -l <events/predictions.ndjson)
labels=$(wc -l <events/labels.ndjson)
# One record per produce request: Tansu serves a fetch that starts inside a
# batch of several records wrongly (tests/it/support.rs), so every record is
# a batch of its own. Predictions and outcomes go in side by side, as a live
# stream interleaves them.
produce() {
  local topic=$1 events=$2 line
  python3 "$helpers" kafka-lines "$events" "$events.kafka"
  while IFS= read -r line; do
    printf '%s\n' "$line" | "$tansu" cat produce --broker "$broker" "$topic" -
  done <"$events.kafka"
}
produce shop.predictions events/predictions.ndjson &
producing_predictions=$!
pids+=($producing_predictions)
produce shop.outcomes events/labels.ndjson &
producing_labels=$!
pids+=($producing_labels)
wait "$producing_predictions" || fail "producing the predictions"
wait "$producing_labels" || fail "producing the outcomes"

log "7. waiting for the daemon to count every event, the windows and the webhook"
wait_for "all $predictions predictions and $labels labels to be consumed" 120 \
  python3 "$helpers" consumed "$api" "$predictions" "$labels"
wait_for "window rows of both models at /api/v1/windows" 60 \
  python3 "$helpers" windows-ready "$api" checkout_fraud delivery_eta
wait_for "the CheckoutAmountDrift webhook" 60 python3 "$helpers" hook-arrived hooks CheckoutAmountDrift

log "8. stopping the daemon (it closes its open windows)"
kill -TERM "$daemon"
deadline=$((SECONDS + 60))
while kill -0 "$daemon" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the daemon did not stop within 60s"
  sleep 0.2
done
status=0
wait "$daemon" || status=$?
[ "$status" = 0 ] || fail "the daemon exited with status $status (daemon.log)"

log "9. replay of the same events, compared with the daemon's rows"
"$bin" replay --config driftwatch.yaml --predictions events/predictions.ndjson --labels events/labels.ndjson \
  --out replay.ndjson --alerts replay-alerts.ndjson 2>replay.log
python3 "$helpers" compare out/window_metrics.ndjson replay.ndjson
grep -q '"alert":"CheckoutAmountDrift","state":"firing"' replay-alerts.ndjson \
  || fail "replay did not fire CheckoutAmountDrift"

succeeded=true
log "OK"
