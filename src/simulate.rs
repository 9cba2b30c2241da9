//! The traffic simulator: realistic prediction and label events for a fraud
//! model with 20 numeric and 5 categorical features (~700 bytes of JSON
//! each), skewed distributions, labels arriving later, and drift injected at
//! a chosen time (feature shifts, a new country, and a classifier whose
//! accuracy falls). Seeded, so every run with the same options is the same.

use std::io::Write;

use crate::rng::Rng;

/// Names of the simulated numeric features.
pub const NUMERIC_FEATURES: [&str; 20] = [
    "amount",
    "age",
    "income",
    "balance",
    "tenure_days",
    "txn_count_7d",
    "txn_count_30d",
    "avg_txn_amount",
    "max_txn_amount",
    "distance_km",
    "session_seconds",
    "pages_viewed",
    "failed_logins",
    "account_age_days",
    "credit_limit",
    "utilization",
    "days_since_last",
    "merchant_risk",
    "device_risk",
    "ip_risk",
];
/// Names of the simulated categorical features.
pub const CATEGORICAL_FEATURES: [&str; 5] = ["country", "channel", "device_type", "merchant_category", "card_type"];

const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "GB", "NL", "ES"];
const COUNTRY_WEIGHTS: [f64; 6] = [0.35, 0.2, 0.2, 0.1, 0.1, 0.05];
const CHANNELS: [&str; 3] = ["web", "app", "pos"];
const DEVICES: [&str; 4] = ["ios", "android", "desktop", "other"];
const MERCHANTS: [&str; 6] = ["grocery", "travel", "electronics", "fashion", "gaming", "fuel"];
const CARDS: [&str; 3] = ["debit", "credit", "prepaid"];

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    pub model: String,
    pub model_version: String,
    /// Event time of the first event (epoch ms).
    pub start_ms: i64,
    /// Events per second of event time.
    pub rate: f64,
    /// Event time after which drift is injected (ms after start), if any.
    pub drift_after_ms: Option<i64>,
    pub seed: u64,
    /// Share of predictions that get a label.
    pub label_fraction: f64,
    /// Labels arrive this long after their prediction (uniform in range, ms).
    pub label_delay_ms: (i64, i64),
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            model: "fraud".into(),
            model_version: "3".into(),
            start_ms: 1_795_687_200_000, // 2026-11-26T10:00:00Z
            rate: 1000.0,
            drift_after_ms: None,
            seed: 42,
            label_fraction: 0.8,
            label_delay_ms: (1_000, 60_000),
        }
    }
}

/// Generates events one at a time.
#[derive(Debug, Clone)]
pub struct Simulator {
    pub options: SimulatorOptions,
    rng: Rng,
    index: u64,
}

/// A generated label, to be sent at `time_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelLine {
    pub time_ms: i64,
    pub json: Vec<u8>,
}

impl Simulator {
    pub fn new(options: SimulatorOptions) -> Self {
        let rng = Rng::new(options.seed);
        Simulator { options, rng, index: 0 }
    }

    /// Number of events generated so far.
    pub fn generated(&self) -> u64 {
        self.index
    }

    /// Event time of the next event.
    pub fn next_time_ms(&self) -> i64 {
        self.options.start_ms + (self.index as f64 * 1000.0 / self.options.rate) as i64
    }

    /// Writes the next prediction event as one JSON line (with `\n`) into
    /// `out` at event time `time_ms` (use [`Simulator::next_time_ms`] for
    /// simulated time), returning its label if it gets one.
    pub fn write_prediction(&mut self, time_ms: i64, out: &mut Vec<u8>) -> Option<LabelLine> {
        let drifted = self.options.drift_after_ms.is_some_and(|d| time_ms >= self.options.start_ms + d);
        let index = self.index;
        self.index += 1;
        let rng = &mut self.rng;
        let shift = if drifted { 1.0 } else { 0.0 };
        let amount = (3.0 + 0.9 * rng.normal() + 0.8 * shift).exp();
        let age = (38.0 + 12.0 * rng.normal()).clamp(18.0, 95.0).round();
        let _ = write!(
            out,
            "{{\"event_id\":\"{}-{index}\",\"model\":\"{}\",\"model_version\":\"{}\",\"timestamp\":\"{}\",\"features\":{{",
            self.options.seed,
            self.options.model,
            self.options.model_version,
            crate::timestamp::format_rfc3339_ms(time_ms)
        );
        let numeric = [
            amount,
            age,
            (10.8 + 0.5 * rng.normal()).exp().round(),
            (7.0 + 1.2 * rng.normal()).exp(),
            (rng.uniform() * 3650.0).round(),
            (rng.uniform() * 20.0 * (1.0 + shift)).round(),
            (rng.uniform() * 80.0).round(),
            (3.2 + 0.6 * rng.normal()).exp(),
            (4.5 + 0.7 * rng.normal()).exp(),
            (2.0 + 1.5 * rng.normal() + 1.5 * shift).exp(),
            (rng.uniform() * 1800.0).round(),
            (rng.uniform() * 30.0).round(),
            if rng.uniform() < 0.05 + 0.2 * shift { (rng.uniform() * 5.0).round() } else { 0.0 },
            (rng.uniform() * 5000.0).round(),
            ((rng.uniform() * 20.0).round() * 500.0).max(500.0),
            rng.uniform(),
            (rng.uniform() * 90.0).round(),
            rng.uniform() * (1.0 + shift),
            rng.uniform(),
            rng.uniform().powi(2),
        ];
        for (i, (name, value)) in NUMERIC_FEATURES.iter().zip(numeric).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if rng.uniform() < 0.01 {
                let _ = write!(out, "\"{name}\":null");
            } else {
                let _ = write!(out, "\"{name}\":{}", (value * 1000.0).round() / 1000.0);
            }
        }
        let country = if drifted && rng.uniform() < 0.3 { "BR" } else { rng.weighted(&COUNTRIES, &COUNTRY_WEIGHTS) };
        let categorical = [country, rng.pick(&CHANNELS), rng.pick(&DEVICES), rng.pick(&MERCHANTS), rng.pick(&CARDS)];
        for (name, value) in CATEGORICAL_FEATURES.iter().zip(categorical) {
            let _ = write!(out, ",\"{name}\":\"{value}\"");
        }
        // The true fraud probability depends on the features; the model has
        // learned it well before drift and poorly after.
        let risk = (amount.ln() - 3.0) * 0.8 + numeric[17] * 2.0 + numeric[12] * 0.5 - 2.5;
        let truth = rng.uniform() < 1.0 / (1.0 + (-risk).exp());
        let model_view = if drifted { risk - 0.8 * shift * (amount.ln() - 3.0) + 0.6 } else { risk };
        let score = (1.0 / (1.0 + (-(model_view + 0.7 * rng.normal())).exp())).clamp(0.0005, 0.9995);
        let correct_rate = if drifted { 0.62 } else { 0.9 };
        let prediction = if rng.uniform() < correct_rate { truth } else { !truth };
        let latency = (2.3 + 0.4 * rng.normal() + 0.3 * shift).exp();
        let _ = writeln!(
            out,
            "}},\"prediction\":{},\"score\":{:.4},\"latency_ms\":{:.2},\"segment\":{{\"region\":\"{}\"}}}}",
            prediction as u8,
            score,
            latency,
            if country == "US" { "us" } else { "eu" }
        );
        if rng.uniform() >= self.options.label_fraction {
            return None;
        }
        let (lo, hi) = self.options.label_delay_ms;
        let label_time = time_ms + lo + (rng.uniform() * (hi - lo).max(0) as f64) as i64;
        let mut json = Vec::with_capacity(128);
        let _ = writeln!(
            json,
            "{{\"event_id\":\"{}-{index}\",\"model\":\"{}\",\"timestamp\":\"{}\",\"label\":{}}}",
            self.options.seed,
            self.options.model,
            crate::timestamp::format_rfc3339_ms(label_time),
            truth as u8
        );
        Some(LabelLine { time_ms: label_time, json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events_and_events_are_json() {
        let mut a = Simulator::new(SimulatorOptions::default());
        let mut b = Simulator::new(SimulatorOptions::default());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let t = a.next_time_ms();
            let la = a.write_prediction(t, &mut out_a);
            let lb = b.write_prediction(t, &mut out_b);
            assert_eq!(la, lb);
        }
        assert_eq!(out_a, out_b);
        for line in out_a.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(value["features"].as_object().unwrap().len(), 25);
        }
        let average = out_a.len() / 100;
        assert!((550..850).contains(&average), "{average} bytes per event");
    }
}
