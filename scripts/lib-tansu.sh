# shellcheck shell=bash
# Sourced by the benchmark scripts (not run): starts a Tansu broker, the
# Kafka-protocol broker the tests use, with in-memory storage on a free
# loopback port.
#   start_tansu DIR   logs to DIR/tansu.log; sets $port and $broker (its
#                     pid) and returns once it listens. The caller stops it
#                     (kill "$broker"), usually in its EXIT trap.
start_tansu() {
    command -v tansu >/dev/null || { echo "tansu is missing: run ./scripts/test.sh once (it installs it)" >&2; exit 2; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ --silent >"$1/tansu.log" 2>&1 &
    # shellcheck disable=SC2034 # the caller stops it
    broker=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
