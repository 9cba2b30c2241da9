//! Unit tests of config loading, validation and redaction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(text, "test.yaml")
}

fn invalid_errors(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn parse_error(text: &str) -> (String, Option<u64>) {
    match parse(text) {
        Err(ConfigError::Parse { message, line, .. }) => (message, line),
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn defaults_fill_a_minimal_config() {
    let c = parse("models:\n  - name: fraud\n").unwrap();
    assert_eq!(c.kafka, None);
    assert_eq!(c.windows, WindowsConfig::default());
    assert_eq!(c.windows.size, Duration::from_secs(300));
    assert_eq!(c.windows.slide, Duration::from_secs(300));
    assert_eq!(c.windows.allowed_lateness, Duration::from_secs(60));
    assert_eq!(c.windows.label_horizon, Duration::from_secs(86_400));
    let p = &c.pipeline;
    assert_eq!(p.batch_size, 8192);
    assert_eq!(p.linger, Duration::from_millis(200));
    assert_eq!(p.max_pending_joins, 1_000_000);
    assert_eq!(p.max_features_per_model, 500);
    assert_eq!(p.max_segments_per_model, 1000);
    assert_eq!(p.max_versions_per_model, 100);
    assert_eq!(c.alerting.history_max_rows, 200_000);
    assert_eq!(p.max_categories_per_feature, 1000);
    assert_eq!(p.max_message_bytes, 1 << 20);
    let m = &c.models[0];
    assert_eq!(m.name, "fraud");
    assert_eq!(m.task, Task::BinaryClassification);
    assert_eq!(m.baseline, None);
    assert_eq!(m.fields, FieldPaths::default());
    assert_eq!(m.fields.event_id, "/event_id");
    assert_eq!(m.fields.latency_ms, "/latency_ms");
    assert_eq!(m.fields.label, "/label");
    assert!(c.rules.is_empty() && c.notifiers.is_empty());
    assert_eq!(c.http.listen, "127.0.0.1:9464");
    assert!(c.http.token.is_none());
    assert_eq!(c.state.dir, None);
    assert_eq!(c.output.window_metrics, None);
}

#[test]
fn kafka_defaults_and_partial_fields() {
    let c = parse("kafka: {brokers: 'k1:9092,k2:9092'}\nmodels:\n  - name: m\n    fields: {score: /p/s}\n").unwrap();
    let k = c.kafka.unwrap();
    assert_eq!(k.brokers, "k1:9092,k2:9092");
    assert_eq!(k.group_id, "driftwatch");
    assert_eq!(k.predictions_topic, "predictions");
    assert_eq!(k.labels_topic, "labels");
    assert_eq!(k.dead_letter_topic, None);
    assert!(k.options.is_empty());
    assert_eq!(c.models[0].fields.score, "/p/s");
    assert_eq!(c.models[0].fields.event_id, "/event_id");
}

#[test]
fn slide_defaults_to_size() {
    let c = parse("windows: {size: 10m}\nmodels: [{name: m}]\n").unwrap();
    assert_eq!(c.windows.size, Duration::from_secs(600));
    assert_eq!(c.windows.slide, Duration::from_secs(600));
    let c = parse("windows: {size: 10m, slide: 2m, allowed_lateness: 0}\nmodels: [{name: m}]\n").unwrap();
    assert_eq!(c.windows.slide, Duration::from_secs(120));
    assert_eq!(c.windows.allowed_lateness, Duration::ZERO);
}

#[test]
fn kafka_options_accept_numbers_and_bools() {
    let c = parse(
        "kafka:\n  brokers: b:1\n  options:\n    session.timeout.ms: 45000\n    \
         enable.auto.offset.store: false\n    security.protocol: SSL\n    x: 1.5\n\
         models: [{name: m}]\n",
    )
    .unwrap();
    let o = &c.kafka.unwrap().options;
    assert_eq!(o["session.timeout.ms"], "45000");
    assert_eq!(o["enable.auto.offset.store"], "false");
    assert_eq!(o["security.protocol"], "SSL");
    assert_eq!(o["x"], "1.5");

    let (msg, line) = parse_error("kafka:\n  brokers: b:1\n  options:\n    a: [1, 2]\nmodels: [{name: m}]\n");
    assert!(msg.contains("string, number or boolean"), "{msg}");
    assert_eq!(line, Some(4), "{msg}");
}

#[test]
fn env_expansion() {
    // Unique names: tests run in parallel within one process.
    unsafe {
        std::env::set_var("DW_CFGTEST_ENV_MODEL", "fraud");
        std::env::set_var("DW_CFGTEST_ENV_BROKERS", "kafka-1:9092");
        std::env::set_var("DW_CFGTEST_ENV_EMPTY", "");
    }
    let text = "kafka:\n  brokers: ${DW_CFGTEST_ENV_BROKERS}\n  \
                group_id: ${DW_CFGTEST_ENV_UNSET_GROUP:-fallback-group}\n  \
                labels_topic: l${DW_CFGTEST_ENV_EMPTY:-abels}\n  \
                options: {client.id: '$${NOT_EXPANDED}'}\n\
                models:\n  - name: ${DW_CFGTEST_ENV_MODEL}\n";
    let c = parse(text).unwrap();
    let k = c.kafka.as_ref().unwrap();
    assert_eq!(k.brokers, "kafka-1:9092");
    assert_eq!(k.group_id, "fallback-group");
    assert_eq!(k.labels_topic, "labels");
    assert_eq!(k.options["client.id"], "${NOT_EXPANDED}");
    assert_eq!(c.models[0].name, "fraud");
}

#[test]
fn env_unset_variable_names_var_and_line() {
    let text = "models:\n  - name: m\nhttp:\n  token: \"${DW_CFGTEST_DEFINITELY_UNSET_7}\"\n";
    let err = parse(text).unwrap_err();
    match &err {
        ConfigError::Env { var, line, origin } => {
            assert_eq!(var, "DW_CFGTEST_DEFINITELY_UNSET_7");
            assert_eq!(*line, 4);
            assert_eq!(origin, "test.yaml");
        }
        other => panic!("expected Env, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.starts_with("test.yaml: line 4: environment variable `DW_CFGTEST_DEFINITELY_UNSET_7`"), "{shown}");
}

#[test]
fn env_syntax_error_is_a_parse_error_with_line() {
    let (msg, line) = parse_error("models:\n  - name: ${BROKEN\n");
    assert_eq!(line, Some(2));
    assert!(msg.starts_with("line 2: unterminated"), "{msg}");
}

#[test]
fn unknown_key_is_an_error_naming_key_and_line() {
    let (msg, line) = parse_error("models:\n  - name: m\nwindow:\n  size: 5m\n");
    assert_eq!(line, Some(3), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("`window`"), "{msg}");

    // nested, inside the second model's fields
    let text = "models:\n  - name: a\n  - name: b\n    fields:\n      event_id: /id\n      scroe: /s\n";
    let err = parse(text).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("test.yaml: line 6, column 7: "), "{shown}");
    assert!(shown.contains("unknown field `scroe`"), "{shown}");

    for (text, key, want_line) in [
        ("kafka:\n  brokers: b\n  topic: x\nmodels: [{name: m}]\n", "topic", 3),
        ("models: [{name: m}]\nwindows:\n  size: 5m\n  hop: 1m\n", "hop", 4),
        ("models: [{name: m}]\npipeline:\n  batchsize: 1\n", "batchsize", 3),
        ("models: [{name: m}]\nhttp: {listen: 'a:1', tokn: x}\n", "tokn", 2),
        ("models: [{name: m}]\nstate: {directory: /x}\n", "directory", 2),
        ("models: [{name: m}]\noutput: {windows: /x}\n", "windows", 2),
        ("models:\n  - name: m\n    model: x\n", "model", 3),
    ] {
        let (msg, line) = parse_error(text);
        assert_eq!(line, Some(want_line), "{text}: {msg}");
        assert!(msg.contains(&format!("`{key}`")), "{text}: {msg}");
    }
}

#[test]
fn type_errors_carry_lines() {
    let (msg, line) = parse_error("models: [{name: m}]\nwindows:\n  size: five minutes\n");
    assert_eq!(line, Some(3), "{msg}");
    assert!(msg.contains("invalid duration"), "{msg}");
    let (msg, line) = parse_error("models: [{name: m}]\nwindows:\n  slide: 300\n");
    assert_eq!(line, Some(3), "{msg}");
    assert!(msg.contains("unit is required"), "{msg}");
    let (msg, line) = parse_error("models:\n  - name: m\n    task: clustering\n");
    assert_eq!(line, Some(3), "{msg}");
    let (msg, line) = parse_error("models: [{name: m}]\nnotifiers:\n  x: {url: 'http://a'}\n");
    assert!(msg.contains("`type`"), "{msg}");
    assert_eq!(line, Some(3), "{msg}");
    let (msg, _) = parse_error("models: [{name: a}]\nmodels: [{name: b}]\n");
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn empty_config_is_reported() {
    let (msg, _) = parse_error("# nothing here\n\n");
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let text = "\
kafka:
  brokers: ' '
  dead_letter_topic: predictions
  options: {group.id: other}
windows:
  size: 5m
  slide: 2m
pipeline:
  batch_size: 0
  max_categories_per_feature: 0
models:
  - name: fraud
  - name: fraud
    fields: {score: score, label: /a~2b}
  - name: ''
notifiers:
  pager: {type: pagerduty}
http: {listen: nowhere}
";
    let errors = invalid_errors(text);
    let expect = [
        "kafka.brokers: must not be empty",
        "kafka.dead_letter_topic: must differ",
        "kafka.options.group.id: set kafka.group_id instead",
        "windows.size: must be a whole multiple of windows.slide",
        "pipeline.batch_size: must be at least 1",
        "pipeline.max_categories_per_feature: must be at least 1",
        "models[1].name: duplicate model name \"fraud\"",
        "models[1].fields.score: not a JSON Pointer (must start with '/')",
        "models[1].fields.label: invalid JSON Pointer",
        "models[2].name: must not be empty",
        "notifiers.pager.type: unknown notifier type \"pagerduty\"",
        "http.listen: expected host:port",
    ];
    for e in expect {
        assert!(errors.iter().any(|got| got.starts_with(e)), "missing {e:?} in {errors:#?}");
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");

    let shown = parse(text).unwrap_err().to_string();
    assert_eq!(shown.lines().count(), expect.len());
    assert!(shown.lines().all(|l| l.starts_with("test.yaml: ")), "{shown}");
}

#[test]
fn window_checks() {
    let e = invalid_errors("models: [{name: m}]\nwindows: {size: 5m, slide: 10m}\n");
    assert!(e[0].starts_with("windows.slide: must not be longer"), "{e:?}");
    let e = invalid_errors("models: [{name: m}]\nwindows: {size: 5m, slide: 0s}\n");
    assert_eq!(e, vec!["windows.slide: must be greater than 0"]);
    let e = invalid_errors("models: [{name: m}]\nwindows: {size: 0s}\n");
    assert!(e.iter().any(|x| x == "windows.size: must be greater than 0"), "{e:?}");
    let e = invalid_errors("models: [{name: m}]\nwindows: {size: 1500us}\n");
    assert!(e[0].contains("whole number of milliseconds"), "{e:?}");
    let c = parse("models: [{name: m}]\nwindows: {size: 1h, slide: 15m}\n").unwrap();
    assert_eq!(c.windows.slide, Duration::from_secs(900));
    // negative durations are rejected while parsing
    let (msg, line) = parse_error("models: [{name: m}]\nwindows: {allowed_lateness: -1m}\n");
    assert!(msg.contains("negative"), "{msg}");
    assert_eq!(line, Some(2));
}

#[test]
fn no_models_is_an_error() {
    let e = invalid_errors("windows: {size: 5m}\n");
    assert_eq!(e, vec!["models: at least one model is required"]);
}

#[test]
fn every_notifier_type_is_accepted_with_its_required_settings() {
    let required = |t: &str| match t {
        "webhook" => "url: http://h/x",
        "github_dispatch" => "repo: a/b, token: t, event_type: retrain",
        "github_workflow" => "repo: a/b, workflow: w.yml, token: t",
        "gitlab_trigger" => "project: a/b, token: t",
        "jenkins" => "url: http://j, job: j",
        "airflow_dag" => "url: http://a, dag_id: d",
        "argo_workflow" => "url: http://a, namespace: n, workflow_template: w",
        "kubeflow_run" => "url: http://k, pipeline_id: p",
        "email" => "smtp: 'smtp://m:25', from: a@b.c, to: [d@e.f]",
        "alertmanager" => "url: http://am:9093",
        "slack" => "webhook_url: http://s",
        other => panic!("no settings for {other}"),
    };
    let mut text = String::from("models: [{name: m}]\nnotifiers:\n");
    for t in NOTIFIER_TYPES {
        text.push_str(&format!("  n-{t}: {{type: {t}, {}}}\n", required(t)));
    }
    let c = parse(&text).unwrap();
    assert_eq!(c.notifiers.len(), NOTIFIER_TYPES.len());
    // Without them, each type names what it misses; unknown settings and
    // broken templates are errors too.
    let errors = invalid_errors(
        "models: [{name: m}]\nnotifiers:\n  gh: {type: github_dispatch, repo: a/b}\n  \
         wh: {type: webhook, url: http://h, colour: red, body: '{{ oops'}\n",
    );
    for expected in [
        "notifiers.gh.token: required for type github_dispatch",
        "notifiers.gh.event_type: required for type github_dispatch",
        "notifiers.wh.colour: unknown setting for type webhook",
        "notifiers.wh.body: template error",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "missing {expected:?} in {errors:?}");
    }
}

#[test]
fn version_cap_history_rows_and_notifier_concurrency_are_range_checked() {
    let c = parse(
        "models: [{name: m}]\npipeline: {max_versions_per_model: 7}\nalerting: {history_max_rows: 1000}\n\
         notifiers:\n  wh: {type: webhook, url: http://h/x, concurrency: 64}\n",
    )
    .unwrap();
    assert_eq!(c.pipeline.max_versions_per_model, 7);
    assert_eq!(c.alerting.history_max_rows, 1000);
    let errors = invalid_errors(
        "models: [{name: m}]\npipeline: {max_versions_per_model: 0}\nalerting: {history_max_rows: 0}\n\
         notifiers:\n  a: {type: webhook, url: http://h/x, concurrency: 65}\n  \
         b: {type: webhook, url: http://h/x, concurrency: 0}\n  \
         c: {type: webhook, url: http://h/x, concurrency: 4611686018427387904}\n",
    );
    for expected in [
        "pipeline.max_versions_per_model: must be from 1 to 10000 (got 0)",
        "alerting.history_max_rows: must be from 1 to 10000000 (got 0)",
        "notifiers.a.concurrency: expected a whole number from 1 to 64, got 65",
        "notifiers.b.concurrency: expected a whole number from 1 to 64, got 0",
        "notifiers.c.concurrency: expected a whole number from 1 to 64, got 4611686018427387904",
    ] {
        assert!(errors.iter().any(|e| e == expected), "missing {expected:?} in {errors:?}");
    }
    let errors = invalid_errors(
        "models: [{name: m}]\npipeline: {max_versions_per_model: 10001}\nalerting: {history_max_rows: 10000001}\n",
    );
    assert_eq!(
        errors,
        [
            "pipeline.max_versions_per_model: must be from 1 to 10000 (got 10001)",
            "alerting.history_max_rows: must be from 1 to 10000000 (got 10000001)",
        ]
    );
}

#[test]
fn full_fixture_loads() {
    let c = Config::load(&fixture("full.yaml")).unwrap();
    let dir = std::path::absolute(fixture("")).unwrap();
    let k = c.kafka.as_ref().unwrap();
    assert_eq!(k.dead_letter_topic.as_deref(), Some("driftwatch-dlq"));
    assert_eq!(k.options["security.protocol"], "SASL_SSL");
    assert_eq!(k.options["session.timeout.ms"], "45000");
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.models[0].baseline, Some(dir.join("baselines/fraud.json")));
    assert_eq!(c.models[1].task, Task::Regression);
    assert_eq!(c.models[1].fields.latency_ms, "/timing/latency~1ms");
    assert_eq!(parse_json_pointer(&c.models[1].fields.latency_ms).unwrap(), vec!["timing", "latency/ms"]);
    assert_eq!(c.notifiers.len(), 3);
    assert_eq!(c.notifiers["retrain-ci"].kind, "github_dispatch");
    assert_eq!(c.state.dir, Some(PathBuf::from("/var/lib/driftwatch")));
    assert_eq!(c.output.window_metrics, Some(dir.join("out/window_metrics.ndjson")));
    assert!(c.http.token.is_some());
    let m = Config::load(&fixture("minimal.yaml")).unwrap();
    assert_eq!(m.models[0].name, "fraud");
}

const SECRETS: &[&str] =
    &["kafka-example-password", "ghp_example_github_token", "smtp-example-password", "reload-example-token"];

#[test]
fn redacted_yaml_hides_every_secret_and_parses_back() {
    let c = Config::load(&fixture("full.yaml")).unwrap();
    let yaml = c.to_redacted_yaml();
    for s in SECRETS {
        assert!(!yaml.contains(s), "{s} leaked:\n{yaml}");
    }
    assert!(yaml.contains(REDACTED), "{yaml}");
    // non-secrets stay visible
    for visible in [
        "SASL_SSL",
        "sasl.username: driftwatch",
        "/etc/ssl/certs/ca.pem",
        "acme/fraud-model",
        "smtp://driftwatch:***redacted***@mail:587",
        "size: 5m",
        "label_horizon: 1day",
        "linger: 200ms",
        "listen: 127.0.0.1:9464",
        "max_message_bytes: 1048576",
    ] {
        assert!(yaml.contains(visible), "{visible:?} missing:\n{yaml}");
    }

    let back = Config::from_yaml_str(&yaml, "redacted.yaml").unwrap();
    assert_eq!(back.windows, c.windows);
    assert_eq!(back.pipeline, c.pipeline);
    assert_eq!(back.models, c.models);
    assert_eq!(back.rules, c.rules);
    assert_eq!(back.state, c.state);
    assert_eq!(back.output, c.output);
    assert_eq!(back.http.token.as_ref().unwrap().expose(), REDACTED);
    assert_eq!(back.kafka.as_ref().unwrap().options["sasl.password"], REDACTED);
    assert_eq!(back.kafka.as_ref().unwrap().options["ssl.ca.location"], "/etc/ssl/certs/ca.pem");
    // a second round trip is stable
    assert_eq!(back.to_redacted_yaml(), yaml);
}

#[test]
fn debug_and_json_never_show_secrets() {
    let c = Config::load(&fixture("full.yaml")).unwrap();
    let debug = format!("{c:?}");
    let json = serde_json::to_string(&c).unwrap();
    for s in SECRETS {
        assert!(!debug.contains(s), "{s} leaked in Debug: {debug}");
        assert!(!json.contains(s), "{s} leaked in JSON: {json}");
    }
    // the values are still there for the code that needs them
    assert_eq!(c.http.token.as_ref().unwrap().expose(), "reload-example-token");
    assert_eq!(c.notifiers["retrain-ci"].settings["token"], serde_json::json!("ghp_example_github_token"));
}

#[test]
fn defaults_are_printed_by_redacted_yaml() {
    let c = parse("models: [{name: m}]\n").unwrap();
    let yaml = c.to_redacted_yaml();
    for key in [
        "size: 5m",
        "slide: 5m",
        "allowed_lateness: 1m",
        "batch_size: 8192",
        "event_id: /event_id",
        "task: binary_classification",
        "listen: 127.0.0.1:9464",
    ] {
        assert!(yaml.contains(key), "{key:?} missing:\n{yaml}");
    }
    assert_eq!(Config::from_yaml_str(&yaml, "again").unwrap(), c);
}

#[test]
fn literal_dollar_brace_survives_round_trip() {
    let c = parse("models:\n  - name: m\n    fields: {score: '/$${x}'}\n").unwrap();
    assert_eq!(c.models[0].fields.score, "/${x}");
    let back = parse(&c.to_redacted_yaml()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("conf [prod]");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/a.yaml"), "groups: []\n").unwrap();
    std::fs::write(dir.join("rules/b.yaml"), "groups: []\n").unwrap();
    std::fs::write(dir.join("rules/notes.txt"), "").unwrap();
    std::fs::write(dir.join("extra.yaml"), "groups: []\n").unwrap();
    let path = dir.join("driftwatch.yaml");
    std::fs::write(
        &path,
        "models:\n  - name: m\n    baseline: baselines/m.json\n  - name: n\n    baseline: /abs/n.json\n\
         rules: [rules/*.yaml, ./extra.yaml, /nonexistent/abs/*.yaml]\n\
         state: {dir: state}\noutput: {window_metrics: out/wm.ndjson}\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.models[0].baseline, Some(dir.join("baselines/m.json")));
    assert_eq!(c.models[1].baseline, Some(PathBuf::from("/abs/n.json")));
    assert_eq!(c.state.dir, Some(dir.join("state")));
    assert_eq!(c.output.window_metrics, Some(dir.join("out/wm.ndjson")));
    assert_eq!(c.rules[2], "/nonexistent/abs/*.yaml");
    assert!(c.rules[0].ends_with("rules/*.yaml"), "{:?}", c.rules);
    assert_eq!(
        c.rule_files().unwrap(),
        vec![dir.join("extra.yaml"), dir.join("rules/a.yaml"), dir.join("rules/b.yaml")]
    );

    // a relative config path resolves through the working directory
    let rel =
        Config::from_yaml_str_with_base("models: [{name: m, baseline: b.json}]\n", "x", Some(Path::new("/etc/dw")))
            .unwrap();
    assert_eq!(rel.models[0].baseline, Some(PathBuf::from("/etc/dw/b.json")));

    // without a base, paths stay as written
    let c = parse("models: [{name: m, baseline: b.json}]\n").unwrap();
    assert_eq!(c.models[0].baseline, Some(PathBuf::from("b.json")));
}

#[test]
fn missing_literal_rule_file_is_reported() {
    let c = Config::from_yaml_str_with_base(
        "models: [{name: m}]\nrules: [nope.yaml, none/*.yaml]\n",
        "x",
        Some(Path::new("/nonexistent-dw-dir")),
    )
    .unwrap();
    let err = c.rule_files().unwrap_err();
    assert_eq!(err.messages().len(), 1, "{err}");
    assert!(err.to_string().contains("nope.yaml"), "{err}");
}

#[test]
fn io_error_names_the_path() {
    let err = Config::load(Path::new("/nonexistent-dw/driftwatch.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().starts_with("/nonexistent-dw/driftwatch.yaml: "), "{err}");
}

#[test]
fn otlp_section_defaults_validation_and_redaction() {
    let c = parse(
        "models: [{name: m}]\notlp: {endpoint: \"http://collector:4318\", headers: {authorization: \"Bearer s3cr3t\"}}\n",
    )
    .unwrap();
    let otlp = c.otlp.as_ref().unwrap();
    assert_eq!(otlp.interval, super::DEFAULT_OTLP_INTERVAL);
    assert_eq!(otlp.timeout, super::DEFAULT_OTLP_TIMEOUT);
    assert!(otlp.metrics && !otlp.traces);
    assert_eq!(otlp.service_name, "driftwatch");
    let yaml = c.to_redacted_yaml();
    assert!(!yaml.contains("s3cr3t") && yaml.contains("***redacted***"), "{yaml}");

    let (message, line) = parse_error("models: [{name: m}]\notlp:\n  endpoint: http://c:4318\n  intervall: 5s\n");
    assert!(message.contains("intervall"), "{message}");
    assert_eq!(line, Some(4));

    let errors = invalid_errors(
        "models: [{name: m}]\notlp: {endpoint: \"collector:4318\", interval: 0s, metrics: false, headers: {\"bad header\": x}}\n",
    );
    assert!(errors.iter().any(|e| e.starts_with("otlp.endpoint: expected an http")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("interval and timeout must be positive")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("otlp.headers.bad header")), "{errors:?}");
}

/// Regression (hardening): a 1 ms slide in a 1 m window put every event in
/// 60,000 windows and stalled the engine; absurd durations overflowed.
#[test]
fn windows_per_event_and_durations_are_bounded() {
    let e = invalid_errors("models: [{name: m}]\nwindows: {size: 1m, slide: 1ms}\n");
    assert_eq!(e, vec!["windows.slide: every event would fall into 60000 windows (1m / 1ms); at most 100 are allowed"]);
    assert!(parse("models: [{name: m}]\nwindows: {size: 100m, slide: 1m}\n").is_ok());
    let e = invalid_errors(
        "models: [{name: m}]\nwindows: {label_horizon: 300000000years}\ndelivery: {retry_max: 200years}\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("windows.label_horizon: at most 100 years"), "{e:?}");
    assert!(e[1].starts_with("delivery.retry_max: at most 100 years"), "{e:?}");
}

#[test]
fn binary_class_names_are_set_together_on_binary_models_only() {
    let c = parse("models:\n  - {name: churn, positive_class: \"yes\", negative_class: \"no\"}\n").unwrap();
    assert_eq!(c.models[0].binary_classes(), ("yes", "no"));
    let plain = parse("models:\n  - name: fraud\n").unwrap();
    assert_eq!(plain.models[0].binary_classes(), ("1", "0"));
    assert!(!plain.models[0].has_named_classes());
    let errors = invalid_errors(
        "models:\n  - {name: a, positive_class: \"yes\"}\n  \
         - {name: b, task: regression, positive_class: \"1\", negative_class: \"0\"}\n  \
         - {name: c, positive_class: \"x\", negative_class: \"x\"}\n  \
         - {name: d, positive_class: \"\", negative_class: \"no\"}\n",
    );
    let all = errors.join("\n");
    assert!(all.contains("models[0].negative_class: required with positive_class"), "{all}");
    assert!(all.contains("models[1].positive_class: only for task binary_classification"), "{all}");
    assert!(all.contains("models[2].negative_class: \"x\" is also the positive_class"), "{all}");
    assert!(all.contains("models[3].positive_class: must not be empty"), "{all}");
    assert_eq!(errors.len(), 4, "{all}");
}

#[test]
fn shadow_versions_are_a_few_distinct_version_names() {
    let c = parse("models:\n  - {name: fraud, shadow_versions: [\"4\", \"5\"]}\n").unwrap();
    assert_eq!((c.models[0].shadow_lane("3"), c.models[0].shadow_lane("4"), c.models[0].shadow_lane("5")), (0, 1, 2));
    let too_many: Vec<String> = (0..17).map(|i| format!("\"v{i}\"")).collect();
    let long = "v".repeat(257);
    let errors = invalid_errors(&format!(
        "models:\n  - {{name: a, shadow_versions: [\"4\", \"\", \"4\", \"__other__\", \"{long}\"]}}\n  \
         - {{name: b, shadow_versions: [{}]}}\n",
        too_many.join(", ")
    ));
    let all = errors.join("\n");
    assert!(all.contains("models[0].shadow_versions[1]: must not be empty"), "{all}");
    assert!(
        all.contains("models[0].shadow_versions[2]: duplicate version \"4\" (already shadow_versions[0])"),
        "{all}"
    );
    assert!(all.contains("models[0].shadow_versions[3]: \"__other__\" is where versions"), "{all}");
    assert!(all.contains("models[0].shadow_versions[4]: 257 bytes long; the limit is 256"), "{all}");
    assert!(all.contains("models[1].shadow_versions: 17 versions; the limit is 16"), "{all}");
    assert_eq!(errors.len(), 5, "{all}");
}

#[test]
fn a_cluster_needs_kafka_and_its_own_topic_and_combines_with_a_state_dir() {
    let config = parse("kafka: {brokers: b, group_id: g}\ncluster: {}\nmodels: [{name: m}]\n").unwrap();
    let cluster = config.cluster.expect("cluster");
    assert_eq!(
        (cluster.partials_topic.as_str(), cluster.publish_interval, cluster.max_record_bytes),
        ("driftwatch-partials", DEFAULT_PUBLISH_INTERVAL, DEFAULT_MAX_RECORD_BYTES)
    );
    let errors = invalid_errors(
        "kafka: {brokers: b, group_id: g}\n\
         cluster: {partials_topic: predictions, publish_interval: 0s, max_record_bytes: 1000}\n\
         state: {dir: /tmp/x}\nmodels: [{name: m}]\n",
    );
    assert_eq!(
        errors,
        [
            "cluster.partials_topic: \"predictions\" is an input topic",
            "cluster.publish_interval: must be positive",
            "cluster.max_record_bytes: at least 64KB (got 1000)",
        ]
    );
    let config = parse("kafka: {brokers: b, group_id: g}\ncluster: {}\nstate: {dir: /tmp/x}\nmodels: [{name: m}]\n");
    assert!(config.is_ok(), "{config:?}");
    let errors = invalid_errors("cluster: {}\nmodels: [{name: m}]\n");
    assert_eq!(errors, ["cluster: needs a kafka section (instances merge through Kafka)"]);
}
