//! Logging set-up: one `tracing` subscriber for every subcommand.
//!
//! Owns: the `--log-format pretty|json` and `-v`/`-q` mapping to a level filter (`RUST_LOG`
//! overrides it). Logs go to stderr so stdout stays for command output.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, fields included.
    Json,
}

/// The level for a verbosity (`-v` count minus `-q` count): 0 is info.
pub fn level(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, verbosity: i8) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("chatetl={}", level(verbosity))));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
