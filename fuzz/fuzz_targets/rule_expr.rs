//! Arbitrary text as a rule's `expr` and as its `query`: planned against the
//! `window_metrics` schema and, when it plans, evaluated on real rows.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    // A JSON string is a valid YAML double-quoted scalar.
    let quoted = driftwatch_fuzz::json_string(sql);
    for key in ["expr", "query"] {
        let text = format!("groups:\n  - name: g\n    rules:\n      - alert: Fuzz\n        {key}: {quoted}\n");
        if let Ok(rules) = driftwatch::rules::RuleSet::from_sources(&[("fuzz.yaml".to_string(), text)], None) {
            driftwatch_fuzz::evaluate(Arc::new(rules));
        }
    }
});
