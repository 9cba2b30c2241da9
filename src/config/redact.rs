//! Secret handling: the [`Secret`] type and the redaction of free-form maps
//! (`kafka.options`, notifier settings).
//!
//! # What is redacted
//!
//! Redaction is applied whenever a config is serialized (YAML, JSON, API
//! responses) or `Debug`-printed, so secrets cannot leak by accident:
//!
//! - every [`Secret`] field (e.g. `http.token`);
//! - a `kafka.options` entry or a notifier setting (at any depth of nested
//!   maps, e.g. `headers: {Authorization: ...}`) whose key, compared
//!   case-insensitively, contains one of [`SENSITIVE_KEY_PARTS`]
//!   (`password`, `passwd`, `secret`, `token`, `key`, `auth`, `credential`,
//!   `jaas`, `oauthbearer.config`, `private`, `cookie`, `signature`) — the
//!   whole value is replaced, whatever its type;
//! - *except* keys that name a file rather than hold its content: keys
//!   ending in `.location`, `_location`, `.path`, `_path`, `.file`, `_file`
//!   (e.g. `ssl.key.location`, `ssl.keystore.location`, `password_file`),
//!   which are shown as they are;
//! - for `slack` notifiers, the `url` / `webhook_url` settings (the webhook
//!   URL itself is the credential);
//! - inside any remaining string value that looks like a URL (`scheme://`):
//!   the password of the userinfo (`smtp://user:***redacted***@mail:587`)
//!   and the values of query parameters whose names are sensitive as above
//!   or are `sig`/`code` (`...?token=***redacted***`).
//!
//! Environment variables are expanded before parsing, so a secret that ends
//! up somewhere else (say, in a notifier's `repo` field) is not recognised.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The text that replaces every redacted value.
pub const REDACTED: &str = "***redacted***";

/// Substrings of a key (lower-cased) that mark its value as secret.
pub const SENSITIVE_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "jaas",
    "oauthbearer.config",
    "private",
    "cookie",
    "signature",
];

/// Key suffixes that name a file path (not secret themselves).
const PATH_KEY_SUFFIXES: &[&str] = &[".location", "_location", ".path", "_path", ".file", "_file"];

/// A secret string (token, password). `Debug`, `Display` and `Serialize`
/// print `***redacted***`; use [`Secret::expose`] to get the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// Whether a `kafka.options` key or notifier setting key holds a secret
/// (see the module docs for the rules).
pub fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if PATH_KEY_SUFFIXES.iter().any(|s| k.ends_with(s)) {
        return false;
    }
    SENSITIVE_KEY_PARTS.iter().any(|p| k.contains(p))
}

fn is_sensitive_query_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "sig" || n == "code" || is_sensitive_key(&n)
}

/// Redacts the userinfo password and sensitive query parameter values of
/// every URL-looking part of `s`. Other text is returned unchanged.
pub fn redact_url_credentials(s: &str) -> Cow<'_, str> {
    let Some(scheme_end) = s.find("://") else {
        return Cow::Borrowed(s);
    };
    let authority_start = scheme_end + 3;
    let rest = &s[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..authority_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let after = &rest[authority_len..];
    let (before_fragment, fragment) = match after.find('#') {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    match before_fragment.find('?') {
        Some(q) => {
            out.push_str(&before_fragment[..=q]);
            let params: Vec<String> = before_fragment[q + 1..]
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_sensitive_query_param(name) => {
                        format!("{name}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    if out == s { Cow::Borrowed(s) } else { Cow::Owned(out) }
}

/// The secret parts of a URL: its userinfo password and the values of its
/// sensitive query parameters (as [`redact_url_credentials`] judges them).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return secrets;
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        secrets.push(password.to_string());
    }
    let before_fragment = rest.split('#').next().unwrap_or("");
    if let Some((_, query)) = before_fragment.split_once('?') {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && is_sensitive_query_param(name)
            {
                secrets.push(value.to_string());
            }
        }
    }
    secrets
}

/// `text` with every occurrence of each secret (of 4 characters or more;
/// shorter ones would blank out ordinary words) replaced by [`REDACTED`].
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if secret.len() >= 4 && out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// `kafka.options` with secret values replaced.
pub fn redacted_options(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .map(|(k, v)| {
            let v = if is_sensitive_key(k) { REDACTED.to_string() } else { redact_url_credentials(v).into_owned() };
            (k.clone(), v)
        })
        .collect()
}

/// Notifier settings (of a notifier of type `kind`) with secret values
/// replaced, recursively.
pub fn redacted_settings(kind: &str, settings: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    settings
        .iter()
        .map(|(k, v)| {
            let whole_url_is_secret = kind == "slack" && (k == "url" || k == "webhook_url");
            let v = if whole_url_is_secret || is_sensitive_key(k) {
                Value::String(REDACTED.to_string())
            } else {
                redact_value(v)
            };
            (k.clone(), v)
        })
        .collect()
}

fn redact_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact_url_credentials(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(redact_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_sensitive_key(k) { Value::String(REDACTED.to_string()) } else { redact_value(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `serialize_with` for `kafka.options`.
pub(crate) fn serialize_options<S: Serializer>(options: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let redacted = redacted_options(options);
    let mut map = s.serialize_map(Some(redacted.len()))?;
    for (k, v) in &redacted {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_keys() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.jaas.config",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "token",
            "api_key",
            "X-Api-Key",
            "Authorization",
            "routing_key",
            "client_secret",
        ] {
            assert!(is_sensitive_key(k), "{k}");
        }
        for k in [
            "ssl.key.location",
            "ssl.keystore.location",
            "password_file",
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "url",
            "repo",
            "event_type",
            "to",
        ] {
            assert!(!is_sensitive_key(k), "{k}");
        }
    }

    #[test]
    fn url_credentials() {
        assert_eq!(redact_url_credentials("smtp://bob:hunter2@mail:587"), "smtp://bob:***redacted***@mail:587");
        assert_eq!(
            redact_url_credentials("https://ci/job/x/build?token=abc&cause=drift#frag"),
            "https://ci/job/x/build?token=***redacted***&cause=drift#frag"
        );
        assert_eq!(redact_url_credentials("http://alertmanager:9093"), "http://alertmanager:9093");
        assert_eq!(redact_url_credentials("plain text"), "plain text");
        assert_eq!(redact_url_credentials("https://user@host/p?a=1"), "https://user@host/p?a=1");
    }

    #[test]
    fn nested_settings() {
        let settings: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"url": "https://h/x?api_key=k1", "headers": {"Authorization": "Bearer t0k",
                "X-Trace": "1"}, "to": ["a@b"], "n": 3}"#,
        )
        .unwrap();
        let r = redacted_settings("webhook", &settings);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("t0k") && !text.contains("k1"), "{text}");
        assert!(text.contains("X-Trace") && text.contains("a@b"), "{text}");
        let slack: BTreeMap<String, Value> =
            serde_json::from_str(r#"{"webhook_url": "https://hooks.slack.com/services/T/B/XYZ"}"#).unwrap();
        assert_eq!(redacted_settings("slack", &slack)["webhook_url"], Value::String(REDACTED.into()));
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{REDACTED}\""));
        assert_eq!(s.expose(), "hunter2");
    }
}
