use super::*;
use crate::config::{Config, OVERFLOW_SEGMENT, OVERFLOW_VERSION};
use crate::model::ModelRegistry;

fn setup(yaml: &str) -> (ModelRegistry, Decoder) {
    let config = Config::from_yaml_str(yaml, "test.yaml").expect("valid config");
    let registry = ModelRegistry::from_config(&config);
    let decoder = Decoder::new(&registry, &config.pipeline).expect("decoder");
    (registry, decoder)
}

const TWO_MODELS: &str =
    "models:\n  - {name: fraud, task: binary_classification}\n  - {name: price, task: regression}\n";

const SPEC_EXAMPLE: &str = r#"{"event_id": "a1b2", "model": "fraud", "model_version": "3",
 "timestamp": "2026-11-26T10:00:00.123Z",
 "features": {"amount": 12.5, "country": "DE", "age": 41},
 "prediction": 1, "score": 0.87, "latency_ms": 12.4,
 "segment": {"region": "eu"}}"#;

#[test]
fn decodes_the_spec_example_into_columns() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    decoder.push_prediction(&mut registry, SPEC_EXAMPLE.as_bytes()).unwrap();
    let batches = decoder.finish_predictions();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.len(), 1);
    let model = registry.get(batch.model);
    assert_eq!(&*model.name, "fraud");
    assert_eq!(batch.event_time_ms.value(0), 1_795_687_200_123);
    assert_eq!(batch.event_id.value(0), "a1b2");
    let series = &model.series[batch.series.value(0) as usize];
    assert_eq!((&*series.model_version, &*series.segment), ("3", "region=eu"));
    let whole = &model.series[series.whole_model.unwrap() as usize];
    assert_eq!((&*whole.model_version, &*whole.segment), ("3", ""));
    assert_eq!(batch.score.value(0), 0.87);
    assert_eq!(batch.latency_ms.value(0), 12.4);
    let names: Vec<&str> = model.features.iter().map(|f| &*f.name).collect();
    assert_eq!(names, ["amount", "country", "age"]);
    match (&batch.features[0], &batch.features[1]) {
        (FeatureArray::Numeric(a), FeatureArray::Categorical(c)) => {
            assert_eq!(a.value(0), 12.5);
            assert_eq!(c.value(0), "DE");
        }
        other => panic!("unexpected kinds {other:?}"),
    }
    match &batch.prediction {
        PredictionArray::Class(c) => assert_eq!(&**model.classes.name(c.value(0)), "1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejected_events_leave_no_trace_and_name_reason_and_field() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    let cases: &[(&str, InvalidReason, &str)] = &[
        ("not json", InvalidReason::InvalidJson, ""),
        ("[1,2]", InvalidReason::NotAnObject, ""),
        ("", InvalidReason::InvalidJson, ""),
        (r#"{"model":"fraud","timestamp":1796292000000,"prediction":1}"#, InvalidReason::MissingField, "event_id"),
        (r#"{"event_id":"x","model":"fraud","prediction":1}"#, InvalidReason::MissingField, "timestamp"),
        (r#"{"event_id":"x","model":"fraud","timestamp":1796292000000}"#, InvalidReason::MissingField, "prediction"),
        (
            r#"{"event_id":"x","model":"nope","timestamp":1796292000000,"prediction":1}"#,
            InvalidReason::UnknownModel,
            "nope",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":"yesterday","prediction":1}"#,
            InvalidReason::BadTimestamp,
            "timestamp",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1,"prediction":1}"#,
            InvalidReason::TimestampOutOfRange,
            "timestamp",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":"2300-01-01T00:00:00Z","prediction":1}"#,
            InvalidReason::TimestampOutOfRange,
            "timestamp",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1796292000000,"prediction":1,"score":"NaN"}"#,
            InvalidReason::NonFinite,
            "score",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1796292000000,"prediction":1,"score":"high"}"#,
            InvalidReason::WrongType,
            "score",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1796292000000,"prediction":1,"score":1e999}"#,
            InvalidReason::NonFinite,
            "a number out of range (line 1, column 86)",
        ),
        (
            r#"{"event_id":"x","model":"price","timestamp":1796292000000,"prediction":"cheap"}"#,
            InvalidReason::WrongType,
            "prediction",
        ),
        (
            r#"{"event_id":"x","model":"price","timestamp":1796292000000,"prediction":"Infinity"}"#,
            InvalidReason::NonFinite,
            "prediction",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1796292000000,"prediction":1,"features":[1]}"#,
            InvalidReason::WrongType,
            "features",
        ),
        (
            r#"{"event_id":"x","model":"fraud","timestamp":1796292000000,"prediction":1} trailing"#,
            InvalidReason::InvalidJson,
            "payload is not valid JSON (line 1, column",
        ),
        (
            r#"{"event_id":{"a":1},"model":"fraud","timestamp":1796292000000,"prediction":1}"#,
            InvalidReason::WrongType,
            "event_id",
        ),
    ];
    for (payload, reason, detail) in cases {
        let error = decoder.push_prediction(&mut registry, payload.as_bytes()).unwrap_err();
        assert_eq!(error.reason, *reason, "{payload}");
        assert!(error.detail.contains(detail), "{payload}: {}", error.detail);
    }
    assert!(decoder.finish_predictions().is_empty());
    // A good event after all the bad ones still decodes.
    decoder.push_prediction(&mut registry, SPEC_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(decoder.finish_predictions()[0].len(), 1);
}

#[test]
fn deeply_nested_json_is_skipped_without_recursion() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // Unknown fields are skipped by serde_json's iterative skipper.
    let payload = format!(
        "{{\"event_id\":\"x\",\"model\":\"fraud\",\"timestamp\":1796292000000,\"prediction\":1,\"extra\":{nested}}}"
    );
    decoder.push_prediction(&mut registry, payload.as_bytes()).unwrap();
    // A deeply nested feature value is a type error for that feature only.
    let payload = format!(
        "{{\"event_id\":\"y\",\"model\":\"fraud\",\"timestamp\":1796292000000,\"prediction\":1,\"features\":{{\"a\":1,\"deep\":{nested}}}}}"
    );
    decoder.push_prediction(&mut registry, payload.as_bytes()).unwrap();
    let batch = &decoder.finish_predictions()[0];
    assert_eq!(batch.len(), 2);
    // Unclosed nesting is not JSON.
    let payload = "[".repeat(depth);
    let error = decoder.push_prediction(&mut registry, payload.as_bytes()).unwrap_err();
    assert_eq!(error.reason, InvalidReason::NotAnObject);
}

#[test]
fn missing_and_mistyped_features_become_nulls_and_type_errors() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    let events = [
        r#"{"event_id":"1","model":"fraud","timestamp":1796292000000,"prediction":0,"features":{"a":1.5,"c":"x"}}"#,
        r#"{"event_id":"2","model":"fraud","timestamp":1796292000001,"prediction":1,"features":{"a":null}}"#,
        r#"{"event_id":"3","model":"fraud","timestamp":1796292000002,"prediction":true,"features":{"a":"12","c":7,"new":2}}"#,
    ];
    for e in events {
        decoder.push_prediction(&mut registry, e.as_bytes()).unwrap();
    }
    let batch = &decoder.finish_predictions()[0];
    let FeatureArray::Numeric(a) = &batch.features[0] else { panic!() };
    assert_eq!((a.value(0), a.is_null(1), a.is_null(2)), (1.5, true, true));
    let FeatureArray::Categorical(c) = &batch.features[1] else { panic!() };
    assert_eq!((c.value(0), c.is_null(1), c.value(2)), ("x", true, "7"));
    let FeatureArray::Numeric(new) = &batch.features[2] else { panic!() };
    assert_eq!((new.is_null(0), new.is_null(1), new.value(2)), (true, true, 2.0));
    assert_eq!(batch.type_errors, vec![(2, 0)]);
    // `true` and `1` are the same class.
    let PredictionArray::Class(p) = &batch.prediction else { panic!() };
    let model = registry.get(batch.model);
    assert_eq!(&**model.classes.name(p.value(2)), "1");
}

#[test]
fn custom_json_pointers_per_model() {
    let yaml = r#"
models:
  - name: fraud
  - name: churn
    task: multiclass_classification
    fields: {event_id: /meta/id, model: /meta/model, timestamp: /meta/ts, prediction: /out/class, features: /in}
"#;
    let (mut registry, mut decoder) = setup(yaml);
    decoder
        .push_prediction(
            &mut registry,
            br#"{"meta":{"id":"c1","model":"churn","ts":"2026-11-26T10:00:00Z"},"in":{"tenure":3},"out":{"class":"stay"}}"#,
        )
        .unwrap();
    decoder.push_prediction(&mut registry, SPEC_EXAMPLE.as_bytes()).unwrap();
    let batches = decoder.finish_predictions();
    assert_eq!(batches.len(), 2);
    let churn = batches.iter().find(|b| &*registry.get(b.model).name == "churn").unwrap();
    assert_eq!(churn.event_id.value(0), "c1");
    assert_eq!(&*registry.get(churn.model).features[0].name, "tenure");
}

#[test]
fn labels_decode_and_share_the_class_dictionary() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    decoder.push_prediction(&mut registry, SPEC_EXAMPLE.as_bytes()).unwrap();
    decoder
        .push_label(
            &mut registry,
            br#"{"event_id":"a1b2","model":"fraud","timestamp":"2026-11-27T08:00:00Z","label":1}"#,
        )
        .unwrap();
    decoder
        .push_label(&mut registry, br#"{"event_id":"p","model":"price","timestamp":1796292000000,"label":12.5}"#)
        .unwrap();
    let error = decoder
        .push_label(&mut registry, br#"{"event_id":"q","model":"price","timestamp":1796292000000}"#)
        .unwrap_err();
    assert_eq!((error.reason, error.detail.contains("label")), (InvalidReason::MissingField, true));
    let predictions = decoder.finish_predictions();
    let labels = decoder.finish_labels();
    assert_eq!(labels.len(), 2);
    let (PredictionArray::Class(p), PredictionArray::Class(l)) = (&predictions[0].prediction, &labels[0].label) else {
        panic!()
    };
    assert_eq!(p.value(0), l.value(0));
}

#[test]
fn oversized_payloads_are_rejected_before_parsing() {
    let (mut registry, mut decoder) = setup("pipeline: {max_message_bytes: 100}\nmodels:\n  - {name: fraud}\n");
    let error = decoder.push_prediction(&mut registry, SPEC_EXAMPLE.as_bytes()).unwrap_err();
    assert_eq!(error.reason, InvalidReason::TooLarge);
}

#[test]
fn feature_and_segment_caps_hold() {
    let (mut registry, mut decoder) =
        setup("pipeline: {max_features_per_model: 2, max_segments_per_model: 2}\nmodels:\n  - {name: fraud}\n");
    for i in 0..10 {
        let e = format!(
            r#"{{"event_id":"{i}","model":"fraud","timestamp":1796292000000,"prediction":1,"features":{{"f{i}":1}},"segment":{{"s":"{i}"}}}}"#
        );
        decoder.push_prediction(&mut registry, e.as_bytes()).unwrap();
    }
    let model = registry.get(0);
    assert_eq!(model.features.len(), 2);
    assert_eq!(decoder.counters.features_over_cap, 8);
    let segments: Vec<&str> = model.series.iter().map(|s| &*s.segment).collect();
    assert!(segments.len() <= 4, "{segments:?}");
    assert!(segments.contains(&OVERFLOW_SEGMENT));
}

#[test]
fn invalid_utf8_is_not_json() {
    let (mut registry, mut decoder) = setup(TWO_MODELS);
    let mut payload = SPEC_EXAMPLE.as_bytes().to_vec();
    let at = payload.iter().position(|&b| b == b'D').unwrap();
    payload[at] = 0xff;
    let error = decoder.push_prediction(&mut registry, &payload).unwrap_err();
    assert_eq!(error.reason, InvalidReason::InvalidJson);
}

#[test]
fn version_cap_holds_and_files_further_versions_under_other() {
    let (mut registry, mut decoder) = setup("pipeline: {max_versions_per_model: 3}\nmodels:\n  - {name: fraud}\n");
    // A new version per event, half of them with a segment.
    for i in 0..100 {
        let segment = if i % 2 == 0 { r#","segment":{"region":"eu"}"# } else { "" };
        let e = format!(
            r#"{{"event_id":"{i}","model":"fraud","model_version":"v{i}","timestamp":1796292000000,"prediction":1{segment}}}"#
        );
        decoder.push_prediction(&mut registry, e.as_bytes()).unwrap();
    }
    let model = registry.get(0);
    let mut versions: Vec<&str> = model.series.iter().map(|s| &*s.model_version).collect();
    versions.dedup();
    assert_eq!(versions, ["v0", "v1", "v2", OVERFLOW_VERSION]);
    assert_eq!(model.versions.len(), 4);
    assert_eq!(model.series.len(), 7, "(v0, eu), (v0, ''), (v1, ''), (v2, eu), (v2, ''), (__other__, eu), (…, '')");
    assert_eq!(decoder.counters.versions_over_cap, 97);
    // Known versions keep their series; the overflow version has the same
    // segments as any other.
    let batch = decoder.finish_predictions().remove(0);
    let series_of = |row: usize| {
        let s = &model.series[batch.series.value(row) as usize];
        (s.model_version.to_string(), s.segment.to_string())
    };
    assert_eq!(series_of(1), ("v1".to_string(), String::new()));
    assert_eq!(series_of(98), (OVERFLOW_VERSION.to_string(), "region=eu".to_string()));
    assert_eq!(series_of(99), (OVERFLOW_VERSION.to_string(), String::new()));
    // Restored dictionaries keep the cap.
    let (keys, series, classes, features) =
        (model.series_keys.clone(), model.series.clone(), model.classes.clone(), model.features.clone());
    let (mut restored, mut decoder) = setup("pipeline: {max_versions_per_model: 3}\nmodels:\n  - {name: fraud}\n");
    restored.get_mut(0).restore_dictionaries(keys, series, classes, features);
    let e = r#"{"event_id":"n","model":"fraud","model_version":"new","timestamp":1796292000000,"prediction":1}"#;
    decoder.push_prediction(&mut restored, e.as_bytes()).unwrap();
    assert_eq!(decoder.counters.versions_over_cap, 1);
    assert_eq!(restored.get(0).series.len(), 7);
}

#[test]
fn overlong_names_and_values_are_rejected_naming_the_field() {
    // Multiclass, so a class label of any text up to the limit is a class.
    let (mut registry, mut decoder) = setup("models:\n  - {name: fraud, task: multiclass_classification}\n");
    let name = "n".repeat(MAX_EVENT_NAME_BYTES + 1);
    let value = "v".repeat(MAX_CATEGORY_BYTES + 1);
    let event = |rest: &str| format!(r#"{{"event_id":"x","model":"fraud","timestamp":1796292000000,{rest}}}"#);
    let cases = [
        (
            event(&format!(r#""prediction":1,"features":{{"{name}":1}}"#)),
            "field `features`: a feature name of 257 bytes",
        ),
        (
            event(&format!(r#""prediction":1,"features":{{"c":"{value}"}}"#)),
            "field `features`: a feature value of 1025 bytes",
        ),
        (event(&format!(r#""prediction":1,"segment":{{"{name}":"eu"}}"#)), "field `segment`: a segment key of 257"),
        (event(&format!(r#""prediction":1,"segment":{{"r":"{name}"}}"#)), "field `segment`: a segment value of 257"),
        (
            event(&format!(r#""prediction":1,"model_version":"{name}""#)),
            "field `model_version`: a model version of 257",
        ),
        (event(&format!(r#""prediction":"{name}""#)), "field `prediction`: a class label longer than 256 bytes"),
    ];
    for (payload, detail) in &cases {
        let error = decoder.push_prediction(&mut registry, payload.as_bytes()).unwrap_err();
        assert_eq!(error.reason, InvalidReason::TooLong, "{detail}");
        assert!(error.detail.starts_with(detail), "{detail:?} in {:?}", error.detail);
        assert!(error.detail.len() < 200, "{}", error.detail);
    }
    let label = format!(r#"{{"event_id":"x","model":"fraud","timestamp":1796292000000,"label":"{name}"}}"#);
    let error = decoder.push_label(&mut registry, label.as_bytes()).unwrap_err();
    assert_eq!(
        (error.reason, error.detail.as_str()),
        (InvalidReason::TooLong, "field `label`: a class label longer than 256 bytes")
    );
    // Nothing of them was kept; names and values at the limit are fine.
    assert!(decoder.finish_predictions().is_empty() && decoder.finish_labels().is_empty());
    let model = registry.get(0);
    assert!(model.features.is_empty() && model.series.is_empty() && model.classes.is_empty());
    let at_limit = &name[1..];
    let ok = event(&format!(
        r#""prediction":"{at_limit}","model_version":"{at_limit}","features":{{"{at_limit}":"{}"}},"segment":{{"{at_limit}":"{at_limit}"}}"#,
        &value[1..]
    ));
    decoder.push_prediction(&mut registry, ok.as_bytes()).unwrap();
    assert_eq!(decoder.finish_predictions().len(), 1);
}

fn prediction_event(model: &str, prediction: &str, score: &str) -> String {
    format!(
        r#"{{"event_id":"e","model":"{model}","timestamp":1796292000000,"prediction":{prediction},"score":{score}}}"#
    )
}

fn label_event(model: &str, label: &str) -> String {
    format!(r#"{{"event_id":"e","model":"{model}","timestamp":1796292000000,"label":{label}}}"#)
}

/// The class name each accepted value of a binary model is counted as.
fn class_of(registry: &ModelRegistry, batch: &PredictionBatch) -> String {
    let PredictionArray::Class(classes) = &batch.prediction else { panic!("a class column") };
    registry.get(batch.model).classes.name(classes.value(0)).to_string()
}

/// Regression (issue 16): `2`, `"yes"`, `1.5` as a binary prediction or
/// label, and a score of `1.5`, were counted as the negative class.
#[test]
fn binary_models_accept_only_0_and_1_and_reject_the_rest_as_bad_class() {
    let (mut registry, mut decoder) = setup("models:\n  - {name: fraud}\n");
    for (value, class) in [("1", "1"), ("1.0", "1"), ("true", "1"), ("\"1\"", "1"), ("0", "0"), ("false", "0")] {
        decoder.push_prediction(&mut registry, prediction_event("fraud", value, "0.5").as_bytes()).unwrap();
        assert_eq!(class_of(&registry, &decoder.finish_predictions()[0]), class, "{value}");
        decoder.push_label(&mut registry, label_event("fraud", value).as_bytes()).unwrap();
    }
    for value in ["2", "1.5", "-1", "\"yes\"", "\"no\"", "\"true\"", "\"\""] {
        let error = decoder.push_prediction(&mut registry, prediction_event("fraud", value, "0.5").as_bytes());
        let error = error.unwrap_err();
        assert_eq!(error.reason, InvalidReason::BadClass, "prediction {value}");
        assert!(error.detail.contains("field `prediction`") && error.detail.contains("positive_class"), "{error}");
        let error = decoder.push_label(&mut registry, label_event("fraud", value).as_bytes()).unwrap_err();
        assert_eq!(error.reason, InvalidReason::BadClass, "label {value}");
        assert!(error.detail.contains("field `label`"), "{error}");
    }
    for score in ["1.5", "-0.1", "7"] {
        let error = decoder.push_prediction(&mut registry, prediction_event("fraud", "1", score).as_bytes());
        let error = error.unwrap_err();
        assert_eq!(error.reason, InvalidReason::BadClass, "score {score}");
        assert!(error.detail.contains("field `score`") && error.detail.contains("[0, 1]"), "{error}");
    }
    for score in ["0", "1", "0.25", "null"] {
        decoder.push_prediction(&mut registry, prediction_event("fraud", "1", score).as_bytes()).unwrap();
    }
    // Only the accepted events reached a column, and only two classes exist.
    assert_eq!(decoder.finish_predictions()[0].len(), 4);
    assert_eq!(decoder.finish_labels()[0].len(), 6);
    assert_eq!(registry.get(0).classes.len(), 2);
    assert_eq!(InvalidReason::BadClass.label(), "bad_class");
    assert!(InvalidReason::ALL.contains(&InvalidReason::BadClass));
}

#[test]
fn named_binary_classes_are_the_only_values_accepted() {
    let yaml = "models:\n  - {name: churn, positive_class: \"yes\", negative_class: \"no\"}\n  \
                - {name: flags, positive_class: \"true\", negative_class: \"false\"}\n";
    let (mut registry, mut decoder) = setup(yaml);
    decoder.push_prediction(&mut registry, prediction_event("churn", "\"yes\"", "0.9").as_bytes()).unwrap();
    decoder.push_prediction(&mut registry, prediction_event("churn", "\"no\"", "0.1").as_bytes()).unwrap();
    decoder.push_label(&mut registry, label_event("churn", "\"yes\"").as_bytes()).unwrap();
    let batch = &decoder.finish_predictions()[0];
    assert_eq!(class_of(&registry, batch), "yes");
    let churn = registry.get(0);
    assert_eq!(churn.positive_class().map(|id| churn.classes.name(id).to_string()).as_deref(), Some("yes"));
    for value in ["\"Yes\"", "\"maybe\"", "1", "0", "true"] {
        let error = decoder.push_label(&mut registry, label_event("churn", value).as_bytes()).unwrap_err();
        assert_eq!(error.reason, InvalidReason::BadClass, "{value}");
        assert!(error.detail.contains(r#"positive_class "yes""#), "{error}");
    }
    // A boolean is compared as `true`/`false` once the classes are named.
    decoder.push_label(&mut registry, label_event("flags", "true").as_bytes()).unwrap();
    decoder.push_label(&mut registry, label_event("flags", "\"false\"").as_bytes()).unwrap();
    let error = decoder.push_label(&mut registry, label_event("flags", "1").as_bytes()).unwrap_err();
    assert_eq!(error.reason, InvalidReason::BadClass);
    let flags = registry.get(1);
    assert_eq!(flags.positive_class().map(|id| flags.classes.name(id).to_string()).as_deref(), Some("true"));
}

#[test]
fn multiclass_and_regression_values_keep_their_rules() {
    let (mut registry, mut decoder) =
        setup("models:\n  - {name: animals, task: multiclass_classification}\n  - {name: price, task: regression}\n");
    for value in ["\"cat\"", "2", "true"] {
        decoder.push_prediction(&mut registry, prediction_event("animals", value, "1.5").as_bytes()).unwrap();
    }
    decoder.push_prediction(&mut registry, prediction_event("price", "12.5", "3").as_bytes()).unwrap();
    assert_eq!(decoder.finish_predictions().iter().map(PredictionBatch::len).sum::<usize>(), 4);
}
