#!/usr/bin/env python3
"""Writes the long-horizon label-join bench's events: N binary-model
predictions spread over DAYS of event time (one feature, a prediction and a
score), and one label per prediction arriving 20-24 hours after it, each
file in event-time order. Also writes the accuracy numpy computes per
one-hour window (expected.json), which the bench compares with driftwatch's
rows.

Usage: join-bench-data.py OUT_DIR [N] [DAYS] [SEED]
"""
import json
import sys

import numpy as np

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
days = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 7
rng = np.random.default_rng(seed)
start_ms = 1_795_651_200_000  # 2026-11-26T00:00:00Z
span_ms = int(days * 86_400_000)
times = np.sort(rng.integers(0, span_ms, size=n)) + start_ms
predicted = rng.integers(0, 2, size=n)
# The label agrees with the prediction 80% of the time.
actual = np.where(rng.random(n) < 0.8, predicted, 1 - predicted)
scores = np.round(rng.random(n), 4)
amounts = np.round(rng.gamma(2.0, 30.0, size=n), 2)
delays = rng.integers(20 * 3_600_000, 24 * 3_600_000 + 1, size=n)
label_times = times + delays

chunk = 200_000
with open(f"{out}/predictions.ndjson", "w") as f:
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        f.write("".join(
            f'{{"event_id":{i},"model":"fraud","timestamp":{t},"features":{{"amount":{a}}},"prediction":{p},"score":{s}}}\n'
            for i, t, a, p, s in zip(range(lo, hi), times[lo:hi].tolist(), amounts[lo:hi].tolist(),
                                     predicted[lo:hi].tolist(), scores[lo:hi].tolist())))
order = np.argsort(label_times, kind="stable")
with open(f"{out}/labels.ndjson", "w") as f:
    for lo in range(0, n, chunk):
        ids = order[lo:lo + chunk]
        f.write("".join(
            f'{{"event_id":{i},"model":"fraud","timestamp":{t},"label":{y}}}\n'
            for i, t, y in zip(ids.tolist(), label_times[ids].tolist(), actual[ids].tolist())))

# numpy's accuracy per one-hour window of the predictions' event time.
window = (times - start_ms) // 3_600_000
correct = (predicted == actual).astype(np.int64)
counts = np.bincount(window)
hits = np.bincount(window, weights=correct)
expected = {
    str(start_ms + int(w) * 3_600_000): {"accuracy": float(hits[w] / counts[w]), "labeled": int(counts[w])}
    for w in range(len(counts)) if counts[w] > 0
}
with open(f"{out}/expected.json", "w") as f:
    json.dump(expected, f)
print(f"{n} predictions over {days} days, labels 20-24 h later: {out}")
