//! Raw file shapes: what serde reads from `chatetl.yaml` and job files, before validation.
//!
//! Every value keeps its location ([`Spanned`]) so that validation can point at it. Keys the
//! validated types require are still `Option` here: a missing key is then reported together with
//! every other problem of the file instead of stopping the parse. Scalars are read as text
//! ([`String`], [`RawNumber`]) so that `${VAR}` can be expanded before they are interpreted;
//! `filters` is read as a located YAML tree ([`Node`]) so that its problems point inside it.
//!
//! To add a key: a `///`-documented field here, and its check in `settings.rs` or `job.rs`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, MessageFormatter, Spanned};

/// `chatetl.yaml`. No `Debug`: it holds secrets in clear.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// IANA zone of jobs that do not name one; default `UTC`.
    pub time_zone: Option<Spanned<String>>,
    /// Folder of the job files, relative to the config file's folder; default `jobs`.
    pub jobs_dir: Option<Spanned<String>>,
    /// Upstream accounts by name; required, at least one.
    pub sources: Option<Spanned<BTreeMap<String, Spanned<RawSource>>>>,
    /// Where loaded windows go; required.
    pub warehouse: Option<Spanned<RawWarehouse>>,
}

/// Just what the job files depend on, read without strictness when `chatetl.yaml` itself does
/// not parse (so the job files are still checked).
#[derive(Debug, Deserialize)]
pub(super) struct RawConfigOutline {
    /// As [`RawConfig::jobs_dir`].
    pub jobs_dir: Option<Spanned<String>>,
    /// The source names of [`RawConfig::sources`].
    pub sources: Option<BTreeMap<String, de::IgnoredAny>>,
}

/// One entry of `sources`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    /// Which vendor API: `giosg`, `thulium` or `comm100`; required.
    pub kind: Option<Spanned<String>>,
    /// Whether its jobs run; default true. A disabled source's jobs are validated but neither
    /// run nor scheduled, and its credentials are not needed.
    pub enabled: Option<Spanned<bool>>,
    /// `http://` or `https://` root of the API; a trailing slash is dropped; required.
    pub base_url: Option<Spanned<String>>,
    /// giosg: the root of the real-time reports (api-docs 000 serves them from
    /// `service.giosg.com`); default: `base_url`.
    pub realtime_base_url: Option<Spanned<String>>,
    /// giosg: the API token (`Authorization: Token …`); comm100: the bearer token
    /// (`Authorization: Bearer …`); required for both, never printed.
    pub token: Option<Spanned<String>>,
    /// giosg: the organization whose data is read; required for giosg.
    pub organization_id: Option<Spanned<String>>,
    /// Thulium: the API user (basic auth); required for thulium.
    pub username: Option<Spanned<String>>,
    /// Thulium: the API password (basic auth); required for thulium, never printed.
    pub password: Option<Spanned<String>>,
    /// Thulium: the account's IANA zone (dates are sent and `series` read in it); required.
    pub time_zone: Option<Spanned<String>>,
    /// Requests in flight at once, at least 1; default 4.
    pub concurrency: Option<Spanned<RawNumber>>,
    /// Requests started per second, more than 0; default 5.
    pub requests_per_second: Option<Spanned<RawNumber>>,
    /// Per-request timeout, at least 1; default 60.
    pub timeout_secs: Option<Spanned<RawNumber>>,
    /// Retries after the first attempt on 429/5xx/connection errors; default 5.
    pub max_retries: Option<Spanned<RawNumber>>,
    /// Longest wait between attempts (also caps `Retry-After`), at least 1; default 60.
    pub max_retry_delay_secs: Option<Spanned<RawNumber>>,
    /// Largest response body read, in bytes, at least 1024; default 67108864 (64 MiB). A larger
    /// answer fails its window.
    pub max_response_bytes: Option<Spanned<RawNumber>>,
    /// Most pages one paged request may take, at least 1; default 1000. More fail the window.
    pub max_pages: Option<Spanned<RawNumber>>,
    /// giosg: query shapes 001 does not show that this account is assumed to accept (checked by
    /// `chatetl probe`); default: none.
    pub assume: Option<Spanned<RawAssume>>,
}

/// `assume` of a giosg source.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssume {
    /// Events queries may cover several windows with `day` / `hour` buckets (the default of
    /// events jobs' `bucketed`); default false.
    pub bucketed_events: Option<Spanned<bool>>,
    /// Events and workflow queries may carry several aggregations; default false.
    pub fused_events: Option<Spanned<bool>>,
}

/// `warehouse`: `kind: parquet` with `path`, or `kind: postgres` with `url` and `schema`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarehouse {
    /// `parquet` or `postgres`; required.
    pub kind: Option<Spanned<String>>,
    /// parquet: the folder of the tables, relative to the config file's folder, or an object
    /// store URL (`s3://`, `gs://`, `az://`, `file://`); required.
    pub path: Option<Spanned<String>>,
    /// postgres: the connection URL (`postgres://…`); required, never printed.
    pub url: Option<Spanned<String>>,
    /// postgres: the schema of the tables, a lowercase SQL identifier; default `public`.
    pub schema: Option<Spanned<String>>,
    /// parquet on an object store (`path: s3://…`): the PostgreSQL URL of its state; required
    /// there, never printed.
    pub state: Option<Spanned<String>>,
}

/// A job file: one metric loaded window by window into one table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    /// Job name, a lowercase identifier; default: the file name without extension.
    pub name: Option<Spanned<String>>,
    /// What the metric means (becomes the table comment); required, non-empty.
    pub description: Option<Spanned<String>>,
    /// Name of a source of `chatetl.yaml`; required.
    pub source: Option<Spanned<String>>,
    /// The API endpoint read: `chat_sessions` (giosg); required.
    pub endpoint: Option<Spanned<String>>,
    /// The unit loaded and replaced: `hour` or `day`; required.
    pub window: Option<Spanned<String>>,
    /// Bucket size asked of the API: `all`, `hour` or `day` (hour windows: `all` or `hour`);
    /// default: the window.
    pub granularity: Option<Spanned<String>>,
    /// Row scopes (`org`, `team`, `user`), non-empty, no repeats; default `[org]`.
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    /// Room ids to restrict to; default none (all rooms).
    pub rooms: Option<Spanned<Vec<Spanned<String>>>>,
    /// The metrics, one column each; required, non-empty.
    pub aggregations: Option<Spanned<Vec<Spanned<RawAggregation>>>>,
    /// giosg filter, exactly as the API takes it; chatetl adds `scope` and `room_ids` itself.
    pub filters: Option<Spanned<Node>>,
    /// First local date of history (`2024-01-01`); required.
    pub start: Option<Spanned<String>>,
    /// Complete windows loaded again on every incremental run; default 1.
    pub lookback_windows: Option<Spanned<RawNumber>>,
    /// Cron expression with six fields, seconds first (`0 15 6 * * *`); default: none.
    pub schedule: Option<Spanned<String>>,
    /// Seconds a window must have ended before a scheduled run loads it; default 0.
    pub settle_secs: Option<Spanned<RawNumber>>,
    /// Also load the current, incomplete window on scheduled runs (replaced on later ticks);
    /// default false.
    pub include_partial: Option<Spanned<bool>>,
    /// Output table, a lowercase identifier; default: the job name.
    pub table: Option<Spanned<String>>,
    /// IANA zone of the windows; default: `time_zone` of `chatetl.yaml`.
    pub time_zone: Option<Spanned<String>>,
    /// Consecutive windows one request may cover, at least 1; default 31 for day windows and
    /// 168 for hour windows; must be 1 (or left out) when granularity is `all`.
    pub max_windows_per_request: Option<Spanned<RawNumber>>,
    /// `windowed` (default) or `snapshot`; must match the endpoint.
    pub kind: Option<Spanned<String>>,
    /// events: one request covers up to `max_windows_per_request` windows with buckets of the
    /// window's length; default: the source's `assume.bucketed_events`. workflow: only `false`.
    pub bucketed: Option<Spanned<bool>>,
    /// events: the body's `vendor`; default `com.giosg.chat`.
    pub vendor: Option<Spanned<String>>,
    /// events: the body's `sources`; default `[trusted]`.
    pub event_sources: Option<Spanned<Vec<Spanned<String>>>>,
    /// workflow: the `where` conditions (`field`, `search`); required, non-empty.
    #[serde(rename = "where")]
    pub conditions: Option<Spanned<Vec<Spanned<RawCondition>>>>,
    /// chat_summary: `aggregate_by`; default: the window (`hour` or `day`).
    pub aggregate_by: Option<Spanned<String>>,
    /// chat_summary: `user_logins[]`; default none (every user).
    pub user_logins: Option<Spanned<Vec<Spanned<String>>>>,
    /// chat_summary: `chat_queue_ids[]`; default none (every queue).
    pub chat_queue_ids: Option<Spanned<Vec<Spanned<RawNumber>>>>,
    /// chat_summary: `sum_users`; default false.
    pub sum_users: Option<Spanned<bool>>,
    /// chat_summary: `response_threshold` in seconds; default: not sent (the API's 20).
    pub response_threshold: Option<Spanned<RawNumber>>,
    /// chat_summary: one request per login of `user_logins`, so rows carry the login; default false.
    pub split_by_login: Option<Spanned<bool>>,
    /// chat_summary `limit` (1..=100, default 100); agents `pageSize` (1..=1000, default 100).
    pub page_size: Option<Spanned<RawNumber>>,
    /// realtime_rooms: `include_shared`; default false.
    pub include_shared: Option<Spanned<bool>>,
    /// realtime_users: `user_id` (sent comma-delimited); default none (every user).
    pub user_ids: Option<Spanned<Vec<Spanned<String>>>>,
    /// agents: `departmentId`; default none.
    pub department_id: Option<Spanned<String>>,
    /// agents: `includeStatusDistribution`; default false.
    pub include_status_distribution: Option<Spanned<bool>>,
}

/// One `where` condition of a workflow job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    /// The field matched (`category`, `action`, `partner_organization_ids`); required.
    pub field: Option<Spanned<String>>,
    /// The value it must equal (`""` matches an empty field); required.
    pub search: Option<Spanned<String>>,
}

/// One entry of a job's `aggregations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregation {
    /// `count`, `sum`, `avg` or `hyperUnique`; required.
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    /// The dimension aggregated; required except for `count`.
    pub field: Option<Spanned<String>>,
    /// Output column, a lowercase identifier unique within the job; required.
    pub column: Option<Spanned<String>>,
}

/// A number as written: a YAML number, or text (such as `${VAR}`) parsed after expansion.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawNumber {
    Int(i128),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawNumber, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNumber, E> {
                Ok(RawNumber::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNumber, E> {
                Ok(RawNumber::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// Any YAML value, each part with its location.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    /// Entries in file order (duplicate keys are a parse error).
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    /// The value of `key` when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Spanned<Node>> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
                Node::deserialize(deserializer)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A YAML or serde problem: where, and what (without the location).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses one YAML document into `T`, keeping the location of its top-level mapping.
pub(super) fn parse<T: DeserializeOwned>(text: &str) -> Result<Spanned<T>, ParseError> {
    let blank = text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---");
    if blank {
        let message = "the file is empty (expected a mapping of settings)".to_string();
        return Err(ParseError { line: 1, column: 1, message });
    }
    // Booleans are YAML 1.2's `true` and `false` only: `enabled: "no"` or `include_partial: on`
    // is an error, not a quiet YAML 1.1 reading.
    let options = serde_saphyr::options! { with_snippet: false, strict_booleans: true };
    serde_saphyr::from_str_with_options::<Spanned<T>>(text, options).map_err(|error| {
        let mut inner = &error;
        while let serde_saphyr::Error::AliasError { error, .. } | serde_saphyr::Error::WithSnippet { error, .. } = inner
        {
            inner = error;
        }
        let message = serde_saphyr::UserMessageFormatter.format_message(inner).into_owned();
        let (line, column) = error.location().map_or((1, 1), position);
        ParseError { line, column, message }
    })
}

/// 1-based line and column of `location` (1:1 when it is unknown).
pub(super) fn position(location: Location) -> (usize, usize) {
    if location == Location::UNKNOWN {
        return (1, 1);
    }
    let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).max(1);
    (clamp(location.line()), clamp(location.column()))
}
