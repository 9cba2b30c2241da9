//! Arbitrary bytes as Kafka payloads: the whole input as one prediction and
//! one label, then each line as its own event (a line starting with `L` is a
//! label), all through decode → windows → statistics. Nothing may panic,
//! and every accepted or rejected event must be accounted for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pipeline = driftwatch_fuzz::pipeline();
    let mut offered = 0u64;
    let mut rejected = 0u64;
    let mut offer = |pipeline: &mut driftwatch::pipeline::Pipeline, bytes: &[u8], label: bool| {
        offered += 1;
        let result =
            if label { pipeline.decode_label(bytes, &"fuzz") } else { pipeline.decode_prediction(bytes, &"fuzz") };
        if let Err(invalid) = result {
            rejected += 1;
            assert!(!invalid.detail.is_empty(), "a rejection names what was wrong");
        }
    };
    offer(&mut pipeline, data, false);
    offer(&mut pipeline, data, true);
    for line in data.split(|b| *b == b'\n') {
        match line.strip_prefix(b"L") {
            Some(label) => offer(&mut pipeline, label, true),
            None => offer(&mut pipeline, line, false),
        }
    }
    let rows = driftwatch_fuzz::finish(&mut pipeline);
    let accepted = offered - rejected;
    let counted: f64 = rows
        .iter()
        .filter(|r| r.metric == "count" && r.feature.is_none() && r.segment.is_empty())
        .map(|r| r.value)
        .sum();
    assert!(counted <= accepted as f64, "{counted} events counted in windows, but only {accepted} were accepted");
});
