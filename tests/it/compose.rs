//! The docker compose stack, checked without Docker: the file parses; every
//! mounted file and the build context exist; host ports don't collide;
//! images are pinned; `depends_on` and every host name the configs use
//! (Kafka brokers, notifier URLs, Prometheus targets, Alertmanager's SMTP,
//! Grafana's datasource) name services of the stack; and driftwatch's
//! config, laid out as the container sees it, loads and its rules check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::repo;

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// The host of `scheme://host:port/...` or `host:port`.
fn host(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', ':']).next().unwrap_or("").to_string()
}

/// (source, target) of a service's bind mounts (`./src:/dst[:ro]`).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            (parts.next().unwrap().to_string(), parts.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn the_compose_stack_is_complete_and_consistent() {
    let compose = yaml(&repo("docker-compose.yml"));
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for required in ["kafka", "driftwatch", "simulator", "prometheus", "alertmanager", "grafana", "mailpit"] {
        assert!(names.contains(required), "service {required} is missing: {names:?}");
    }
    assert!(services["kafka"]["image"].as_str().unwrap().starts_with("apache/kafka:"), "the official Kafka image");
    assert_eq!(services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller", "KRaft mode");

    let mut host_ports: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in services {
        if let Some(image) = service["image"].as_str()
            && service.get("build").is_none()
        {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(!tag.is_empty() && tag != "latest", "{name}: image {image} is not pinned");
        }
        if let Some(context) = service["build"].as_str() {
            assert!(repo(context).join("Dockerfile").is_file(), "{name}: no Dockerfile in {context}");
        }
        for (source, _) in bind_mounts(service) {
            assert!(repo(&source).exists(), "{name}: mounted {source} does not exist");
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let host_port = port.as_str().unwrap().rsplit_once(':').unwrap().0.to_string();
            if let Some(other) = host_ports.insert(host_port.clone(), name.clone()) {
                panic!("host port {host_port} used by {other} and {name}");
            }
        }
        let depends: Vec<String> = match &service["depends_on"] {
            Value::Array(list) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for dependency in depends {
            assert!(names.contains(dependency.as_str()), "{name} depends on unknown {dependency}");
        }
    }
    let images: BTreeSet<&str> = services.values().filter_map(|s| s["image"].as_str()).collect();
    assert!(images.contains(services["simulator"]["image"].as_str().unwrap()), "the simulator runs driftwatch's image");
    assert_eq!(services["simulator"]["image"], services["driftwatch"]["image"]);

    // driftwatch's config, with the files where the container sees them.
    let root = tempfile::tempdir().unwrap();
    for (source, target) in bind_mounts(&services["driftwatch"]) {
        let destination = root.path().join(target.trim_start_matches('/'));
        copy(&repo(&source), &destination);
    }
    let config_path = root.path().join("etc/driftwatch/driftwatch.yaml");
    let config =
        driftwatch::config::Config::load(&config_path).unwrap_or_else(|e| panic!("deploy/driftwatch.yaml: {e}"));
    for model in &config.models {
        let baseline = model.baseline.as_ref().expect("a baseline");
        driftwatch::baseline::Baseline::load(baseline).unwrap_or_else(|e| panic!("{}: {e}", baseline.display()));
    }
    let rules = driftwatch::alerting::load_rules(&config).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(!rules.rules.is_empty());
    let kafka = config.kafka.as_ref().expect("kafka");
    for broker in kafka.brokers.split(',') {
        assert!(names.contains(host(broker).as_str()), "broker {broker} is not a service");
    }
    for (name, notifier) in &config.notifiers {
        for key in ["url", "smtp"] {
            if let Some(url) = notifier.settings.get(key).and_then(|v| v.as_str()) {
                assert!(names.contains(host(url).as_str()), "notifier {name}: {url} is not a service");
            }
        }
    }
    let port = config.http.listen.rsplit(':').next().unwrap();
    assert!(
        services["driftwatch"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().ends_with(&format!(":{port}"))),
        "driftwatch's port {port} is published"
    );

    // The other services' configs name services of the stack.
    let prometheus = yaml(&repo("deploy/prometheus.yml"));
    let mut targets = Vec::new();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        for group in job["static_configs"].as_array().unwrap() {
            targets.extend(group["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
        }
    }
    for manager in prometheus["alerting"]["alertmanagers"].as_array().unwrap() {
        for group in manager["static_configs"].as_array().unwrap() {
            targets.extend(group["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
        }
    }
    assert!(targets.contains(&format!("driftwatch:{port}")), "Prometheus scrapes driftwatch: {targets:?}");
    for target in &targets {
        assert!(names.contains(host(target).as_str()), "Prometheus target {target} is not a service");
    }
    let alertmanager = yaml(&repo("deploy/alertmanager.yml"));
    for receiver in alertmanager["receivers"].as_array().unwrap() {
        for email in receiver["email_configs"].as_array().into_iter().flatten() {
            let smarthost = email["smarthost"].as_str().unwrap();
            assert!(names.contains(host(smarthost).as_str()), "Alertmanager smarthost {smarthost}");
        }
    }
    let datasources = yaml(&repo("dashboards/provisioning/datasources/driftwatch.yaml"));
    for source in datasources["datasources"].as_array().unwrap() {
        let url = source["url"].as_str().unwrap();
        assert!(names.contains(host(url).as_str()), "Grafana datasource {url} is not a service");
    }
    // Grafana loads the dashboards from where the provider looks.
    let provider = yaml(&repo("dashboards/provisioning/dashboards/driftwatch.yaml"));
    let folder = provider["providers"][0]["options"]["path"].as_str().unwrap().to_string();
    let mounted: Vec<(String, String)> = bind_mounts(&services["grafana"]);
    for dashboard in std::fs::read_dir(repo("dashboards")).unwrap().map(|e| e.unwrap().path()) {
        if dashboard.extension().is_some_and(|e| e == "json") {
            let name = dashboard.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                mounted.iter().any(|(_, target)| *target == format!("{folder}/{name}")),
                "dashboard {name} is not mounted into {folder}"
            );
        }
    }
}

fn copy(source: &Path, destination: &PathBuf) {
    if source.is_dir() {
        std::fs::create_dir_all(destination).unwrap();
        for entry in std::fs::read_dir(source).unwrap() {
            let entry = entry.unwrap();
            copy(&entry.path(), &destination.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(destination.parent().unwrap()).unwrap();
        std::fs::copy(source, destination).unwrap();
    }
}
