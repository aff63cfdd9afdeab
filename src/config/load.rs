//! Loading `chatetl.yaml` and its job files into a validated [`Config`].
//!
//! Owns: reading the files, the checks that span files (job names, tables), and the error report
//! ([`ConfigError`]: every problem of every file at once, each as `file:line:col: message`).
//! Each file is parsed into the raw shapes of `raw.rs` (strict keys, locations kept), its string
//! values expanded (`${VAR}`, `${VAR:-default}`, `interpolate.rs`), then validated into the types
//! of [`crate::config`]: `settings.rs` for `chatetl.yaml`, `job.rs` and `filters.rs` for job files,
//! with the checks they share in `ctx.rs`.
//!
//! A file that does not parse still lets the others be checked: when `chatetl.yaml` itself does
//! not, its `jobs_dir` and source names are read leniently so that the job files are checked too.

mod ctx;
mod filters;
mod interpolate;
mod job;
mod params;
mod raw;
mod settings;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

pub use job::RESERVED_COLUMNS;

use super::{Config, Job, JobDiagnostic};
use ctx::{Ctx, Secrets, escape_controls};
use raw::{RawConfig, RawConfigOutline, RawJob};
use settings::{JobDefaults, JobsDir, Settings};

/// One problem in a configuration or job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line of the offending value (of its mapping when a key is missing).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// A lowercase phrase, starting with the field path when there is one
    /// (`aggregations[0].field: …`).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown as they are, except that neither a file name nor a message (which may quote a
        // library's message about a value) can rewrite the terminal or add a line.
        let file = escape_controls(&self.file.display().to_string());
        write!(f, "{file}:{}:{}: {}", self.line, self.column, escape_controls(&self.message))
    }
}

/// Every problem found while loading, file by file (`chatetl.yaml`, then the job files by name),
/// in line order within a file.
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
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads and validates `path` and every job file of its jobs directory, expanding `${VAR}` from
/// the process environment. Every enabled source that a job file names must have its credential
/// variables set (what running every job needs, as the daemon's reload does); see
/// [`load_deferred`] for commands that contact fewer sources or none.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with `${VAR}` looked up by `env` (`Some` when set, possibly to `""`).
pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    load_inner(path, env, true)
}

/// Like [`load`], except that unset credential variables (a source's `token`, `username`,
/// `password` and `organization_id`) are never errors: each [`SourceConfig`] lists its own
/// ([`SourceConfig::unset`]) and a command that contacts the source asks for them with
/// [`Config::require_credentials`].
///
/// [`SourceConfig`]: crate::config::SourceConfig
/// [`SourceConfig::unset`]: crate::config::SourceConfig::unset
/// [`Config::require_credentials`]: crate::config::Config::require_credentials
pub fn load_deferred(path: &Path) -> Result<Config, ConfigError> {
    load_deferred_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load_deferred`] with `${VAR}` looked up by `env`.
pub fn load_deferred_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    load_inner(path, env, false)
}

/// Loads; with `strict`, the unset credential variables of every enabled source a job file
/// names are errors.
fn load_inner(path: &Path, env: &dyn Fn(&str) -> Option<String>, strict: bool) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut ctx = Ctx::new(path, env);
    let mut secrets = Secrets::new();
    let settings = read(&mut ctx, path).and_then(|text| match raw::parse::<RawConfig>(&text) {
        Ok(raw) => {
            secrets = settings::secrets(&raw.value);
            ctx = Ctx::new(path, env).with_secrets(&secrets);
            Some(settings::config(&mut ctx, &raw, base))
        }
        Err(error) => {
            ctx.parse_error(error);
            outline(&text, base, env)
        }
    });
    let Some(Settings { sources, warehouse, defaults, jobs_dir, unset }) = settings else {
        return Err(finish(vec![ctx.diagnostics], &secrets, env));
    };

    // One list of diagnostics per file: chatetl.yaml's goes first once the jobs dir is read.
    let mut report = Vec::new();
    let mut loaded = Loaded::default();
    if let Some(JobsDir { path: dir, at: dir_at, shown }) = &jobs_dir {
        match job_files(dir) {
            Ok((files, unusable)) => {
                report.extend(unusable);
                loaded = load_jobs(&files, &defaults, env, &secrets, &mut report);
            }
            Err(error) => {
                let message = format!("cannot read the jobs directory {shown}: {error}");
                ctx.error(*dir_at, "jobs_dir", message);
            }
        }
    }
    if strict {
        let enabled = |name: &str| defaults.sources.as_ref().and_then(|s| s.get(name)).is_none_or(|i| i.enabled);
        for (name, variables) in &unset {
            if loaded.named_sources.contains(name) && enabled(name) {
                ctx.diagnostics.extend(variables.iter().map(|v| v.at.clone()));
            }
        }
    }
    report.insert(0, ctx.diagnostics);

    match (sources, warehouse, defaults.time_zone, jobs_dir) {
        (Some(sources), Some(warehouse), Some(default_time_zone), Some(JobsDir { path: jobs_dir, .. }))
            if report.iter().all(Vec::is_empty) =>
        {
            let Loaded { jobs, window_failures, .. } = loaded;
            let (jobs, disabled_jobs) = jobs.into_iter().partition(|(_, job)| sources[&job.source].enabled);
            Ok(Config {
                path: path.to_path_buf(),
                sources,
                warehouse,
                default_time_zone,
                jobs_dir,
                jobs,
                disabled_jobs,
                window_failures,
            })
        }
        _ => Err(finish(report, &secrets, env)),
    }
}

/// What the job files gave.
#[derive(Default)]
struct Loaded {
    /// The valid jobs by name, enabled or not.
    jobs: BTreeMap<String, Job>,
    /// The sources job files name (valid files or not).
    named_sources: BTreeSet<String>,
    window_failures: Vec<JobDiagnostic>,
}

/// The text of `path`, or `None` after reporting why it cannot be read.
fn read(ctx: &mut Ctx, path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            ctx.error(Location::UNKNOWN, "", format!("cannot read the file: {error}"));
            None
        }
    }
}

/// When `chatetl.yaml` does not parse strictly: what the job files need, if it can be read at all.
/// Problems found here are already covered by the strict parse's error, so they are not reported.
fn outline(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Option<Settings> {
    let raw = raw::parse::<RawConfigOutline>(text).ok()?;
    let mut quiet = Ctx::new(Path::new(""), env);
    let jobs_dir = settings::jobs_dir(&mut quiet, raw.referenced, raw.value.jobs_dir.as_ref(), base);
    let sources =
        raw.value.sources.map(|names| names.into_keys().map(|name| (name, settings::SourceInfo::unknown())).collect());
    let defaults = JobDefaults { sources, time_zone: None };
    Some(Settings { sources: None, warehouse: None, defaults, jobs_dir, unset: BTreeMap::new() })
}

/// The `*.yaml` and `*.yml` files of `dir` (not hidden ones), sorted by file name, and one
/// diagnostic list for each such name that is not a file (a dangling symbolic link, a folder, a
/// socket): a job that silently disappeared would be worse than the error.
fn job_files(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<Vec<Diagnostic>>)> {
    let mut files = Vec::new();
    let mut unusable = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !yaml || name.starts_with('.') {
            continue;
        }
        let message = match (std::fs::metadata(&path), path.symlink_metadata()) {
            (Ok(meta), _) if meta.is_file() => {
                files.push(path);
                continue;
            }
            (Ok(meta), _) if meta.is_dir() => {
                "is a folder, not a job file (rename it, or move it out of the jobs folder)".to_string()
            }
            (Ok(_), _) => "is not a regular file (a job file must be one)".to_string(),
            (Err(_), Ok(link)) if link.file_type().is_symlink() => {
                "is a symbolic link that leads to no file (its target does not exist); fix or remove it".to_string()
            }
            (Err(error), _) => format!("cannot read the file: {error}"),
        };
        unusable.push((path.clone(), Diagnostic { file: path, line: 1, column: 1, message }));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    unusable.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok((files, unusable.into_iter().map(|(_, d)| vec![d]).collect()))
}

/// Loads every job file, pushing one diagnostics list per file onto `report`; duplicate names and
/// tables are reported in the later file.
fn load_jobs(
    files: &[PathBuf],
    defaults: &JobDefaults,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: &Secrets,
    report: &mut Vec<Vec<Diagnostic>>,
) -> Loaded {
    let mut loaded = Loaded::default();
    let mut jobs = BTreeMap::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut tables: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for file in files {
        let mut ctx = Ctx::new(file, env).with_secrets(secrets);
        let outcome = read(&mut ctx, file).and_then(|text| match raw::parse::<RawJob>(&text) {
            Ok(raw) => Some(job::job(&mut ctx, &raw, file, defaults)),
            Err(error) => {
                ctx.parse_error(error);
                None
            }
        });
        if let Some(outcome) = outcome {
            loaded.named_sources.extend(outcome.source.clone());
            let mut unique = true;
            if let Some(name) = &outcome.name {
                if let Some(first) = names.get(&name.value) {
                    let message = format!("job {} is already defined in {}", name.shown, first.display());
                    ctx.error(name.at, "name", message);
                    unique = false;
                } else {
                    names.insert(name.value.clone(), file.clone());
                }
            }
            if let (Some(table), Some(name)) = (&outcome.table, &outcome.name)
                && unique
            {
                if let Some((first_job, first_file)) = tables.get(&table.value) {
                    let message = format!(
                        "table {} is already written by job {first_job} ({})",
                        table.shown,
                        first_file.display()
                    );
                    ctx.error(table.at, "table", message);
                } else {
                    tables.insert(table.value.clone(), (name.shown.clone(), file.clone()));
                }
            }
            match outcome.job {
                Some(job) if unique => {
                    if let Some(diagnostic) = outcome.window_failure {
                        loaded.window_failures.push(JobDiagnostic { job: job.name.clone(), diagnostic });
                    }
                    jobs.insert(job.name.clone(), job);
                }
                // Every way to get no job reports why, or stems from chatetl.yaml's own problems.
                None if ctx.diagnostics.is_empty() && defaults.time_zone.is_some() => {
                    ctx.error(Location::UNKNOWN, "", "internal error: the job was not built; please report this");
                }
                _ => {}
            }
        }
        report.push(ctx.diagnostics);
    }
    loaded.jobs = jobs;
    loaded
}

/// The error of `report` (one list per file), each file's problems in line order.
///
/// No message should hold the value of a variable of `secrets` (the checks name variables, not
/// their values, and refuse secrets outside credentials); in case one still does, say from a
/// library's message, it is replaced by the variable's name.
fn finish(report: Vec<Vec<Diagnostic>>, secrets: &Secrets, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
    let values: Vec<(String, String)> = secrets
        .keys()
        .filter_map(|name| Some((name.clone(), env(name)?)))
        .filter(|(_, value)| value.trim().chars().count() >= MIN_SCRUBBED_CHARS)
        .collect();
    let diagnostics = report
        .into_iter()
        .flat_map(|mut file| {
            file.sort_by_key(|d| (d.line, d.column));
            file
        })
        .map(|mut d| {
            for (name, value) in &values {
                if d.message.contains(value.trim()) {
                    d.message = d.message.replace(value.trim(), &format!("(the value of ${{{name}}})"));
                }
            }
            d
        })
        .collect();
    ConfigError { diagnostics }
}

/// Shortest secret value [`finish`] looks for (a shorter one would match ordinary words).
const MIN_SCRUBBED_CHARS: usize = 4;
