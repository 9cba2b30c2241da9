//! Metrics through OpenTelemetry, exported in the Prometheus text format at
//! `/metrics` (names in docs/OBSERVABILITY.md).
//!
//! The hot path only bumps atomics in [`Telemetry`]; here OpenTelemetry
//! observable instruments read them when Prometheus scrapes. What comes
//! from closed windows — the latest drift value and verdict per feature,
//! the latest performance per model, firing alerts, the close delay — is
//! kept in [`LatestRows`], updated by the alerting sink. Label cardinality
//! is bounded: features per model are capped by
//! `pipeline.max_features_per_model` (500), versions by
//! `pipeline.max_versions_per_model` (100, here too: the values of the
//! versions seen longest ago are dropped), and only whole-model rows
//! (segment `""`) become series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::decode::InvalidReason;
use crate::rules::Transition;
use crate::telemetry::Telemetry;
use crate::window_metrics::WindowMetricRow;

const DRIFT_METRICS: &[&str] =
    &["psi", "ks", "chi2", "jensen_shannon", "wasserstein", "hellinger", "unseen_rate", "out_of_range_rate"];

type DriftKey = (String, String, String, String);
/// (model, model_version, feature).
type FeatureKey = (String, String, String);
/// (model, model_version, metric).
type ModelMetricKey = (String, String, String);

fn drift_attributes((model, version, feature, metric): &DriftKey) -> [KeyValue; 4] {
    [
        KeyValue::new("model", model.clone()),
        KeyValue::new("model_version", version.clone()),
        KeyValue::new("feature", feature.clone()),
        KeyValue::new("metric", metric.clone()),
    ]
}

/// A map the pipeline updates and a scrape reads: an `Arc` the scrape
/// clones under the lock and reads after releasing it, so a scrape never
/// holds a lock the pipeline needs while it observes or encodes; the
/// pipeline copies the map only when a scrape still holds the old one.
type Shared<K, V> = Mutex<Arc<BTreeMap<K, V>>>;

/// The current snapshot of a [`Shared`] map; the lock is released on return.
fn snapshot<K, V>(map: &Shared<K, V>) -> Arc<BTreeMap<K, V>> {
    Arc::clone(&map.lock().expect("metrics lock"))
}

/// The latest values from closed windows, for the gauges.
pub struct LatestRows {
    /// (model, version, feature, metric) → (value, threshold).
    drift: Shared<DriftKey, (f64, Option<f64>)>,
    /// (model, version, feature) → drifted on any metric in its latest window.
    drifted: Shared<FeatureKey, (i64, bool)>,
    /// (model, version, metric) → (value, baseline).
    performance: Shared<ModelMetricKey, (f64, Option<f64>)>,
    /// (alert, model) → firing instances.
    firing: Shared<(String, String), u64>,
    close_delay: Mutex<Option<Histogram<f64>>>,
    /// model → model_version → the latest window end it had rows for.
    versions: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
    /// The most versions per model kept (the most recent ones); the
    /// values of older versions are dropped, so gauges do not pile up.
    max_versions: usize,
}

impl Default for LatestRows {
    fn default() -> Self {
        LatestRows::new(crate::config::DEFAULT_MAX_VERSIONS_PER_MODEL)
    }
}

impl LatestRows {
    /// Keeps the values of at most `max_versions_per_model` versions per
    /// model, plus the overflow version `__other__`.
    pub fn new(max_versions_per_model: usize) -> LatestRows {
        LatestRows {
            drift: Mutex::default(),
            drifted: Mutex::default(),
            performance: Mutex::default(),
            firing: Mutex::default(),
            close_delay: Mutex::default(),
            versions: Mutex::default(),
            max_versions: max_versions_per_model.saturating_add(1),
        }
    }

    /// Takes in the rows of closed windows.
    pub fn update(&self, rows: &[WindowMetricRow]) {
        let now = chrono::Utc::now().timestamp_millis();
        let mut drift_cell = self.drift.lock().expect("metrics lock");
        let drift = Arc::make_mut(&mut drift_cell);
        let mut drifted_cell = self.drifted.lock().expect("metrics lock");
        let drifted = Arc::make_mut(&mut drifted_cell);
        let mut performance_cell = self.performance.lock().expect("metrics lock");
        let performance = Arc::make_mut(&mut performance_cell);
        let mut versions = self.versions.lock().expect("metrics lock");
        for row in rows.iter().filter(|r| r.segment.is_empty()) {
            let (model, version) = (row.model.to_string(), row.model_version.to_string());
            let seen = versions.entry(model.clone()).or_default().entry(version.clone()).or_insert(i64::MIN);
            *seen = (*seen).max(row.window_end_ms);
            match &row.feature {
                Some(feature) if DRIFT_METRICS.contains(&row.metric) => {
                    drift.insert(
                        (model.clone(), version.clone(), feature.to_string(), row.metric.to_string()),
                        (row.value, row.threshold),
                    );
                    let entry = drifted.entry((model, version, feature.to_string())).or_insert((i64::MIN, false));
                    if row.window_end_ms > entry.0 {
                        *entry = (row.window_end_ms, false);
                    }
                    if row.window_end_ms == entry.0 && row.drifted == Some(true) {
                        entry.1 = true;
                    }
                }
                None if row.metric == "count" => {
                    if let Some(histogram) = self.close_delay.lock().expect("metrics lock").as_ref() {
                        let delay = (now - row.window_end_ms).max(0) as f64 / 1000.0;
                        histogram.record(delay, &[KeyValue::new("model", model)]);
                    }
                }
                // Every other model-level metric: performance, output drift, latency.
                None if row.metric != "events_late" => {
                    performance.insert((model, version, row.metric.to_string()), (row.value, row.baseline));
                }
                _ => {}
            }
        }
        // Versions beyond the cap: the ones whose latest rows are oldest go.
        let mut dropped: Vec<(String, String)> = Vec::new();
        for (model, seen) in versions.iter_mut() {
            if seen.len() <= self.max_versions {
                continue;
            }
            let mut by_age: Vec<(i64, String)> = seen.iter().map(|(v, end)| (*end, v.clone())).collect();
            by_age.sort_unstable();
            for (_, version) in by_age.into_iter().take(seen.len() - self.max_versions) {
                seen.remove(&version);
                dropped.push((model.clone(), version));
            }
        }
        if !dropped.is_empty() {
            let gone = |model: &String, version: &String| dropped.iter().any(|(m, v)| m == model && v == version);
            drift.retain(|(model, version, _, _), _| !gone(model, version));
            drifted.retain(|(model, version, _), _| !gone(model, version));
            performance.retain(|(model, version, _), _| !gone(model, version));
        }
    }

    /// Takes in the alerts now pending or firing.
    pub fn set_active(&self, active: &[Transition]) {
        let mut firing_cell = self.firing.lock().expect("metrics lock");
        let firing = Arc::make_mut(&mut firing_cell);
        firing.values_mut().for_each(|n| *n = 0);
        for t in active.iter().filter(|t| t.state == "firing") {
            *firing.entry((t.alert.clone(), t.model.clone())).or_default() += 1;
        }
    }
}

/// The meter provider and the registry `/metrics` encodes.
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    pub latest: Arc<LatestRows>,
    /// The counters the instruments read (the status page reads them too).
    pub telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every documented instrument over `telemetry` and a new
    /// [`LatestRows`].
    /// With `otlp`, the same instruments are also pushed over OTLP.
    /// `max_versions_per_model` bounds the versions per model whose values
    /// are kept ([`LatestRows::new`]).
    pub fn new(
        telemetry: Arc<Telemetry>,
        otlp: Option<&crate::config::OtlpConfig>,
        max_versions_per_model: usize,
    ) -> Result<Metrics, String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .without_units()
            .build()
            .map_err(|e| e.to_string())?;
        let mut builder = SdkMeterProvider::builder().with_reader(exporter);
        if let Some(otlp) = otlp
            && let Some(reader) = crate::otlp::metric_reader(otlp)?
        {
            builder = builder.with_reader(reader).with_resource(crate::otlp::metric_resource(otlp));
            tracing::info!(endpoint = %otlp.endpoint, interval = ?otlp.interval, "pushing metrics over OTLP");
        }
        let provider = builder.build();
        let meter = provider.meter("driftwatch");
        let latest = Arc::new(LatestRows::new(max_versions_per_model));

        let t = telemetry.clone();
        meter
            .u64_observable_counter("driftwatch_events")
            .with_description("Events consumed, by topic and model.")
            .with_callback(move |o| {
                for ((topic, model), n) in t.events() {
                    o.observe(n, &[KeyValue::new("topic", topic), KeyValue::new("model", model)]);
                }
            })
            .build();
        let t = telemetry.clone();
        meter
            .u64_observable_counter("driftwatch_events_invalid")
            .with_description("Rejected events, by reason.")
            .with_callback(move |o| {
                for reason in InvalidReason::ALL {
                    o.observe(t.invalid_count(reason), &[KeyValue::new("reason", reason.label())]);
                }
            })
            .build();
        let t = telemetry.clone();
        meter
            .u64_observable_counter("driftwatch_events_late")
            .with_description("Events that arrived after their window closed.")
            .with_callback(move |o| o.observe(t.events_late.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let t = telemetry.clone();
        meter
            .u64_observable_counter("driftwatch_windows_closed")
            .with_description("Windows closed.")
            .with_callback(move |o| o.observe(t.windows_closed.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        // What the caps and the join turned away (README, Limits).
        for (name, description, read) in [
            (
                "driftwatch_features_over_cap",
                "Feature values not tracked because the model reached pipeline.max_features_per_model.",
                (|t: &Telemetry| t.features_over_cap.load(std::sync::atomic::Ordering::Relaxed))
                    as fn(&Telemetry) -> u64,
            ),
            (
                "driftwatch_segments_over_cap",
                "Events filed under segment __other__ because the model reached pipeline.max_segments_per_model.",
                |t: &Telemetry| t.segments_over_cap.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_versions_over_cap",
                "Events filed under model_version __other__ because the model reached pipeline.max_versions_per_model.",
                |t: &Telemetry| t.versions_over_cap.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_categories_over_cap",
                "Categorical values pooled as __other__ because the feature reached pipeline.max_categories_per_feature (per window and series).",
                |t: &Telemetry| t.categories_over_cap.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_feature_type_errors",
                "Feature values of the wrong JSON type (e.g. a number sent as a string), recorded as missing and in type_error_rate.",
                |t: &Telemetry| t.feature_type_errors.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_duplicate_predictions",
                "Predictions whose (model, event_id) was already seen within the label horizon; counted in windows, never paired twice.",
                |t: &Telemetry| t.duplicate_predictions.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_duplicate_labels",
                "Labels whose (model, event_id) was already seen within the label horizon; never paired twice.",
                |t: &Telemetry| t.duplicate_labels.load(std::sync::atomic::Ordering::Relaxed),
            ),
            ("driftwatch_dead_lettered", "Invalid events written to kafka.dead_letter_topic.", |t: &Telemetry| {
                t.dead_lettered.load(std::sync::atomic::Ordering::Relaxed)
            }),
            (
                "driftwatch_dead_letters_failed",
                "Invalid events that could not be written to kafka.dead_letter_topic (logged).",
                |t: &Telemetry| t.dead_letters_failed.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_join_evicted",
                "Pending joins evicted because the model reached pipeline.max_pending_joins.",
                |t: &Telemetry| t.join_evicted.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_labels_unmatched",
                "Labels whose prediction never arrived within the label horizon.",
                |t: &Telemetry| t.join_labels_unmatched.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_checkpoints_failed",
                "Checkpoints that could not be written (retried every state.checkpoint_interval).",
                |t: &Telemetry| t.checkpoints_failed.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_checkpoint_windows_dropped",
                "Windows of the restored checkpoint dropped because the config changed (windows settings, a model's task, a model removed).",
                |t: &Telemetry| t.checkpoint_windows_dropped.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_checkpoint_windows_reattached",
                "Open windows of the restored checkpoint re-attached to a changed baseline (bins re-counted, or binned drift rows left out).",
                |t: &Telemetry| t.checkpoint_windows_reattached.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_published",
                "cluster: records this instance published to the partials topic (deltas, commits, marks).",
                |t: &Telemetry| t.partials_published.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_published_bytes",
                "cluster: bytes of the records this instance published to the partials topic.",
                |t: &Telemetry| t.partials_published_bytes.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_merged",
                "cluster: source stretches this instance's merger took into windows (final).",
                |t: &Telemetry| t.partials_merged.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_replaced",
                "cluster: provisional stretches replaced by one published again from the same offset (after a rebalance or a crash).",
                |t: &Telemetry| t.partials_replaced.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_stale",
                "cluster: stretches refused as starting below the committed offset (a reader that had lost its partition).",
                |t: &Telemetry| t.partials_stale.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "driftwatch_partials_broken",
                "cluster: stretches that broke the sources' contract (a gap, an overlap, a part out of order); each is logged.",
                |t: &Telemetry| t.partials_broken.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ] {
            let t = telemetry.clone();
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| o.observe(read(&t), &[]))
                .build();
        }
        let t = telemetry.clone();
        meter
            .f64_observable_gauge("driftwatch_merge_delay_seconds")
            .with_description(
                "cluster: how old the last partials record this instance merged was when its merger took it in.",
            )
            .with_callback(move |o| {
                o.observe(t.merge_delay_ms.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0, &[])
            })
            .build();
        let t = telemetry.clone();
        meter
            .i64_observable_gauge("driftwatch_models_merged")
            .with_description("cluster: models this instance merges now.")
            .with_callback(move |o| o.observe(t.models_merged.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let t = telemetry.clone();
        meter
            .i64_observable_gauge("driftwatch_assigned_partitions")
            .with_description("Source partitions (predictions and labels) this instance reads now.")
            .with_callback(move |o| o.observe(t.assigned_partitions.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let t = telemetry.clone();
        meter
            .i64_observable_gauge("driftwatch_join_pending")
            .with_description("Predictions awaiting their label and labels awaiting their prediction.")
            .with_callback(move |o| o.observe(t.join_pending.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let t = telemetry.clone();
        meter
            .u64_observable_gauge("driftwatch_join_store_bytes")
            .with_description("Bytes the join store's files take on disk (joins on disk, with a state dir).")
            .with_callback(move |o| o.observe(t.join_store_bytes.load(std::sync::atomic::Ordering::Relaxed), &[]))
            .build();
        let t = telemetry.clone();
        meter
            .i64_observable_gauge("driftwatch_consumer_lag")
            .with_description("Messages behind the partition's end, by topic and partition.")
            .with_callback(move |o| {
                for ((topic, partition), lag) in t.consumer_lag() {
                    o.observe(lag, &[KeyValue::new("topic", topic), KeyValue::new("partition", partition.to_string())]);
                }
            })
            .build();
        let t = telemetry.clone();
        meter
            .f64_observable_gauge("driftwatch_watermark_seconds")
            .with_description("Watermark (Unix seconds) per model and predictions partition: the partition's largest event time minus allowed_lateness.")
            .with_callback(move |o| {
                for ((model, partition), watermark) in t.watermarks() {
                    o.observe(
                        watermark as f64 / 1000.0,
                        &[KeyValue::new("model", model), KeyValue::new("partition", partition.to_string())],
                    );
                }
            })
            .build();
        let t = telemetry.clone();
        meter
            .u64_observable_counter("driftwatch_notifications")
            .with_description("Notification attempts' outcomes, by notifier.")
            .with_callback(move |o| {
                for ((notifier, outcome), n) in t.notifications() {
                    o.observe(n, &[KeyValue::new("notifier", notifier), KeyValue::new("outcome", outcome)]);
                }
            })
            .build();
        let l = latest.clone();
        meter
            .u64_observable_gauge("driftwatch_alerts_firing")
            .with_description("Alert instances firing, by alert and model.")
            .with_callback(move |o| {
                for ((alert, model), n) in snapshot(&l.firing).iter() {
                    o.observe(*n, &[KeyValue::new("alert", alert.clone()), KeyValue::new("model", model.clone())]);
                }
            })
            .build();
        // Per feature: the value and, where there is one, the threshold.
        for (name, description, threshold) in [
            ("driftwatch_feature_drift", "Latest drift statistic per feature (whole-model rows).", false),
            ("driftwatch_feature_drift_threshold", "The threshold the latest drift statistic was compared with.", true),
        ] {
            let l = latest.clone();
            meter
                .f64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| {
                    for (key, (value, limit)) in snapshot(&l.drift).iter() {
                        let observed = if threshold { *limit } else { Some(*value) };
                        if let Some(observed) = observed {
                            o.observe(observed, &drift_attributes(key));
                        }
                    }
                })
                .build();
        }
        let l = latest.clone();
        meter
            .u64_observable_gauge("driftwatch_feature_drifted")
            .with_description("1 when any drift metric of the feature's latest window crossed its threshold.")
            .with_callback(move |o| {
                for ((model, version, feature), (_, drifted)) in snapshot(&l.drifted).iter() {
                    let attributes = [
                        KeyValue::new("model", model.clone()),
                        KeyValue::new("model_version", version.clone()),
                        KeyValue::new("feature", feature.clone()),
                    ];
                    o.observe(u64::from(*drifted), &attributes);
                }
            })
            .build();
        // Per model-level metric: the value and, where there is one, the baseline.
        for (name, description, baseline) in [
            ("driftwatch_model_performance", "Latest model-level metric per model version.", false),
            ("driftwatch_model_performance_baseline", "The training baseline of a model-level metric.", true),
        ] {
            let l = latest.clone();
            meter
                .f64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |o| {
                    for ((model, version, metric), (value, reference)) in snapshot(&l.performance).iter() {
                        let observed = if baseline { *reference } else { Some(*value) };
                        let Some(observed) = observed else { continue };
                        let attributes = [
                            KeyValue::new("model", model.clone()),
                            KeyValue::new("model_version", version.clone()),
                            KeyValue::new("metric", metric.clone()),
                        ];
                        o.observe(observed, &attributes);
                    }
                })
                .build();
        }
        let t = telemetry.clone();
        meter
            .u64_observable_gauge("driftwatch_ready")
            .with_description("1 when the daemon is ready: pipeline running, Kafka reachable, state writable.")
            .with_callback(move |o| o.observe(u64::from(t.readiness.is_ready()), &[]))
            .build();
        let histogram = meter
            .f64_histogram("driftwatch_window_close_seconds")
            .with_description("Seconds from a window's end (event time) to its rows being emitted.")
            .with_boundaries(vec![0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0])
            .build();
        *latest.close_delay.lock().expect("metrics lock") = Some(histogram);
        Ok(Metrics { registry, _provider: provider, latest, telemetry })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, end_ms: i64, feature: Option<&str>, metric: &'static str) -> WindowMetricRow {
        WindowMetricRow {
            model: Arc::from("shop"),
            model_version: Arc::from(version),
            segment: Arc::from(""),
            window_start_ms: end_ms - 60_000,
            window_end_ms: end_ms,
            feature: feature.map(Arc::from),
            metric,
            value: 0.5,
            baseline: None,
            threshold: Some(0.1),
            p_value: None,
            drifted: Some(true),
            sample_count: 10,
        }
    }

    fn versions_of(latest: &LatestRows) -> (Vec<String>, Vec<String>, Vec<String>) {
        let drift = latest.drift.lock().unwrap().keys().map(|k| k.1.clone()).collect();
        let drifted = latest.drifted.lock().unwrap().keys().map(|k| k.1.clone()).collect();
        let performance = latest.performance.lock().unwrap().keys().map(|k| k.1.clone()).collect();
        (drift, drifted, performance)
    }

    #[test]
    fn values_of_versions_beyond_the_cap_are_dropped_oldest_first() {
        let latest = LatestRows::new(3);
        // A new version per window: 50 of them, then the overflow version.
        for v in 0..50i64 {
            let end = (v + 1) * 60_000;
            let version = format!("v{v}");
            latest.update(&[row(&version, end, Some("amount"), "psi"), row(&version, end, None, "accuracy")]);
        }
        latest.update(&[row("__other__", 51 * 60_000, None, "accuracy")]);
        let (drift, drifted, performance) = versions_of(&latest);
        assert_eq!(drift, ["v47", "v48", "v49"]);
        assert_eq!(drifted, ["v47", "v48", "v49"]);
        assert_eq!(performance, ["__other__", "v47", "v48", "v49"]);
        // A version that keeps reporting stays, whatever arrives meanwhile.
        for v in 50..60i64 {
            let end = (v + 2) * 60_000;
            latest.update(&[row("v49", end, None, "accuracy"), row(&format!("v{v}"), end, None, "accuracy")]);
        }
        let (_, _, performance) = versions_of(&latest);
        assert_eq!(performance.len(), 4, "{performance:?}");
        assert!(performance.contains(&"v49".to_string()), "{performance:?}");
        assert!(performance.contains(&"v59".to_string()), "{performance:?}");
    }
}
