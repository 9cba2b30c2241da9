//! The error type of config loading and validation.

use std::path::PathBuf;

/// Everything that can go wrong while loading a config.
///
/// `Display` names the origin (the config file, or the name given to
/// [`Config::from_yaml_str`](super::Config::from_yaml_str)) in front of every
/// message; [`ConfigError::Invalid`] prints one line per semantic error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid YAML, does not have the expected shape, has an
    /// unknown key, a duplicate key, a value of the wrong type, or a bad
    /// `${...}` reference.
    #[error("{origin}: {message}")]
    Parse {
        /// The config file (or the origin name given for in-memory text).
        origin: String,
        /// What went wrong; starts with `line N, column M: ` when the
        /// position is known.
        message: String,
        /// 1-based line of the problem, when known.
        line: Option<u64>,
    },

    /// A `${VAR}` reference names an environment variable that is not set
    /// and has no `${VAR:-default}`.
    #[error(
        "{origin}: line {line}: environment variable `{var}` is not set and has no default \
         (write ${{{var}:-default}} to give one)"
    )]
    Env {
        /// The config file (or origin name).
        origin: String,
        /// The variable's name.
        var: String,
        /// 1-based line of the reference.
        line: usize,
    },

    /// The config parsed but is semantically wrong. Every problem found is
    /// listed, each naming its field path (e.g. `models[1].fields.score: ...`).
    #[error("{}", render_invalid(origin, errors))]
    Invalid {
        /// The config file (or origin name).
        origin: String,
        /// One message per problem, each starting with the field path.
        errors: Vec<String>,
    },
}

fn render_invalid(origin: &str, errors: &[String]) -> String {
    errors.iter().map(|e| format!("{origin}: {e}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// The individual messages of this error without the origin prefix: the
    /// list for [`ConfigError::Invalid`], a single message otherwise.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { errors, .. } => errors.clone(),
            ConfigError::Parse { message, .. } => vec![message.clone()],
            ConfigError::Io { source, .. } => vec![source.to_string()],
            ConfigError::Env { var, line, .. } => {
                vec![format!("line {line}: environment variable `{var}` is not set")]
            }
        }
    }
}
