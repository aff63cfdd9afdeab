//! `chatetl probe`: checks what a real account answers against every assumption the clients make
//! where the vendors' docs are silent.
//!
//! Owns: [`ASSUMPTIONS`] (the one list of those assumptions: what is assumed, where in the code,
//! what to change if an answer contradicts it; `docs/assumptions.md` lists the same ids, and a
//! test keeps the two in step), and [`probe`]: for each enabled source and each endpoint a job
//! uses, one small authenticated request (the first request of the job's latest complete windows,
//! or of a snapshot now; only the first page of a paged answer; for giosg's bucketed reports a
//! second one about a week in 2001, the only way to see empty buckets), whose raw answer is read against
//! each assumption of that endpoint: [`Verdict::Confirmed`], [`Verdict::Contradicted`] (with what
//! was seen and the fix), or [`Verdict::NotObservable`] (the answer cannot tell, and why).
//!
//! It writes nothing to the warehouse. To add an assumption: an entry in [`ASSUMPTIONS`], its
//! check in [`check`], and its section in `docs/assumptions.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::{Endpoint, Job, JobAggregation, JobKind, Scope, WindowUnit};
use crate::error::ErrorKind;
use crate::plan::{self, Window};
use crate::query::{AggregationKind, Granularity};
use crate::row::{Row, Value as Cell};
use crate::runner::Runner;
use crate::source::FetchError;
use crate::source::http::HttpError;

/// One assumption about an undocumented part of an answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Assumption {
    /// Stable id (`giosg.count_metric_name`), also the heading in `docs/assumptions.md`.
    pub id: &'static str,
    /// The endpoints whose answers can show it.
    #[serde(skip)]
    pub endpoints: &'static [Endpoint],
    /// What chatetl assumes.
    pub statement: &'static str,
    /// Where in the code the assumption is made.
    pub code: &'static str,
    /// What to change when an answer contradicts it.
    pub fix: &'static str,
}

const GIOSG_REPORTS: &[Endpoint] = &[Endpoint::ChatSessions, Endpoint::Events, Endpoint::Workflow];
const GIOSG_BUCKETED: &[Endpoint] = &[Endpoint::ChatSessions, Endpoint::Events];
/// The endpoints whose query shapes beyond 001's (buckets, several aggregations) are probed by
/// comparing answers ([`compare_verdicts`]).
const GIOSG_EVENT_QUERIES: &[Endpoint] = &[Endpoint::Events, Endpoint::Workflow];

/// Every assumption `probe` checks.
pub const ASSUMPTIONS: &[Assumption] = &[
    Assumption {
        id: "giosg.report_shape",
        endpoints: GIOSG_REPORTS,
        statement: "a report answers {\"fields\": [{\"name\", \"type\"}], \"data\": [[...]]}, one value per field in each data row (002 shows it for chat_sessions; 001 shows no answer for events or workflow)",
        code: "src/query.rs (ChatSessionsResponse), src/source/giosg/chat_sessions.rs and workflow.rs (parse)",
        fix: "chatetl cannot read these answers: send this report to the maintainers; the response types in src/query.rs must follow the real shape",
    },
    Assumption {
        id: "giosg.metric_names",
        endpoints: GIOSG_REPORTS,
        statement: "each aggregation's metric is named count, <field>_sum, <field>_avg or <field>_hyper_unique (002's only example is visitor_ids_hyper_unique); events name theirs count, sum or avg; workflow <field>_avg",
        code: "src/config/mod.rs (JobAggregation::metric_name); answers are read by name in src/source/giosg/chat_sessions.rs and workflow.rs",
        fix: "when the answer has as many metric fields as the job has aggregations chatetl maps them in order, so loads still work; to read them by name, change JobAggregation::metric_name to the names seen",
    },
    Assumption {
        id: "giosg.count_metric_name",
        endpoints: GIOSG_BUCKETED,
        statement: "the metric of {\"type\": \"count\", \"fields\": [\"chat_session_id\"]} is named `count` (by analogy, it could be chat_session_id_count or chat_session_id)",
        code: "src/config/mod.rs (JobAggregation::metric_name)",
        fix: "none needed for loading (chatetl also accepts <field>_count and <field>, then the order of the metrics); to make the name seen the first choice, change JobAggregation::metric_name",
    },
    Assumption {
        id: "giosg.empty_buckets",
        endpoints: GIOSG_BUCKETED,
        statement: "without group_by every bucket of the interval is answered, an empty one with count 0 (Druid's timeseries); with group_by only groups that have rows",
        code: "src/source/giosg/chat_sessions.rs (parse: buckets of ungrouped scopes)",
        fix: "none needed: chatetl gives every loaded bucket of an ungrouped scope one row whatever the upstream answers (counts and sums 0, averages and unique counts null); the README's Empty buckets section says so",
    },
    Assumption {
        id: "giosg.bucket_labels",
        endpoints: GIOSG_BUCKETED,
        statement: "start_time is each bucket's start in the job's zone, written YYYY-MM-DDTHH:MM:SS.sss±HH:MM",
        code: "src/query.rs (serde_ms_offset), src/source/giosg/chat_sessions.rs (bucket of a row)",
        fix: "the label format in src/query.rs (serde_ms_offset) or the bucket matching in src/source/giosg/chat_sessions.rs must follow what is seen",
    },
    Assumption {
        id: "giosg.bucketed_events",
        endpoints: &[Endpoint::Events],
        statement: "an events query over several windows with granularity day (hour for hour windows) answers one bucket per window, equal to a granularity all query of that window (001 shows only all)",
        code: "src/source/giosg/events.rs (query, with request_granularity in src/source/giosg/mod.rs), src/config/load/job.rs (bucketed)",
        fix: "leave `assume.bucketed_events` of the source false (the default) and set no `bucketed: true` on its events jobs: they then send one granularity all request per window",
    },
    Assumption {
        id: "giosg.fused_events",
        endpoints: &[Endpoint::Events, Endpoint::Workflow],
        statement: "an events query with several aggregations (a workflow query averaging several fields) answers every one, named as it is alone and equal to the single-aggregation answers (001 shows one per query)",
        code: "src/source/giosg/events.rs and workflow.rs (query, parse)",
        fix: "leave `assume.fused_events` of the source false (the default): jobs that differ only in their aggregations then send a request each",
    },
    Assumption {
        id: "giosg.realtime_paging",
        endpoints: &[Endpoint::RealtimeRooms, Endpoint::RealtimeUsers],
        statement: "a real-time collection answers giosg's usual {\"count\", \"next\", \"previous\", \"results\"}, `next` an absolute URL on the same host or null (000 shows only results)",
        code: "src/source/giosg/realtime.rs (Page, next_url)",
        fix: "the Page type and next_url in src/source/giosg/realtime.rs must follow the paging fields seen",
    },
    Assumption {
        id: "giosg.realtime_users_logged_in",
        endpoints: &[Endpoint::RealtimeUsers],
        statement: "a user result has is_logged_in (000's example spells is_logged_id; either is read)",
        code: "src/source/giosg/realtime.rs (parse_result, users)",
        fix: "the field name read in parse_result (src/source/giosg/realtime.rs) must be the one seen",
    },
    Assumption {
        id: "thulium.page_rows",
        endpoints: &[Endpoint::ChatSummary],
        statement: "a chat summary page is a JSON array of at most `limit` rows, and `offset` moves through them (004 shows one page)",
        code: "src/source/thulium.rs (pages)",
        fix: "the paging in src/source/thulium.rs (pages) must follow the answer's shape",
    },
    Assumption {
        id: "thulium.series_labels",
        endpoints: &[Endpoint::ChatSummary],
        statement: "`series` labels a bucket as minute YYYY-MM-DD HH:MM, hour YYYY-MM-DD HH:00, day YYYY-MM-DD, hour_of_day HH, week YYYY-Www, month YYYY-MM (004's example), year YYYY",
        code: "src/source/thulium.rs (Bucketing::bucket)",
        fix: "the label formats in Bucketing::bucket (src/source/thulium.rs) must be the ones seen",
    },
    Assumption {
        id: "comm100.agents_paging",
        endpoints: &[Endpoint::Agents],
        statement: "Agents answers {total, pageCount, pageIndex, pageSize, list} with a 1-based pageIndex equal to the one asked (003 lists the fields only)",
        code: "src/source/comm100.rs (AgentsPage, fetch_agents)",
        fix: "AgentsPage and fetch_agents in src/source/comm100.rs must follow the paging fields seen",
    },
    Assumption {
        id: "comm100.durations",
        endpoints: &[Endpoint::Agents, Endpoint::Queue],
        statement: "durations are .NET TimeSpans [d.]hh:mm:ss[.fffffff] (03's examples), stored as seconds",
        code: "src/time.rs (duration_secs), src/source/comm100.rs (Kind::Duration fields)",
        fix: "duration_secs in src/time.rs must read the format seen",
    },
    Assumption {
        id: "comm100.today_spelling",
        endpoints: &[Endpoint::Today],
        statement: "Today's abandoned chats come as abandondedChats, the docs' spelling (abandonedChats is read too)",
        code: "src/source/comm100.rs (parse, Report::Today)",
        fix: "the field names read for Today in src/source/comm100.rs must be the ones seen",
    },
    Assumption {
        id: "comm100.utc_offset_minutes",
        endpoints: &[Endpoint::Today],
        statement: "Today's utcOffset is in minutes east of UTC (003 does not give the unit)",
        code: "src/source/comm100.rs (request, Report::Today)",
        fix: "if Comm100's dashboard shows other totals for today than the comm100_today table at the same moment, the unit is another: change request() in src/source/comm100.rs",
    },
];

/// What an answer says of an assumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Confirmed,
    Contradicted,
    NotObservable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::Contradicted => "contradicted",
            Verdict::NotObservable => "not observable",
        }
    }
}

/// One assumption checked against one source's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub source: String,
    pub endpoint: &'static str,
    /// The job whose request was sent.
    pub job: String,
    pub assumption: Assumption,
    pub verdict: Verdict,
    /// What the answer showed.
    pub observed: String,
}

/// A source's endpoint that could not be asked (the request failed).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub source: String,
    pub endpoint: &'static str,
    pub job: String,
    pub kind: ErrorKind,
    pub message: String,
}

/// What `probe` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub failures: Vec<Failure>,
    /// Requests sent.
    pub requests: u32,
}

/// The windows a probe asks for: the latest complete windows one request of `job` covers (at
/// most 7 day windows or 24 hour windows), or a snapshot now.
fn probe_windows(job: &Job, now: DateTime<Utc>) -> Vec<Window> {
    if job.kind == JobKind::Snapshot {
        return vec![plan::window_containing(WindowUnit::Snapshot, job.time_zone, now)];
    }
    let per_request = job.max_windows_per_request.max(1) as usize;
    let wanted = match job.window {
        WindowUnit::Hour => 24,
        WindowUnit::Day | WindowUnit::Snapshot => 7,
    }
    .min(per_request);
    latest_windows(job, now, wanted)
}

/// The latest `n` (at most a week's) complete windows of `job` at `now`, in order.
fn latest_windows(job: &Job, now: DateTime<Utc>, n: usize) -> Vec<Window> {
    let last = plan::window_containing(job.window, job.time_zone, now);
    let from = last.start - chrono::Duration::days(8);
    let windows = plan::windows_overlapping(job.window, job.time_zone, from, last.start);
    let complete: Vec<Window> = windows.into_iter().filter(|w| w.end <= last.start).collect();
    complete[complete.len().saturating_sub(n)..].to_vec()
}

/// A week of day windows (a day of hour windows) in January 2001, when no account has data.
fn quiet_windows(job: &Job) -> Vec<Window> {
    let start =
        crate::time::local_day_start(job.time_zone, chrono::NaiveDate::from_ymd_opt(2001, 1, 1).expect("a date"));
    let (from, to) = match job.window {
        WindowUnit::Hour => (start, start + chrono::Duration::hours(24)),
        WindowUnit::Day | WindowUnit::Snapshot => (start, start + chrono::Duration::days(7)),
    };
    let mut windows = plan::windows_overlapping(job.window, job.time_zone, from, to);
    windows.retain(|w| w.end <= to);
    windows.truncate(job.max_windows_per_request.max(1) as usize);
    windows
}

/// Asks every enabled source (or only `source`) once per endpoint a job uses, at `now`.
pub async fn probe(runner: &Runner, only_source: Option<&str>, now: DateTime<Utc>) -> Report {
    // One job speaks for each source and endpoint: the one whose answer shows the most (a count
    // aggregation, an ungrouped first scope), the first by name among equals.
    let shows = |job: &Job| {
        let count = job.aggregations.iter().any(|a| a.kind == AggregationKind::Count);
        (u8::from(count) * 2) + u8::from(job.scopes.first() == Some(&Scope::Org))
    };
    let mut targets: BTreeMap<(String, Endpoint), &Job> = BTreeMap::new();
    for job in runner.config.jobs.values() {
        if only_source.is_some_and(|s| s != job.source) {
            continue;
        }
        let best = targets.entry((job.source.clone(), job.endpoint)).or_insert(job);
        if shows(job) > shows(best) {
            *best = job;
        }
    }
    let mut report = Report::default();
    for ((source_name, endpoint), job) in targets {
        let Ok(source) = runner.source_of(job) else { continue };
        let windows = probe_windows(job, now);
        let Some(request) = source.requests(job, &windows).into_iter().next() else { continue };
        let (answer, counts) = source.send(&request).await;
        report.requests += counts.requests;
        let body = match answer {
            Ok(body) => body,
            Err(e) => {
                let e = FetchError::from(e);
                report.failures.push(Failure {
                    source: source_name,
                    endpoint: endpoint.name(),
                    job: job.name.clone(),
                    kind: e.kind(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        // Empty buckets show only in an answer about a quiet time: a second request, for a week
        // (or a day of hours) long before any account's history.
        let quiet = if GIOSG_BUCKETED.contains(&endpoint) && job.scopes.first() == Some(&Scope::Org) {
            let windows = quiet_windows(job);
            match source.requests(job, &windows).into_iter().next() {
                Some(request) => {
                    let (answer, counts) = source.send(&request).await;
                    report.requests += counts.requests;
                    Some((windows, answer.map_err(FetchError::from)))
                }
                None => None,
            }
        } else {
            None
        };
        // Query shapes 001 never shows (buckets, several aggregations) show only by comparing
        // answers: a few more requests, each like the first (`compare`).
        let compared = if GIOSG_EVENT_QUERIES.contains(&endpoint) {
            let others: Vec<&Job> = runner.config.jobs.values().filter(|j| j.source == job.source).collect();
            let mut asker = Asker { source: &source, requests: 0 };
            let verdicts = compare_verdicts(&mut asker, job, &others, now).await;
            report.requests += asker.requests;
            verdicts
        } else {
            BTreeMap::new()
        };
        for assumption in ASSUMPTIONS.iter().filter(|a| a.endpoints.contains(&endpoint)) {
            let not_json = |body: &[u8]| {
                let head: String = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
                (Verdict::Contradicted, format!("the answer is not JSON; it starts with {head:?}"))
            };
            let (verdict, observed) = match (&value, assumption.id, &quiet) {
                (_, id, _) if let Some(found) = compared.get(id) => found.clone(),
                (_, "giosg.empty_buckets", Some((windows, Ok(body)))) => match serde_json::from_slice::<Value>(body) {
                    Ok(v) => check(assumption.id, job, windows, &request.url, &v),
                    Err(_) => not_json(body),
                },
                (_, "giosg.empty_buckets", Some((_, Err(e)))) => {
                    unobservable(format!("the request for a quiet week failed: {e}"))
                }
                (None, _, _) => not_json(&body),
                (Some(v), _, _) => check(assumption.id, job, &windows, &request.url, v),
            };
            report.findings.push(Finding {
                source: source_name.clone(),
                endpoint: endpoint.name(),
                job: job.name.clone(),
                assumption: *assumption,
                verdict,
                observed,
            });
        }
    }
    report
}

fn confirmed(observed: impl Into<String>) -> (Verdict, String) {
    (Verdict::Confirmed, observed.into())
}

fn contradicted(observed: impl Into<String>) -> (Verdict, String) {
    (Verdict::Contradicted, observed.into())
}

fn unobservable(why: impl Into<String>) -> (Verdict, String) {
    (Verdict::NotObservable, why.into())
}

/// `{fields, data}`: the field names with their types, and the data rows.
fn report_parts(v: &Value) -> Option<(Vec<(String, String)>, &Vec<Value>)> {
    let fields = v.get("fields")?.as_array()?;
    let fields: Option<Vec<(String, String)>> = fields
        .iter()
        .map(|f| Some((f.get("name")?.as_str()?.to_string(), f.get("type")?.as_str()?.to_string())))
        .collect();
    Some((fields?, v.get("data")?.as_array()?))
}

/// The names chatetl expects for `job`'s metrics, in aggregation order.
fn expected_metrics(job: &Job) -> Vec<String> {
    job.aggregations.iter().map(|a| a.metric_name()).collect()
}

/// Checks assumption `id` against the answer `v` to the first request of `job` over `windows`
/// (sent to `url`).
fn check(id: &str, job: &Job, windows: &[Window], url: &str, v: &Value) -> (Verdict, String) {
    let metric_fields = |v: &Value| -> Option<Vec<String>> {
        let (fields, _) = report_parts(v)?;
        Some(fields.into_iter().filter(|(_, t)| t == "metric").map(|(n, _)| n).collect())
    };
    // The first request of a giosg job is its first scope's; org scope has no group_by.
    let ungrouped = job.scopes.first() == Some(&Scope::Org);
    match id {
        "giosg.report_shape" => match report_parts(v) {
            Some((fields, data)) => {
                let width = fields.len();
                match data.iter().position(|row| row.as_array().is_none_or(|r| r.len() != width)) {
                    None => confirmed(format!("{width} fields, {} data rows", data.len())),
                    Some(i) => contradicted(format!("data row {i} does not have one value per field: {}", data[i])),
                }
            }
            None => contradicted(format!("no fields/data: {}", short(v))),
        },
        "giosg.metric_names" => {
            let Some(got) = metric_fields(v) else { return unobservable("the answer has no fields list") };
            let want = expected_metrics(job);
            let missing: Vec<&String> = want.iter().filter(|m| !got.contains(m)).collect();
            if missing.is_empty() {
                confirmed(format!("metrics {}", got.join(", ")))
            } else {
                contradicted(format!("expected metrics {} but the answer names {}", want.join(", "), got.join(", ")))
            }
        }
        "giosg.count_metric_name" => {
            let Some(count) = job.aggregations.iter().find(|a| a.kind == AggregationKind::Count) else {
                return unobservable(format!("job {} has no count aggregation", job.name));
            };
            let Some(got) = metric_fields(v) else { return unobservable("the answer has no fields list") };
            if got.iter().any(|m| m == "count") {
                confirmed("the count metric is named `count`")
            } else {
                let field = count.field.clone().unwrap_or_default();
                let alternatives = [format!("{field}_count"), field];
                match got.iter().find(|m| alternatives.contains(m)) {
                    Some(name) => contradicted(format!("the count metric is named `{name}`")),
                    None => contradicted(format!("no metric named `count`; the answer names {}", got.join(", "))),
                }
            }
        }
        "giosg.empty_buckets" => {
            if !ungrouped {
                return unobservable("the job's first scope groups by team or user: only ungrouped answers tell");
            }
            let Some((fields, data)) = report_parts(v) else { return unobservable("the answer has no fields/data") };
            let buckets = match (job.granularity, job.window) {
                (Granularity::Day, WindowUnit::Day) | (Granularity::Hour, WindowUnit::Hour) => windows.len(),
                (Granularity::All, _) => 1,
                _ => return unobservable("buckets shorter than windows are not counted by the probe"),
            };
            let metric_columns: Vec<usize> =
                fields.iter().enumerate().filter(|(_, (_, t))| t == "metric").map(|(i, _)| i).collect();
            let empty = data
                .iter()
                .filter(|row| {
                    metric_columns.iter().all(|i| {
                        let x = row.get(*i);
                        x.is_none_or(|x| x.is_null() || x.as_f64() == Some(0.0))
                    })
                })
                .count();
            if data.len() < buckets {
                contradicted(format!(
                    "{buckets} buckets asked without group_by, {} answered: empty buckets are left out",
                    data.len()
                ))
            } else if empty > 0 {
                confirmed(format!("{buckets} buckets asked, {} answered, {empty} of them empty", data.len()))
            } else {
                unobservable(format!(
                    "all {buckets} buckets had rows, so the answer cannot show how an empty one comes"
                ))
            }
        }
        "giosg.bucket_labels" => {
            let Some((fields, data)) = report_parts(v) else { return unobservable("the answer has no fields/data") };
            let Some(at) = fields.iter().position(|(n, _)| n == "start_time") else {
                return contradicted("no start_time field");
            };
            let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| w.start).collect();
            let Some(label) = data.iter().filter_map(|r| r.get(at)?.as_str()).next() else {
                return unobservable("no data row to read a label from");
            };
            let parsed = DateTime::parse_from_str(label, "%Y-%m-%dT%H:%M:%S%.3f%:z");
            match parsed {
                Ok(t) if job.granularity != Granularity::All && !starts.contains(&t.to_utc()) => {
                    contradicted(format!("`{label}` is no bucket start of the windows asked"))
                }
                Ok(_) => confirmed(format!("labels like `{label}`")),
                Err(_) => contradicted(format!("a label `{label}` not like 2024-03-31T00:00:00.000+03:00")),
            }
        }
        "giosg.bucketed_events" | "giosg.fused_events" => {
            unobservable("one answer cannot tell: the probe compares the answers of several queries (compare_verdicts)")
        }
        "giosg.realtime_paging" => {
            let has = |k: &str| v.get(k).is_some();
            if !has("results") || !v["results"].is_array() {
                return contradicted(format!("no results list: {}", short(v)));
            }
            match v.get("next") {
                None => contradicted("no `next` field (the client then reads one page only)"),
                Some(Value::Null) => {
                    confirmed(format!("results, next: null{}", if has("count") { ", count" } else { " (no count)" }))
                }
                Some(Value::String(next)) => {
                    let same_host = reqwest::Url::parse(next)
                        .ok()
                        .zip(reqwest::Url::parse(url).ok())
                        .is_some_and(|(a, b)| a.host_str() == b.host_str());
                    if same_host { confirmed(format!("next: {next}")) } else { contradicted(format!("next: {next}")) }
                }
                Some(other) => contradicted(format!("next is {other}")),
            }
        }
        "giosg.realtime_users_logged_in" => {
            let Some(first) = v.get("results").and_then(|r| r.as_array()).and_then(|r| r.first()) else {
                return unobservable("no user in the answer");
            };
            match (first.get("is_logged_in").is_some(), first.get("is_logged_id").is_some()) {
                (true, _) => confirmed("is_logged_in"),
                (false, true) => confirmed("is_logged_id (the docs' spelling), which the client reads too"),
                (false, false) => contradicted(format!("neither is_logged_in nor is_logged_id: {}", short(first))),
            }
        }
        "thulium.page_rows" => {
            let limit = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.query_pairs().find(|(k, _)| k == "limit").and_then(|(_, l)| l.parse::<usize>().ok()));
            match (v.as_array(), limit) {
                (Some(rows), Some(limit)) if rows.len() <= limit => {
                    confirmed(format!("an array of {} rows for limit {limit}", rows.len()))
                }
                (Some(rows), Some(limit)) => contradicted(format!("{} rows for limit {limit}", rows.len())),
                (Some(rows), None) => confirmed(format!("an array of {} rows", rows.len())),
                (None, _) => contradicted(format!("not an array: {}", short(v))),
            }
        }
        "thulium.series_labels" => {
            let Some(label) = v.as_array().and_then(|r| r.iter().find_map(|row| row.get("series")?.as_str())) else {
                return unobservable("no row to read a series from");
            };
            let aggregate_by = match &job.params {
                crate::config::EndpointParams::ChatSummary { aggregate_by, .. } => *aggregate_by,
                _ => return unobservable("not a chat summary job"),
            };
            let shape = series_shape(label);
            let expected = match aggregate_by {
                crate::config::AggregateBy::Minute => "YYYY-MM-DD HH:MM",
                crate::config::AggregateBy::Hour => "YYYY-MM-DD HH:00",
                crate::config::AggregateBy::Day => "YYYY-MM-DD",
                crate::config::AggregateBy::HourOfDay => "HH",
                crate::config::AggregateBy::Week => "YYYY-Www",
                crate::config::AggregateBy::Month => "YYYY-MM",
                crate::config::AggregateBy::Year => "YYYY",
            };
            let fits = shape == expected || (expected == "YYYY-MM-DD HH:00" && shape == "YYYY-MM-DD HH:MM");
            if fits {
                confirmed(format!("`{label}` for aggregate_by {}", aggregate_by.as_str()))
            } else {
                contradicted(format!("`{label}` for aggregate_by {} (expected {expected})", aggregate_by.as_str()))
            }
        }
        "comm100.agents_paging" => {
            let missing: Vec<&str> = ["total", "pageCount", "pageIndex", "pageSize", "list"]
                .into_iter()
                .filter(|k| v.get(k).is_none())
                .collect();
            match (missing.is_empty(), v.get("pageIndex").and_then(Value::as_u64)) {
                (true, Some(1)) => confirmed("total, pageCount, pageIndex 1, pageSize, list"),
                (true, other) => contradicted(format!("page 1 asked, pageIndex {other:?} answered")),
                (false, _) => contradicted(format!("missing {}: {}", missing.join(", "), short(v))),
            }
        }
        "comm100.durations" => {
            let sample = match job.endpoint {
                Endpoint::Agents => v.get("list").and_then(|l| l.get(0)).and_then(|a| a.get("intradayLinearChatTime")),
                Endpoint::Queue => v.get(0).and_then(|q| q.get("avgWaitTimeinLast30Mins")),
                Endpoint::ChatSessions
                | Endpoint::Events
                | Endpoint::Workflow
                | Endpoint::RealtimeRooms
                | Endpoint::RealtimeUsers
                | Endpoint::ChatSummary
                | Endpoint::Today
                | Endpoint::RightNow => None,
            };
            match sample.and_then(Value::as_str) {
                None => unobservable("no duration in the answer"),
                Some(d) => match crate::time::duration_secs(d) {
                    Ok(secs) => confirmed(format!("`{d}` = {secs} s")),
                    Err(_) => contradicted(format!("`{d}` is not hh:mm:ss[.fffffff]")),
                },
            }
        }
        "comm100.today_spelling" => match (v.get("abandondedChats"), v.get("abandonedChats")) {
            (Some(_), _) => confirmed("abandondedChats"),
            (None, Some(_)) => confirmed("abandonedChats (fixed spelling), which the client reads too"),
            (None, None) => contradicted(format!("neither abandondedChats nor abandonedChats: {}", short(v))),
        },
        "comm100.utc_offset_minutes" => unobservable(
            "an answer does not show the unit: compare today's totals with Comm100's dashboard at the same moment",
        ),
        other => unobservable(format!("no check for {other}")),
    }
}

/// Sends probe requests to one source, counting them.
struct Asker<'a> {
    source: &'a crate::source::Source,
    requests: u32,
}

impl Asker<'_> {
    /// The answer to the first request of `job` over `windows` (its first scope's), and that
    /// request's URL.
    async fn first(&mut self, job: &Job, windows: &[Window]) -> Result<(String, bytes::Bytes), HttpError> {
        let request = self.source.requests(job, windows).into_iter().next().expect("a giosg job has a request");
        let (answer, counts) = self.source.send(&request).await;
        self.requests += counts.requests;
        answer.map(|body| (request.url, body))
    }
}

/// Why a probe query gave no rows.
enum Unanswered {
    /// A 4xx other than 401, 403 and 429: the upstream refused the query's shape.
    Refused(String),
    /// Any other failure (credentials, an outage): the answer tells nothing.
    Failed(String),
    /// A 2xx answer the client cannot read.
    Unreadable(String),
}

/// Rows per window of `job`'s first request over `windows` (its one scope), read as a load reads
/// them (`source::giosg`).
async fn answered_rows(asker: &mut Asker<'_>, job: &Job, windows: &[Window]) -> Result<Vec<Vec<Row>>, Unanswered> {
    let (url, body) = asker.first(job, windows).await.map_err(|e| match &e {
        HttpError::Status { status, .. } if (400..500).contains(status) && !matches!(status, 401 | 403 | 429) => {
            Unanswered::Refused(e.to_string())
        }
        _ => Unanswered::Failed(e.to_string()),
    })?;
    let scope = job.scopes.first().copied().unwrap_or(Scope::Org);
    let rows = if job.endpoint == Endpoint::Workflow {
        windows
            .iter()
            .map(|w| crate::source::giosg::workflow::parse(job, w, &body).map(|row| vec![row]))
            .collect::<Result<Vec<_>, String>>()
    } else {
        crate::source::giosg::chat_sessions::parse(job, scope, windows, &body, "an events result")
    };
    rows.map_err(|m| Unanswered::Unreadable(format!("{url}: {m}")))
}

/// Rows by bucket and dimensions, with their metrics.
type Keyed = BTreeMap<(DateTime<Utc>, Vec<Option<String>>), Vec<Cell>>;

fn keyed<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Keyed {
    rows.into_iter().map(|r| ((r.bucket_start, r.dims.clone()), r.metrics.clone())).collect()
}

/// Whether two answers agree: nulls alike, numbers equal to 1e-9 of their size (a server may add
/// an average's terms in another order).
fn same_metrics(a: &[Cell], b: &[Cell]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Cell::Number(x), Cell::Number(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => x == y,
        })
}

/// The first row where `got` and `want` (keyed alike; a row missing from one is `empty`)
/// disagree, described.
fn first_difference(got: &Keyed, want: &Keyed, empty: &[Cell], job: &Job) -> Option<String> {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    keys.into_iter().find_map(|key| {
        let (g, w) = (got.get(key).map_or(empty, Vec::as_slice), want.get(key).map_or(empty, Vec::as_slice));
        (!same_metrics(g, w)).then(|| {
            let who: Vec<&str> = key.1.iter().flatten().map(String::as_str).collect();
            format!(
                "bucket {} ({}): {:?} instead of {:?}",
                key.0.with_timezone(&job.time_zone).to_rfc3339(),
                who.join(" "),
                g,
                w
            )
        })
    })
}

/// Whether some row counts, sums or averages something other than 0 or nothing.
fn has_data(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.metrics.iter().any(|m| matches!(m, Cell::Number(x) if *x != 0.0)))
}

/// `giosg.bucketed_events` (events) and `giosg.fused_events` (events and workflow) for `job`,
/// whose source's jobs are `jobs`, by comparing answers a load would read: granularity `all`
/// queries of the latest two complete windows (the job's first scope), then
/// - one bucketed query over both windows (events), confirmed when its rows equal theirs window
///   for window (not observable when the later window has no data: one bucket for both could not
///   be told apart);
/// - one query of another aggregation alone and one of the job's aggregations with it, over the
///   later window (events: a kind the job lacks; workflow: a field another workflow job of the
///   source averages, not observable without one), confirmed when the two-aggregation answer
///   has both metrics, equal to the single answers.
///
/// Up to five requests; a refused query (4xx) contradicts, another failure is not observable.
async fn compare_verdicts(
    asker: &mut Asker<'_>,
    job: &Job,
    jobs: &[&Job],
    now: DateTime<Utc>,
) -> BTreeMap<&'static str, (Verdict, String)> {
    let mut out = BTreeMap::new();
    let scope = job.scopes.first().copied().unwrap_or(Scope::Org);
    let plain = Job {
        scopes: vec![scope],
        granularity: Granularity::All,
        bucketed: false,
        max_windows_per_request: 1,
        ..job.clone()
    };
    let events = job.endpoint == Endpoint::Events;
    let windows = latest_windows(job, now, if events { 2 } else { 1 });
    let source = &job.source;
    // What a fused query adds to the job's aggregations: events a kind the job lacks, workflow a
    // field another workflow job of the source averages.
    let extra = if events {
        let kinds: Vec<AggregationKind> = job.aggregations.iter().map(|a| a.kind).collect();
        [AggregationKind::Count, AggregationKind::Avg, AggregationKind::Sum]
            .into_iter()
            .find(|k| !kinds.contains(k))
            .map(|kind| JobAggregation { kind, field: None, column: "probe_other".into() })
            .ok_or_else(|| unobservable(format!("job {} has count, sum and avg already: nothing to add", job.name)))
    } else {
        let own: Vec<Option<&String>> = job.aggregations.iter().map(|a| a.field.as_ref()).collect();
        jobs.iter()
            .filter(|j| j.endpoint == Endpoint::Workflow)
            .flat_map(|j| &j.aggregations)
            .find(|a| !own.contains(&a.field.as_ref()))
            .map(|a| JobAggregation { column: "probe_other".into(), ..a.clone() })
            .ok_or_else(|| {
                unobservable(format!(
                    "every workflow job of source {source} averages {}: no query would carry two averages, so \
                     nothing is fused (and nothing to check)",
                    expected_metrics(job).join(", ")
                ))
            })
    };
    if let (Err(why), false) = (&extra, events) {
        // Nothing to fuse, and workflow is never bucketed: no request at all.
        out.insert("giosg.fused_events", why.clone());
        return out;
    }
    let mut reference: Vec<Vec<Row>> = Vec::new();
    for w in &windows {
        match answered_rows(asker, &plain, std::slice::from_ref(w)).await {
            Ok(mut rows) => reference.push(rows.pop().unwrap_or_default()),
            Err(Unanswered::Refused(m) | Unanswered::Failed(m) | Unanswered::Unreadable(m)) => {
                let why = unobservable(format!("the granularity all query to compare with failed: {m}"));
                out.insert("giosg.fused_events", why.clone());
                if events {
                    out.insert("giosg.bucketed_events", why);
                }
                return out;
            }
        }
    }
    let last = windows.len() - 1;
    let unit = granularity_name(crate::source::giosg::request_granularity(&Job { bucketed: true, ..plain.clone() }));

    if events {
        let verdict = if !has_data(&reference[last]) {
            unobservable(format!(
                "the later of the two {unit} windows asked had no data, so one bucket for both could not be told from \
                 buckets per {unit}; probe again when it has"
            ))
        } else {
            let bucketed = Job { bucketed: true, max_windows_per_request: windows.len() as u32, ..plain.clone() };
            match answered_rows(asker, &bucketed, &windows).await {
                Err(Unanswered::Refused(m)) => contradicted(format!(
                    "a query of {n} {unit} buckets was refused ({m}): do not set `assume: {{bucketed_events: true}}` \
                     on source {source} or `bucketed: true` on its events jobs",
                    n = windows.len()
                )),
                Err(Unanswered::Unreadable(m)) => contradicted(format!(
                    "the answer to a query of {n} {unit} buckets cannot be read ({m}): do not set \
                     `assume: {{bucketed_events: true}}` on source {source} or `bucketed: true` on its events jobs",
                    n = windows.len()
                )),
                Err(Unanswered::Failed(m)) => unobservable(format!("the bucketed query failed: {m}")),
                Ok(got) => {
                    let empty = crate::source::giosg::empty_metrics(&plain);
                    let got = keyed(got.iter().flatten());
                    let want = keyed(reference.iter().flatten());
                    match first_difference(&got, &want, &empty, job) {
                        None => confirmed(format!(
                            "`assume: {{bucketed_events: true}}` may be set on source {source} (or `bucketed: true` \
                             on its events jobs): {n} {unit} buckets answered the rows of {n} granularity all queries \
                             ({rows} rows)",
                            n = windows.len(),
                            rows = want.len()
                        )),
                        Some(d) => contradicted(format!(
                            "a query of {n} {unit} buckets answered other rows than {n} granularity all queries, \
                             {d}: do not set `assume: {{bucketed_events: true}}` on source {source} or \
                             `bucketed: true` on its events jobs",
                            n = windows.len()
                        )),
                    }
                }
            }
        };
        out.insert("giosg.bucketed_events", verdict);
    }

    let extra = match extra {
        Ok(extra) => extra,
        Err(why) => {
            out.insert("giosg.fused_events", why);
            return out;
        }
    };
    let alone = Job { aggregations: vec![extra.clone()], ..plain.clone() };
    let mut both = plain.clone();
    both.aggregations.push(extra.clone());
    let names = expected_metrics(&both).join(" and ");
    let at = std::slice::from_ref(&windows[last]);
    let verdict = match answered_rows(asker, &alone, at).await {
        Err(e) => {
            let m = match e {
                Unanswered::Refused(m) | Unanswered::Failed(m) | Unanswered::Unreadable(m) => m,
            };
            unobservable(format!("the query of {} alone failed: {m}", extra.metric_name()))
        }
        // An empty window answers every metric with its empty value (a count of 0 empties the
        // others too): a server that mixed the metrics up would pass. Only data can tell; the
        // other metric alone may well be empty (an average of events that carry no value).
        Ok(_) if !has_data(&reference[last]) => unobservable(format!(
            "the {unit} window asked had no data for {}, so a wrong second metric could not be told from a right \
             one; probe again when it has",
            expected_metrics(&plain).join(" and ")
        )),
        Ok(alone_rows) => match answered_rows(asker, &both, at).await {
            Err(Unanswered::Refused(m)) => contradicted(format!(
                "a query of {names} was refused ({m}): do not set `assume: {{fused_events: true}}` on source {source}"
            )),
            Err(Unanswered::Unreadable(m)) => contradicted(format!(
                "the answer to a query of {names} cannot be read as both ({m}): do not set \
                 `assume: {{fused_events: true}}` on source {source}"
            )),
            Err(Unanswered::Failed(m)) => unobservable(format!("the query of {names} failed: {m}")),
            Ok(got) => {
                let (mine, other) = (keyed(&reference[last]), keyed(alone_rows.iter().flatten()));
                let (empty_mine, empty_other) =
                    (crate::source::giosg::empty_metrics(&plain), crate::source::giosg::empty_metrics(&alone));
                let want: Keyed = mine
                    .keys()
                    .chain(other.keys())
                    .map(|k| {
                        let mut m = mine.get(k).cloned().unwrap_or_else(|| empty_mine.clone());
                        m.extend(other.get(k).cloned().unwrap_or_else(|| empty_other.clone()));
                        (k.clone(), m)
                    })
                    .collect();
                let empty = crate::source::giosg::empty_metrics(&both);
                match first_difference(&keyed(got.iter().flatten()), &want, &empty, job) {
                    None => confirmed(format!(
                        "`assume: {{fused_events: true}}` may be set on source {source}: a query of {names} \
                         answered both, equal to one query each ({} rows)",
                        want.len()
                    )),
                    Some(d) => contradicted(format!(
                        "a query of {names} answered other values than one query each, {d}: do not set \
                         `assume: {{fused_events: true}}` on source {source}"
                    )),
                }
            }
        },
    };
    out.insert("giosg.fused_events", verdict);
    out
}

/// `day`, `hour`, … as job files and the API write it.
fn granularity_name(g: Granularity) -> String {
    serde_json::to_value(g).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// A label's shape: digits become Y, M, D, H or M by position (`2024-03-31` → `YYYY-MM-DD`).
fn series_shape(label: &str) -> String {
    let shapes = [("%Y-%m-%d %H:%M", "YYYY-MM-DD HH:MM"), ("%Y-%m-%d", "YYYY-MM-DD")];
    for (fmt, shape) in shapes {
        let parsed = if fmt.contains("%H") {
            chrono::NaiveDateTime::parse_from_str(label, fmt).is_ok()
        } else {
            chrono::NaiveDate::parse_from_str(label, fmt).is_ok()
        };
        if parsed {
            return if shape == "YYYY-MM-DD HH:MM" && label.ends_with(":00") {
                "YYYY-MM-DD HH:00".to_string()
            } else {
                shape.to_string()
            };
        }
    }
    let b = label.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    match label.len() {
        2 if digits(0..2) => "HH".into(),
        4 if digits(0..4) => "YYYY".into(),
        7 if digits(0..4) && b[4] == b'-' && digits(5..7) => "YYYY-MM".into(),
        8 if digits(0..4) && &label[4..6] == "-W" && digits(6..8) => "YYYY-Www".into(),
        _ => label.to_string(),
    }
}

/// At most 120 characters of `v`.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_assumptions_lists_every_assumption_and_no_other() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/assumptions.md")).unwrap();
        let headings: Vec<&str> =
            doc.lines().filter_map(|l| l.strip_prefix("## `").and_then(|l| l.strip_suffix('`'))).collect();
        let ids: Vec<&str> = ASSUMPTIONS.iter().map(|a| a.id).collect();
        assert_eq!(headings, ids, "docs/assumptions.md and ASSUMPTIONS list the same ids in the same order");
        for a in ASSUMPTIONS {
            let section = doc.split(&format!("## `{}`", a.id)).nth(1).unwrap();
            assert!(section.contains(a.code), "{}: docs/assumptions.md names where it is made", a.id);
        }
    }

    #[test]
    fn series_shapes() {
        assert_eq!(series_shape("2024-03-31"), "YYYY-MM-DD");
        assert_eq!(series_shape("2024-03-31 14:00"), "YYYY-MM-DD HH:00");
        assert_eq!(series_shape("2024-03-31 14:05"), "YYYY-MM-DD HH:MM");
        assert_eq!(series_shape("2024-03"), "YYYY-MM");
        assert_eq!(series_shape("2024-W13"), "YYYY-Www");
        assert_eq!(series_shape("07"), "HH");
        assert_eq!(series_shape("2024"), "YYYY");
        assert_eq!(series_shape("31.03.2024"), "31.03.2024");
    }

    #[test]
    fn every_assumption_has_a_check_and_unique_id() {
        let mut ids: Vec<&str> = ASSUMPTIONS.iter().map(|a| a.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ASSUMPTIONS.len());
        let job_text = "description: d\nsource: giosg\nendpoint: chat_sessions\nwindow: day\nstart: 2024-01-01\naggregations:\n  - {type: count, field: chat_session_id, column: chats}\n";
        let job = crate::config::testing::job(job_text);
        for a in ASSUMPTIONS {
            let (_, observed) = check(a.id, &job, &[], "http://x/y", &Value::Null);
            assert!(!observed.starts_with("no check for"), "{}: {observed}", a.id);
        }
    }
}
