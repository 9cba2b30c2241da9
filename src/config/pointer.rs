//! JSON Pointer (RFC 6901) parsing.

/// Parses a JSON Pointer (RFC 6901) into its decoded reference tokens.
///
/// `""` is the whole document and yields no tokens; otherwise the pointer
/// must start with `/`. Within a token `~1` decodes to `/` and `~0` to `~`;
/// any other use of `~` is an error. The URI-fragment form (`#/a/b`) is not
/// accepted.
///
/// ```
/// use driftwatch::config::parse_json_pointer;
/// assert_eq!(parse_json_pointer("/features").unwrap(), vec!["features"]);
/// assert_eq!(parse_json_pointer("/a~1b/c~0d").unwrap(), vec!["a/b", "c~d"]);
/// assert_eq!(parse_json_pointer("").unwrap(), Vec::<String>::new());
/// assert!(parse_json_pointer("features").is_err());
/// ```
pub fn parse_json_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = p.strip_prefix('/') else {
        if p.starts_with("#/") || p == "#" {
            return Err(format!(
                "not a JSON Pointer (must start with '/'; the URI fragment form {p:?} is not supported)"
            ));
        }
        return Err(format!("not a JSON Pointer (must start with '/'): {p:?}"));
    };
    body.split('/').map(|raw| decode_token(raw).map_err(|e| format!("invalid JSON Pointer {p:?}: {e}"))).collect()
}

fn decode_token(raw: &str) -> Result<String, String> {
    if !raw.contains('~') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            Some(other) => {
                return Err(format!("invalid escape `~{other}` (only ~0 and ~1 are allowed)"));
            }
            None => return Err("`~` at the end of a token (only ~0 and ~1 are allowed)".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc6901_examples() {
        assert_eq!(parse_json_pointer("/foo/0").unwrap(), vec!["foo", "0"]);
        assert_eq!(parse_json_pointer("/").unwrap(), vec![""]);
        assert_eq!(parse_json_pointer("/a~1b").unwrap(), vec!["a/b"]);
        assert_eq!(parse_json_pointer("/m~0n").unwrap(), vec!["m~n"]);
        // ~01 is "~1" literally, not "/"
        assert_eq!(parse_json_pointer("/~01").unwrap(), vec!["~1"]);
        assert_eq!(parse_json_pointer("/a//b").unwrap(), vec!["a", "", "b"]);
        assert_eq!(parse_json_pointer("/ü b").unwrap(), vec!["ü b"]);
    }

    #[test]
    fn rejects_bad_pointers() {
        assert!(parse_json_pointer("score").unwrap_err().starts_with("not a JSON Pointer (must start with '/')"));
        assert!(parse_json_pointer("#/score").is_err());
        assert!(parse_json_pointer("/a~2").unwrap_err().contains("~2"));
        assert!(parse_json_pointer("/a~").is_err());
        assert!(parse_json_pointer("/a~/b").is_err());
    }
}
