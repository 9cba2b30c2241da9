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
    // Two replicas of one config, merging through a cluster, each scraped.
    let replica = &services["driftwatch-2"];
    assert_eq!(replica["image"], services["driftwatch"]["image"]);
    assert_eq!(bind_mounts(replica), bind_mounts(&services["driftwatch"]), "the replicas run one config");
    assert!(config.cluster.is_some() && config.state.dir.is_none(), "the replicas merge through a cluster");
    assert!(targets.contains(&format!("driftwatch-2:{port}")), "Prometheus scrapes the second replica: {targets:?}");
    for (name, service) in [("driftwatch", &services["driftwatch"]), ("driftwatch-2", replica)] {
        assert_eq!(service["hostname"], name, "{name} is named by its host name in /api/v1/cluster");
    }
    let (valid, output) = compose_schema(&repo("docker-compose.yml"));
    assert!(valid, "docker-compose.yml against the compose spec: {output}");
    let broken = tempfile::tempdir().unwrap();
    let broken_file = broken.path().join("docker-compose.yml");
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    std::fs::write(&broken_file, text.replace("restart: unless-stopped", "restart: [unless-stopped]")).unwrap();
    assert!(!compose_schema(&broken_file).0, "a broken compose file passes the schema");
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

/// check-jsonschema's vendored compose spec on `file`: whether it passed,
/// and what it said.
fn compose_schema(file: &Path) -> (bool, String) {
    let output = std::process::Command::new("python3")
        .args(["-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"])
        .arg(file)
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!text.contains("No module named check_jsonschema"), "check-jsonschema is installed by the test command");
    (output.status.success(), text)
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

/// `python3 -m kubernetes_validate` on `files` (strict: unknown fields are
/// errors): whether it passed, and what it said.
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let output = std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--kubernetes-version", "1.31.0", "--strict"])
        .args(files)
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is installed by the test command"
    );
    (output.status.success(), text)
}

/// The Kubernetes manifests (`deploy/kubernetes/`) pass kubernetes-validate
/// (and a broken copy does not); the Deployment runs replicas with
/// readiness on `/readyz` and liveness on `/healthz`, mounts the config,
/// baselines and rules where the config reads them, and gives the
/// container every `${VAR}` the config names (the Secret's keys and the
/// pod's IP); and that config, laid out as the pod sees it, loads in
/// cluster mode and its rules check.
#[test]
fn the_kubernetes_manifests_validate_and_their_config_loads() {
    let directory = repo("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let (passed, output) = kubernetes_validate(&files);
    assert!(passed, "{output}");

    let deployment_text = std::fs::read_to_string(directory.join("deployment.yaml")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("deployment.yaml");
    std::fs::write(&broken, deployment_text.replace("replicas: 2", "replicas: two")).unwrap();
    let (passed, output) = kubernetes_validate(&[broken]);
    assert!(!passed, "a Deployment with replicas: two passed: {output}");

    let deployment = yaml(&directory.join("deployment.yaml"));
    assert_eq!(deployment["kind"], "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2, "replicas");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Where each volume is mounted, and which ConfigMap it is.
    let volumes: BTreeMap<String, String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["configMap"]["name"].as_str().unwrap().to_string()))
        .collect();
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (volumes[m["name"].as_str().unwrap()].clone(), m["mountPath"].as_str().unwrap().to_string()))
        .collect();
    let config_map = yaml(&directory.join("configmap.yaml"));
    let config_name = config_map["metadata"]["name"].as_str().unwrap();
    assert_eq!(mounts[config_name], "/etc/driftwatch/driftwatch.yaml", "the config is mounted where run reads it");
    assert_eq!(container["args"][2], "/etc/driftwatch/driftwatch.yaml");

    // The container's environment: the Secret's keys and the pod's IP.
    let secret = yaml(&directory.join("secret.yaml"));
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret_name);
    let mut environment: Vec<String> = secret["stringData"].as_object().unwrap().keys().cloned().collect();
    environment.extend(container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()));

    // The config as the pod sees it: files where the mounts put them.
    let root = scratch.path().join("pod");
    copy(&repo("deploy/baselines"), &root.join("baselines"));
    copy(&repo("rules"), &root.join("rules"));
    assert_eq!(mounts["driftwatch-baselines"], "/etc/driftwatch/baselines");
    assert_eq!(mounts["driftwatch-rules"], "/etc/driftwatch/rules");
    let mut text =
        config_map["data"]["driftwatch.yaml"].as_str().unwrap().replace("/etc/driftwatch", root.to_str().unwrap());
    for name in &environment {
        text = text.replace(&format!("${{{name}}}"), "10.0.0.7");
    }
    assert!(!text.contains("${"), "a variable the pod does not have: {text}");
    let config = driftwatch::config::Config::from_yaml_str(&text, "deploy/kubernetes/configmap.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.cluster.is_some(), "the replicas merge through a cluster");
    assert!(config.state.dir.is_none(), "a cluster keeps no state dir yet");
    for model in &config.models {
        let baseline = model.baseline.as_ref().expect("a baseline");
        driftwatch::baseline::Baseline::load(baseline).unwrap_or_else(|e| panic!("{}: {e}", baseline.display()));
    }
    let rules = driftwatch::alerting::load_rules(&config).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(!rules.rules.is_empty());
    let port = config.http.listen.rsplit(':').next().unwrap().to_string();
    assert_eq!(container["ports"][0]["containerPort"].as_u64().unwrap().to_string(), port);
    let service = yaml(&directory.join("service.yaml"));
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
}
