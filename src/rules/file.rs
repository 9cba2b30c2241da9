//! Rule files as written (`rules/*.yaml`, docs/RULES.md): Prometheus-style groups
//! of alerting rules, parsed strictly (an unknown key is an error naming its
//! line), with the source line of every field a later check may complain
//! about.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// A whole rule file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileSpec {
    pub groups: Vec<GroupSpec>,
}

/// A named group of rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// One alerting rule, as written. Unknown keys are not refused here but by
/// [`parse_rule_file`]'s key check ([`RULE_KEYS`]), which reports each one
/// with its line while the file's other rules are still checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RuleSpec {
    /// The alert's name (unique across the loaded rule files).
    pub alert: Spanned<String>,
    /// A SQL boolean expression over the columns of `window_metrics`; each
    /// matching row is an alert instance.
    #[serde(default)]
    pub expr: Option<Spanned<String>>,
    /// A full SQL query over `window_metrics`; each returned row is an alert
    /// instance. Exactly one of `expr` and `query`.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// How long the condition must hold before firing: a number of
    /// consecutive windows, or a duration. Default 0: fire at once.
    #[serde(default, rename = "for")]
    pub pending_for: Option<Spanned<Span>>,
    /// How long an alert keeps firing after the condition stops holding:
    /// windows or a duration. Default 0.
    #[serde(default)]
    pub keep_firing_for: Option<Spanned<Span>>,
    #[serde(default)]
    pub labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub annotations: BTreeMap<String, Spanned<String>>,
    /// Notifier names (from `driftwatch.yaml`).
    #[serde(default)]
    pub notify: Vec<Spanned<String>>,
    /// At most one notification per notifier and model within this time.
    #[serde(default)]
    pub cooldown: Option<Spanned<Span>>,
}

/// A count of windows or a duration (`for`, `keep_firing_for`, `cooldown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Windows(u32),
    Duration(Duration),
}

impl Default for Span {
    fn default() -> Self {
        Span::Windows(0)
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Span::Windows(n) => serializer.serialize_u32(*n),
            Span::Duration(d) => serializer.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpanVisitor;
        impl Visitor<'_> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of windows (e.g. 2) or a duration (e.g. \"10m\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                u32::try_from(v).map(Span::Windows).map_err(|_| E::custom(format!("{v} windows is too many")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                if v < 0 {
                    return Err(E::custom(format!("{v}: must not be negative")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                if let Ok(n) = v.trim().parse::<u32>() {
                    return Ok(Span::Windows(n));
                }
                humantime::parse_duration(v.trim())
                    .map(Span::Duration)
                    .map_err(|e| E::custom(format!("{v:?} is neither a number of windows nor a duration: {e}")))
            }
        }
        deserializer.deserialize_any(SpanVisitor)
    }
}

/// The keys a rule may have (the fields of [`RuleSpec`] as written).
pub const RULE_KEYS: &[&str] =
    &["alert", "expr", "query", "for", "keep_firing_for", "labels", "annotations", "notify", "cooldown"];

/// A rule's unknown keys with their lines (the key check's view of a rule).
struct UnknownKeys(Vec<(u64, String)>);

impl<'de> Deserialize<'de> for UnknownKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = UnknownKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rule (a mapping)")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<UnknownKeys, A::Error> {
                let mut unknown = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    map.next_value::<de::IgnoredAny>()?;
                    if !RULE_KEYS.contains(&key.value.as_str()) {
                        unknown.push((key.referenced.line(), key.value));
                    }
                }
                Ok(UnknownKeys(unknown))
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

#[derive(Deserialize)]
struct KeyCheckFile {
    groups: Vec<KeyCheckGroup>,
}

#[derive(Deserialize)]
struct KeyCheckGroup {
    #[serde(default)]
    rules: Vec<UnknownKeys>,
}

/// A parsed rule file and, per group and rule, the rule's unknown keys
/// (line, key): a rule with one is reported, and the others still checked.
pub type ParsedRuleFile = (RuleFileSpec, Vec<Vec<Vec<(u64, String)>>>);

/// Parses a rule file's text; the error names the line and column.
pub fn parse_rule_file(text: &str) -> Result<ParsedRuleFile, (Option<u64>, String)> {
    crate::fsutil::check_text_size(text).map_err(|message| (None, message))?;
    if !text.lines().any(|l| {
        let t = l.trim();
        !(t.is_empty() || t.starts_with('#') || t == "---")
    }) {
        return Err((None, "the file is empty (expected `groups:`)".to_string()));
    }
    // serde-saphyr's default budget bounds nodes, depth and alias expansion.
    let error = |e: serde_saphyr::Error| {
        // `file:line:` is printed in front, so keep only the column here.
        let (line, message) = crate::config::yaml_error(&e);
        let prefix = line.map(|l| format!("line {l}, ")).unwrap_or_default();
        (line, message.strip_prefix(&prefix).unwrap_or(&message).to_string())
    };
    let spec = serde_saphyr::from_str::<RuleFileSpec>(text).map_err(error)?;
    let keys = serde_saphyr::from_str::<KeyCheckFile>(text).map_err(error)?;
    let unknown = keys.groups.into_iter().map(|g| g.rules.into_iter().map(|r| r.0).collect()).collect();
    Ok((spec, unknown))
}
