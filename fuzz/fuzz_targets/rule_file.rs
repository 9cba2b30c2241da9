//! Arbitrary text as a rule file: parse, check, plan every expression and
//! query, then evaluate the rules on real window rows.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let notifiers = ["oncall-email", "alertmanager", "retrain-ci"].iter().map(|n| n.to_string()).collect();
    match driftwatch::rules::RuleSet::from_sources(&[("fuzz.yaml".to_string(), text.to_string())], Some(&notifiers)) {
        Ok(rules) => driftwatch_fuzz::evaluate(Arc::new(rules)),
        Err(errors) => {
            assert!(!errors.is_empty());
            for error in errors {
                assert!(error.to_string().starts_with("fuzz.yaml"), "the error names the file: {error}");
            }
        }
    }
});
