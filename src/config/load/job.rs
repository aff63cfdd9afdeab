//! The rules of a job file (one metric), given what `chatetl.yaml` provides ([`JobDefaults`]).
//! Checks across job files (duplicate names and tables) are in `load.rs`.

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::ctx::{Ctx, identifier_problem, one_of, quoted};
use super::filters;
use super::params;
use super::raw::{RawAggregation, RawJob};
use super::settings::{JobDefaults, SOURCE_KINDS, SourceInfo};
use crate::config::bucket_split;
use crate::config::{
    AggregateBy, Diagnostic, Endpoint, EndpointParams, Job, JobAggregation, JobKind, Scope, SourceAssumptions,
    SourceKind, WindowUnit,
};
use crate::query::{AggregationKind, DIMENSIONS, Granularity};

/// Columns chatetl writes itself; no aggregation may use them.
pub const RESERVED_COLUMNS: &[&str] =
    &["bucket_start", "bucket_date", "scope", "team_id", "user_id", "_window_start", "_loaded_at", "_run_id"];

/// The earliest `start`: older than any chat API's data, and a guard against typos (`0000-01-01`)
/// that would request millennia of empty windows.
const EARLIEST_START: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");

/// Most windows `lookback_windows` and `max_windows_per_request` may name: a year of days, a
/// month of hours.
const MAX_DAY_WINDOWS: u64 = 366;
const MAX_HOUR_WINDOWS: u64 = 31 * 24;

/// A job file's result: its name, table and source (for the checks across files, even when
/// other keys are wrong) and the job when the whole file is valid.
pub(super) struct JobOutcome {
    pub name: Option<Named>,
    pub table: Option<Named>,
    pub source: Option<String>,
    pub job: Option<Job>,
    /// A problem that would fail every window of the valid job (see `Config::window_failures`).
    pub window_failure: Option<Diagnostic>,
}

/// A job's name or table, where it is written and how messages show it ([`Ctx::shown`]).
#[derive(Clone)]
pub(super) struct Named {
    pub value: String,
    pub at: Location,
    pub shown: String,
}

/// Where an endpoint-specific key of a job file was given, if it was.
type KeyAt = fn(&RawJob) -> Option<Location>;

fn at<T>(v: &Option<Spanned<T>>) -> Option<Location> {
    v.as_ref().map(|v| v.referenced)
}

/// Every endpoint-specific key of [`RawJob`]: exactly the keys the registry's endpoints list
/// (a unit test checks both ways).
const ENDPOINT_KEYS: &[(&str, KeyAt)] = &[
    ("window", |r| at(&r.window)),
    ("start", |r| at(&r.start)),
    ("lookback_windows", |r| at(&r.lookback_windows)),
    ("settle_secs", |r| at(&r.settle_secs)),
    ("include_partial", |r| at(&r.include_partial)),
    ("max_windows_per_request", |r| at(&r.max_windows_per_request)),
    ("granularity", |r| at(&r.granularity)),
    ("scopes", |r| at(&r.scopes)),
    ("rooms", |r| at(&r.rooms)),
    ("aggregations", |r| at(&r.aggregations)),
    ("filters", |r| at(&r.filters)),
    ("vendor", |r| at(&r.vendor)),
    ("event_sources", |r| at(&r.event_sources)),
    ("where", |r| at(&r.conditions)),
    ("aggregate_by", |r| at(&r.aggregate_by)),
    ("user_logins", |r| at(&r.user_logins)),
    ("chat_queue_ids", |r| at(&r.chat_queue_ids)),
    ("sum_users", |r| at(&r.sum_users)),
    ("response_threshold", |r| at(&r.response_threshold)),
    ("split_by_login", |r| at(&r.split_by_login)),
    ("page_size", |r| at(&r.page_size)),
    ("include_shared", |r| at(&r.include_shared)),
    ("user_ids", |r| at(&r.user_ids)),
    ("department_id", |r| at(&r.department_id)),
    ("include_status_distribution", |r| at(&r.include_status_distribution)),
    ("bucketed", |r| at(&r.bucketed)),
];

/// The endpoint-specific keys present in `r`, with their location.
fn present_keys(r: &RawJob) -> Vec<(&'static str, Location)> {
    ENDPOINT_KEYS.iter().filter_map(|(key, at)| at(r).map(|at| (*key, at))).collect()
}

/// Validates the job file `file`.
pub(super) fn job(ctx: &mut Ctx, raw: &Spanned<RawJob>, file: &Path, defaults: &JobDefaults) -> JobOutcome {
    let at = raw.referenced;
    let r = &raw.value;

    let named = |ctx: &mut Ctx, key: &str, v: &Spanned<String>| {
        let value = ctx.identifier(key, v)?;
        let shown = ctx.shown(&v.value, &value);
        Some(Named { value, at: v.referenced, shown })
    };
    let name = match &r.name {
        Some(v) => named(ctx, "name", v),
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match identifier_problem(&stem, &quoted(&stem)) {
                None => Some(Named { shown: quoted(&stem), value: stem, at }),
                Some(problem) => {
                    ctx.error(at, "name", format!("the job is named after its file, but {problem}; set `name`"));
                    None
                }
            }
        }
    };
    let table = match &r.table {
        Some(v) => named(ctx, "table", v),
        None => name.clone(),
    };
    let description = ctx
        .required(at, "description", &r.description, "a sentence saying what the metric counts")
        .and_then(|v| ctx.non_empty("description", v, "a description"))
        .map(|d| d.trim().to_string());

    let (source, info) = match ctx.required(at, "source", &r.source, "the name of a source of chatetl.yaml") {
        None => (None, None),
        Some(v) => job_source(ctx, v, defaults),
    };
    let kind = info.and_then(|i| i.kind);
    let endpoint = ctx
        .required(at, "endpoint", &r.endpoint, "the API endpoint read, e.g. chat_sessions")
        .and_then(|v| job_endpoint(ctx, v, kind));
    // Without a valid endpoint the file is still checked, as a chat_sessions job whose
    // endpoint-specific keys are optional, so every other problem is reported now too.
    let known = endpoint.is_some();
    let endpoint = endpoint.unwrap_or(Endpoint::ChatSessions);
    for (key, location) in present_keys(r) {
        if known && !endpoint.takes(key) {
            let used_by: Vec<&str> = Endpoint::ALL.iter().filter(|e| e.takes(key)).map(|e| e.name()).collect();
            let message = format!("not used by endpoint `{}` (only by {})", endpoint.name(), one_of(&used_by));
            ctx.error(location, key, message);
        }
    }
    let uses = |key: &str| endpoint.takes(key);
    let job_kind = job_kind(ctx, at, r.kind.as_ref(), endpoint);
    let windowed = endpoint.kind() == JobKind::Windowed;

    // Keys every windowed job needs are not asked for when the endpoint named is not one of the
    // source's (already reported): it may well be a snapshot one of another vendor.
    let misnamed = !known && r.endpoint.is_some();
    let window = if windowed && misnamed && r.window.is_none() {
        None
    } else if windowed {
        ctx.required(at, "window", &r.window, "hour or day")
            .and_then(|v| ctx.choice("window", v, "window", &[("hour", WindowUnit::Hour), ("day", WindowUnit::Day)]))
    } else {
        Some(WindowUnit::Snapshot)
    };
    // Endpoints that bucket by granularity take the key; the others get one bucket per request.
    let granularity = if endpoint.takes("granularity") {
        job_granularity(ctx, r.granularity.as_ref(), window)
    } else {
        Some(Granularity::All)
    };
    let scopes = if uses("scopes") { job_scopes(ctx, r.scopes.as_ref()) } else { Some(vec![Scope::Org]) };
    let rooms = if uses("rooms") { job_rooms(ctx, r.rooms.as_ref()) } else { Some(Vec::new()) };
    let aggregations = if uses("aggregations") && (known || r.aggregations.is_some()) {
        ctx.required(at, "aggregations", &r.aggregations, "a list of `type`, `field` and `column`")
            .and_then(|v| job_aggregations(ctx, v, endpoint))
    } else {
        Some(Vec::new())
    };
    let filters = match (&r.filters, uses("filters")) {
        (Some(node), true) => filters::filter(ctx, node, endpoint.info().dimensions).map(Some),
        _ => Some(None),
    };
    let time_zone = match &r.time_zone {
        None => defaults.time_zone,
        Some(v) => ctx.time_zone("time_zone", v),
    };
    let start = if windowed && misnamed && r.start.is_none() {
        None
    } else if windowed {
        ctx.required(at, "start", &r.start, "the first local date of history, e.g. 2024-01-01").and_then(|v| {
            let (text, shown) = ctx.text_shown("start", v)?;
            let Ok(date) = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") else {
                ctx.error(v.referenced, "start", format!("expected a date like 2024-01-01, found {shown}"));
                return None;
            };
            let zone = time_zone.unwrap_or(Tz::UTC);
            let today = chrono::Utc::now().with_timezone(&zone).date_naive();
            let problem = if date < EARLIEST_START {
                Some(format!(
                    "{shown} is before {EARLIEST_START}: none of the APIs holds chat data that old, and every window \
                     from then would be requested (expected the first date of real history)"
                ))
            } else if date > today {
                Some(format!(
                    "{shown} is in the future (today is {today} in {}): the job would load nothing until then \
                     (expected the first date of history, at most today)",
                    zone.name()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                ctx.error(v.referenced, "start", problem);
                return None;
            }
            Some(date)
        })
    } else {
        NaiveDate::from_ymd_opt(1970, 1, 1)
    };

    let max_windows = match window {
        Some(WindowUnit::Day) => MAX_DAY_WINDOWS,
        Some(WindowUnit::Hour) => MAX_HOUR_WINDOWS,
        _ => u64::from(u32::MAX),
    };
    let lookback_windows = ctx.integer("lookback_windows", r.lookback_windows.as_ref(), 0, max_windows, 1);
    let params = params::endpoint_params(ctx, at, r, endpoint, window);
    let assume = info.map(|i| i.assume).unwrap_or_default();
    let bucketed = job_bucketed(ctx, r.bucketed.as_ref(), endpoint, window, assume);
    // One request covers one window when the API returns one bucket per request: granularity
    // `all` (unless the job is bucketed: then its requests ask for buckets of the window's
    // length), or a chat summary bucket longer than a window (a chat summary's granularity is
    // `all` only as a placeholder: its buckets are `aggregate_by`'s).
    let summary = endpoint == Endpoint::ChatSummary;
    let one_bucket = !summary && granularity == Some(Granularity::All) && bucketed != Some(true);
    let single = one_bucket
        || matches!(&params, Some(EndpointParams::ChatSummary { aggregate_by, .. }) if one_bucket_per_request(*aggregate_by));
    let default_per_request = match window {
        Some(WindowUnit::Hour) => 168,
        _ => 31,
    };
    let per_request_path = "max_windows_per_request";
    let mut max_windows_per_request =
        ctx.integer(per_request_path, r.max_windows_per_request.as_ref(), 1, max_windows, default_per_request);
    if single || !windowed {
        if let (Some(v), Some(n)) = (&r.max_windows_per_request, max_windows_per_request)
            && n != 1
        {
            let message = if one_bucket {
                "granularity `all` gives one bucket per request, so expected 1 (or no value)"
            } else {
                "this job gets one bucket per request, so expected 1 (or no value)"
            };
            let hint = if endpoint == Endpoint::Events {
                " (an events job covers several windows per request only with `bucketed: true`)"
            } else {
                ""
            };
            ctx.error(v.referenced, per_request_path, format!("{message}, found `{n}`{hint}"));
            max_windows_per_request = None;
        } else {
            max_windows_per_request = max_windows_per_request.map(|_| 1);
        }
    }

    let schedule = r.schedule.as_ref().map(|v| {
        let (text, shown) = ctx.text_shown("schedule", v)?;
        // The zone only moves fire times; any valid zone checks the expression.
        let problem = match crate::schedule_time::Schedule::parse(text.trim(), chrono_tz::UTC) {
            Ok(schedule) if schedule.next_after(chrono::Utc::now()).is_some() => return Some(text.trim().to_string()),
            Ok(_) => format!(
                "cron expression {shown} never fires (no date matches it, like 30 February): the job would never run"
            ),
            // The parser's message quotes the expression: only when it is the file's own text.
            Err(e) if shown == quoted(text.trim()) || shown == quoted(&text) => e,
            Err(_) => format!(
                "{shown} is not a valid cron expression (expected six fields, seconds first, e.g. `0 30 6 * * *`)"
            ),
        };
        ctx.error(v.referenced, "schedule", problem);
        None
    });
    let settle_secs = ctx.integer("settle_secs", r.settle_secs.as_ref(), 0, 7 * 86_400, 0);
    let include_partial = r.include_partial.as_ref().is_some_and(|v| v.value);
    let job = (|| {
        Some(Job {
            name: name.clone()?.value,
            file: file.to_path_buf(),
            description: description?,
            source: source.clone()?,
            endpoint: known.then_some(endpoint)?,
            kind: job_kind?,
            window: window?,
            granularity: granularity?,
            scopes: scopes?,
            rooms: rooms?,
            aggregations: aggregations?,
            filters: filters?,
            start: start?,
            lookback_windows: u32::try_from(lookback_windows?).ok()?,
            schedule: schedule.map_or(Some(None), |s| s.map(Some))?,
            table: table.clone()?.value,
            time_zone: time_zone?,
            max_windows_per_request: u32::try_from(max_windows_per_request?).ok()?,
            settle_secs: settle_secs?,
            include_partial,
            params: params?,
            bucketed: bucketed?,
        })
    })();
    let window_failure = job.as_ref().and_then(|job| {
        let account = info?.account_time_zone?;
        zone_mismatch(ctx, job, account, r.time_zone.as_ref().map_or(at, |v| v.referenced), r.time_zone.is_some())
    });
    JobOutcome { name, table, source, job, window_failure }
}

/// A chat summary job whose windows would split the buckets of its Thulium account's zone, at
/// the job's `time_zone` (or its mapping when the zone is chatetl.yaml's default).
fn zone_mismatch(ctx: &Ctx, job: &Job, account: Tz, at: Location, own_zone: bool) -> Option<Diagnostic> {
    let EndpointParams::ChatSummary { aggregate_by, .. } = &job.params else { return None };
    let split = bucket_split(job.window, job.time_zone, account, *aggregate_by, job.start, chrono::Utc::now())?;
    let whose = if own_zone { "the job's zone" } else { "the job's zone (chatetl.yaml's time_zone)" };
    let message = format!(
        "{whose} {} does not fit the {} buckets of source `{}`, whose account zone is {}: the window starting \
         {} ({}) starts at {} of the account's clock, inside a bucket, so every window would fail; give the job \
         `time_zone: {}` (or set the source's `time_zone` to the account's real zone)",
        job.time_zone.name(),
        split.bucket,
        job.source,
        account.name(),
        split.job_clock.format("%Y-%m-%d %H:%M"),
        job.time_zone.name(),
        split.account_clock.format("%Y-%m-%d %H:%M"),
        account.name(),
    );
    Some(ctx.diagnostic(at, "time_zone", message))
}

/// `kind`: optional for windowed endpoints, required (`snapshot`) for snapshot ones, so a reader
/// of the file sees that the job has no history.
fn job_kind(ctx: &mut Ctx, at: Location, value: Option<&Spanned<String>>, endpoint: Endpoint) -> Option<JobKind> {
    let options = [("windowed", JobKind::Windowed), ("snapshot", JobKind::Snapshot)];
    let expected = endpoint.kind();
    let name = |k: JobKind| if k == JobKind::Snapshot { "snapshot" } else { "windowed" };
    let Some(value) = value else {
        if expected == JobKind::Snapshot {
            let message = format!(
                "required key is missing (endpoint `{}` has no history: expected `kind: snapshot`)",
                endpoint.name()
            );
            ctx.error(at, "kind", message);
            return None;
        }
        return Some(JobKind::Windowed);
    };
    let kind = ctx.choice("kind", value, "job kind", &options)?;
    if kind != expected {
        let message = format!("endpoint `{}` makes {} jobs, not {}", endpoint.name(), name(expected), name(kind));
        ctx.error(value.referenced, "kind", message);
        return None;
    }
    Some(kind)
}

/// `bucketed` (events: default the source's `assume.bucketed_events`; workflow: only `false`,
/// since 001's workflow body has no granularity or zone to bucket by; chat_sessions: for day
/// windows, as its `day` buckets in the query's zone are what 001 asks for and its day jobs
/// already read, so a day job of granularity `all` asks for day buckets over several windows;
/// hour windows keep one `all` query per window, since an hour bucket of a zone with a
/// 30-minute change (Australia/Lord_Howe) need not be a window; false for other endpoints,
/// which never take the key).
fn job_bucketed(
    ctx: &mut Ctx,
    value: Option<&Spanned<bool>>,
    endpoint: Endpoint,
    window: Option<WindowUnit>,
    assume: SourceAssumptions,
) -> Option<bool> {
    if endpoint == Endpoint::ChatSessions {
        return Some(window == Some(WindowUnit::Day));
    }
    let events = endpoint == Endpoint::Events;
    let Some(v) = value else { return Some(events && assume.bucketed_events) };
    if endpoint == Endpoint::Workflow && v.value {
        let message = "a workflow query cannot be bucketed (001's workflow body has a `timespan` but no granularity \
                       or time zone to bucket by; see src/source/giosg/workflow.rs): expected false (or no value)";
        ctx.error(v.referenced, "bucketed", message);
        return None;
    }
    Some(events && v.value)
}

/// Whether a chat summary request returns one bucket for its whole range (so it covers one window).
pub fn one_bucket_per_request(aggregate_by: AggregateBy) -> bool {
    matches!(aggregate_by, AggregateBy::HourOfDay | AggregateBy::Week | AggregateBy::Month | AggregateBy::Year)
}

/// A list of non-empty strings without repeats.
pub(super) fn string_list(
    ctx: &mut Ctx,
    key: &str,
    value: Option<&Spanned<Vec<Spanned<String>>>>,
    what: &str,
) -> Option<Vec<String>> {
    let Some(list) = value else { return Some(Vec::new()) };
    let mut out = Some(Vec::<String>::new());
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let v = ctx.non_empty(&path, item, what).map(|v| v.trim().to_string());
        match (v, &mut out) {
            (Some(v), Some(out)) if out.contains(&v) => {
                let shown = ctx.shown(&item.value, &v);
                ctx.error(item.referenced, &path, format!("{shown} is listed twice"));
            }
            (Some(v), Some(out)) => out.push(v),
            _ => out = None,
        }
    }
    out
}

/// The job's source name and, when known, what is known of it.
fn job_source(ctx: &mut Ctx, value: &Spanned<String>, defaults: &JobDefaults) -> (Option<String>, Option<SourceInfo>) {
    let Some((name, shown)) = ctx.text_shown("source", value) else { return (None, None) };
    let Some(sources) = &defaults.sources else { return (Some(name), None) };
    match sources.get(&name) {
        Some(info) => (Some(name), Some(*info)),
        None => {
            let names: Vec<&str> = sources.keys().map(String::as_str).collect();
            let defined = if names.is_empty() { "no sources".to_string() } else { one_of(&names) };
            ctx.error(value.referenced, "source", format!("unknown source {shown} (chatetl.yaml defines {defined})"));
            (None, None)
        }
    }
}

/// The endpoint, among those of the source's kind (of every kind when that is unknown).
fn job_endpoint(ctx: &mut Ctx, value: &Spanned<String>, kind: Option<SourceKind>) -> Option<Endpoint> {
    let choices = |endpoints: &mut dyn Iterator<Item = Endpoint>| -> Vec<(&'static str, Endpoint)> {
        endpoints.map(|e| (e.name(), e)).collect()
    };
    match kind {
        Some(kind) => {
            let kind_name = SOURCE_KINDS.iter().find(|(_, k)| *k == kind).map_or("this", |(n, _)| *n);
            let options = choices(&mut Endpoint::of(kind));
            ctx.choice("endpoint", value, &format!("endpoint for a {kind_name} source"), &options)
        }
        None => ctx.choice("endpoint", value, "endpoint", &choices(&mut Endpoint::ALL.iter().copied())),
    }
}

/// `granularity`, defaulting to the window and never longer than it.
fn job_granularity(ctx: &mut Ctx, value: Option<&Spanned<String>>, window: Option<WindowUnit>) -> Option<Granularity> {
    let Some(value) = value else {
        return window.map(|w| match w {
            WindowUnit::Hour => Granularity::Hour,
            WindowUnit::Day => Granularity::Day,
            WindowUnit::Snapshot => Granularity::All,
        });
    };
    let options = [("all", Granularity::All), ("hour", Granularity::Hour), ("day", Granularity::Day)];
    let granularity = ctx.choice("granularity", value, "granularity", &options)?;
    if window == Some(WindowUnit::Hour) && granularity == Granularity::Day {
        ctx.error(value.referenced, "granularity", "`day` buckets do not fit in an hour window (expected all or hour)");
        return None;
    }
    Some(granularity)
}

fn job_scopes(ctx: &mut Ctx, value: Option<&Spanned<Vec<Spanned<String>>>>) -> Option<Vec<Scope>> {
    let Some(list) = value else { return Some(vec![Scope::Org]) };
    let options = [("org", Scope::Org), ("team", Scope::Team), ("user", Scope::User)];
    if list.value.is_empty() {
        ctx.error(list.referenced, "scopes", "expected at least one of org, team or user");
        return None;
    }
    let mut scopes = Some(Vec::new());
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("scopes[{i}]");
        match (ctx.choice(&path, item, "scope", &options), &mut scopes) {
            (Some(scope), Some(scopes)) if scopes.contains(&scope) => {
                ctx.error(item.referenced, &path, format!("scope `{}` is listed twice", scope.as_str()));
            }
            (Some(scope), Some(scopes)) => scopes.push(scope),
            _ => scopes = None,
        }
    }
    scopes
}

fn job_rooms(ctx: &mut Ctx, value: Option<&Spanned<Vec<Spanned<String>>>>) -> Option<Vec<String>> {
    string_list(ctx, "rooms", value, "a room id")
}

fn job_aggregations(
    ctx: &mut Ctx,
    list: &Spanned<Vec<Spanned<RawAggregation>>>,
    endpoint: Endpoint,
) -> Option<Vec<JobAggregation>> {
    if list.value.is_empty() {
        ctx.error(list.referenced, "aggregations", "expected at least one aggregation");
        return None;
    }
    if endpoint == Endpoint::Workflow && list.value.len() > 1 {
        ctx.error(list.referenced, "aggregations", "a workflow query computes one average: expected one aggregation");
        return None;
    }
    let mut columns: HashMap<String, usize> = HashMap::new();
    let mut metrics: HashMap<String, usize> = HashMap::new();
    let mut out = Some(Vec::new());
    for (i, raw) in list.value.iter().enumerate() {
        let Some(aggregation) = job_aggregation(ctx, i, raw, &mut columns, endpoint) else {
            out = None;
            continue;
        };
        let metric = aggregation.metric_name();
        if let Some(first) = metrics.get(&metric) {
            let message =
                format!("metric `{metric}` is already computed by aggregations[{first}] (the API returns it once)");
            ctx.error(raw.referenced, &format!("aggregations[{i}]"), message);
            out = None;
            continue;
        }
        metrics.insert(metric, i);
        if let Some(out) = &mut out {
            out.push(aggregation);
        }
    }
    out
}

/// Aggregation `i`; `columns` holds the columns of the earlier ones.
///
/// chat_sessions: any type on the fields 002 allows. events: `count`, `sum` or `avg` of the
/// events' value, without a field. workflow: `avg` of one field (`dim1` in 001).
fn job_aggregation(
    ctx: &mut Ctx,
    i: usize,
    raw: &Spanned<RawAggregation>,
    columns: &mut HashMap<String, usize>,
    endpoint: Endpoint,
) -> Option<JobAggregation> {
    let at = raw.referenced;
    let r = &raw.value;
    let path = |key: &str| format!("aggregations[{i}].{key}");
    let allowed = endpoint.info().aggregations;
    let kinds: Vec<(&str, AggregationKind)> = allowed.iter().map(|k| (k.api_name(), *k)).collect();
    let kind_names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();

    let kind = ctx
        .required(at, &path("type"), &r.kind, &one_of(&kind_names))
        .and_then(|v| ctx.choice(&path("type"), v, "aggregation type", &kinds));
    let field = match (endpoint, &r.field, kind) {
        (Endpoint::Events, Some(v), _) => {
            ctx.error(v.referenced, &path("field"), "events aggregate their value: expected no field");
            None
        }
        (Endpoint::Events, None, _) => Some(None),
        (Endpoint::Workflow, Some(v), _) => {
            ctx.non_empty(&path("field"), v, "the field averaged, e.g. dim1").map(|f| Some(f.trim().to_string()))
        }
        (Endpoint::Workflow, None, _) => {
            ctx.error(at, &path("field"), "`avg` needs a field (001 averages `dim1`)");
            None
        }
        (_, Some(v), _) => aggregation_field(ctx, &path("field"), v, kind).map(Some),
        (_, None, Some(AggregationKind::Count)) => Some(None),
        (_, None, Some(k)) => {
            let message =
                format!("`{}` needs a field (expected one of {})", k.api_name(), k.allowed_fields().join(", "));
            ctx.error(at, &path("field"), message);
            None
        }
        (_, None, None) => None,
    };
    let column = aggregation_column(ctx, &path("column"), at, &r.column, i, columns);
    Some(JobAggregation { kind: kind?, field: field?, column: column? })
}

/// The dimension an aggregation of `kind` reads: any known one for `count` (or an unknown kind).
fn aggregation_field(
    ctx: &mut Ctx,
    path: &str,
    value: &Spanned<String>,
    kind: Option<AggregationKind>,
) -> Option<String> {
    let (field, shown) = ctx.text_shown(path, value)?;
    let field = field.trim().to_string();
    let restricted = kind.filter(|k| *k != AggregationKind::Count);
    let allowed: Vec<&str> = match restricted {
        Some(k) => k.allowed_fields().to_vec(),
        None => DIMENSIONS.iter().map(|(name, _)| *name).collect(),
    };
    let problem = match restricted {
        _ if crate::query::dimension_kind(&field).is_none() => {
            format!("unknown dimension {shown} (expected {})", one_of(&allowed))
        }
        Some(k) if !allowed.contains(&field.as_str()) => {
            format!("`{}` is not available for {shown} (allowed: {})", k.api_name(), allowed.join(", "))
        }
        _ => return Some(field),
    };
    ctx.error(value.referenced, path, problem);
    None
}

/// An aggregation's output column: an identifier, not reserved, not used by an earlier one.
fn aggregation_column(
    ctx: &mut Ctx,
    path: &str,
    mapping: Location,
    value: &Option<Spanned<String>>,
    i: usize,
    columns: &mut HashMap<String, usize>,
) -> Option<String> {
    let value = ctx.required(mapping, path, value, "the output column, a lowercase identifier")?;
    let column = ctx.identifier(path, value)?;
    let shown = ctx.shown(&value.value, &column);
    let problem = if RESERVED_COLUMNS.contains(&column.as_str()) {
        format!("{shown} is written by chatetl itself (reserved: {})", RESERVED_COLUMNS.join(", "))
    } else if let Some(first) = columns.get(&column) {
        format!("column {shown} is already used by aggregations[{first}]")
    } else {
        columns.insert(column.clone(), i);
        return Some(column);
    };
    ctx.error(value.referenced, path, problem);
    None
}

#[cfg(test)]
mod tests {
    use super::ENDPOINT_KEYS;
    use crate::config::{Endpoint, WINDOWED_KEYS};

    #[test]
    fn the_raw_job_reads_exactly_the_keys_the_registry_names() {
        let read: Vec<&str> = ENDPOINT_KEYS.iter().map(|(k, _)| *k).collect();
        let mut named: Vec<&str> = WINDOWED_KEYS.to_vec();
        named.extend(Endpoint::ALL.iter().flat_map(|e| e.info().keys.iter().copied()));
        for key in &named {
            assert!(read.contains(key), "registry key `{key}` has no field in RawJob (add it to ENDPOINT_KEYS)");
        }
        for key in &read {
            assert!(named.contains(key), "`{key}` is read but no endpoint of the registry takes it");
        }
    }
}
