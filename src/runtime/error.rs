//! How the daemon's run ended.

/// How `run` ended, mapped to the process exit code by the CLI.
#[derive(Debug)]
pub enum RunError {
    /// Bad configuration (exit 2).
    Config(String),
    /// Runtime failure the operator must fix (exit 1).
    Fatal(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(m) | RunError::Fatal(m) => f.write_str(m),
        }
    }
}
