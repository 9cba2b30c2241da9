//! Serde support for sizes in bytes: a bare number of bytes or a number
//! with a unit (`"256MB"`, `"256MiB"`, `"1GB"`, `"512KB"`; KB/MB/GB are
//! powers of 1024 like KiB/MiB/GiB, as memory budgets usually are).

use std::fmt;

use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// Serializes as a whole number of MiB when it is one (`"256MiB"`), else
/// as bytes.
pub(crate) fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    if *bytes > 0 && bytes.is_multiple_of(1 << 20) {
        s.collect_str(&format_args!("{}MiB", bytes >> 20))
    } else {
        s.serialize_u64(*bytes)
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(ByteSizeVisitor)
}

struct ByteSizeVisitor;

const EXPECTING: &str = "a size such as \"256MB\", \"1GB\" or a number of bytes";

/// Parses `"256MB"`-style sizes.
pub(crate) fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("invalid size {text:?} (expected {EXPECTING})"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?} (expected {EXPECTING})")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

impl Visitor<'_> for ByteSizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse("256MB"), Ok(256 << 20));
        assert_eq!(parse("1 GiB"), Ok(1 << 30));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("12 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("MB").is_err());
    }
}
