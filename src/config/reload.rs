//! What a running daemon can take from a re-read config (SIGHUP or
//! `POST /-/reload`) and what only a restart can change.
//!
//! The reloadable settings are [`RELOADABLE_SETTINGS`]: the rule files,
//! the notifiers and `alerting.evaluation_interval`. Every other setting
//! shapes state that is already built (the Kafka consumer, windows, models,
//! the HTTP listener, the state dir, outputs...): a change to one is
//! reported by its config path (`windows.size`, `models[0].baseline`) as
//! needing a restart, and the running value stays in force. Pure: no I/O.

use serde_json::Value;

use super::Config;

/// The config paths a reload applies.
pub const RELOADABLE_SETTINGS: &[&str] = &["rules", "notifiers", "alerting.evaluation_interval"];

/// The running config with the reloadable settings of `reloaded` put in:
/// what is in force after a reload (the rest keeps its running value until
/// a restart).
pub fn with_reloadable_settings(running: &Config, reloaded: &Config) -> Config {
    let mut in_force = running.clone();
    in_force.rules = reloaded.rules.clone();
    in_force.notifiers = reloaded.notifiers.clone();
    in_force.alerting.evaluation_interval = reloaded.alerting.evaluation_interval;
    in_force
}

/// The config paths whose value in `reloaded` differs from `running` and
/// that only a restart applies, sorted. A changed secret (redacted in any
/// serialization) is named by its section, e.g. `http`.
pub fn settings_needing_restart(running: &Config, reloaded: &Config) -> Vec<String> {
    // Whatever still differs once the reloadable settings are taken over.
    let candidate = with_reloadable_settings(reloaded, running);
    if candidate == *running {
        return Vec::new();
    }
    let (Ok(before), Ok(after)) = (serde_json::to_value(running), serde_json::to_value(&candidate)) else {
        return vec!["(the config)".to_string()];
    };
    let mut paths = Vec::new();
    differing_paths("", &before, &after, &mut paths);
    let sections: [(&str, bool); 12] = [
        ("kafka", running.kafka != candidate.kafka),
        ("windows", running.windows != candidate.windows),
        ("pipeline", running.pipeline != candidate.pipeline),
        ("models", running.models != candidate.models),
        ("http", running.http != candidate.http),
        ("state", running.state != candidate.state),
        ("output", running.output != candidate.output),
        ("drift", running.drift != candidate.drift),
        ("alerting", running.alerting != candidate.alerting),
        ("delivery", running.delivery != candidate.delivery),
        ("otlp", running.otlp != candidate.otlp),
        ("notifiers", running.notifiers != candidate.notifiers),
    ];
    for (section, differs) in sections {
        let named = paths
            .iter()
            .any(|path| path.strip_prefix(section).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '['])));
        if differs && !named {
            paths.push(section.to_string());
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Appends to `out` the paths under `prefix` where `before` and `after`
/// differ: object keys joined with `.`, array items as `[i]` when both
/// arrays have the same length (else the array itself).
fn differing_paths(prefix: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    if before == after {
        return;
    }
    let join = |key: &str| if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                differing_paths(&join(key), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differing_paths(&format!("{prefix}[{i}]"), x, y, out);
            }
        }
        _ => out.push(if prefix.is_empty() { "(the config)".to_string() } else { prefix.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_yaml_str(text, "test.yaml").unwrap()
    }

    const BASE: &str = "kafka: {brokers: \"localhost:9092\"}\n\
        windows: {size: 5m}\n\
        models: [{name: fraud}, {name: churn}]\n\
        notifiers: {hook: {type: webhook, url: \"http://localhost:1/a\"}}\n\
        http: {listen: \"127.0.0.1:0\", token: first-token}\n";

    #[test]
    fn reloadable_settings_need_no_restart_and_are_taken_over() {
        let running = config(BASE);
        let notifiers = "notifiers: {hook: {type: webhook, url: \"http://localhost:2/b\"}, \
             added: {type: alertmanager, url: \"http://localhost:9093\"}}\n";
        let reloaded = config(&format!(
            "{}{notifiers}rules: [\"rules/*.yaml\"]\nalerting: {{evaluation_interval: 5s}}\n",
            BASE.replace("notifiers: {hook: {type: webhook, url: \"http://localhost:1/a\"}}\n", "")
        ));
        assert_eq!(settings_needing_restart(&running, &reloaded), Vec::<String>::new());
        let in_force = with_reloadable_settings(&running, &reloaded);
        assert_eq!(in_force.notifiers.len(), 2);
        assert_eq!(in_force.rules, ["rules/*.yaml"]);
        assert_eq!(in_force.alerting.evaluation_interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn other_changes_are_named_by_their_config_path() {
        let running = config(BASE);
        let reloaded = config(
            "kafka: {brokers: \"other:9092\"}\n\
             windows: {size: 10m}\n\
             models: [{name: fraud}, {name: churn, task: regression}]\n\
             notifiers: {hook: {type: webhook, url: \"http://localhost:1/a\"}}\n\
             http: {listen: \"127.0.0.1:0\", token: second-token}\n\
             alerting: {history: 2h}\n",
        );
        assert_eq!(
            settings_needing_restart(&running, &reloaded),
            ["alerting.history", "http", "kafka.brokers", "models[1].task", "windows.size", "windows.slide"]
        );
        let in_force = with_reloadable_settings(&running, &reloaded);
        assert_eq!(in_force.kafka, running.kafka, "the running value stays in force");
    }

    #[test]
    fn an_added_model_names_the_models_list() {
        let running = config(BASE);
        let reloaded = config(&BASE.replace("{name: churn}", "{name: churn}, {name: new}"));
        assert_eq!(settings_needing_restart(&running, &reloaded), ["models"]);
    }
}
