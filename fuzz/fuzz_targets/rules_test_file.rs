//! Arbitrary text as a `driftwatch rules test` file, run against the
//! shipped rules.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let rules = driftwatch_fuzz::shipped_rules();
    let _ = driftwatch::rules::testing::run_test_text(text, "fuzz.yaml", std::path::Path::new("."), Some(rules));
});
