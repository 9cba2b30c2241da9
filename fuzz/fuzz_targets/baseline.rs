//! Arbitrary text as a baseline profile: parse it, attach it to a model and
//! compare real windows (numeric, categorical, prediction, score and label
//! distributions, performance) with it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(baseline) = driftwatch::baseline::Baseline::from_json_str(text, "fuzz.json") else { return };
    let mut pipeline = driftwatch_fuzz::pipeline();
    let reference = driftwatch::model::reference::ModelReference::new(baseline);
    pipeline.registry.get_mut(0).attach_reference(reference);
    for event in driftwatch_fuzz::sample_events() {
        let _ = pipeline.decode_prediction(event, &"sample");
    }
    for label in driftwatch_fuzz::sample_labels() {
        let _ = pipeline.decode_label(&label, &"sample");
    }
    let rows = driftwatch_fuzz::finish(&mut pipeline);
    assert!(!rows.is_empty());
});
