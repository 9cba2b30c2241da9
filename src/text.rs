//! Text helpers for messages people read: long tokens shortened so an
//! error never echoes a huge value, and the closest valid name suggested
//! for a misspelt one. A leaf of the module graph: it uses nothing else of
//! the crate.

/// Shortens every whitespace-separated token of `message` longer than 120
/// characters to its first 60 and a note of its length, so an error about a
/// 1 MB key or name stays readable (and never echoes a huge value).
pub fn shorten_long_tokens(message: &str) -> std::borrow::Cow<'_, str> {
    const LONG: usize = 120;
    if !message.split_whitespace().any(|t| t.chars().count() > LONG) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(256);
    let mut rest = message;
    while !rest.is_empty() {
        let start = rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let token = &rest[..end];
        let chars = token.chars().count();
        if chars > LONG {
            let cut = token.char_indices().nth(60).map_or(token.len(), |(i, _)| i);
            out.push_str(&token[..cut]);
            out.push_str(&format!("…[{chars} characters]"));
        } else {
            out.push_str(token);
        }
        rest = &rest[end..];
    }
    std::borrow::Cow::Owned(out)
}

/// The edit distance between two names (Levenshtein, on characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely
/// misspelling (same letters in another case, or a few edits away).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    // Among equally distant names, one that contains the letters as typed
    // (`rnd` in `round`) is the likelier meaning.
    let contains_letters = |candidate: &str| {
        let mut letters = candidate.chars();
        lower.chars().all(|c| letters.any(|l| l == c))
    };
    let mut best: Option<((usize, bool), &str)> = None;
    for candidate in candidates {
        let score = (edit_distance(&lower, candidate), !contains_letters(candidate));
        if best.is_none_or(|(best_score, _)| score < best_score) {
            best = Some((score, candidate));
        }
    }
    let length = name.chars().count();
    let allowed = if length <= 2 { 1 } else { (length / 3).clamp(2, 3) };
    best.filter(|((distance, _), _)| *distance <= allowed).map(|(_, candidate)| candidate)
}

/// ` (did you mean 'x'?)`, or nothing when no name is close.
pub fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>, quote: char) -> String {
    match closest(name, candidates) {
        Some(candidate) => format!("; did you mean {quote}{candidate}{quote}?"),
        None => String::new(),
    }
}

/// `1 error`, `2 errors`: a count and its noun, singular for one (for
/// messages people read).
pub fn count_of(count: u64, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_name_is_suggested_only_when_it_is_close() {
        assert_eq!(closest("featur", ["model", "feature"]), Some("feature"));
        assert_eq!(closest("Mean", ["mean", "max"]), Some("mean"));
        assert_eq!(closest("throughput", ["mean", "max", "count"]), None);
        assert_eq!(suggestion("featur", ["feature"], '`'), "; did you mean `feature`?");
        assert_eq!(suggestion("throughput", ["feature"], '`'), "");
    }

    #[test]
    fn only_long_tokens_are_shortened() {
        assert_eq!(shorten_long_tokens("short words stay"), "short words stay");
        let long = "x".repeat(200);
        let message = format!("key {long} end");
        assert_eq!(shorten_long_tokens(&message), format!("key {}…[200 characters] end", "x".repeat(60)));
    }
}
