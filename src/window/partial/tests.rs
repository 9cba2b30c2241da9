//! [`WindowState::merge`] (two partial states of one window give the
//! state of one pass over their events) and [`PartialWindow`] (names
//! instead of ids, versioned encodings that round-trip bit for bit, merges
//! through names, interning as the decoder does, clear refusals).

use datafusion::arrow::array::{Float64Array, StringArray, UInt32Array};

use super::*;
use crate::baseline::Baseline;
use crate::config::Config;
use crate::decode::{FeatureArray, PredictionArray};
use crate::evaluate::{GroupColumns, Outcome};
use crate::model::reference::ModelReference;
use crate::rng::Rng;

const START: i64 = 1_700_000_000_000;
const END: i64 = START + 300_000;
const CAP: usize = 1000;

/// One prediction event (and its label, if any) of the `shop` model.
#[derive(Debug, Clone)]
struct Event {
    amount: Option<f64>,
    country: Option<String>,
    tenure: Option<f64>,
    /// A feature the baseline does not profile.
    extra: Option<f64>,
    predicted: &'static str,
    score: Option<f64>,
    latency_ms: Option<f64>,
    actual: Option<&'static str>,
}

fn config(extra: &str) -> Config {
    let baseline = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/replay_drift/baseline.json");
    Config::from_yaml_str(
        &format!(
            "{extra}models:\n  - {{name: shop, task: binary_classification, baseline: {baseline}}}\n  \
             - {{name: genre, task: multiclass_classification}}\n"
        ),
        "test.yaml",
    )
    .unwrap()
}

/// The models of [`config`], `shop` with its baseline, the feature
/// `extra`, its classes interned `1` then `0` and its series 0 (version
/// `v1`, the whole model).
fn registry() -> ModelRegistry {
    let config = config("");
    let mut registry = ModelRegistry::from_config(&config);
    let baseline = Baseline::load(config.models[0].baseline.as_ref().unwrap()).unwrap();
    let shop = registry.get_mut(0);
    shop.attach_reference(ModelReference::new(baseline));
    shop.add_feature("extra", FeatureKind::Numeric);
    shop.classes.intern("1", usize::MAX);
    shop.classes.intern("0", usize::MAX);
    let mut key = "v1\0".to_string();
    shop.intern_series_key(&mut key, 2, (CAP, CAP));
    registry
}

fn events(seed: u64, n: usize, countries: &[&str]) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut maybe = |p: f64| rng.uniform() < p;
            let (has_amount, has_country, has_tenure, has_extra, has_score, labelled) =
                (maybe(0.9), maybe(0.85), maybe(0.95), maybe(0.5), maybe(0.8), maybe(0.7));
            Event {
                amount: has_amount.then(|| (rng.normal() * 0.8 + 3.0).exp()),
                country: has_country.then(|| rng.pick(countries).to_string()),
                tenure: has_tenure.then(|| (rng.uniform() * 4000.0).floor()),
                extra: has_extra.then(|| rng.normal()),
                predicted: rng.pick(&["0", "1"]),
                score: has_score.then(|| rng.uniform()),
                latency_ms: Some(rng.uniform() * 50.0),
                actual: labelled.then(|| rng.pick(&["0", "1"])),
            }
        })
        .collect()
}

/// One pass over `events`, in batches of 37 (the last feature only when
/// `with_extra`: a part whose batches never carry it).
fn aggregate(model: &ModelState, events: &[Event], with_extra: bool, max_categories: usize) -> WindowState {
    let mut state = WindowState::new(model);
    for chunk in events.chunks(37) {
        let numeric = |f: fn(&Event) -> Option<f64>| Float64Array::from(chunk.iter().map(f).collect::<Vec<_>>());
        let mut features = vec![
            FeatureArray::Numeric(numeric(|e| e.amount)),
            FeatureArray::Categorical(StringArray::from(chunk.iter().map(|e| e.country.clone()).collect::<Vec<_>>())),
            FeatureArray::Numeric(numeric(|e| e.tenure)),
        ];
        if with_extra {
            features.push(FeatureArray::Numeric(numeric(|e| e.extra)));
        }
        let class = |name: &str| model.classes.get(name).unwrap();
        let prediction =
            PredictionArray::Class(UInt32Array::from(chunk.iter().map(|e| class(e.predicted)).collect::<Vec<_>>()));
        let (score, latency_ms) = (numeric(|e| e.score), numeric(|e| e.latency_ms));
        let columns = GroupColumns {
            len: chunk.len(),
            features: &features,
            prediction: &prediction,
            score: &score,
            latency_ms: &latency_ms,
        };
        state.update(model, &columns, max_categories, false);
        for event in chunk {
            if let Some(actual) = event.actual {
                let score = event.score.unwrap_or(f64::NAN);
                state.performance.add(Outcome::Class {
                    predicted: class(event.predicted),
                    actual: class(actual),
                    score,
                });
            }
        }
    }
    state
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300), "{what}: {a} vs {b}");
}

fn assert_numeric_equivalent(merged: &NumericSummary, whole: &NumericSummary, what: &str) {
    let (mut merged, mut whole) = (merged.clone(), whole.clone());
    assert_eq!(merged.count(), whole.count(), "{what}: count");
    // The score's and latency's `missing` count only batches that carry
    // some value (no row reads them), so they follow the batching.
    if what != "score" && what != "latency" {
        assert_eq!(merged.missing, whole.missing, "{what}: missing");
    }
    assert_eq!((merged.min(), merged.max()), (whole.min(), whole.max()), "{what}: min, max");
    if whole.count() > 0 {
        close(merged.mean().unwrap(), whole.mean().unwrap(), &format!("{what}: mean"));
    }
    if whole.count() > 1 {
        close(merged.std().unwrap(), whole.std().unwrap(), &format!("{what}: std"));
    }
    let sorted = |s: &NumericSummary| {
        let mut values = s.exact_values().map(<[f64]>::to_vec);
        values.iter_mut().for_each(|v| v.sort_by(f64::total_cmp));
        values
    };
    assert_eq!(sorted(&merged), sorted(&whole), "{what}: exact values");
    assert_eq!(merged.to_sketch(), whole.to_sketch(), "{what}: sketch");
}

/// `merged` holds what `whole` does: exact fields equal, moments within
/// 1e-12 relative, exact values and scored pairs as multisets.
fn assert_equivalent(merged: &WindowState, whole: &WindowState) {
    assert_eq!(merged.events, whole.events, "events");
    let features = merged.features.len().max(whole.features.len());
    for id in 0..features {
        let (mine, theirs) =
            (merged.features.get(id).and_then(Option::as_ref), whole.features.get(id).and_then(Option::as_ref));
        let (Some(mine), Some(theirs)) = (mine, theirs) else {
            assert!(mine.is_none() && theirs.is_none(), "feature {id}: a state on one side only");
            continue;
        };
        match (&mine.summary, &theirs.summary) {
            (FeatureSummary::Numeric(a), FeatureSummary::Numeric(b)) => {
                assert_numeric_equivalent(a, b, &format!("feature {id}"))
            }
            (FeatureSummary::Categorical(a), FeatureSummary::Categorical(b)) => assert_eq!(a, b, "feature {id}"),
            _ => panic!("feature {id}: kinds differ"),
        }
        assert_eq!(
            (mine.type_errors, &mine.reference_bins, mine.out_of_range, mine.bins_lost),
            (theirs.type_errors, &theirs.reference_bins, theirs.out_of_range, theirs.bins_lost),
            "feature {id}: type errors, bins, out of range"
        );
    }
    match (&merged.prediction, &whole.prediction) {
        (PredictionSummary::Classes(a), PredictionSummary::Classes(b)) => {
            let trimmed = |v: &[u64]| v[..v.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1)].to_vec();
            assert_eq!(trimmed(a), trimmed(b), "prediction classes");
        }
        (PredictionSummary::Values(a), PredictionSummary::Values(b)) => assert_numeric_equivalent(a, b, "prediction"),
        _ => panic!("prediction kinds differ"),
    }
    assert_numeric_equivalent(&merged.score, &whole.score, "score");
    assert_numeric_equivalent(&merged.latency_ms, &whole.latency_ms, "latency");
    assert_eq!((&merged.score_bins, &merged.prediction_bins), (&whole.score_bins, &whole.prediction_bins), "bins");
    let (a, b) = (&merged.performance, &whole.performance);
    assert_eq!((a.labeled, &a.confusion, a.paired), (b.labeled, &b.confusion, b.paired), "performance counts");
    assert_eq!(a.scores.sums.keys().collect::<Vec<_>>(), b.scores.sums.keys().collect::<Vec<_>>());
    for ((class, x), y) in a.scores.sums.iter().zip(b.scores.sums.values()) {
        assert_eq!(x.count, y.count, "scored pairs of class {class}");
        for (p, q) in [(x.ln_score, y.ln_score), (x.ln_complement, y.ln_complement), (x.score_squared, y.score_squared)]
        {
            close(p, q, &format!("score sums of class {class}"));
        }
    }
    let pairs = |s: &ScoreState| {
        let mut pairs = s.exact.clone();
        pairs.iter_mut().for_each(|p| p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))));
        pairs
    };
    assert_eq!(pairs(&a.scores), pairs(&b.scores), "scored pairs");
    assert_eq!(a.scores.histograms, b.scores.histograms, "score histograms");
}

fn merged(parts: Vec<WindowState>, max_categories: usize) -> WindowState {
    let mut parts = parts.into_iter();
    let mut state = parts.next().unwrap();
    parts.for_each(|part| state.merge(part, max_categories));
    state
}

#[test]
fn two_partial_states_merge_into_the_state_of_one_pass() {
    let registry = registry();
    let model = registry.get(0);
    let seed = 0x5EED;
    println!("seed {seed}");
    for (n, cut) in [(300, 120), (3000, 1700), (40, 0), (2500, 2500), (9000, 4000)] {
        let events = events(seed + n as u64, n, &["DE", "FR", "GB", "NL", "US", "JP"]);
        let whole = aggregate(model, &events, true, CAP);
        let halves = vec![aggregate(model, &events[..cut], true, CAP), aggregate(model, &events[cut..], true, CAP)];
        assert_equivalent(&merged(halves, CAP), &whole);
        // The other order gives the same.
        let halves = vec![aggregate(model, &events[cut..], true, CAP), aggregate(model, &events[..cut], true, CAP)];
        assert_equivalent(&merged(halves, CAP), &whole);
    }
}

#[test]
fn a_feature_only_one_side_has_counts_the_other_sides_events_as_missing() {
    let registry = registry();
    let model = registry.get(0);
    let events = events(7, 400, &["DE", "FR"]);
    let (first, second) = events.split_at(150);
    // The first part's batches never carry `extra`: it has no state there.
    let without = aggregate(model, first, false, CAP);
    assert!(without.features.get(3).is_none_or(Option::is_none));
    let with = aggregate(model, second, true, CAP);
    let mut whole_events: Vec<Event> = first.iter().cloned().map(|e| Event { extra: None, ..e }).collect();
    whole_events.extend_from_slice(second);
    let whole = aggregate(model, &whole_events, true, CAP);
    for parts in [vec![without.clone(), with.clone()], vec![with, without]] {
        let state = merged(parts, CAP);
        assert_equivalent(&state, &whole);
        let FeatureSummary::Numeric(extra) = &state.features[3].as_ref().unwrap().summary else { panic!("numeric") };
        let in_second = second.iter().filter(|e| e.extra.is_none()).count() as u64;
        assert_eq!(extra.missing, 150 + in_second);
    }
}

/// The `country` table of a state.
fn countries(state: &WindowState) -> &CategoricalSummary {
    let FeatureSummary::Categorical(country) = &state.features[1].as_ref().unwrap().summary else {
        panic!("categorical")
    };
    country
}

/// The `cap` most frequent countries of `events` (ties by name).
fn most_frequent(events: &[Event], cap: usize) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    events.iter().filter_map(|e| e.country.clone()).for_each(|c| *totals.entry(c).or_default() += 1);
    let mut ranked: Vec<(String, u64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(cap);
    ranked.sort();
    ranked
}

fn table(summary: &CategoricalSummary) -> Vec<(String, u64)> {
    let mut table: Vec<(String, u64)> = summary.frequencies.iter().map(|(v, n)| (v.to_string(), *n)).collect();
    table.sort();
    table
}

#[test]
fn the_category_cap_after_a_merge_keeps_the_most_frequent_whichever_side_is_merged_into_which() {
    let registry = registry();
    let model = registry.get(0);
    // Each part alone stays within the cap of 3; together they do not.
    let (first, second) = (events(1, 300, &["DE", "FR", "GB"]), events(2, 200, &["US", "FR", "DE"]));
    let (a, b) = (aggregate(model, &first, true, 3), aggregate(model, &second, true, 3));
    let (mut ab, mut ba) = (a.clone(), b.clone());
    ab.merge(b, 3);
    ba.merge(a, 3);
    let all = [first, second].concat();
    for state in [&ab, &ba] {
        let country = countries(state);
        assert_eq!(table(country), most_frequent(&all, 3));
        assert_eq!(country.count, all.iter().filter(|e| e.country.is_some()).count() as u64);
        assert_eq!(country.count, country.frequencies.values().sum::<u64>() + country.other);
    }
    assert_eq!(countries(&ab), countries(&ba));
    assert_eq!(ab.performance.confusion, ba.performance.confusion);
}

#[test]
fn partials_merged_at_once_keep_the_same_categories_whatever_their_order() {
    let registry = registry();
    let model = registry.get(0);
    // DE is rare in the first two parts and common in the third.
    let parts = [
        events(1, 200, &["DE", "FR", "FR", "GB", "GB"]),
        events(2, 200, &["US", "US", "FR", "JP", "JP"]),
        events(3, 200, &["DE", "DE", "DE", "NL", "BR"]),
    ];
    let partials: Vec<PartialWindow> =
        parts.iter().map(|p| PartialWindow::from_state(model, 0, START, END, &aggregate(model, p, true, 3))).collect();
    let expected = most_frequent(&parts.concat(), 3);
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let mut results = Vec::new();
    for order in orders {
        let mut merged = partials[order[0]].clone();
        merged.merge_many(order[1..].iter().map(|&i| partials[i].clone()), 3).unwrap();
        let PartialSummary::Categorical(country) = &merged.features["country"].summary else { panic!("categorical") };
        let table: Vec<(String, u64)> = country.frequencies.iter().map(|(v, n)| (v.clone(), *n)).collect();
        assert_eq!(table, expected, "order {order:?}");
        results.push((country.clone(), merged.events, merged.performance.confusion.clone()));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "the order changed the merged counts");
    assert!(expected.iter().any(|(country, _)| country == "DE"), "{expected:?}");
    // A chain of capped merges pools DE when the first two parts' union
    // exceeds the cap, and the third part's DE cannot bring those back.
    let mut chained = partials[0].clone();
    chained.merge(partials[1].clone(), 3).unwrap();
    chained.merge(partials[2].clone(), 3).unwrap();
    let PartialSummary::Categorical(country) = &chained.features["country"].summary else { panic!("categorical") };
    let in_third = parts[2].iter().filter(|e| e.country.as_deref() == Some("DE")).count() as u64;
    assert_eq!(country.frequencies["DE"], in_third);
}

/// A state of `shop`.
fn shop_state(registry: &mut ModelRegistry, seed: u64, n: usize) -> WindowState {
    aggregate(registry.get(0), &events(seed, n, &["DE", "FR", "GB", "XX"]), true, CAP)
}

#[test]
fn a_partial_window_names_ids_and_round_trips_bit_for_bit() {
    let mut registry = registry();
    for n in [50, 3000] {
        let state = shop_state(&mut registry, 11, n);
        let model = registry.get(0);
        let partial = PartialWindow::from_state(model, 0, START, END, &state);
        assert_eq!((&*partial.model, &*partial.model_version, &*partial.segment), ("shop", "v1", ""));
        assert_eq!(partial.features.keys().collect::<Vec<_>>(), ["amount", "country", "extra", "tenure"]);
        assert_eq!(partial.baseline.as_deref(), Some(&*model.reference.as_ref().unwrap().stamp.sha256));
        let PartialPrediction::Classes(classes) = &partial.prediction else { panic!("classes") };
        assert_eq!(classes.keys().collect::<Vec<_>>(), ["0", "1"]);
        assert_eq!(classes.values().sum::<u64>(), n as u64);
        assert!(partial.performance.confusion.keys().all(|p| p == "0" || p == "1"));

        let bytes = partial.to_msgpack();
        let read = PartialWindow::from_msgpack(&bytes).unwrap();
        assert_eq!(read, partial);
        assert_eq!(read.to_msgpack(), bytes, "MessagePack round trip");
        let text = partial.to_json();
        let read = PartialWindow::from_json(&text).unwrap();
        assert_eq!(read.to_json(), text, "JSON round trip");
        assert_eq!(read.to_msgpack(), bytes, "JSON keeps every bit");

        // Back into the same model, it continues bit for bit.
        let mut model = registry.get(0).clone();
        let (series, mut restored) = read.into_state(&mut model, &config("").pipeline).unwrap();
        assert_eq!(series, 0);
        let mut original = state.clone();
        let more = aggregate(&model, &events(12, 700, &["DE", "NL"]), true, CAP);
        original.merge(more.clone(), CAP);
        restored.merge(more, CAP);
        assert_eq!(
            PartialWindow::from_state(&model, 0, START, END, &restored).to_msgpack(),
            PartialWindow::from_state(&model, 0, START, END, &original).to_msgpack()
        );
    }
}

#[test]
fn a_partial_window_interns_what_a_fresh_model_lacks_as_the_decoder_would() {
    let mut registry = registry();
    let state = shop_state(&mut registry, 5, 300);
    let mut key = "v2\0region=eu".to_string();
    let (segment, _) = registry.get_mut(0).intern_series_key(&mut key, 2, (CAP, CAP));
    let partial = PartialWindow::from_state(registry.get(0), segment, START, END, &state);
    assert_eq!(partial.segment, "region=eu");
    // A model that has seen nothing but its baseline features.
    let mut fresh = ModelRegistry::from_config(&config(""));
    let baseline = registry.get(0).reference.as_ref().unwrap().baseline.as_ref().clone();
    fresh.get_mut(0).attach_reference(ModelReference::new(baseline));
    let (model, series, restored) = partial.clone().into_registry(&mut fresh, &config("").pipeline).unwrap();
    let shop = fresh.get(model);
    assert_eq!(&*shop.series[series as usize].model_version, "v2");
    assert_eq!(&*shop.series[series as usize].segment, "region=eu");
    let whole = shop.series[series as usize].whole_model.expect("a segment links its whole-model series");
    assert_eq!(&*shop.series[whole as usize].segment, "");
    assert!(shop.feature_ids.contains_key("extra") && shop.classes.len() == 2);
    assert_eq!(PartialWindow::from_state(shop, series, START, END, &restored), partial);
}

#[test]
fn versions_and_series_beyond_the_caps_are_filed_under_other() {
    let mut registry = registry();
    let state = shop_state(&mut registry, 5, 20);
    let mut key = "v2\0region=eu".to_string();
    let (segment, _) = registry.get_mut(0).intern_series_key(&mut key, 2, (CAP, CAP));
    let partial = PartialWindow::from_state(registry.get(0), segment, START, END, &state);
    let limits = config("pipeline: {max_versions_per_model: 1, max_segments_per_model: 1}\n").pipeline;
    let mut model = ModelRegistry::from_config(&config("")).get(0).clone();
    model.reference = registry.get(0).reference.clone();
    let mut key = "v1\0".to_string();
    model.intern_series_key(&mut key, 2, (1, 1));
    let (series, _) = partial.into_state(&mut model, &limits).unwrap();
    let series = &model.series[series as usize];
    assert_eq!(&*series.model_version, crate::config::OVERFLOW_VERSION);
    assert_eq!(&*series.segment, crate::config::OVERFLOW_SEGMENT);
}

#[test]
fn partials_merge_through_names_as_states_do_and_give_the_same_bytes_each_time() {
    let mut registry = registry();
    let parts: Vec<WindowState> = (0..4).map(|i| shop_state(&mut registry, 100 + i, 200 + 400 * i as usize)).collect();
    let model = registry.get(0);
    let partials: Vec<PartialWindow> =
        parts.iter().map(|s| PartialWindow::from_state(model, 0, START, END, s)).collect();
    let merge_all = || {
        let mut merged = partials[0].clone();
        for partial in &partials[1..] {
            merged.merge(partial.clone(), CAP).unwrap();
        }
        merged
    };
    let (first, second) = (merge_all(), merge_all());
    assert_eq!(first.to_msgpack(), second.to_msgpack());
    let by_states = merged(parts, CAP);
    assert_eq!(first, PartialWindow::from_state(model, 0, START, END, &by_states));
}

fn error_of<T: std::fmt::Debug>(result: Result<T, PartialWindowError>) -> (PartialWindowError, String) {
    let error = result.unwrap_err();
    let message = error.to_string();
    (error, message)
}

#[test]
fn another_format_version_is_refused_in_both_encodings() {
    let mut registry = registry();
    let state = shop_state(&mut registry, 1, 10);
    let mut partial = PartialWindow::from_state(registry.get(0), 0, START, END, &state);
    partial.format_version = 2;
    let unsupported = PartialWindowError::UnsupportedVersion { found: 2, supported: 1 };
    let (error, message) = error_of(PartialWindow::from_msgpack(&partial.to_msgpack()));
    assert_eq!(error, unsupported);
    assert_eq!(message, "partial window format_version 2 is not supported: this build reads version 1");
    assert_eq!(error_of(PartialWindow::from_json(&partial.to_json())).0, unsupported);
    // A newer version with fields this one does not know is still named by its version.
    let mut value: serde_json::Value = serde_json::from_str(&partial.to_json()).unwrap();
    value["shards"] = serde_json::json!(3);
    assert_eq!(error_of(PartialWindow::from_json(&value.to_string())).0, unsupported);
    value["format_version"] = serde_json::json!(1);
    let (error, message) = error_of(PartialWindow::from_json(&value.to_string()));
    assert!(matches!(error, PartialWindowError::Unreadable { .. }) && message.contains("shards"), "{message}");
    assert_eq!(error_of(partial.into_state(&mut registry.get(0).clone(), &config("").pipeline)).0, unsupported);
}

#[test]
fn partials_of_different_windows_do_not_merge_and_the_error_names_the_field() {
    let mut registry = registry();
    let state = shop_state(&mut registry, 1, 10);
    let partial = PartialWindow::from_state(registry.get(0), 0, START, END, &state);
    let mut later = PartialWindow::from_state(registry.get(0), 0, END, END + 300_000, &state);
    let (error, message) = error_of(later.clone().merge(partial.clone(), CAP));
    assert_eq!(
        error,
        PartialWindowError::DifferentWindows {
            field: "window_start_ms",
            mine: END.to_string(),
            theirs: START.to_string()
        }
    );
    assert!(message.contains("window_start_ms") && message.contains(&START.to_string()), "{message}");
    let before = later.clone();
    let mut other_version = partial.clone();
    other_version.model_version = "v9".into();
    assert!(matches!(
        later.merge(other_version, CAP).unwrap_err(),
        PartialWindowError::DifferentWindows { field: "model_version", .. }
    ));
    assert_eq!(later, before, "a refused merge leaves the partial as it was");
    let mut numeric_country = partial.clone();
    numeric_country.features.insert("country".into(), partial.features["amount"].clone());
    let (error, message) = error_of(partial.clone().merge(numeric_country, CAP));
    assert!(matches!(error, PartialWindowError::KindMismatch { expected: "categorical", found: "numeric", .. }));
    assert!(message.contains("\"country\""), "{message}");
}

#[test]
fn interning_refusals_name_what_and_where_and_leave_the_model_unchanged() {
    let mut registry = registry();
    let state = shop_state(&mut registry, 1, 30);
    let partial = PartialWindow::from_state(registry.get(0), 0, START, END, &state);
    let limits = config("").pipeline;
    let fresh = || {
        let mut fresh = ModelRegistry::from_config(&config(""));
        let baseline = registry.get(0).reference.as_ref().unwrap().baseline.as_ref().clone();
        fresh.get_mut(0).attach_reference(ModelReference::new(baseline));
        fresh.get(0).clone()
    };
    let unchanged = |model: &ModelState| {
        assert_eq!((model.features.len(), model.classes.len(), model.series.len()), (3, 0, 0), "the model changed")
    };

    // A feature of another kind than the model's.
    let mut model = fresh();
    model.add_feature("extra", FeatureKind::Categorical);
    let (error, message) = error_of(partial.clone().into_state(&mut model, &limits));
    assert!(matches!(error, PartialWindowError::KindMismatch { expected: "categorical", found: "numeric", .. }));
    assert_eq!(message, "partial window of model \"shop\", feature \"extra\": numeric there, categorical here");
    assert_eq!(model.classes.len() + model.series.len(), 0);

    // More features than the cap.
    let mut model = fresh();
    let small = config("pipeline: {max_features_per_model: 3}\n").pipeline;
    let (error, message) = error_of(partial.clone().into_state(&mut model, &small));
    assert!(matches!(error, PartialWindowError::TooManyFeatures { cap: 3, .. }), "{message}");
    assert!(message.contains("\"extra\"") && message.contains("max_features_per_model"), "{message}");
    unchanged(&model);

    // A class the binary model does not have.
    let mut model = fresh();
    let mut third_class = partial.clone();
    let PartialPrediction::Classes(classes) = &mut third_class.prediction else { panic!() };
    classes.insert("maybe".into(), 1);
    let (error, message) = error_of(third_class.into_state(&mut model, &limits));
    assert!(matches!(error, PartialWindowError::NotABinaryClass { .. }), "{message}");
    assert!(message.contains("\"maybe\"") && message.contains("\"1\""), "{message}");
    unchanged(&model);

    // Another model, another baseline, values that make no valid state.
    let mut genre = registry.get(1).clone();
    assert!(matches!(
        error_of(partial.clone().into_state(&mut genre, &limits)).0,
        PartialWindowError::UnknownModel { .. }
    ));
    let mut model = fresh();
    model.reference = None;
    let (error, message) = error_of(partial.clone().into_state(&mut model, &limits));
    assert!(matches!(error, PartialWindowError::BaselineMismatch { .. }), "{message}");
    let mut model = fresh();
    let mut broken = partial.clone();
    let PartialSummary::Numeric(amount) = &mut broken.features.get_mut("amount").unwrap().summary else { panic!() };
    amount.count += 1;
    let (error, message) = error_of(broken.into_state(&mut model, &limits));
    assert!(matches!(error, PartialWindowError::Invalid { .. }), "{message}");
    assert!(
        message.starts_with("partial window of model \"shop\", features[\"amount\"].summary.numeric: "),
        "{message}"
    );
    unchanged(&model);
    let mut model = fresh();
    let mut wrong_bins = partial.clone();
    wrong_bins.features.get_mut("amount").unwrap().reference_bins.push(1);
    let (error, message) = error_of(wrong_bins.into_state(&mut model, &limits));
    assert!(message.contains("reference_bins") && message.contains("11 bins"), "{error:?}: {message}");
}

#[test]
fn a_multiclass_model_takes_new_classes_up_to_its_cap() {
    let mut registry = registry();
    let genre = registry.get_mut(1);
    for class in ["jazz", "rock", "pop"] {
        genre.classes.intern(class, usize::MAX);
    }
    let mut key = "\0".to_string();
    genre.intern_series_key(&mut key, 0, (CAP, CAP));
    let mut state = WindowState::new(genre);
    state.events = 3;
    state.prediction = PredictionSummary::Classes(vec![1, 1, 1]);
    state.performance.add(Outcome::Class { predicted: 0, actual: 2, score: f64::NAN });
    let partial = PartialWindow::from_state(registry.get(1), 0, START, END, &state);
    assert_eq!(partial.performance.confusion["jazz"]["pop"], 1);
    let mut fresh = ModelRegistry::from_config(&config(""));
    let two = config("pipeline: {max_categories_per_feature: 2}\n").pipeline;
    let (error, message) = error_of(partial.clone().into_registry(&mut fresh, &two));
    assert!(matches!(error, PartialWindowError::TooManyClasses { cap: 2, .. }), "{message}");
    assert_eq!(fresh.get(1).classes.len(), 0);
    let (_, _, restored) = partial.clone().into_registry(&mut fresh, &config("").pipeline).unwrap();
    // Interned in name order: jazz, pop, rock.
    assert_eq!(restored.performance.confusion.keys().collect::<Vec<_>>(), [&(0, 1)]);
    assert_eq!(PartialWindow::from_state(fresh.get(1), 0, START, END, &restored), partial);
}
