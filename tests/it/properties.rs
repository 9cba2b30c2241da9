//! Properties the engine relies on, over generated inputs (proptest):
//! merging partial window summaries in any grouping and order equals
//! summarising everything at once — counts, sums, min/max and exact
//! quantiles exactly, moments to rounding, sketches within their bound —
//! and the label join pairs each event id exactly once when both sides
//! arrive, whatever the order and however often either is repeated;
//! replay is deterministic; and whole window states, split at random into
//! partial windows (names instead of ids, as shipped between machines),
//! merge in any grouping and order into the state of one pass, the same
//! bytes each time for the same order.

use datafusion::arrow::array::{Float64Array, StringArray};
use driftwatch::evaluate::categorical::CategoricalSummary;
use driftwatch::evaluate::numeric::NumericSummary;
use driftwatch::evaluate::performance::{Outcome, PerformanceState};
use driftwatch::join::{ModelJoin, PendingLabel, PendingPrediction, Target, join_key};
use driftwatch::sketch::{MAX_BUCKETS, QuantileSketch};
use proptest::prelude::*;

fn values() -> impl Strategy<Value = Vec<Option<f64>>> {
    prop::collection::vec(prop::option::weighted(0.9, -1e6f64..1e6), 0..3000)
}

/// Splits `len` items into consecutive chunks at the given cut points.
fn chunks(len: usize, cuts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| w[0]..w[1]).collect()
}

fn summary_of(values: &[Option<f64>]) -> NumericSummary {
    let mut summary = NumericSummary::new();
    summary.update(&Float64Array::from(values.to_vec()));
    summary
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn numeric_summaries_merge_in_any_grouping_and_order(
        values in values(),
        cuts in prop::collection::vec(0usize..4000, 0..8),
        order in prop::collection::vec(0usize..1000, 9),
    ) {
        let mut whole = summary_of(&values);
        let mut parts: Vec<NumericSummary> =
            chunks(values.len(), &cuts).into_iter().map(|r| summary_of(&values[r])).collect();
        // Merge in a shuffled order.
        let mut indices: Vec<usize> = (0..parts.len()).collect();
        indices.sort_by_key(|i| order[*i % order.len()] * 16 + i);
        let mut merged = NumericSummary::new();
        for i in indices {
            merged.merge(&mut parts[i]);
        }
        prop_assert_eq!(merged.count(), whole.count());
        prop_assert_eq!(merged.missing, whole.missing);
        prop_assert_eq!(merged.min(), whole.min());
        prop_assert_eq!(merged.max(), whole.max());
        if let (Some(a), Some(b)) = (merged.mean(), whole.mean()) {
            prop_assert!(close(a, b), "mean {} vs {}", a, b);
            prop_assert!(close(merged.m2(), whole.m2()) || close(merged.m2() / whole.count() as f64, whole.m2() / whole.count() as f64));
        }
        for q in [0.0, 0.05, 0.5, 0.95, 1.0] {
            let (a, b) = (merged.quantile(q), whole.quantile(q));
            match (a, b) {
                (Some(a), Some(b)) if whole.count() as usize <= driftwatch::evaluate::numeric::EXACT_QUANTILE_LIMIT => prop_assert_eq!(a, b),
                // Both from the sketch: the same buckets, so the same answer.
                (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 0.01 * b.abs().max(1e-9), "q{} {} vs {}", q, a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
        prop_assert_eq!(merged.to_sketch().count(), whole.count());
    }

    /// Values across the whole double range overflow the sketch's bucket
    /// budget, so its lowest buckets fold; the folded sketch must still be
    /// a function of the values alone: any split, merged in any order,
    /// equals the sketch of everything (issue 15).
    #[test]
    fn sketches_over_their_bucket_budget_merge_in_any_grouping_and_order(
        values in prop::collection::vec((any::<bool>(), -320.0f64..308.0), 0..3000),
        cuts in prop::collection::vec(0usize..4000, 0..8),
        order in prop::collection::vec(0usize..1000, 9),
    ) {
        let values: Vec<f64> =
            values.into_iter().map(|(negative, exponent)| if negative { -(10f64.powf(exponent)) } else { 10f64.powf(exponent) }).collect();
        let sketch_of = |values: &[f64]| {
            let mut sketch = QuantileSketch::default();
            values.iter().for_each(|&v| sketch.add(v));
            sketch
        };
        let whole = sketch_of(&values);
        let parts: Vec<QuantileSketch> = chunks(values.len(), &cuts).into_iter().map(|r| sketch_of(&values[r])).collect();
        let mut indices: Vec<usize> = (0..parts.len()).collect();
        indices.sort_by_key(|i| order[*i % order.len()] * 16 + i);
        let mut merged = QuantileSketch::default();
        for i in indices {
            merged.merge(&parts[i]);
        }
        prop_assert_eq!(&merged, &whole);
        // Merged into the largest part rather than into an empty sketch.
        if let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].count()) {
            let mut into = parts[largest].clone();
            parts.iter().enumerate().filter(|(i, _)| *i != largest).for_each(|(_, p)| into.merge(p));
            prop_assert_eq!(&into, &whole);
        }
        prop_assert!(whole.heap_bytes() <= 2 * 4 * MAX_BUCKETS as usize);
    }

    #[test]
    fn categorical_summaries_merge_exactly_under_the_cap(
        values in prop::collection::vec(prop::option::weighted(0.9, "[a-e]{1,2}"), 0..500),
        cuts in prop::collection::vec(0usize..600, 0..6),
    ) {
        let array = |v: &[Option<String>]| StringArray::from(v.to_vec());
        let mut whole = CategoricalSummary::default();
        whole.update(&array(&values), 1000);
        let mut merged = CategoricalSummary::default();
        for range in chunks(values.len(), &cuts).into_iter().rev() {
            let mut part = CategoricalSummary::default();
            part.update(&array(&values[range]), 1000);
            merged.merge(&part, 1000);
        }
        prop_assert_eq!(merged, whole);
    }

    #[test]
    fn performance_states_merge_exactly(
        pairs in prop::collection::vec((0u32..3, 0u32..3, 0.0f64..1.0), 0..400),
        cut in 0usize..400,
    ) {
        let outcome = |(p, a, s): &(u32, u32, f64)| Outcome::Class { predicted: *p, actual: *a, score: *s };
        let mut whole = PerformanceState::default();
        pairs.iter().for_each(|p| whole.add(outcome(p)));
        let cut = cut.min(pairs.len());
        let (mut first, mut second) = (PerformanceState::default(), PerformanceState::default());
        pairs[..cut].iter().for_each(|p| first.add(outcome(p)));
        pairs[cut..].iter().for_each(|p| second.add(outcome(p)));
        second.merge(&first);
        prop_assert_eq!(second.labeled, whole.labeled);
        prop_assert_eq!(&second.confusion, &whole.confusion);
    }

    #[test]
    fn the_join_pairs_each_event_exactly_once_whatever_the_order_and_duplicates(
        events in prop::collection::vec((0usize..60, any::<bool>()), 0..300),
    ) {
        // Each (id, side) may arrive several times, in any order.
        let mut join = ModelJoin::new(i64::MAX / 4, 1_000_000);
        let mut paired = std::collections::BTreeMap::<usize, u32>::new();
        for (i, (id, is_label)) in events.iter().enumerate() {
            let key = join_key(&format!("e{id}"));
            let matched = if *is_label {
                join.on_label(key, PendingLabel { label_time_ms: i as i64, actual: Target::Class(1) }).is_some()
            } else {
                join.on_prediction(key, PendingPrediction { series: 0, event_time_ms: i as i64, predicted: Target::Class(0), score: 0.5 }).is_some()
            };
            if matched {
                *paired.entry(*id).or_default() += 1;
            }
        }
        // Each id pairs exactly once if both sides arrived (duplicates of
        // either side included, in any order), else never.
        for id in 0..60 {
            let predictions = events.iter().filter(|(e, l)| *e == id && !l).count();
            let labels = events.iter().filter(|(e, l)| *e == id && *l).count();
            let expected = u32::from(predictions > 0 && labels > 0);
            prop_assert_eq!(paired.get(&id).copied().unwrap_or(0), expected, "id {}: {} predictions, {} labels", id, predictions, labels);
        }
    }
}

/// One generated prediction: time offset, features, class, score, an
/// optional label (delay, class), and whether it is sent twice.
pub(crate) type GeneratedEvent = (u32, Option<f64>, u8, u8, u8, f64, Option<(u32, u8)>, bool);

pub(crate) fn generated_events() -> impl Strategy<Value = Vec<GeneratedEvent>> {
    prop::collection::vec(
        (
            0u32..900_000,
            prop::option::weighted(0.9, 0.0f64..200.0),
            0u8..7,
            0u8..3,
            0u8..2,
            0.0f64..1.0,
            prop::option::weighted(0.7, (0u32..240_000, 0u8..2)),
            prop::bool::weighted(0.05),
        ),
        1..400,
    )
}

/// Writes the events as prediction and label NDJSON files (in generated,
/// not time, order) and returns their paths.
pub(crate) fn write_stream(
    dir: &std::path::Path,
    events: &[GeneratedEvent],
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::fmt::Write;
    const START: i64 = 1_795_687_200_000;
    let countries = ["DE", "FR", "GB", "US", "IT"];
    let (mut predictions, mut labels) = (String::new(), String::new());
    for (i, &(offset, amount, country, segment, class, score, label, twice)) in events.iter().enumerate() {
        let time = driftwatch::timestamp::format_rfc3339_ms(START + i64::from(offset));
        let amount = amount.map_or("null".to_string(), |a| a.to_string());
        // Index 5 is a number where a string is expected (a type error), 6 absent.
        let country = match country {
            5 => ",\"country\":7".to_string(),
            6 => String::new(),
            c => format!(",\"country\":\"{}\"", countries[c as usize]),
        };
        let line = format!(
            "{{\"event_id\":\"e{i}\",\"model\":\"shop\",\"timestamp\":\"{time}\",\"features\":{{\"amount\":{amount}{country}}},\
             \"segment\":{{\"region\":\"r{segment}\"}},\"prediction\":{class},\"score\":{score}}}\n"
        );
        predictions.push_str(&line);
        if twice {
            predictions.push_str(&line);
        }
        if let Some((delay, value)) = label {
            let time = driftwatch::timestamp::format_rfc3339_ms(START + i64::from(offset) + i64::from(delay));
            writeln!(labels, "{{\"event_id\":\"e{i}\",\"model\":\"shop\",\"timestamp\":\"{time}\",\"label\":{value}}}")
                .unwrap();
        }
    }
    let (p, l) = (dir.join("predictions.ndjson"), dir.join("labels.ndjson"));
    std::fs::write(&p, predictions).unwrap();
    std::fs::write(&l, labels).unwrap();
    (p, l)
}

/// Every row of a replay, printed exactly (`{:?}` of an `f64` round-trips).
fn replay_rows(config: &driftwatch::config::Config, p: &std::path::Path, l: &std::path::Path) -> Vec<String> {
    let mut sink = driftwatch::output::MemorySink::default();
    let telemetry = std::sync::Arc::new(driftwatch::telemetry::Telemetry::default());
    driftwatch::drivers::replay::replay(config, &[p.to_path_buf()], &[l.to_path_buf()], &mut sink, telemetry)
        .expect("replay");
    sink.rows.iter().map(|r| format!("{r:?}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Replay is deterministic: the same events and config give the same
    /// rows, bit for bit and in the same order, every time (no hash-order
    /// or clock dependence), with a baseline attached so every drift
    /// statistic and performance metric is computed.
    #[test]
    fn replay_is_deterministic(events in generated_events(), batch_size in 1usize..64) {
        let dir = tempfile::tempdir().unwrap();
        let (p, l) = write_stream(dir.path(), &events);
        let yaml = format!(
            "windows: {{size: 2m, slide: 1m, allowed_lateness: 1m, label_horizon: 5m}}\n\
             pipeline: {{batch_size: {batch_size}}}\n\
             models: [{{name: shop, baseline: {}}}]\n",
            crate::support::repo("tests/fixtures/replay_drift/baseline.json").display()
        );
        let config = driftwatch::config::Config::from_yaml_str(&yaml, "determinism.yaml").unwrap();
        let first = replay_rows(&config, &p, &l);
        let second = replay_rows(&config, &p, &l);
        prop_assert!(!first.is_empty());
        prop_assert_eq!(first, second);
    }
}

// ---------------------------------------------------------------------------
// Partial windows: window states split at random, named, merged.

use datafusion::arrow::array::UInt32Array;
use driftwatch::decode::{FeatureArray, PredictionArray};
use driftwatch::evaluate::{FeatureSummary, GroupColumns, PredictionSummary, WindowState};
use driftwatch::model::reference::ModelReference;
use driftwatch::model::{FeatureKind, ModelRegistry, ModelState};
use driftwatch::window::partial::PartialWindow;

const WINDOW: (i64, i64) = (1_700_000_000_000, 1_700_000_300_000);

/// One generated prediction (and label) of the `shop` model.
#[derive(Debug, Clone)]
struct ShopEvent {
    amount: Option<f64>,
    country: Option<&'static str>,
    tenure: Option<f64>,
    extra: Option<f64>,
    predicted: &'static str,
    score: Option<f64>,
    latency_ms: Option<f64>,
    actual: Option<&'static str>,
}

fn shop_events(seed: u64, n: usize) -> Vec<ShopEvent> {
    let mut rng = driftwatch::rng::Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut maybe = |p: f64| rng.uniform() < p;
            let present = [maybe(0.9), maybe(0.85), maybe(0.95), maybe(0.4), maybe(0.8), maybe(0.7)];
            ShopEvent {
                amount: present[0].then(|| (rng.normal() * 0.8 + 3.0).exp()),
                country: present[1].then(|| rng.pick(&["DE", "FR", "GB", "US", "JP"])),
                tenure: present[2].then(|| (rng.uniform() * 4000.0).floor()),
                extra: present[3].then(|| rng.normal()),
                predicted: rng.pick(&["0", "1"]),
                score: present[4].then(|| rng.uniform()),
                latency_ms: Some(rng.uniform() * 50.0),
                actual: present[5].then(|| rng.pick(&["0", "1"])),
            }
        })
        .collect()
}

/// `shop` (with its baseline, the feature `extra`, its classes and series
/// 0) from the replay_drift fixture.
fn shop_model() -> ModelState {
    let baseline = crate::support::repo("tests/fixtures/replay_drift/baseline.json");
    let config = driftwatch::config::Config::from_yaml_str(
        &format!("models: [{{name: shop, task: binary_classification, baseline: {}}}]\n", baseline.display()),
        "test.yaml",
    )
    .unwrap();
    let mut registry = ModelRegistry::from_config(&config);
    let mut model = registry.get_mut(0).clone();
    model.attach_reference(ModelReference::new(driftwatch::baseline::Baseline::load(&baseline).unwrap()));
    model.add_feature("extra", FeatureKind::Numeric);
    model.classes.intern("1", usize::MAX);
    model.classes.intern("0", usize::MAX);
    let mut key = "v1\0".to_string();
    model.intern_series_key(&mut key, 2, (1000, 1000));
    model
}

fn aggregate_shop(model: &ModelState, events: &[ShopEvent]) -> WindowState {
    let mut state = WindowState::new(model);
    for chunk in events.chunks(29) {
        let numeric = |f: fn(&ShopEvent) -> Option<f64>| Float64Array::from(chunk.iter().map(f).collect::<Vec<_>>());
        let features = [
            FeatureArray::Numeric(numeric(|e| e.amount)),
            FeatureArray::Categorical(StringArray::from(chunk.iter().map(|e| e.country).collect::<Vec<_>>())),
            FeatureArray::Numeric(numeric(|e| e.tenure)),
            FeatureArray::Numeric(numeric(|e| e.extra)),
        ];
        // A chunk without any `extra` carries no such column, as a batch
        // of events that lack the feature.
        let carried = if chunk.iter().any(|e| e.extra.is_some()) { 4 } else { 3 };
        let class = |name: &str| model.classes.get(name).unwrap();
        let prediction =
            PredictionArray::Class(UInt32Array::from(chunk.iter().map(|e| class(e.predicted)).collect::<Vec<_>>()));
        let (score, latency_ms) = (numeric(|e| e.score), numeric(|e| e.latency_ms));
        let columns = GroupColumns {
            len: chunk.len(),
            features: &features[..carried],
            prediction: &prediction,
            score: &score,
            latency_ms: &latency_ms,
        };
        state.update(model, &columns, 1000, false);
        for event in chunk.iter().filter(|e| e.actual.is_some()) {
            let (predicted, actual) = (class(event.predicted), class(event.actual.unwrap()));
            state.performance.add(Outcome::Class { predicted, actual, score: event.score.unwrap_or(f64::NAN) });
        }
    }
    state
}

fn relatively_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
}

/// Exact fields equal; moments within 1e-12 relative; exact values as a
/// multiset.
fn numeric_equivalent(merged: &NumericSummary, whole: &NumericSummary, what: &str) -> Result<(), TestCaseError> {
    let (mut merged, mut whole) = (merged.clone(), whole.clone());
    prop_assert_eq!(merged.count(), whole.count(), "{}: count", what);
    // The score's and latency's `missing` count only batches that carry
    // some value (no row reads them), so they follow the batching.
    if what != "score" && what != "latency" {
        prop_assert_eq!(merged.missing, whole.missing, "{}: missing", what);
    }
    prop_assert_eq!((merged.min(), merged.max()), (whole.min(), whole.max()), "{}: min, max", what);
    if whole.count() > 0 {
        prop_assert!(relatively_close(merged.mean().unwrap(), whole.mean().unwrap()), "{}: mean", what);
    }
    if whole.count() > 1 {
        prop_assert!(relatively_close(merged.std().unwrap(), whole.std().unwrap()), "{}: std", what);
    }
    let sorted = |s: &NumericSummary| {
        let mut values = s.exact_values().map(<[f64]>::to_vec);
        values.iter_mut().for_each(|v| v.sort_by(f64::total_cmp));
        values
    };
    prop_assert_eq!(sorted(&merged), sorted(&whole), "{}: exact values", what);
    prop_assert_eq!(merged.to_sketch(), whole.to_sketch(), "{}: sketch", what);
    Ok(())
}

fn states_equivalent(merged: &WindowState, whole: &WindowState) -> Result<(), TestCaseError> {
    prop_assert_eq!(merged.events, whole.events);
    for id in 0..merged.features.len().max(whole.features.len()) {
        let mine = merged.features.get(id).and_then(Option::as_ref);
        let theirs = whole.features.get(id).and_then(Option::as_ref);
        let (Some(mine), Some(theirs)) = (mine, theirs) else {
            prop_assert!(mine.is_none() && theirs.is_none(), "feature {}: a state on one side only", id);
            continue;
        };
        match (&mine.summary, &theirs.summary) {
            (FeatureSummary::Numeric(a), FeatureSummary::Numeric(b)) => numeric_equivalent(a, b, "feature")?,
            (FeatureSummary::Categorical(a), FeatureSummary::Categorical(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "feature {}: kinds differ", id),
        }
        prop_assert_eq!(&mine.reference_bins, &theirs.reference_bins, "feature {} bins", id);
        prop_assert_eq!((mine.type_errors, mine.out_of_range), (theirs.type_errors, theirs.out_of_range));
    }
    let (PredictionSummary::Classes(a), PredictionSummary::Classes(b)) = (&merged.prediction, &whole.prediction) else {
        return Err(TestCaseError::fail("classification predictions"));
    };
    let trimmed = |v: &[u64]| v[..v.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1)].to_vec();
    prop_assert_eq!(trimmed(a), trimmed(b));
    numeric_equivalent(&merged.score, &whole.score, "score")?;
    numeric_equivalent(&merged.latency_ms, &whole.latency_ms, "latency")?;
    prop_assert_eq!(&merged.score_bins, &whole.score_bins);
    let (a, b) = (&merged.performance, &whole.performance);
    prop_assert_eq!((a.labeled, &a.confusion), (b.labeled, &b.confusion));
    for (x, y) in a.scores.sums.values().zip(b.scores.sums.values()) {
        prop_assert_eq!(x.count, y.count);
        prop_assert!(relatively_close(x.ln_score, y.ln_score) && relatively_close(x.score_squared, y.score_squared));
    }
    prop_assert_eq!(a.scores.sums.len(), b.scores.sums.len());
    prop_assert_eq!(&a.scores.histograms, &b.scores.histograms);
    let pairs = |p: &PerformanceState| {
        let mut pairs = p.scores.exact.clone();
        pairs.iter_mut().for_each(|v| v.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1))));
        pairs
    };
    prop_assert_eq!(pairs(a), pairs(b));
    Ok(())
}

/// Merges `partials` in the order and grouping `choices` picks: each step
/// merges one partial into its left neighbour, the pair chosen among those
/// left, so every binary grouping of every order can come up.
fn merge_partials(mut partials: Vec<PartialWindow>, choices: &[u64]) -> PartialWindow {
    let mut step = 0;
    while partials.len() > 1 {
        let at = (choices[step % choices.len()] % (partials.len() as u64 - 1)) as usize;
        let right = partials.remove(at + 1);
        partials[at].merge(right, 1000).unwrap();
        step += 1;
    }
    partials.pop().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn partial_windows_merge_in_any_grouping_and_order_into_the_state_of_one_pass(
        seed in any::<u64>(),
        n in 0usize..2500,
        cuts in prop::collection::vec(0usize..3000, 0..6),
        shuffle in prop::collection::vec(any::<u64>(), 8),
        choices in prop::collection::vec(any::<u64>(), 8),
    ) {
        let model = shop_model();
        let events = shop_events(seed, n);
        let whole = aggregate_shop(&model, &events);
        let mut parts: Vec<PartialWindow> = chunks(n, &cuts)
            .into_iter()
            .map(|r| PartialWindow::from_state(&model, 0, WINDOW.0, WINDOW.1, &aggregate_shop(&model, &events[r])))
            .collect();
        if parts.is_empty() {
            // No events: one partial of nothing.
            parts.push(PartialWindow::from_state(&model, 0, WINDOW.0, WINDOW.1, &WindowState::new(&model)));
        }
        let mut keys: Vec<(u64, usize)> = (0..parts.len()).map(|i| (shuffle[i % shuffle.len()], i)).collect();
        keys.sort_unstable();
        let shuffled: Vec<PartialWindow> = keys.iter().map(|(_, i)| parts[*i].clone()).collect();
        parts = shuffled;
        let merged = merge_partials(parts.clone(), &choices);
        // Shipped as bytes and interned on another machine's model.
        let bytes = merged.to_msgpack();
        let (series, state) = PartialWindow::from_msgpack(&bytes)
            .unwrap()
            .into_state(&mut model.clone(), &driftwatch::config::PipelineConfig::default())
            .unwrap();
        prop_assert_eq!(series, 0);
        states_equivalent(&state, &whole)?;
        // The same partials in the same order and grouping: the same bytes.
        prop_assert_eq!(merge_partials(parts, &choices).to_msgpack(), bytes);
    }
}
