//! `cluster:`: who is in the cluster (`GET /api/v1/cluster`), read from
//! the partials topic itself. driftwatch keeps no membership of its own and
//! Kafka's group descriptions do not serve (Tansu 0.6 describes members
//! without their client ids or assignments): every record an instance
//! publishes names it (its HTTP address, [`instance_name`]), so the newest
//! delta of each source partition says who reads it, and the newest mark
//! of each model says who merges it ([`PartialsTopic::newest_publishers`]).
//! An instance whose newest record is older than [`STALE_AFTER`] is listed
//! as stale: it stopped, or its partitions have not moved on yet.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::partials::{PartialsTopic, Publishers, partitions_of};
use crate::config::KafkaConfig;

/// How long describing the cluster may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a description is served again before the topic is read anew
/// (every `/api/v1/windows` request of a cluster asks which models are
/// merged elsewhere).
const DESCRIPTION_KEPT: Duration = Duration::from_secs(2);

/// An instance that published nothing for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Describes the cluster an instance is in (see the module doc).
pub struct ClusterDescriber {
    kafka: KafkaConfig,
    /// This instance's name: its HTTP address.
    instance: String,
    partials_topic: String,
    models: Vec<String>,
    /// The partials topic, once it exists (the daemon creates it).
    partials: Mutex<Option<PartialsTopic>>,
    /// The last description, and when it was made.
    last: Mutex<Option<(Instant, Value)>>,
}

impl ClusterDescriber {
    pub fn new(kafka: &KafkaConfig, instance: &str, partials_topic: &str, models: Vec<String>) -> Self {
        ClusterDescriber {
            kafka: kafka.clone(),
            instance: instance.to_string(),
            partials_topic: partials_topic.to_string(),
            models,
            partials: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// [`Self::describe_now`], or the description made less than
    /// [`DESCRIPTION_KEPT`] ago.
    pub fn describe(&self) -> Value {
        let mut last = self.last.lock().expect("description lock");
        if let Some((at, answer)) = &*last
            && at.elapsed() < DESCRIPTION_KEPT
        {
            return answer.clone();
        }
        let answer = self.describe_now();
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// The members, the partitions each reads and the models each merges,
    /// as `/api/v1/cluster` answers. Blocks up to a few seconds.
    pub fn describe_now(&self) -> Value {
        let mut answer = json!({
            "clustered": true,
            "instance": self.instance,
            "group": self.kafka.group_id,
            "merge_group": merge_group(&self.kafka.group_id),
            "members": [],
            "models": {},
        });
        match self.publishers() {
            Ok(publishers) => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let (members, models) = assemble(&publishers, now_ms);
                answer["members"] = json!(members);
                answer["models"] = json!(models);
            }
            Err(error) => answer["errors"] = json!([error]),
        }
        answer
    }

    fn publishers(&self) -> Result<Publishers, String> {
        let kafka = &self.kafka;
        let mut partials = self.partials.lock().expect("partials lock");
        if partials.is_none() {
            let count = partitions_of(kafka, &self.partials_topic, DESCRIBE_TIMEOUT).map_err(|e| e.to_string())?;
            if count == 0 {
                return Ok(Publishers::default());
            }
            let topic =
                PartialsTopic::open(kafka, &self.partials_topic, count, DESCRIBE_TIMEOUT).map_err(|e| e.to_string())?;
            *partials = Some(topic);
        }
        let partials = partials.as_ref().expect("opened above");
        let mut sources = Vec::new();
        for topic in [&kafka.predictions_topic, &kafka.labels_topic] {
            let count = partitions_of(kafka, topic, DESCRIBE_TIMEOUT).map_err(|e| e.to_string())?;
            sources.extend((0..count).map(|partition| (topic.clone(), partition)));
        }
        partials.newest_publishers(&self.models, &sources, DESCRIBE_TIMEOUT).map_err(|e| e.to_string())
    }
}

/// The members (each instance with the partitions it last published, the
/// models it last marked, when it last published and whether that is
/// stale) and, per model, the instance merging it (left out when stale).
pub fn assemble(publishers: &Publishers, now_ms: i64) -> (Vec<Value>, BTreeMap<String, String>) {
    #[derive(Default)]
    struct Member {
        partitions: BTreeMap<String, Vec<i32>>,
        models: Vec<String>,
        last_ms: Option<i64>,
    }
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    let stale_ms = STALE_AFTER.as_millis() as i64;
    let fresh = |at: &Option<i64>| at.is_none_or(|at| now_ms.saturating_sub(at) < stale_ms);
    for ((topic, partition), (instance, at)) in &publishers.readers {
        let member = members.entry(instance).or_default();
        member.partitions.entry(topic.clone()).or_default().push(*partition);
        member.last_ms = member.last_ms.max(*at);
    }
    let mut models = BTreeMap::new();
    for (model, (instance, at)) in &publishers.mergers {
        let member = members.entry(instance).or_default();
        member.models.push(model.clone());
        member.last_ms = member.last_ms.max(*at);
        if fresh(at) {
            models.insert(model.clone(), instance.clone());
        }
    }
    let members = members
        .into_iter()
        .map(|(instance, member)| {
            json!({
                "instance": instance,
                "partitions": member.partitions,
                "models_merged": member.models,
                "last_published": member.last_ms.map(crate::timestamp::format_rfc3339_ms),
                "stale": !fresh(&member.last_ms),
            })
        })
        .collect();
    (members, models)
}

impl crate::http::ClusterView for ClusterDescriber {
    fn describe(&self) -> Value {
        ClusterDescriber::describe(self)
    }

    fn merged_elsewhere(&self) -> BTreeMap<String, String> {
        let answer = ClusterDescriber::describe(self);
        let Some(models) = answer["models"].as_object() else { return BTreeMap::new() };
        models
            .iter()
            .filter_map(|(model, instance)| Some((model.clone(), instance.as_str()?.to_string())))
            .filter(|(_, instance)| *instance != self.instance)
            .collect()
    }
}

/// The merge group of source group `group`.
pub fn merge_group(group: &str) -> String {
    format!("{group}-merge")
}

/// This instance's name in a cluster: `cluster.advertised_url` when set,
/// else `http://<host>:<port>` of the HTTP API's address (the machine's
/// host name when it listens on every interface).
pub fn instance_name(advertised: Option<&str>, http_address: &str) -> String {
    if let Some(url) = advertised {
        return url.to_string();
    }
    let (host, port) = http_address.rsplit_once(':').unwrap_or((http_address, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "0.0.0.0" || host == "::" || host.is_empty() { host_name() } else { host.to_string() };
    if port.is_empty() { format!("http://{host}") } else { format!("http://{host}:{port}") }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_who_published_last_and_stale_ones_merge_nothing() {
        let now = 1_795_687_200_000;
        let mut publishers = Publishers::default();
        let a = ("http://a:9464".to_string(), Some(now - 1_000));
        let b = ("http://b:9464".to_string(), Some(now - 2_000));
        let gone = ("http://gone:9464".to_string(), Some(now - 120_000));
        publishers.readers.insert(("predictions".into(), 0), a.clone());
        publishers.readers.insert(("predictions".into(), 1), b.clone());
        publishers.readers.insert(("labels".into(), 0), a.clone());
        publishers.mergers.insert("fraud".into(), b.clone());
        publishers.mergers.insert("churn".into(), gone.clone());
        let (members, models) = assemble(&publishers, now);
        assert_eq!(models, [("fraud".to_string(), "http://b:9464".to_string())].into_iter().collect());
        assert_eq!(members.len(), 3);
        assert_eq!(members[0]["instance"], "http://a:9464");
        assert_eq!(members[0]["partitions"], json!({"labels": [0], "predictions": [0]}));
        assert_eq!(members[0]["stale"], false);
        assert_eq!(members[1]["models_merged"], json!(["fraud"]));
        assert_eq!(members[2]["stale"], true, "{}", members[2]);
    }

    #[test]
    fn an_instance_is_named_by_its_http_address() {
        assert_eq!(instance_name(None, "127.0.0.1:9464"), "http://127.0.0.1:9464");
        assert_eq!(instance_name(Some("http://pod-1.driftwatch:9464"), "0.0.0.0:9464"), "http://pod-1.driftwatch:9464");
        assert!(instance_name(None, "0.0.0.0:9464").ends_with(":9464"));
        assert!(!instance_name(None, "0.0.0.0:9464").contains("0.0.0.0"));
    }
}
