#!/usr/bin/env python3
"""The first-day walkthrough's data: a user's training files and an hour of events.

Two models of a small shop, in the shop's own event layout (not
driftwatch's default one):

- ``checkout_fraud``: a binary classifier scoring checkouts, with the
  customer's region as a segment. From minute 30 the order amounts of its
  traffic grow (a marketing campaign), which its drift rule catches.
- ``delivery_eta``: a regression model predicting delivery minutes.

    python3 generate.py training DIR   # checkout_fraud_train.csv, delivery_eta_train.ndjson
    python3 generate.py events DIR     # predictions.ndjson, labels.ndjson

The committed training files were written by ``training``. Everything is
seeded, so the same command writes the same bytes. Standard library only.
"""

import csv
import json
import math
import random
import sys
from pathlib import Path

# Event time of the first prediction: 2026-01-05T09:00:00Z, in epoch ms.
START_MS = 1_767_603_600_000
# One prediction per model every five seconds, for an hour.
PREDICTION_INTERVAL_MS = 5_000
DURATION_MS = 60 * 60 * 1_000
# Order amounts grow this long after the start.
DRIFT_AFTER_MS = 30 * 60 * 1_000
# Labels (chargebacks, delivered parcels) arrive 2 to 12 minutes later.
LABEL_DELAY_MS = (2 * 60 * 1_000, 12 * 60 * 1_000)
TRAINING_ROWS = 2_000

COUNTRIES = ["DE", "FR", "GB", "ES", "US"]
COUNTRY_WEIGHTS = [0.3, 0.2, 0.15, 0.1, 0.25]
COURIERS = ["bike", "scooter", "car"]
COURIER_MINUTES = {"bike": 4.0, "scooter": 2.0, "car": 0.0}


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def checkout(rng, drifted):
    """One checkout: features, the model's output and the true outcome."""
    amount = round(rng.lognormvariate(4.4 if drifted else 3.5, 0.8), 2)
    country = rng.choices(COUNTRIES, COUNTRY_WEIGHTS)[0]
    account_age_days = int(rng.expovariate(1 / 400))
    logit = -3.0 + 0.6 * (math.log(amount) - 3.5) - 0.002 * account_age_days + (0.5 if country == "US" else 0.0)
    chargeback = 1 if rng.random() < sigmoid(logit) else 0
    probability = round(sigmoid(logit + 2.0 + rng.gauss(0, 0.6)), 4)
    return {
        "amount": amount,
        "country": country,
        "account_age_days": account_age_days,
        "region": "us" if country == "US" else "eu",
        "flagged": 1 if probability >= 0.5 else 0,
        "fraud_probability": probability,
        "chargeback": chargeback,
    }


def delivery(rng):
    """One delivery: features, the predicted and the actual minutes."""
    distance_km = round(rng.gammavariate(2.0, 2.5), 2)
    items = rng.randint(1, 8)
    courier = rng.choice(COURIERS)
    base = 8.0 + COURIER_MINUTES[courier]
    actual = max(3.0, base + 3.2 * distance_km + 1.1 * items + rng.gauss(0, 3.0))
    predicted = max(3.0, base + 3.0 * distance_km + 1.0 * items + rng.gauss(0, 2.0))
    return {
        "distance_km": distance_km,
        "items": items,
        "courier": courier,
        "eta_minutes": round(predicted, 1),
        "actual_minutes": round(actual, 1),
    }


def write_training(directory):
    rng = random.Random(1)
    with open(directory / "checkout_fraud_train.csv", "w", newline="") as file:
        columns = ["order_id", "amount", "country", "account_age_days", "region", "flagged", "fraud_probability", "chargeback"]
        writer = csv.DictWriter(file, columns, lineterminator="\n")
        writer.writeheader()
        for index in range(TRAINING_ROWS):
            writer.writerow({"order_id": f"train-{index:05d}", **checkout(rng, drifted=False)})
    with open(directory / "delivery_eta_train.ndjson", "w") as file:
        for _ in range(TRAINING_ROWS):
            file.write(json.dumps(delivery(rng), separators=(",", ":")) + "\n")


def meta(request_id, model, time_ms, version=None):
    fields = {"request_id": request_id, "model": model}
    if version is not None:
        fields["model_version"] = version
    fields["sent_at_ms"] = time_ms
    return fields


def write_events(directory):
    rng = random.Random(2)
    predictions = []
    labels = []
    for step in range(DURATION_MS // PREDICTION_INTERVAL_MS):
        time_ms = START_MS + step * PREDICTION_INTERVAL_MS
        order = checkout(rng, drifted=step * PREDICTION_INTERVAL_MS >= DRIFT_AFTER_MS)
        request_id = f"chk-{step:05d}"
        predictions.append({
            "meta": meta(request_id, "checkout_fraud", time_ms, "2025-12"),
            "payload": {k: order[k] for k in ("amount", "country", "account_age_days")},
            "context": {"region": order["region"]},
            "result": {"flagged": order["flagged"], "fraud_probability": order["fraud_probability"],
                       "took_ms": round(rng.uniform(3, 20), 1)},
        })
        label_ms = time_ms + rng.randint(*LABEL_DELAY_MS)
        labels.append({"meta": meta(request_id, "checkout_fraud", label_ms), "outcome": {"chargeback": order["chargeback"]}})

        # The delivery model's traffic comes half an interval later.
        time_ms += PREDICTION_INTERVAL_MS // 2
        parcel = delivery(rng)
        request_id = f"eta-{step:05d}"
        predictions.append({
            "meta": meta(request_id, "delivery_eta", time_ms, "7"),
            "payload": {k: parcel[k] for k in ("distance_km", "items", "courier")},
            "result": {"eta_minutes": parcel["eta_minutes"], "took_ms": round(rng.uniform(1, 6), 1)},
        })
        label_ms = time_ms + rng.randint(*LABEL_DELAY_MS)
        labels.append({"meta": meta(request_id, "delivery_eta", label_ms), "outcome": {"actual_minutes": parcel["actual_minutes"]}})
    labels.sort(key=lambda label: label["meta"]["sent_at_ms"])
    for name, events in (("predictions.ndjson", predictions), ("labels.ndjson", labels)):
        with open(directory / name, "w") as file:
            for event in events:
                file.write(json.dumps(event, separators=(",", ":")) + "\n")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("training", "events"):
        sys.exit(__doc__)
    directory = Path(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] == "training":
        write_training(directory)
    else:
        write_events(directory)


if __name__ == "__main__":
    main()
