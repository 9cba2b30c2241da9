#!/usr/bin/env python3
"""Helpers of scripts/first-day.sh (standard library only).

    hook-receiver DIR PORT_FILE      a webhook receiver: each request body to DIR/N.json
    kafka-lines EVENTS OUT           EVENTS as `tansu cat produce` lines
    consumed URL PREDICTIONS LABELS  exit 0 once /metrics counted that many events per topic
    windows-ready URL MODEL...       exit 0 once /api/v1/windows has rows of every MODEL
    hook-arrived DIR ALERT           exit 0 once a `firing` of ALERT was received
    compare DAEMON REPLAY            the daemon's and replay's window_metrics rows agree

The `consumed`, `windows-ready` and `hook-arrived` checks answer at once
(exit 1: not yet); the script polls them with a deadline. `consumed` exits
2 when the daemon rejected an event, since none of the walkthrough's is
invalid.
"""

import http.server
import json
import math
import re
import sys
import urllib.request
from pathlib import Path

# Relative tolerance when comparing the daemon's numbers with replay's.
RELATIVE_TOLERANCE = 1e-9
# Differences printed before the rest are only counted.
MAX_DIFFERENCES_SHOWN = 20


def hook_receiver(directory, port_file):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received = len(list(directory.glob("*.json")))
            temporary = directory / f"{received}.part"
            temporary.write_bytes(body)
            temporary.rename(directory / f"{received}.json")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            sys.stderr.write("webhook receiver: " + (format % args) + "\n")

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    Path(port_file + ".part").write_text(str(server.server_address[1]))
    Path(port_file + ".part").rename(port_file)
    server.serve_forever()


def kafka_lines(events, out):
    with open(events) as source, open(out, "w") as sink:
        for line in source:
            if line.strip():
                sink.write(json.dumps({"value": json.loads(line)}, separators=(",", ":")) + "\n")


def fetch(url):
    """The body at `url`; exit 1 (not yet) when the daemon does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        sys.exit(1)


def consumed(url, predictions, labels):
    per_topic = {}
    invalid = 0.0
    for line in fetch(url + "/metrics").splitlines():
        match = re.match(r'driftwatch_events_total\{([^}]*)\} (\S+)', line)
        if match:
            topic = re.search(r'topic="([^"]*)"', match.group(1)).group(1)
            per_topic[topic] = per_topic.get(topic, 0.0) + float(match.group(2))
        match = re.match(r'driftwatch_events_invalid_total\{[^}]*\} (\S+)', line)
        if match:
            invalid += float(match.group(1))
    if invalid > 0:
        print(f"the daemon rejected {invalid:.0f} events (see its log)", file=sys.stderr)
        sys.exit(2)
    counts = sorted(per_topic.values())
    sys.exit(0 if counts == sorted([float(predictions), float(labels)]) else 1)


def windows_ready(url, models):
    rows = json.loads(fetch(url + "/api/v1/windows"))["windows"]
    seen = {row["model"] for row in rows}
    sys.exit(0 if all(model in seen for model in models) else 1)


def hook_arrived(directory, alert):
    for path in sorted(Path(directory).glob("*.json")):
        transition = json.loads(path.read_text()).get("transition", {})
        if transition.get("alert") == alert and transition.get("state") == "firing":
            print(f"webhook received: {transition.get('annotations', {}).get('summary', alert)}")
            sys.exit(0)
    sys.exit(1)


def read_rows(path):
    rows = {}
    with open(path) as file:
        for number, line in enumerate(file, 1):
            row = json.loads(line)
            key = tuple(row[column] for column in
                        ("model", "model_version", "segment", "window_start", "window_end", "feature", "metric"))
            if key in rows:
                raise SystemExit(f"{path}:{number}: a second row for {key}")
            rows[key] = row
    return rows


def same_value(left, right):
    if isinstance(left, float) or isinstance(right, float):
        if left is None or right is None:
            return left is right
        return math.isclose(left, right, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)
    return left == right


def compare(daemon_path, replay_path):
    daemon = read_rows(daemon_path)
    replay = read_rows(replay_path)
    problems = []
    # Every prediction of the walkthrough gets its label within the label
    # horizon, so every window's final coverage is 1.
    for name, rows in (("daemon", daemon), ("replay", replay)):
        for key, row in rows.items():
            if row["metric"] == "label_coverage" and row["value"] != 1.0:
                problems.append(f"{name}: label_coverage {row['value']} (expected 1) in {key}")
    for key in sorted(daemon.keys() - replay.keys(), key=str):
        problems.append(f"only the daemon has {key}")
    for key in sorted(replay.keys() - daemon.keys(), key=str):
        problems.append(f"only replay has {key}")
    for key in sorted(daemon.keys() & replay.keys(), key=str):
        for column in ("value", "baseline", "threshold", "p_value", "drifted", "sample_count"):
            if not same_value(daemon[key][column], replay[key][column]):
                problems.append(f"{key} {column}: daemon {daemon[key][column]!r}, replay {replay[key][column]!r}")
    if not problems:
        print(f"daemon and replay agree on all {len(daemon)} rows")
        return
    for problem in problems[:MAX_DIFFERENCES_SHOWN]:
        print(problem, file=sys.stderr)
    more = len(problems) - MAX_DIFFERENCES_SHOWN
    if more > 0:
        print(f"... and {more} more", file=sys.stderr)
    sys.exit(f"daemon ({len(daemon)} rows) and replay ({len(replay)} rows) disagree: {len(problems)} differences")


COMMANDS = {
    "hook-receiver": hook_receiver,
    "kafka-lines": kafka_lines,
    "consumed": consumed,
    "windows-ready": lambda url, *models: windows_ready(url, models),
    "hook-arrived": hook_arrived,
    "compare": compare,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
