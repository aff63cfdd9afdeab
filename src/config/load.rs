//! Loading `chatetl.yaml` and job files (placeholder interface; the loader replaces this file).

use std::fmt;
use std::path::{Path, PathBuf};

use super::Config;

/// One problem in a configuration or job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found while loading, in file order.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", d.file.display(), d.line, d.column, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads and validates `path` and every job file of its jobs directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        diagnostics: vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "loader not built yet".into(),
        }],
    })
}
