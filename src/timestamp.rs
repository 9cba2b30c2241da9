//! Event timestamps: RFC 3339 strings or epoch milliseconds, to epoch
//! milliseconds (UTC), without allocating, and back to RFC 3339. A leaf
//! of the module graph: the decoder, outputs, rules, the HTTP API and the
//! simulator all use it, and it uses nothing else of the crate.

/// Earliest accepted event time: 2000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;
/// Latest accepted event time (exclusive): 2100-01-01T00:00:00Z.
pub const MAX_EVENT_TIME_MS: i64 = 4_102_444_800_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn digits(bytes: &[u8], at: usize, count: usize) -> Option<u32> {
    let slice = bytes.get(at..at + count)?;
    let mut value = 0u32;
    for &b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (b - b'0') as u32;
    }
    Some(value)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction](Z|±HH:MM)`; a missing offset
/// means UTC (Parquet and CSV exports often omit it). Fractions beyond
/// milliseconds are truncated.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)? as i64;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 3 {
                millis = millis * 10 + (b[at] - b'0') as i64;
            }
            at += 1;
        }
        let fraction_digits = at - start;
        if fraction_digits == 0 {
            return None;
        }
        for _ in fraction_digits..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let oh = digits(b, at + 1, 2)? as i64;
            let om = digits(b, at + 4, 2)? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = oh * 60 + om;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour as i64 * 3600 + minute as i64 * 60 + second.min(59) as i64 - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision,
/// e.g. `2026-11-26T10:00:00.000Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        year,
        month,
        day,
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        millis
    )
}

/// Whether an event time is inside the accepted range.
pub fn in_accepted_range(ms: i64) -> bool {
    (MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_examples() {
        assert_eq!(parse_rfc3339_ms("2026-11-26T10:00:00.123Z"), Some(1_795_687_200_123));
        assert_eq!(parse_rfc3339_ms("2026-11-27T08:00:00Z"), Some(1_795_766_400_000));
        assert_eq!(parse_rfc3339_ms("2026-11-26T11:00:00.123+01:00"), parse_rfc3339_ms("2026-11-26T10:00:00.123Z"));
        assert_eq!(parse_rfc3339_ms("2026-11-26T10:00:00.1234567Z"), Some(1_795_687_200_123));
        assert_eq!(parse_rfc3339_ms("2026-11-26T10:00:00"), Some(1_795_687_200_000));
    }

    #[test]
    fn agrees_with_chrono_over_many_dates() {
        let mut ms: i64 = MIN_EVENT_TIME_MS;
        while ms < MAX_EVENT_TIME_MS {
            let text = format_rfc3339_ms(ms);
            let chrono_ms = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
            assert_eq!(chrono_ms, ms, "{text}");
            assert_eq!(parse_rfc3339_ms(&text), Some(ms), "{text}");
            ms += 86_400_000 * 13 + 3_723_456;
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00Zjunk",
            "2026-11-26T10:00:00+0100",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
