//! Serde support for humantime durations (`"5m"`, `"24h"`, `"200ms"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

/// Serializes as a humantime string (`5m`, `1day`, `200ms`).
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Deserializes a humantime string; the bare number `0` is accepted as zero.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// A humantime duration as a standalone value (for `Option<...>` fields of
/// raw structs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(HumanDuration)
    }
}

struct DurationVisitor;

const EXPECTING: &str = "a duration such as \"30s\", \"5m\", \"24h\" or \"200ms\"";

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let t = v.trim();
        if t.starts_with('-') {
            return Err(E::custom(format!("invalid duration {v:?}: must not be negative")));
        }
        if t == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(t)
            .map_err(|e| E::custom(format!("invalid duration {v:?}: {e} (expected {EXPECTING})")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        if v == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(E::custom(format!("invalid duration {v}: a unit is required (expected {EXPECTING})")))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            return Err(E::custom(format!("invalid duration {v}: must not be negative")));
        }
        self.visit_u64(v as u64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        if v == 0.0 {
            return Ok(Duration::ZERO);
        }
        Err(E::custom(format!("invalid duration {v}: a unit is required (expected {EXPECTING})")))
    }
}
