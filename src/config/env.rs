//! `${VAR}` expansion of the config text, done before the YAML is parsed.
//!
//! Syntax:
//! - `${NAME}`: the value of environment variable `NAME`; an error naming the
//!   variable and the line when it is not set (set but empty expands to "").
//! - `${NAME:-default}`: `default` when `NAME` is unset *or empty* (as in
//!   POSIX shells). The default is taken literally (no nesting).
//! - `$${NAME}`: the literal text `${NAME}` (escape).
//! - A `$` not followed by `{` is left alone.
//!
//! `NAME` is `[A-Za-z_][A-Za-z0-9_]*`. Lines whose first non-blank character
//! is `#` (YAML full-line comments) are not expanded, so a commented-out line
//! may mention a variable that is not set. Values are substituted verbatim:
//! quote the reference in YAML (`token: "${GITHUB_TOKEN}"`) when the value
//! may contain YAML syntax such as `: `, ` #` or a leading `*`.
//! A value containing a newline shifts the line numbers that later parse
//! errors report.

/// Why expansion failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${var}` without default and `var` is not set.
    Unset { var: String, line: usize },
    /// Malformed reference (unterminated, bad name, nesting).
    Syntax { line: usize, message: String },
}

/// Expands `text` using the process environment.
pub(crate) fn expand_env(text: &str) -> Result<String, ExpandError> {
    expand_with(text, |name| std::env::var(name).ok())
}

/// Expands `text` with `lookup` giving each variable's value (`None` = unset).
pub(crate) fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let at = &rest[pos..];
            if let Some(after) = at.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = at.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    return Err(ExpandError::Syntax {
                        line: line_no,
                        message: "unterminated `${` (expected `}` on the same line; \
                                  write `$${` for a literal `${`)"
                            .to_string(),
                    });
                };
                let body = &after[..end];
                let (name, default) = match body.find(":-") {
                    Some(i) => (&body[..i], Some(&body[i + 2..])),
                    None => (body, None),
                };
                if !is_valid_name(name) {
                    return Err(ExpandError::Syntax {
                        line: line_no,
                        message: format!(
                            "invalid environment variable reference `${{{body}}}` \
                             (expected ${{NAME}} or ${{NAME:-default}}, NAME = [A-Za-z_][A-Za-z0-9_]*)"
                        ),
                    });
                }
                if default.is_some_and(|d| d.contains("${")) {
                    return Err(ExpandError::Syntax {
                        line: line_no,
                        message: format!("nested `${{...}}` in the default of `${{{name}:-...}}` is not supported"),
                    });
                }
                let value = match (lookup(name), default) {
                    (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_string(),
                    (None, None) => {
                        return Err(ExpandError::Unset { var: name.to_string(), line: line_no });
                    }
                };
                out.push_str(&value);
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &at[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_plain_default_and_escape() {
        let text = "a: ${A}\nb: ${NOPE:-dflt}\nc: ${EMPTY:-e}\nd: x${EMPTY}y\ne: $${A}\nf: $5 $x $\n";
        let got = expand_with(text, lookup).unwrap();
        assert_eq!(got, "a: alpha\nb: dflt\nc: e\nd: xy\ne: ${A}\nf: $5 $x $\n");
    }

    #[test]
    fn default_may_be_empty_or_contain_colons() {
        let got = expand_with("u: ${NOPE:-}\nv: ${NOPE:-http://h:1/p}\n", lookup).unwrap();
        assert_eq!(got, "u: \nv: http://h:1/p\n");
    }

    #[test]
    fn unset_names_var_and_line() {
        let err = expand_with("a: 1\n\nb: ${MISSING_ONE}\n", lookup).unwrap_err();
        assert_eq!(err, ExpandError::Unset { var: "MISSING_ONE".into(), line: 3 });
    }

    #[test]
    fn full_line_comments_are_not_expanded() {
        let text = "  # token: ${MISSING}\na: ${A}\n";
        assert_eq!(expand_with(text, lookup).unwrap(), "  # token: ${MISSING}\na: alpha\n");
    }

    #[test]
    fn syntax_errors() {
        for bad in ["a: ${A\n", "a: ${}\n", "a: ${1X}\n", "a: ${A B}\n", "a: ${X:-${A}}\n"] {
            match expand_with(bad, lookup) {
                Err(ExpandError::Syntax { line: 1, .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
