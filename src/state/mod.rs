//! Job state: watermarks, window loads, failed windows and run history, the rule that moves a
//! watermark, and job definitions.
//!
//! Owns: the state records both warehouses keep ([`JobState`], [`WindowLoad`], [`WindowFailure`],
//! [`RunRecord`], [`JobStatus`]); [`advance_watermark`]: the watermark only moves forward, over
//! windows whose loads are committed and contiguous from it; and a job's [`Definition`] (the
//! canonical document of what its rows mean, and its hash) with [`compare`], which tells added
//! aggregations ([`Change::Added`]: columns added in place) from any other change
//! ([`Change::Other`]: a rebuild). The Postgres warehouse keeps these rows in the `chatetl`
//! schema keyed by target (`migrations/`), written in the data's transaction (`sink::postgres`); the
//! Parquet warehouse keeps them in the SQLite database `<path>/_chatetl/state.db`
//! (`sink::parquet`), committed after the data files are in place.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{JobKind, WindowUnit};
use crate::error::ErrorKind;

/// What a warehouse remembers of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Hash of the definition the history was loaded with (None: never loaded).
    pub definition_hash: Option<String>,
    /// The canonical document behind that hash ([`Definition::document`]); None for state written
    /// before it was kept, until the job runs once with an unchanged definition.
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
    /// Value columns added to the table by [`Change::Added`] since the history was (re)built:
    /// windows loaded before (their load's definition hash differs) hold null there until
    /// `run --outdated` reloads them.
    #[serde(default)]
    pub added_columns: Vec<String>,
    /// Every window ending at or before this instant is loaded.
    pub watermark: Option<DateTime<Utc>>,
}

/// A job's definition: the canonical document of what its rows mean, and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub hash: String,
    pub document: serde_json::Value,
}

/// How a job's definition differs from the one its history was loaded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The same meaning (or no history yet).
    Same,
    /// Only aggregations were added, each a new value column (named here): the old rows keep
    /// their meaning, and the new column is null where they were loaded before it existed.
    Added(Vec<String>),
    /// Anything else: the old rows mean something else, so the history must be rebuilt.
    Other,
}

/// What changed from the stored definition (`stored_hash`, and its document when the warehouse
/// kept it) to `current`.
pub fn compare(stored_hash: Option<&str>, stored: Option<&serde_json::Value>, current: &Definition) -> Change {
    let Some(hash) = stored_hash else { return Change::Same };
    if hash == current.hash {
        return Change::Same;
    }
    let Some(stored) = stored else { return Change::Other };
    let aggregations = |doc: &serde_json::Value| doc["aggregations"].as_array().cloned().unwrap_or_default();
    let (old, new) = (aggregations(stored), aggregations(&current.document));
    let strip = |doc: &serde_json::Value| {
        let mut doc = doc.clone();
        doc["aggregations"] = serde_json::Value::Null;
        doc
    };
    if strip(stored) != strip(&current.document) || !old.iter().all(|a| new.contains(a)) || new.len() == old.len() {
        return Change::Other;
    }
    let old_columns: Vec<&serde_json::Value> = old.iter().map(|a| &a[2]).collect();
    let added: Vec<String> =
        new.iter().filter(|a| !old.contains(a)).map(|a| a[2].as_str().unwrap_or_default().to_string()).collect();
    // A new aggregation reusing an old column's name changes what that column holds.
    if added.iter().any(|c| old_columns.iter().any(|o| o.as_str() == Some(c.as_str()))) {
        return Change::Other;
    }
    Change::Added(added)
}

/// A window whose last load attempt failed (and that no load has replaced since).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowFailure {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub run_id: String,
    pub kind: ErrorKind,
    /// The whole message (`job …, window …: cause`).
    pub error: String,
    pub failed_at: DateTime<Utc>,
    /// Failed attempts since the window was last loaded.
    pub attempts: u32,
}

/// The last successful load of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowLoad {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub rows: u64,
    pub requests: u32,
    pub run_id: String,
    pub definition_hash: String,
    pub loaded_at: DateTime<Utc>,
}

/// One run of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job: String,
    /// `run`, `backfill`, `demo` or `schedule`.
    pub kind: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `partial` (some windows failed), `failed`, `interrupted` (stopped
    /// by a signal or a shutdown before every window started) or `died` (its process ended
    /// without finishing it; set by the next run of the job).
    pub status: String,
    pub windows_planned: u32,
    pub windows_loaded: u32,
    pub windows_skipped: u32,
    pub windows_failed: u32,
    pub rows: u64,
    pub requests: u32,
    pub retries: u32,
    /// The message of the first failure, if any.
    pub error: Option<String>,
    /// Its kind (credentials, upstream_unavailable, …), when the run failed.
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
}

/// What `chatetl status` shows for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: String,
    pub watermark: Option<DateTime<Utc>>,
    pub definition_hash: Option<String>,
    pub windows_loaded: u64,
    pub rows_loaded: u64,
    /// Windows whose last load attempt failed ([`WindowFailure`]): `run --failed` reloads them.
    #[serde(default)]
    pub windows_failed: u64,
    /// Loaded windows whose load's definition hash differs from the job's stored one: loaded
    /// before [`JobState::added_columns`] were added. `run --outdated` reloads them.
    #[serde(default)]
    pub windows_outdated: u64,
    #[serde(default)]
    pub added_columns: Vec<String>,
    /// When the job's last run that loaded every window it planned (`succeeded`) finished.
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    pub last_run: Option<RunRecord>,
    /// The error of the last run that had one.
    pub last_error: Option<String>,
    /// Its kind.
    #[serde(default)]
    pub last_error_kind: Option<ErrorKind>,
}

/// A fingerprint of what a job's rows mean: endpoint, window, granularity, scopes, rooms,
/// aggregations, filters, endpoint parameters and zone (not its schedule, history start or
/// lookback). Stored with the history so a changed definition is detected.
///
/// It hashes a canonical JSON document written out key by key with the names job files use
/// (`chat_sessions`, `day`, `aggregate_by`), never Rust's `Debug` output, so renaming a type or a
/// variant in the code never marks a job as changed. serde_json writes object keys sorted.
pub fn definition_hash(job: &crate::config::Job) -> String {
    definition(job).hash
}

/// The canonical document of `job`'s meaning and its hash ([`definition_hash`]).
pub fn definition(job: &crate::config::Job) -> Definition {
    let window = match job.window {
        WindowUnit::Hour => "hour",
        WindowUnit::Day => "day",
        WindowUnit::Snapshot => "snapshot",
    };
    let mut canonical = meaning(job);
    canonical["version"] = 2.into();
    canonical["endpoint"] = job.endpoint.name().into();
    canonical["window"] = window.into();
    if let Some(params) = job.params.canonical() {
        canonical["params"] = params;
    }
    Definition { hash: sha256_hex(&canonical.to_string()), document: canonical }
}

/// The hash chatetl stored before [`definition_hash`] became canonical (it hashed `Debug`
/// output). Frozen: used only to recognise such stored hashes and replace them with the current
/// one (`Sink::adopt_definition_hash`), so no job turns CHANGED by the upgrade.
pub fn legacy_definition_hash(job: &crate::config::Job) -> String {
    let mut canonical = meaning(job);
    canonical["endpoint"] = format!("{:?}", job.endpoint).into();
    canonical["window"] = format!("{:?}", job.window).into();
    if job.params != crate::config::EndpointParams::ChatSessions {
        canonical["params"] = serde_json::Value::String(format!("{:?}", job.params));
    }
    sha256_hex(&canonical.to_string())
}

/// The parts of a job's meaning both hashing schemes write the same way.
fn meaning(job: &crate::config::Job) -> serde_json::Value {
    let aggregations: Vec<_> =
        job.aggregations.iter().map(|a| serde_json::json!([a.kind.api_name(), a.field, a.column])).collect();
    serde_json::json!({
        "granularity": job.granularity,
        "scopes": job.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "rooms": job.rooms,
        "aggregations": aggregations,
        "filters": job.filters,
        "time_zone": job.time_zone.name(),
    })
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The new watermark after loads: from `current` (or `history_start`), step over each loaded
/// window that starts exactly where the previous one ended. Never moves backwards; `None` while
/// nothing contiguous from history start is loaded.
pub fn advance_watermark(
    current: Option<DateTime<Utc>>,
    history_start: DateTime<Utc>,
    loads: &BTreeMap<DateTime<Utc>, DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let mut at = current.unwrap_or(history_start);
    let mut moved = false;
    // A watermark inside a loaded window (a window definition that changed) resumes from it.
    while let Some(end) = loads.get(&at) {
        at = *end;
        moved = true;
    }
    if moved { Some(at) } else { current }
}

/// The new watermark after a commit: a windowed job's walks from `current` (or `history_start`)
/// over the contiguous `loads` ([`advance_watermark`]); a snapshot job's is the end of its latest
/// complete snapshot, `latest_complete` (the end of the last complete window committed).
pub fn next_watermark(
    kind: JobKind,
    history_start: DateTime<Utc>,
    current: Option<DateTime<Utc>>,
    loads: &BTreeMap<DateTime<Utc>, DateTime<Utc>>,
    latest_complete: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match kind {
        JobKind::Windowed => advance_watermark(current, history_start, loads),
        JobKind::Snapshot => current.max(latest_complete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, d, 0, 0, 0).unwrap()
    }

    /// A chat_sessions job and a Thulium one, loaded from job files.
    fn jobs() -> Vec<crate::config::Job> {
        let a = "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nstart: 2024-01-01\naggregations:\n  - {type: count, field: chat_session_id, column: chats}\n";
        let b = "description: d\nsource: thulium\nendpoint: chat_summary\nwindow: day\nstart: 2024-01-01\ntime_zone: Europe/Warsaw\n";
        crate::config::testing::jobs(&[("a.yaml", a), ("b.yaml", b)]).into_values().collect()
    }

    fn sha(text: &str) -> String {
        sha256_hex(text)
    }

    #[test]
    fn the_legacy_hash_is_the_old_debug_scheme_and_the_new_one_uses_job_file_names() {
        let jobs = jobs();
        // What the previous release hashed, written out: Debug names, params as a Debug string.
        let a = r#"{"aggregations":[["count","chat_session_id","chats"]],"endpoint":"ChatSessions","filters":null,"granularity":"day","rooms":[],"scopes":["org"],"time_zone":"Europe/Helsinki","window":"Day"}"#;
        assert_eq!(legacy_definition_hash(&jobs[0]), sha(a));
        let b = r#"{"aggregations":[],"endpoint":"ChatSummary","filters":null,"granularity":"all","params":"ChatSummary { aggregate_by: Day, user_logins: [], chat_queue_ids: [], sum_users: false, response_threshold: None, split_by_login: false, page_size: 100 }","rooms":[],"scopes":["org"],"time_zone":"Europe/Warsaw","window":"Day"}"#;
        assert_eq!(legacy_definition_hash(&jobs[1]), sha(b));
        // The current scheme names things as job files do, so no Rust rename can change it.
        let a2 = r#"{"aggregations":[["count","chat_session_id","chats"]],"endpoint":"chat_sessions","filters":null,"granularity":"day","rooms":[],"scopes":["org"],"time_zone":"Europe/Helsinki","version":2,"window":"day"}"#;
        assert_eq!(definition_hash(&jobs[0]), sha(a2));
        let b2 = r#"{"aggregations":[],"endpoint":"chat_summary","filters":null,"granularity":"all","params":{"aggregate_by":"day","chat_queue_ids":[],"page_size":100,"response_threshold":null,"split_by_login":false,"sum_users":false,"user_logins":[]},"rooms":[],"scopes":["org"],"time_zone":"Europe/Warsaw","version":2,"window":"day"}"#;
        assert_eq!(definition_hash(&jobs[1]), sha(b2));
    }

    #[test]
    fn added_aggregations_are_told_from_other_changes() {
        let base = "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nstart: 2024-01-01\naggregations:\n  - {type: count, field: chat_session_id, column: chats}\n";
        let job = crate::config::testing::job;
        let old = definition(&job(base));
        let stored = |d: &Definition| (Some(d.hash.clone()), Some(d.document.clone()));
        let (hash, doc) = stored(&old);
        let cmp = |text: &str| compare(hash.as_deref(), doc.as_ref(), &definition(&job(text)));
        assert_eq!(cmp(base), Change::Same);
        let added = format!("{base}  - {{type: sum, field: sales, column: sales}}\n");
        assert_eq!(cmp(&added), Change::Added(vec!["sales".to_string()]));
        // Anything else: a filter, a removed or renamed aggregation, a reused column name.
        assert_eq!(cmp(&base.replace("start: 2024-01-01", "start: 2024-01-01\nrooms: [r1]")), Change::Other);
        assert_eq!(cmp(&base.replace("column: chats", "column: all_chats")), Change::Other);
        let reused = base.replace("count, field: chat_session_id", "hyperUnique, field: visitor_ids");
        assert_eq!(cmp(&reused), Change::Other);
        // The history start and schedule are not part of the meaning.
        assert_eq!(cmp(&base.replace("2024-01-01", "2023-06-01")), Change::Same);
        // A stored hash without its document (an earlier release's state) cannot be compared.
        assert_eq!(compare(hash.as_deref(), None, &definition(&job(&added))), Change::Other);
        assert_eq!(compare(None, None, &old), Change::Same, "no history yet");
    }

    #[test]
    fn watermark_moves_only_over_contiguous_loads() {
        let mut loads = BTreeMap::new();
        loads.insert(t(2), t(3));
        assert_eq!(advance_watermark(None, t(1), &loads), None, "day 1 is missing");
        loads.insert(t(1), t(2));
        loads.insert(t(4), t(5));
        assert_eq!(advance_watermark(None, t(1), &loads), Some(t(3)), "stops at the gap on day 3");
        loads.insert(t(3), t(4));
        assert_eq!(advance_watermark(Some(t(3)), t(1), &loads), Some(t(5)));
        assert_eq!(advance_watermark(Some(t(9)), t(1), &loads), Some(t(9)), "never backwards");
    }
}
