//! The requests notifiers make: notifications (the transitions of one
//! rule, model and state in one evaluation, grouped) and
//! [`NotifierSpec::request`], which turns a notification into the exact
//! HTTP request (or email) the receiving system documents. The settings
//! are checked and typed in [`crate::config::notifiers`] when the config
//! loads. Pure: no I/O here; `deliver` sends.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::notifiers::NotifierSpec;
use crate::rules::Transition;
use crate::template::{render_url, template_env, url_encode};

/// One notification for one notifier, as queued in the outbox: the
/// transitions of one rule and model to one state in one evaluation (one
/// window), so features drifting together make one notification. The
/// first of them is `transition`; `transitions` holds them all when there
/// are several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per (notifier, idempotency key); the outbox file name.
    pub id: String,
    pub notifier: String,
    /// Sent as `Idempotency-Key`: the same for every attempt and every
    /// restart, different per group of alert instances and transition.
    pub idempotency_key: String,
    pub transition: Transition,
    /// Every transition of the group, `transition` first (empty: just
    /// `transition`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// When it was queued (ms since the epoch, wall clock).
    pub queued_at_ms: i64,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
}

impl Notification {
    /// A notification of one transition.
    pub fn new(notifier: &str, transition: &Transition, queued_at_ms: i64) -> Notification {
        Notification::group(notifier, vec![transition.clone()], queued_at_ms)
    }

    /// A notification of a group of transitions (at least one; the caller
    /// groups them: [`group_notifications`]).
    pub fn group(notifier: &str, mut members: Vec<Transition>, queued_at_ms: i64) -> Notification {
        assert!(!members.is_empty(), "a notification has at least one transition");
        let key = if members.len() == 1 { idempotency_key(&members[0]) } else { group_idempotency_key(&members) };
        let id = {
            use sha2::Digest;
            let digest = Sha256::digest(format!("{notifier}\0{key}").as_bytes());
            digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
        };
        let transition = members[0].clone();
        if members.len() == 1 {
            members.clear();
        }
        Notification {
            id,
            notifier: notifier.to_string(),
            idempotency_key: key,
            transition,
            transitions: members,
            queued_at_ms,
            attempts: 0,
        }
    }

    /// Every transition this notification carries, the first one first.
    pub fn members(&self) -> &[Transition] {
        if self.transitions.is_empty() { std::slice::from_ref(&self.transition) } else { &self.transitions }
    }

    /// Deliveries with the same order key go one after the other: those of
    /// one rule and model to one notifier, so a `resolved` never overtakes
    /// the `firing` of any of its instances, whichever groups they were in.
    pub fn order_key(&self) -> (String, String, String) {
        (self.notifier.clone(), self.transition.alert.clone(), self.transition.model.clone())
    }
}

/// The idempotency key of a transition: alert instance (fingerprint),
/// state and the evaluation that made it.
pub fn idempotency_key(t: &Transition) -> String {
    use sha2::Digest;
    let digest = Sha256::digest(format!("{}\0{}\0{}\0{}", t.fingerprint, t.state, t.active_since, t.evaluation_time));
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key of a group: its state, evaluation and every
/// member's instance (fingerprint and activation).
fn group_idempotency_key(members: &[Transition]) -> String {
    use sha2::Digest;
    let mut text = format!("group\0{}\0{}", members[0].state, members[0].evaluation_time);
    for t in members {
        text.push_str(&format!("\0{}\0{}", t.fingerprint, t.active_since));
    }
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The notifications of a batch of transitions: one per notifier and
/// group — the transitions of one rule and model to one state in one
/// evaluation (so, for a window rule, one window) —, in the order the
/// groups first appear, members ordered by model version, segment and
/// feature. Like Alertmanager's `group_by: [alertname, model]`.
pub fn group_notifications<'a>(
    transitions: impl IntoIterator<Item = &'a Transition>,
    queued_at_ms: i64,
) -> Vec<Notification> {
    type GroupKey<'k> = (&'k str, &'k str, &'k str, &'k str, &'k str);
    let mut order: Vec<GroupKey<'a>> = Vec::new();
    let mut groups: BTreeMap<GroupKey<'a>, Vec<Transition>> = BTreeMap::new();
    for t in transitions {
        for notifier in &t.notify {
            let key =
                (notifier.as_str(), t.alert.as_str(), t.model.as_str(), t.state.as_str(), t.evaluation_time.as_str());
            let members = groups.entry(key).or_insert_with(|| {
                order.push(key);
                Vec::new()
            });
            members.push(t.clone());
        }
    }
    order
        .into_iter()
        .map(|key| {
            let mut members = groups.remove(&key).expect("listed above");
            members.sort_by(|a, b| {
                (&a.model_version, &a.segment, &a.feature, &a.fingerprint).cmp(&(
                    &b.model_version,
                    &b.segment,
                    &b.feature,
                    &b.fingerprint,
                ))
            });
            Notification::group(key.0, members, queued_at_ms)
        })
        .collect()
}

/// An HTTP request to make.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An email to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What a notifier does with a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Http(OutgoingRequest),
    Email(OutgoingEmail),
    /// Nothing to send for this transition (e.g. `pending`, or `resolved`
    /// for a trigger that only acts on firing).
    Skip,
}

/// Renders every string leaf as a template with `context`.
fn render(value: &Value, context: &minijinja::Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(template_env().render_str(s, context).map_err(|e| e.to_string())?),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, context)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, context)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

/// What tells a group's members apart: the feature, else the segment,
/// else the model version, else the model.
fn instance_name(t: &Transition) -> &str {
    match &t.feature {
        Some(feature) => feature,
        None if !t.segment.is_empty() => &t.segment,
        None if !t.model_version.is_empty() => &t.model_version,
        None => &t.model,
    }
}

/// A notification's summary: the `summary` annotation (for a group, each
/// distinct one, joined by `; `), or a generated line naming every member.
fn group_summary(members: &[Transition]) -> String {
    let first = &members[0];
    let annotated: Vec<&str> =
        members.iter().filter_map(|m| m.annotations.get("summary").map(String::as_str)).collect();
    if !annotated.is_empty() {
        let mut distinct: Vec<&str> = Vec::new();
        for summary in annotated {
            if !distinct.contains(&summary) {
                distinct.push(summary);
            }
        }
        return distinct.join("; ");
    }
    if members.len() == 1 {
        return format!(
            "{} {} for {}{}",
            first.alert,
            first.state,
            first.model,
            first.feature.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
        );
    }
    let names: Vec<&str> = members.iter().map(instance_name).collect();
    format!("{} {} for {}: {} alerts ({})", first.alert, first.state, first.model, members.len(), names.join(", "))
}

/// One Alertmanager alert (`POST /api/v2/alerts` takes a list): labels
/// identify it, `endsAt` is set on resolve.
fn alertmanager_alert(t: &Transition, generator_url: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(t.alert));
    labels.insert("model".into(), json!(t.model));
    for (key, value) in [("model_version", &t.model_version), ("segment", &t.segment)] {
        if !value.is_empty() {
            labels.insert(key.into(), json!(value));
        }
    }
    if let Some(feature) = &t.feature {
        labels.insert("feature".into(), json!(feature));
    }
    for (k, v) in &t.labels {
        labels.insert(k.clone(), json!(v));
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": t.annotations,
        "startsAt": t.active_since,
        "generatorURL": generator_url,
    });
    if t.state == "resolved" {
        alert["endsAt"] = json!(t.evaluation_time);
    }
    alert
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// `X-Driftwatch-Signature` value: `sha256=<hex HMAC-SHA256 of the body>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!("sha256={}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The request side of a checked notifier (checked in
/// [`crate::config::notifiers`], when the config loads).
impl NotifierSpec {
    fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }

    fn setting_or(&self, key: &str, default: &str) -> String {
        self.setting(key).unwrap_or_else(|| default.to_string())
    }

    /// The rendered value of a structured setting (or `default`).
    fn rendered(&self, key: &str, context: &minijinja::Value, default: Value) -> Result<Value, String> {
        match self.settings.get(key) {
            Some(v) => render(v, context),
            None => Ok(default),
        }
    }

    /// What to send for `notification` (`Skip` for transitions this
    /// notifier does not act on).
    pub fn request(&self, notification: &Notification) -> Result<Outgoing, String> {
        let t = &notification.transition;
        if t.state == "pending" || t.state == "inactive" || (t.state == "resolved" && !self.send_resolved) {
            return Ok(Outgoing::Skip);
        }
        let members = notification.members();
        let summary = group_summary(members);
        let features: Vec<&str> = members
            .iter()
            .filter_map(|m| m.feature.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let context = minijinja::Value::from_serialize(json!({
            "alert": t.alert, "state": t.state, "fingerprint": t.fingerprint, "model": t.model,
            "model_version": t.model_version, "segment": t.segment, "feature": t.feature,
            "window_start": t.window_start, "window_end": t.window_end, "value": t.value,
            "labels": t.labels, "annotations": t.annotations, "summary": summary,
            "idempotency_key": notification.idempotency_key, "transition": t,
            "transitions": members, "features": features, "count": members.len(),
        }));
        // The payload most triggers carry: what fired, on which model.
        let payload = json!({
            "alert": t.alert, "state": t.state, "model": t.model, "model_version": t.model_version,
            "segment": t.segment, "feature": t.feature, "value": t.value, "window_end": t.window_end,
            "fingerprint": t.fingerprint, "summary": summary,
        });
        let string_map = |value: Value| -> Value {
            match value {
                Value::Object(map) => Value::Object(
                    map.into_iter()
                        .map(|(k, v)| {
                            let s = match v {
                                Value::String(s) => s,
                                Value::Null => String::new(),
                                other => other.to_string(),
                            };
                            (k, Value::String(s))
                        })
                        .collect(),
                ),
                other => other,
            }
        };
        let json_request = |method: &str, url: String, headers: Vec<(String, String)>, body: &Value| {
            let mut headers = headers;
            headers.push(("Content-Type".into(), "application/json".into()));
            Outgoing::Http(OutgoingRequest {
                method: method.to_string(),
                url,
                headers,
                body: serde_json::to_vec(body).expect("JSON serialises"),
            })
        };
        let bearer = |token: Option<String>| -> Vec<(String, String)> {
            token.map(|t| vec![("Authorization".to_string(), format!("Bearer {t}"))]).unwrap_or_default()
        };
        let trim = |url: String| url.trim_end_matches('/').to_string();
        Ok(match self.kind.as_str() {
            "webhook" => {
                let body = match self.settings.get("body") {
                    Some(Value::String(template)) => {
                        template_env().render_str(template, &context).map_err(|e| e.to_string())?.into_bytes()
                    }
                    Some(structured) => serde_json::to_vec(&render(structured, &context)?).expect("JSON"),
                    None => serde_json::to_vec(&json!({
                        "transition": t,
                        "transitions": members,
                        "idempotency_key": notification.idempotency_key,
                    }))
                    .expect("JSON"),
                };
                let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
                if let Some(Value::Object(extra)) = self.settings.get("headers") {
                    for (k, v) in extra {
                        let v = render(v, &context)?;
                        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
                        headers.push((k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
                    }
                }
                if let Some(secret) = self.setting("secret") {
                    headers.push(("X-Driftwatch-Signature".into(), signature(&secret, &body)));
                }
                Outgoing::Http(OutgoingRequest {
                    method: self.setting_or("method", "POST").to_uppercase(),
                    url: render_url(&self.setting_or("url", ""), &context)?,
                    headers,
                    body,
                })
            }
            // POST /repos/{owner}/{repo}/dispatches (repository_dispatch):
            // token with `repo` scope (classic) or Contents: write
            // (fine-grained); client_payload has at most 10 top-level keys.
            "github_dispatch" => {
                let api = trim(self.setting_or("api_url", "https://api.github.com"));
                let url = format!("{api}/repos/{}/dispatches", self.setting_or("repo", ""));
                let client_payload = self.rendered("client_payload", &context, payload)?;
                let mut headers = bearer(self.setting("token"));
                headers.push(("Accept".into(), "application/vnd.github+json".into()));
                headers.push(("X-GitHub-Api-Version".into(), "2022-11-28".into()));
                json_request(
                    "POST",
                    url,
                    headers,
                    &json!({"event_type": self.setting_or("event_type", "retrain"), "client_payload": client_payload}),
                )
            }
            // POST /repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches
            // (workflow_dispatch): Actions: write; inputs are strings.
            "github_workflow" => {
                let api = trim(self.setting_or("api_url", "https://api.github.com"));
                let url = format!(
                    "{api}/repos/{}/actions/workflows/{}/dispatches",
                    self.setting_or("repo", ""),
                    url_encode(&self.setting_or("workflow", ""))
                );
                let inputs = string_map(self.rendered(
                    "inputs",
                    &context,
                    json!({"alert": t.alert, "model": t.model, "model_version": t.model_version, "fingerprint": t.fingerprint}),
                )?);
                let mut headers = bearer(self.setting("token"));
                headers.push(("Accept".into(), "application/vnd.github+json".into()));
                headers.push(("X-GitHub-Api-Version".into(), "2022-11-28".into()));
                json_request("POST", url, headers, &json!({"ref": self.setting_or("ref", "main"), "inputs": inputs}))
            }
            // POST /api/v4/projects/:id/trigger/pipeline with a pipeline
            // trigger token (not a personal token), ref and variables.
            "gitlab_trigger" => {
                let base = trim(self.setting_or("url", "https://gitlab.com"));
                let url =
                    format!("{base}/api/v4/projects/{}/trigger/pipeline", url_encode(&self.setting_or("project", "")));
                let variables = string_map(self.rendered(
                    "variables",
                    &context,
                    json!({"DRIFTWATCH_ALERT": t.alert, "DRIFTWATCH_MODEL": t.model, "DRIFTWATCH_FINGERPRINT": t.fingerprint}),
                )?);
                json_request(
                    "POST",
                    url,
                    Vec::new(),
                    &json!({"token": self.setting_or("token", ""), "ref": self.setting_or("ref", "main"), "variables": variables}),
                )
            }
            // POST /job/{job}/buildWithParameters (form parameters), as a
            // user with an API token (Job/Build permission), or with the
            // job's "trigger builds remotely" token.
            "jenkins" => {
                let base = trim(self.setting_or("url", ""));
                let job_path: Vec<String> =
                    self.setting_or("job", "").split('/').map(|part| format!("job/{}", url_encode(part))).collect();
                let mut url = format!("{base}/{}/buildWithParameters", job_path.join("/"));
                if let Some(token) = self.setting("token") {
                    url.push_str(&format!("?token={}", url_encode(&token)));
                }
                let parameters = string_map(self.rendered(
                    "parameters",
                    &context,
                    json!({"ALERT": t.alert, "MODEL": t.model, "MODEL_VERSION": t.model_version, "FINGERPRINT": t.fingerprint}),
                )?);
                let form: Vec<String> = parameters
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v.as_str().unwrap_or(""))))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut headers = vec![("Content-Type".to_string(), "application/x-www-form-urlencoded".to_string())];
                if let (Some(user), Some(api_token)) = (self.setting("user"), self.setting("api_token")) {
                    headers.push(("Authorization".into(), basic_auth(&user, &api_token)));
                }
                Outgoing::Http(OutgoingRequest {
                    method: "POST".into(),
                    url,
                    headers,
                    body: form.join("&").into_bytes(),
                })
            }
            // POST /api/v1/dags/{dag_id}/dagRuns (Airflow 2 stable REST API;
            // `api_version: v2` for Airflow 3), role with DAG run create.
            "airflow_dag" => {
                let base = trim(self.setting_or("url", ""));
                let version = self.setting_or("api_version", "v1");
                let url = format!("{base}/api/{version}/dags/{}/dagRuns", url_encode(&self.setting_or("dag_id", "")));
                let conf = self.rendered("conf", &context, payload)?;
                let mut headers = match (self.setting("username"), self.setting("password")) {
                    (Some(user), Some(password)) => vec![("Authorization".to_string(), basic_auth(&user, &password))],
                    _ => bearer(self.setting("token")),
                };
                headers.push(("Accept".into(), "application/json".into()));
                let mut body =
                    json!({"dag_run_id": format!("driftwatch-{}", notification.idempotency_key), "conf": conf});
                if version != "v1" {
                    body["logical_date"] = Value::Null;
                }
                json_request("POST", url, headers, &body)
            }
            // POST /api/v1/workflows/{namespace}/submit (Argo Server):
            // submit a WorkflowTemplate with parameters; service-account
            // token allowed to create workflows.
            "argo_workflow" => {
                let base = trim(self.setting_or("url", ""));
                let url = format!("{base}/api/v1/workflows/{}/submit", url_encode(&self.setting_or("namespace", "")));
                let parameters = string_map(self.rendered(
                    "parameters",
                    &context,
                    json!({"alert": t.alert, "model": t.model, "model_version": t.model_version, "fingerprint": t.fingerprint}),
                )?);
                let list: Vec<String> = parameters
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
                    .unwrap_or_default();
                json_request(
                    "POST",
                    url,
                    bearer(self.setting("token")),
                    &json!({
                        "resourceKind": "WorkflowTemplate",
                        "resourceName": self.setting_or("workflow_template", ""),
                        "submitOptions": {"parameters": list, "labels": format!("driftwatch/fingerprint={}", t.fingerprint)},
                    }),
                )
            }
            // POST /apis/v2beta1/runs (Kubeflow Pipelines v2 API).
            "kubeflow_run" => {
                let base = trim(self.setting_or("url", ""));
                let url = format!("{base}/apis/v2beta1/runs");
                let parameters = self.rendered(
                    "parameters",
                    &context,
                    json!({"alert": t.alert, "model": t.model, "model_version": t.model_version}),
                )?;
                let mut reference = json!({"pipeline_id": self.setting_or("pipeline_id", "")});
                if let Some(version) = self.setting("pipeline_version_id") {
                    reference["pipeline_version_id"] = Value::String(version);
                }
                let mut body = json!({
                    "display_name": format!("driftwatch {} {} {}", t.alert, t.model, &notification.idempotency_key[..8]),
                    "description": summary,
                    "pipeline_version_reference": reference,
                    "runtime_config": {"parameters": parameters},
                });
                if let Some(experiment) = self.setting("experiment_id") {
                    body["experiment_id"] = Value::String(experiment);
                }
                json_request("POST", url, bearer(self.setting("token")), &body)
            }
            "slack" => {
                let text = match self.setting("text") {
                    Some(template) => template_env().render_str(&template, &context).map_err(|e| e.to_string())?,
                    None => {
                        let icon = if t.state == "firing" { ":rotating_light:" } else { ":white_check_mark:" };
                        format!("{icon} *{}* {} — {}", t.alert, t.state, summary)
                    }
                };
                json_request("POST", self.setting_or("webhook_url", ""), Vec::new(), &json!({"text": text}))
            }
            // POST /api/v2/alerts: labels identify the alert; endsAt set on
            // resolve; re-sent while firing.
            // (One alert per member of the group, in one request.)
            "alertmanager" => {
                let base = trim(self.setting_or("url", ""));
                let generator_url = self.setting_or("generator_url", "http://127.0.0.1:9464/");
                let alerts: Vec<Value> = members.iter().map(|m| alertmanager_alert(m, &generator_url)).collect();
                json_request("POST", format!("{base}/api/v2/alerts"), Vec::new(), &json!(alerts))
            }
            "email" => {
                let subject = match self.setting("subject") {
                    Some(template) => template_env().render_str(&template, &context).map_err(|e| e.to_string())?,
                    None if members.len() > 1 => format!(
                        "[driftwatch] {} {}: {} ({} alerts)",
                        t.state.to_uppercase(),
                        t.alert,
                        t.model,
                        members.len()
                    ),
                    None => format!("[driftwatch] {} {}: {}", t.state.to_uppercase(), t.alert, t.model),
                };
                let mut text = format!("{summary}\n\nalert: {}\nstate: {}\nmodel: {}", t.alert, t.state, t.model);
                for m in members {
                    if members.len() > 1 {
                        text.push_str(&format!("\n\ninstance: {}", instance_name(m)));
                    }
                    for (k, v) in [("model_version", &m.model_version), ("segment", &m.segment)] {
                        if !v.is_empty() {
                            text.push_str(&format!("\n{k}: {v}"));
                        }
                    }
                    if let Some(f) = &m.feature {
                        text.push_str(&format!("\nfeature: {f}"));
                    }
                    if let Some(v) = m.value {
                        text.push_str(&format!("\nvalue: {v}"));
                    }
                    text.push_str(&format!(
                        "\nwindow: {} – {}\nfingerprint: {}",
                        m.window_start, m.window_end, m.fingerprint
                    ));
                }
                text.push('\n');
                let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                let rows: String = text
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| format!("<tr><th align=\"left\">{}</th><td>{}</td></tr>", escape(k), escape(v)))
                    .collect();
                let html = format!("<html><body><p>{}</p><table>{rows}</table></body></html>", escape(&summary));
                Outgoing::Email(OutgoingEmail { subject, text, html })
            }
            other => return Err(format!("unknown notifier type {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NotifierConfig;

    fn transition() -> Transition {
        Transition {
            alert: "A".into(),
            state: "firing".into(),
            fingerprint: "f".into(),
            model: "shop".into(),
            model_version: String::new(),
            segment: String::new(),
            feature: None,
            window_start: "2026-11-26T10:00:00.000Z".into(),
            window_end: "2026-11-26T10:05:00.000Z".into(),
            value: Some(1.0),
            labels: Default::default(),
            annotations: Default::default(),
            notify: vec!["hook".into()],
            suppressed: Vec::new(),
            active_since: "2026-11-26T10:00:00.000Z".into(),
            evaluation_time: "2026-11-26T10:05:00.000Z".into(),
        }
    }

    fn webhook(url: &str) -> Result<NotifierSpec, Vec<String>> {
        let config: NotifierConfig = serde_json::from_value(json!({"type": "webhook", "url": url})).unwrap();
        NotifierSpec::from_config("hook", &config)
    }

    fn url_for(spec: &NotifierSpec, t: &Transition) -> Result<String, String> {
        match spec.request(&Notification::new("hook", t, 0))? {
            Outgoing::Http(request) => Ok(request.url),
            other => panic!("expected an HTTP request, got {other:?}"),
        }
    }

    /// Regression: values from event data were interpolated into a webhook
    /// URL verbatim, so a segment or feature name could add path segments,
    /// a query or a fragment.
    #[test]
    fn values_interpolated_into_a_url_are_percent_encoded() {
        let spec = webhook("http://u:p@hooks.example:8080/a/{{ model }}/{{ segment }}?f={{ feature }}&v=1").unwrap();
        let t = Transition {
            segment: "region=../../admin?x=".into(),
            feature: Some("a#b/c@d e&g=h:i\\j%k".into()),
            ..transition()
        };
        assert_eq!(
            url_for(&spec, &t).unwrap(),
            "http://u:p@hooks.example:8080/a/shop/region%3D..%2F..%2Fadmin%3Fx%3D\
             ?f=a%23b%2Fc%40d%20e%26g%3Dh%3Ai%5Cj%25k&v=1"
        );
        // The host and path the config wrote are the ones the request goes to.
        let parsed = reqwest::Url::parse(&url_for(&spec, &t).unwrap()).unwrap();
        assert_eq!(parsed.host_str(), Some("hooks.example"));
        assert_eq!(parsed.path_segments().unwrap().count(), 3);
        assert_eq!(parsed.query_pairs().count(), 2);
        assert_eq!(parsed.fragment(), None);
        // Non-ASCII text is encoded byte by byte; absent values render empty.
        let t = Transition { model: "mödel".into(), feature: None, ..transition() };
        assert_eq!(url_for(&spec, &t).unwrap(), "http://u:p@hooks.example:8080/a/m%C3%B6del/?f=&v=1");
    }

    #[test]
    fn a_url_whose_path_would_have_a_dot_segment_is_not_sent() {
        let spec = webhook("http://hooks.example/a/{{ feature }}/b").unwrap();
        for feature in ["..", "."] {
            let t = Transition { feature: Some(feature.into()), ..transition() };
            let error = url_for(&spec, &t).unwrap_err();
            assert!(error.contains("path segment"), "{feature}: {error}");
        }
        // An encoded dot in a value is encoded again; dots inside a
        // segment, or anywhere in the query, are fine.
        let t = Transition { feature: Some("%2e%2E".into()), ..transition() };
        assert_eq!(url_for(&spec, &t).unwrap(), "http://hooks.example/a/%252e%252E/b");
        let t = Transition { feature: Some("..x".into()), ..transition() };
        assert_eq!(url_for(&spec, &t).unwrap(), "http://hooks.example/a/..x/b");
        let spec = webhook("http://hooks.example/a?f={{ feature }}").unwrap();
        let t = Transition { feature: Some("..".into()), ..transition() };
        assert_eq!(url_for(&spec, &t).unwrap(), "http://hooks.example/a?f=..");
    }

    fn spec(settings: Value) -> NotifierSpec {
        let config: NotifierConfig = serde_json::from_value(settings).unwrap();
        NotifierSpec::from_config("n", &config).unwrap()
    }

    /// Regression: features drifting in one window made one notification
    /// per feature (or, with a cooldown, one naming an arbitrary feature).
    /// Now one notification per notifier, rule, model, state and
    /// evaluation carries them all.
    #[test]
    fn transitions_of_one_rule_model_and_window_make_one_notification() {
        let member = |model: &str, feature: &str, evaluation: &str| Transition {
            model: model.into(),
            feature: Some(feature.into()),
            fingerprint: format!("{model}-{feature}"),
            evaluation_time: evaluation.into(),
            notify: vec!["hook".into(), "am".into()],
            ..transition()
        };
        let batch = [
            member("shop", "tenure", "2026-11-26T10:05:00.000Z"),
            member("shop", "amount", "2026-11-26T10:05:00.000Z"),
            member("fraud", "amount", "2026-11-26T10:05:00.000Z"),
            member("shop", "country", "2026-11-26T10:05:00.000Z"),
            member("shop", "age", "2026-11-26T10:10:00.000Z"),
        ];
        let notifications = group_notifications(&batch, 0);
        let groups: Vec<(&str, &str, Vec<&str>)> = notifications
            .iter()
            .map(|n| {
                let features = n.members().iter().map(|t| t.feature.as_deref().unwrap()).collect();
                (n.notifier.as_str(), n.transition.model.as_str(), features)
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("hook", "shop", vec!["amount", "country", "tenure"]),
                ("am", "shop", vec!["amount", "country", "tenure"]),
                ("hook", "fraud", vec!["amount"]),
                ("am", "fraud", vec!["amount"]),
                ("hook", "shop", vec!["age"]),
                ("am", "shop", vec!["age"]),
            ]
        );
        // One member keeps the key it always had; a group's key differs.
        assert_eq!(notifications[2].idempotency_key, idempotency_key(&batch[2]));
        assert_ne!(notifications[0].idempotency_key, idempotency_key(&notifications[0].transition));
        assert_eq!(notifications[0].idempotency_key, group_notifications(&batch, 9)[0].idempotency_key);

        // The webhook body lists the group; Alertmanager gets one alert each.
        let Outgoing::Http(hook) =
            spec(json!({"type": "webhook", "url": "http://h/x"})).request(&notifications[0]).unwrap()
        else {
            panic!("HTTP")
        };
        let body: Value = serde_json::from_slice(&hook.body).unwrap();
        let features: Vec<&str> =
            body["transitions"].as_array().unwrap().iter().map(|t| t["feature"].as_str().unwrap()).collect();
        assert_eq!(features, ["amount", "country", "tenure"]);
        assert_eq!(body["transition"]["feature"], "amount");
        let Outgoing::Http(am) =
            spec(json!({"type": "alertmanager", "url": "http://am:9093"})).request(&notifications[1]).unwrap()
        else {
            panic!("HTTP")
        };
        let alerts: Value = serde_json::from_slice(&am.body).unwrap();
        let features: Vec<&str> =
            alerts.as_array().unwrap().iter().map(|a| a["labels"]["feature"].as_str().unwrap()).collect();
        assert_eq!(features, ["amount", "country", "tenure"]);
        // Email: one message naming every member; templates see them all.
        let mail =
            spec(json!({"type": "email", "smtp": "smtp://m:25", "from": "a@example.com", "to": ["b@example.com"]}));
        let Outgoing::Email(email) = mail.request(&notifications[0]).unwrap() else { panic!("email") };
        assert_eq!(email.subject, "[driftwatch] FIRING A: shop (3 alerts)");
        assert!(email.text.starts_with("A firing for shop: 3 alerts (amount, country, tenure)"), "{}", email.text);
        for feature in ["amount", "country", "tenure"] {
            assert!(email.text.contains(&format!("feature: {feature}")), "{}", email.text);
            assert!(email.html.contains(&format!("<td>{feature}</td>")), "{}", email.html);
        }
        let slack = spec(
            json!({"type": "slack", "webhook_url": "http://s/x", "text": "{{ count }}: {{ features | join(',') }}"}),
        );
        let Outgoing::Http(text) = slack.request(&notifications[0]).unwrap() else { panic!("HTTP") };
        assert_eq!(serde_json::from_slice::<Value>(&text.body).unwrap()["text"], "3: amount,country,tenure");
    }

    #[test]
    fn notifier_templates_with_unknown_variables_or_filters_are_refused() {
        let config: NotifierConfig = serde_json::from_value(json!({
            "type": "slack", "webhook_url": "http://s/x", "text": "{{ featur }} on {{ model | uper }} ({{ count }} alerts)"
        }))
        .unwrap();
        let errors = NotifierSpec::from_config("chat", &config).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "notifiers.chat.text: unknown variable `featur`: it would render as nothing; did you mean `feature`?"
            ),
            "{errors:?}"
        );
        assert_eq!(errors[1], "notifiers.chat.text: unknown filter `uper`; did you mean `upper`?");
    }

    /// Regression: a URL without a scheme passed `config check` and every
    /// delivery then failed as "builder error".
    #[test]
    fn urls_without_a_scheme_or_host_are_refused_at_config_time() {
        for (url, expected) in [
            ("hooks.example/retrain", "notifiers.hook.url: the URL has no scheme; write it as http://HOST"),
            ("127.0.0.1:8080/retrain", "notifiers.hook.url: the URL has no scheme"),
            ("localhost:9000/{{ model }}", "notifiers.hook.url: the URL has no scheme"),
            (
                "ftp://hooks.example/x",
                "notifiers.hook.url: the URL must start with http:// or https:// (it starts with \"ftp:\")",
            ),
            ("http://", "notifiers.hook.url: not a valid URL (empty host)"),
            ("http://hooks.example:99999/x", "notifiers.hook.url: not a valid URL (invalid port number)"),
        ] {
            let errors = webhook(url).unwrap_err();
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{url}: {errors:?}");
        }
        // The other URL settings are checked too; a secret in a URL is never quoted.
        let config: NotifierConfig =
            serde_json::from_value(json!({"type": "slack", "webhook_url": "hooks.slack.com/services/T0/B0/s3cret"}))
                .unwrap();
        let errors = NotifierSpec::from_config("chat", &config).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("notifiers.chat.webhook_url: the URL has no scheme"), "{errors:?}");
        assert!(!errors[0].contains("s3cret"), "{errors:?}");
        let config: NotifierConfig =
            serde_json::from_value(json!({"type": "alertmanager", "url": "alertmanager:9093"})).unwrap();
        let errors = NotifierSpec::from_config("am", &config).unwrap_err();
        assert!(errors[0].starts_with("notifiers.am.url: the URL has no scheme"), "{errors:?}");
        for url in ["http://hooks.example", "https://h.example:8443/a/{{ model }}?f={{ feature }}", "http://[::1]:9/x"]
        {
            assert!(webhook(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_webhook_url_template_may_not_choose_the_host() {
        for url in [
            "{{ labels.url }}",
            "http://{{ segment }}/hook",
            "http://hooks.example:{{ labels.port }}/hook",
            "http://hooks.example{{ model }}",
            "http{% if true %}s{% endif %}://hooks.example/",
        ] {
            let errors = webhook(url).unwrap_err();
            assert!(
                errors[0].starts_with("notifiers.hook.url: the scheme and host must be literal"),
                "{url}: {errors:?}"
            );
        }
        for url in ["http://hooks.example", "http://hooks.example/{{ model }}", "http://h?m={{ model }}"] {
            assert!(webhook(url).is_ok(), "{url}");
        }
    }
}
