//! MiniJinja templates as notifiers and rules use them: the environments
//! notifier settings render in (URLs percent-encode every interpolated
//! value), and the checks that find, when a template loads, variables and
//! filters that do not exist. A leaf of the module graph but for the
//! name suggestions of [`crate::text`].

use std::collections::BTreeSet;

use crate::text::suggestion;

/// The environment notifier templates are rendered in: undefined values
/// render as nothing.
pub fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env
}

/// The environment a URL template is rendered in: every interpolated value
/// (`{{ … }}`) is percent-encoded — all but `A–Z a–z 0–9 - _ . ~` — so a
/// value from event data (a segment, a feature name, a label) stays inside
/// the path segment or query value it was put in: it cannot add a `/`, `?`,
/// `#`, `&`, `=`, `@` or `:`, or a space. Literal template text (including
/// `${ENV}` expanded into it) is kept as written. `| safe` is not honoured:
/// there is no way to interpolate raw text into a URL.
pub fn url_template_env() -> minijinja::Environment<'static> {
    let mut env = template_env();
    env.set_formatter(|out, _state, value| {
        let text = if value.is_undefined() || value.is_none() { String::new() } else { value.to_string() };
        out.write_str(&url_encode(&text))
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "writing the rendered URL failed"))
    });
    env
}

/// Renders a URL template ([`url_template_env`]) and refuses a result whose
/// path has a `.` or `..` segment: URL parsers resolve those (even written
/// `%2e`), so a value such as a feature named `..` would otherwise move the
/// request to another path.
pub fn render_url(template: &str, context: &minijinja::Value) -> Result<String, String> {
    let url = url_template_env().render_str(template, context).map_err(|e| e.to_string())?;
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path = &rest[path_start..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dot_segment = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    if dot_segment {
        return Err("the rendered URL has a \".\" or \"..\" path segment; not sent".into());
    }
    Ok(url)
}

/// Query-string / form encoding of one component.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The filters MiniJinja ships, less the one-letter aliases `d` and `e`
/// (only used to suggest a name: whether a filter exists is asked of the
/// environment itself).
const BUILTIN_FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "default",
    "dictsort",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "zip",
];

/// The filter names a template's source applies (`{{ x | round(2) }}`,
/// `{% if a | length %}`), read from its tags with string literals
/// skipped.
fn filter_names(source: &str) -> BTreeSet<String> {
    let bytes = source.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut in_tag = false;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let byte = bytes[i];
        let next = bytes.get(i + 1).copied();
        if !in_tag {
            in_tag = byte == b'{' && matches!(next, Some(b'{' | b'%'));
            i += if in_tag { 2 } else { 1 };
            continue;
        }
        if let Some(q) = quote {
            if byte == b'\\' {
                i += 2;
                continue;
            }
            if byte == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match byte {
            b'\'' | b'"' => quote = Some(byte),
            b'}' | b'%' if next == Some(b'}') => {
                in_tag = false;
                i += 2;
                continue;
            }
            b'|' => {
                let start = i + 1 + bytes[i + 1..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                let length = bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'.')
                    .count();
                if length > 0 {
                    names.insert(source[start..start + length].to_string());
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Problems with a compiled template of `environment`: variables that are
/// neither in `variables` nor globals, and filters the environment does
/// not have.
pub fn template_problems(
    environment: &minijinja::Environment<'_>,
    template_name: &str,
    variables: &[&str],
) -> Vec<String> {
    let Ok(template) = environment.get_template(template_name) else { return Vec::new() };
    compiled_template_problems(environment, &template, variables)
}

/// [`template_problems`] of a template already compiled in `environment`.
pub fn compiled_template_problems(
    environment: &minijinja::Environment<'_>,
    template: &minijinja::Template<'_, '_>,
    variables: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    let globals: Vec<&str> = environment.globals().map(|(name, _)| name).collect();
    let mut undeclared: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    undeclared.sort();
    for name in undeclared {
        if variables.contains(&name.as_str()) || globals.contains(&name.as_str()) {
            continue;
        }
        problems.push(format!(
            "unknown variable `{name}`: it would render as nothing{} (the variables are {})",
            suggestion(&name, variables.iter().copied(), '`'),
            variables.join(", ")
        ));
    }
    for name in filter_names(template.source()) {
        // Applying the filter to nothing tells whether it exists: only an
        // unknown one fails with `UnknownFilter` (others may complain
        // about their arguments).
        let probe = environment.render_str(&format!("{{{{ none | {name} }}}}"), ());
        if probe.is_err_and(|e| e.kind() == minijinja::ErrorKind::UnknownFilter) {
            problems
                .push(format!("unknown filter `{name}`{}", suggestion(&name, BUILTIN_FILTERS.iter().copied(), '`')));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_read_from_tags_only_and_outside_strings() {
        let names = filter_names("a | b {{ x | round(3) }} {% if y|lengthh %}{{ '|not' ~ z |  upper }}{% endif %}");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["lengthh", "round", "upper"]);
    }

    #[test]
    fn a_misspelt_filter_is_suggested_its_builtin_name() {
        assert_eq!(crate::text::closest("rnd", BUILTIN_FILTERS.iter().copied()), Some("round"));
    }
}
