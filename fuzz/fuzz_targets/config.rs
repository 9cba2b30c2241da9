//! Arbitrary text as a config file: parse, validate, print redacted (as
//! `config check` does) and compile the models' field mappings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match driftwatch::config::Config::from_yaml_str(text, "fuzz.yaml") {
        Ok(config) => {
            let _ = config.to_redacted_yaml();
            let registry = driftwatch::model::ModelRegistry::from_config(&config);
            let _ = driftwatch::decode::Decoder::new(&registry, &config.pipeline);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("fuzz.yaml"), "the error names the file: {message}");
        }
    }
});
