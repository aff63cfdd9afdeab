//! Logging set-up: one `tracing` subscriber for every subcommand.
//!
//! Owns: the `--log-format pretty|json` and `-v`/`-q` mapping to a level filter (`RUST_LOG`
//! overrides it). Logs go to stderr so stdout stays for command output, each line written with
//! any progress bar cleared and redrawn after it (`runner::progress::suspend`), so no line leaves
//! a stale frame of the bar on screen.

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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| AboveTheBar).with_ansi(ansi);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Stderr, written with the progress bars cleared (a whole log line arrives in one write).
struct AboveTheBar;

impl std::io::Write for AboveTheBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::runner::progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
