//! Configuration: `chatetl.yaml` (sources, warehouse, defaults) and one job file per metric.
//!
//! Owns: the validated types every other layer reads ([`Config`], [`SourceConfig`],
//! [`Warehouse`], [`Job`]), secrets that never print ([`Secret`]), and loading
//! (`load.rs`: YAML with file:line:col errors, `${VAR}` / `${VAR:-default}` interpolation, strict
//! keys, every validation error at once). Raw file shapes live in `load/raw.rs`; nothing outside
//! this module sees them.
//!
//! A source's credentials are needed only to contact it: [`load_deferred`] records unset ones
//! per source ([`SourceConfig::unset`]) for the commands that contact it to ask for
//! ([`Config::require_credentials`]); [`load`] requires those of every enabled source a job names.
//! Jobs of a source with `enabled: false` are kept apart ([`Config::disabled_jobs`]). Also here:
//! choosing jobs by glob and source (`select.rs`) and the rule that a Thulium job's windows fit
//! the account's zone (`account_zone.rs`), which `validate` applies.
//!
//! To add a source kind: a variant of [`SourceKind`] (and its credentials in [`SourceConfig`]) and
//! its rows in `load/settings.rs`; to add an endpoint: see `endpoint.rs`, the registry.

mod account_zone;
mod endpoint;
mod load;
mod select;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::NaiveDate;
use chrono_tz::Tz;

pub use account_zone::{BucketSplit, bucket_split};
pub use endpoint::{AggregateBy, Endpoint, EndpointInfo, EndpointParams, WINDOWED_KEYS, WorkflowCondition};
pub use load::{ConfigError, Diagnostic, RESERVED_COLUMNS, load, load_deferred, load_deferred_with_env, load_with_env};
pub use select::{Selection, select};

use crate::query::{AggregationKind, Filter, Granularity};

/// A credential: printed and logged as `***`, never written anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it (an HTTP header, a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The validated `chatetl.yaml` plus every job file of its jobs directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    pub warehouse: Warehouse,
    /// Zone of jobs that do not name one.
    pub default_time_zone: Tz,
    /// Where job files are read from (resolved against the config file's folder).
    pub jobs_dir: PathBuf,
    /// The jobs of enabled sources, by name: what `run` and `schedule` load.
    pub jobs: BTreeMap<String, Job>,
    /// The jobs of sources with `enabled: false`, by name: validated, listed, never run.
    pub disabled_jobs: BTreeMap<String, Job>,
    /// Problems that load but would fail every window of a job (a Thulium job whose buckets do
    /// not align with the account's zone): `validate` reports them; a run fails the windows.
    pub window_failures: Vec<JobDiagnostic>,
}

/// A problem of one job, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDiagnostic {
    pub job: String,
    pub diagnostic: Diagnostic,
}

impl Config {
    /// Job `name`, enabled or disabled, and whether it is enabled.
    pub fn any_job(&self, name: &str) -> Option<(&Job, bool)> {
        self.jobs.get(name).map(|j| (j, true)).or_else(|| self.disabled_jobs.get(name).map(|j| (j, false)))
    }

    /// Every job, enabled and disabled, by name.
    pub fn all_jobs(&self) -> BTreeMap<&str, (&Job, bool)> {
        let enabled = self.jobs.values().map(|j| (j.name.as_str(), (j, true)));
        enabled.chain(self.disabled_jobs.values().map(|j| (j.name.as_str(), (j, false)))).collect()
    }

    /// The unset credential variables of every enabled source in `sources` (each once, sources
    /// in name order, variables in file order).
    pub fn unset_variables<'a>(&'a self, sources: impl IntoIterator<Item = &'a str>) -> Vec<&'a UnsetVariable> {
        let names: std::collections::BTreeSet<&str> = sources.into_iter().collect();
        names
            .into_iter()
            .filter_map(|name| self.sources.get(name))
            .filter(|s| s.enabled)
            .flat_map(|s| s.unset.iter())
            .collect()
    }

    /// Fails, naming each unset variable with its file, line and column, unless every enabled
    /// source in `sources` can be contacted (what `run`, `backfill` and `schedule` need).
    pub fn require_credentials<'a>(&'a self, sources: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
        let unset = self.unset_variables(sources);
        if unset.is_empty() {
            return Ok(());
        }
        Err(ConfigError { diagnostics: unset.into_iter().map(|u| u.at.clone()).collect() })
    }
}

/// Which vendor API a source talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// giosg: `Authorization: Token`, an organization.
    Giosg,
    /// Thulium: HTTP basic auth, an account time zone.
    Thulium,
    /// Comm100: `Authorization: Bearer`.
    Comm100,
}

/// How a source authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Token <key>` (giosg).
    Token(Secret),
    /// `Authorization: Bearer <token>` (Comm100).
    Bearer(Secret),
    /// HTTP basic auth (Thulium).
    Basic { username: String, password: Secret },
}

/// A variable a source needs only to be contacted (its token, user name, password or
/// organization) that is not set: the source loads, and commands that contact it refuse to
/// ([`Config::require_credentials`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVariable {
    /// `GIOSG_TOKEN`.
    pub variable: String,
    /// Where it is read (`sources.giosg.token: environment variable `GIOSG_TOKEN` is not set …`).
    pub at: Diagnostic,
}

/// One upstream account.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// `enabled` (default true): a disabled source's jobs are in [`Config::disabled_jobs`].
    pub enabled: bool,
    /// `https://api.giosg.com` (no trailing slash).
    pub base_url: String,
    /// giosg: the root of the real-time reports (`realtime_base_url`, default `base_url`;
    /// api-docs 000 serves them from `https://service.giosg.com`). Other kinds: `base_url`.
    pub realtime_base_url: String,
    /// How requests authenticate. Where a part's variable is unset (see [`SourceConfig::unset`])
    /// that part is empty: nothing may contact the source until it is set.
    pub credentials: Credentials,
    /// giosg: the organization whose data is read (empty for other kinds; the reference as
    /// written, `${GIOSG_ORGANIZATION_ID}`, while its variable is unset, so `plan` shows it).
    pub organization_id: String,
    /// The variables of `credentials` and `organization_id` that are unset; empty when the
    /// source can be contacted.
    pub unset: Vec<UnsetVariable>,
    /// The environment variables the credentials are read from (`GIOSG_TOKEN`), as written in
    /// chatetl.yaml; named when the upstream refuses them. Empty for literal credentials.
    pub credential_variables: Vec<String>,
    /// Thulium: the account's zone, in which `date_from`/`date_to` are read and `series` is
    /// written. `None` for other kinds.
    pub account_time_zone: Option<Tz>,
    /// Requests in flight at once (default 4).
    pub concurrency: usize,
    /// Requests per second (default 5).
    pub requests_per_second: f64,
    /// Per-request timeout (default 60).
    pub timeout_secs: u64,
    /// Retries after the first attempt on 429/5xx/connection errors (default 5).
    pub max_retries: u32,
    /// Longest wait between attempts, also the cap on `Retry-After` (default 60).
    pub max_retry_delay_secs: u64,
    /// Largest response body read, in bytes (default 64 MiB); a larger answer fails at once.
    pub max_response_bytes: u64,
    /// Most pages one paged request may take (default 1000).
    pub max_pages: u32,
    /// giosg: what the source's events and workflow endpoints are assumed to accept beyond
    /// api-docs 001's bodies (`assume`); both off by default, and `chatetl probe` checks both.
    pub assume: SourceAssumptions,
}

/// `assume` of a giosg source: query shapes api-docs 001 never shows for events and workflow,
/// which a source opts into once `chatetl probe` has confirmed them (`docs/assumptions.md`,
/// `giosg.bucketed_events` and `giosg.fused_events`). Both false by default and for other kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceAssumptions {
    /// `bucketed_events`: events queries may cover up to `max_windows_per_request` windows with
    /// `day` / `hour` buckets instead of one `granularity: all` query per window (the default
    /// of the source's events jobs' `bucketed`; workflow queries have no buckets).
    pub bucketed_events: bool,
    /// `fused_events`: events and workflow queries may carry several aggregations, so jobs that
    /// differ only in their aggregations can share one request.
    pub fused_events: bool,
}

/// Where loaded windows go.
#[derive(Debug, Clone)]
pub enum Warehouse {
    /// Tables in `schema`; state in the `chatetl` schema of the same database.
    Postgres { url: Secret, schema: String },
    /// `<path>/<table>/year=…/month=…/` partitions; state in `<path>/_chatetl/`.
    Parquet { path: PathBuf },
    /// The same partitions in an object store (`url`: `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `file:///…`); state in the `chatetl` schema of the PostgreSQL database at `state`.
    Lake { url: String, state: Secret },
}

/// The unit a job loads and replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowUnit {
    Hour,
    Day,
    /// A snapshot job's window: the second starting at the tick that captured it.
    Snapshot,
}

/// Whether a job loads history window by window or captures current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Windows of history, replaced as a whole (`kind: windowed`, the default).
    Windowed,
    /// The endpoint's current state, appended per tick with `captured_at` (`kind: snapshot`).
    Snapshot,
}

/// A giosg row scope; chatetl adds the `scope` selector and groups team scope by `team_id` and
/// user scope by `user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Org,
    Team,
    User,
}

impl Scope {
    /// The value of the `scope` dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Team => "team",
            Scope::User => "user",
        }
    }
    /// The dimension this scope is grouped by, if any.
    pub fn group_by(self) -> Option<&'static str> {
        match self {
            Scope::Org => None,
            Scope::Team => Some("team_id"),
            Scope::User => Some("user_id"),
        }
    }
}

/// One metric of a job: an API aggregation on one field, stored in `column`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAggregation {
    pub kind: AggregationKind,
    /// The dimension aggregated (`count` may name one, as api-docs 001 does, or none).
    pub field: Option<String>,
    /// The output column (a lowercase SQL identifier).
    pub column: String,
}

impl JobAggregation {
    /// The metric name in the API response (`count`, `sales_sum`, `visitor_ids_hyper_unique`).
    pub fn metric_name(&self) -> String {
        match (self.kind, &self.field) {
            (AggregationKind::Count, _) => "count".to_string(),
            (AggregationKind::Sum, Some(f)) => format!("{f}_sum"),
            (AggregationKind::Avg, Some(f)) => format!("{f}_avg"),
            (AggregationKind::HyperUnique, Some(f)) => format!("{f}_hyper_unique"),
            // events aggregate their value: `count`, `sum`, `avg`.
            (k, None) => k.api_name().to_string(),
        }
    }
}

/// A validated job: one metric, loaded window by window into one table.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// The job file.
    pub file: PathBuf,
    /// Becomes the table comment.
    pub description: String,
    /// Name of a source in [`Config::sources`].
    pub source: String,
    pub endpoint: Endpoint,
    /// Windowed or snapshot (follows the endpoint; the file says `kind: snapshot` explicitly).
    pub kind: JobKind,
    /// `Snapshot` for snapshot jobs.
    pub window: WindowUnit,
    /// Bucket size sent to the API: `all`, `hour` or `day`, never longer than the window.
    pub granularity: Granularity,
    /// At least one, no repeats, in file order.
    pub scopes: Vec<Scope>,
    /// Room ids; when non-empty a `room_ids` selector (an `or` of them) is added.
    pub rooms: Vec<String>,
    pub aggregations: Vec<JobAggregation>,
    /// Passed through to the API after structural validation.
    pub filters: Option<Filter>,
    /// First local date of history (snapshot jobs: the Unix epoch, unused).
    pub start: NaiveDate,
    /// Complete windows loaded again on every incremental run (restated metrics).
    pub lookback_windows: u32,
    /// Cron expression (six fields, seconds first) for the scheduler.
    pub schedule: Option<String>,
    /// Output table (a lowercase SQL identifier).
    pub table: String,
    pub time_zone: Tz,
    /// Consecutive windows one request may cover (default 31 for day windows, 168 for hour
    /// windows; 1 when granularity is `all` and the job is not [`Job::bucketed`]).
    pub max_windows_per_request: u32,
    /// Requests cover up to `max_windows_per_request` windows, asking for buckets of the window's
    /// length (`day` / `hour`) although `granularity` is `all`, and the answer is split back per
    /// window. events: the job's `bucketed`, default the source's `assume.bucketed_events`;
    /// chat_sessions: day windows (001 documents day buckets). Transport only: the rows
    /// are those of one `all` request per window, so it is not part of the definition. Always
    /// false for other endpoints (workflow has no buckets: `src/source/giosg/workflow.rs`).
    pub bucketed: bool,
    /// Seconds a window must have ended before a scheduled run loads it (default 0).
    pub settle_secs: u64,
    /// Scheduled runs also load the current, incomplete window; it is replaced on later ticks
    /// and never moves the watermark (default false).
    pub include_partial: bool,
    /// The endpoint's own parameters.
    pub params: EndpointParams,
}

/// Jobs for unit tests, loaded from job-file texts as a user's files would be.
#[cfg(test)]
pub(crate) mod testing {
    use super::Job;

    /// The jobs of `files` (file name, text) beside a chatetl.yaml with a giosg source
    /// (`https://service.giosg.com`) and a Thulium one (account zone Europe/Warsaw), default zone
    /// Europe/Helsinki.
    pub(crate) fn jobs(files: &[(&str, &str)]) -> std::collections::BTreeMap<String, Job> {
        config(files).jobs
    }

    /// The giosg source of that chatetl.yaml (`https://service.giosg.com`, organization `o`).
    pub(crate) fn giosg_source() -> super::SourceConfig {
        config(&[]).sources.remove("giosg").unwrap()
    }

    /// The whole configuration [`jobs`] reads.
    fn config(files: &[(&str, &str)]) -> super::Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::write(
            dir.path().join("chatetl.yaml"),
            "time_zone: Europe/Helsinki\nsources:\n  giosg:\n    kind: giosg\n    base_url: https://service.giosg.com\n    token: t\n    organization_id: o\n  thulium:\n    kind: thulium\n    base_url: https://x.thulium.com\n    username: u\n    password: p\n    time_zone: Europe/Warsaw\nwarehouse:\n  kind: parquet\n  path: wh\n",
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("jobs").join(name), text).unwrap();
        }
        super::load(&dir.path().join("chatetl.yaml")).unwrap()
    }

    /// The job of one file's `text` (without `name`: it is called `j`).
    pub(crate) fn job(text: &str) -> Job {
        jobs(&[("j.yaml", text)]).remove("j").unwrap()
    }
}
