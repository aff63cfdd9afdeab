//! Configuration: `chatetl.yaml` (sources, warehouse, defaults) and one job file per metric.
//!
//! Owns: the validated types every other layer reads ([`Config`], [`SourceConfig`],
//! [`Warehouse`], [`Job`]), secrets that never print ([`Secret`]), and loading
//! (`load.rs`: YAML with file:line:col errors, `${VAR}` / `${VAR:-default}` interpolation, strict
//! keys, every validation error at once). Raw file shapes live in `load/raw.rs`; nothing outside
//! this module sees them.
//!
//! To add a source kind: a variant of [`SourceKind`] (and its credentials in [`SourceConfig`]) and
//! its rows in `load/settings.rs`; to add an endpoint: see `endpoint.rs`, the registry.

mod endpoint;
mod load;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::NaiveDate;
use chrono_tz::Tz;

pub use endpoint::{AggregateBy, Endpoint, EndpointInfo, EndpointParams, WINDOWED_KEYS, WorkflowCondition};
pub use load::{ConfigError, Diagnostic, RESERVED_COLUMNS, load, load_with_env};

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
    /// Jobs by name.
    pub jobs: BTreeMap<String, Job>,
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

/// One upstream account.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    /// `https://api.giosg.com` (no trailing slash).
    pub base_url: String,
    pub credentials: Credentials,
    /// giosg: the organization whose data is read (empty for other kinds).
    pub organization_id: String,
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
}

/// Where loaded windows go.
#[derive(Debug, Clone)]
pub enum Warehouse {
    /// Tables in `schema`; state in the `chatetl` schema of the same database.
    Postgres { url: Secret, schema: String },
    /// `<path>/<table>/date=…/` partitions; state in `<path>/_chatetl/`.
    Parquet { path: PathBuf },
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
    /// windows; 1 when granularity is `all`).
    pub max_windows_per_request: u32,
    /// Seconds a window must have ended before a scheduled run loads it (default 0).
    pub settle_secs: u64,
    /// Scheduled runs also load the current, incomplete window; it is replaced on later ticks
    /// and never moves the watermark (default false).
    pub include_partial: bool,
    /// The endpoint's own parameters.
    pub params: EndpointParams,
}
