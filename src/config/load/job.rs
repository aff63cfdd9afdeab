//! The rules of a job file (one metric), given what `chatetl.yaml` provides ([`JobDefaults`]).
//! Checks across job files (duplicate names and tables) are in `load.rs`.

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use serde_saphyr::{Location, Spanned};

use super::ctx::{Ctx, identifier_problem, one_of};
use super::filters;
use super::raw::{RawAggregation, RawJob};
use super::settings::{JobDefaults, SOURCE_KINDS, endpoints};
use crate::config::{Endpoint, Job, JobAggregation, Scope, SourceKind, WindowUnit};
use crate::source::giosg::query::{AggregationKind, DIMENSIONS, Granularity, dimension_kind};

/// Columns chatetl writes itself; no aggregation may use them.
pub const RESERVED_COLUMNS: &[&str] =
    &["bucket_start", "bucket_date", "scope", "team_id", "user_id", "_window_start", "_loaded_at", "_run_id"];

/// Most windows `lookback_windows` and `max_windows_per_request` may name: a year of days, a
/// month of hours.
const MAX_DAY_WINDOWS: u64 = 366;
const MAX_HOUR_WINDOWS: u64 = 31 * 24;

/// A job file's result: its name and table (for the checks across files, even when other keys
/// are wrong) and the job when the whole file is valid.
pub(super) struct JobOutcome {
    pub name: Option<(String, Location)>,
    pub table: Option<(String, Location)>,
    pub job: Option<Job>,
}

/// Validates the job file `file`.
pub(super) fn job(ctx: &mut Ctx, raw: &Spanned<RawJob>, file: &Path, defaults: &JobDefaults) -> JobOutcome {
    let at = raw.referenced;
    let r = &raw.value;

    let name = match &r.name {
        Some(v) => ctx.identifier("name", v).map(|name| (name, v.referenced)),
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match identifier_problem(&stem) {
                None => Some((stem, at)),
                Some(problem) => {
                    ctx.error(at, "name", format!("the job is named after its file, but {problem}; set `name`"));
                    None
                }
            }
        }
    };
    let table = match &r.table {
        Some(v) => ctx.identifier("table", v).map(|table| (table, v.referenced)),
        None => name.clone(),
    };
    let description = ctx
        .required(at, "description", &r.description, "a sentence saying what the metric counts")
        .and_then(|v| ctx.non_empty("description", v, "a description"))
        .map(|d| d.trim().to_string());

    let (source, kind) = match ctx.required(at, "source", &r.source, "the name of a source of chatetl.yaml") {
        None => (None, None),
        Some(v) => job_source(ctx, v, defaults),
    };
    let endpoint = ctx
        .required(at, "endpoint", &r.endpoint, "the API endpoint read, e.g. chat_sessions")
        .and_then(|v| job_endpoint(ctx, v, kind));
    let window = ctx
        .required(at, "window", &r.window, "hour or day")
        .and_then(|v| ctx.choice("window", v, "window", &[("hour", WindowUnit::Hour), ("day", WindowUnit::Day)]));
    let granularity = job_granularity(ctx, r.granularity.as_ref(), window);
    let scopes = job_scopes(ctx, r.scopes.as_ref());
    let rooms = job_rooms(ctx, r.rooms.as_ref());
    let aggregations = ctx
        .required(at, "aggregations", &r.aggregations, "a list of `type`, `field` and `column`")
        .and_then(|v| job_aggregations(ctx, v));
    let filters = match &r.filters {
        None => Some(None),
        Some(node) => filters::filter(ctx, node).map(Some),
    };
    let start = ctx.required(at, "start", &r.start, "the first local date of history, e.g. 2024-01-01").and_then(|v| {
        let text = ctx.text("start", v)?;
        let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok();
        if date.is_none() {
            ctx.error(v.referenced, "start", format!("expected a date like 2024-01-01, found `{text}`"));
        }
        date
    });

    let max_windows = match window {
        Some(WindowUnit::Day) => MAX_DAY_WINDOWS,
        Some(WindowUnit::Hour) => MAX_HOUR_WINDOWS,
        None => u64::from(u32::MAX),
    };
    let lookback_windows = ctx.integer("lookback_windows", r.lookback_windows.as_ref(), 0, max_windows, 1);
    let default_per_request = match window {
        Some(WindowUnit::Hour) => 168,
        _ => 31,
    };
    let per_request_path = "max_windows_per_request";
    let mut max_windows_per_request =
        ctx.integer(per_request_path, r.max_windows_per_request.as_ref(), 1, max_windows, default_per_request);
    if granularity == Some(Granularity::All) {
        if let (Some(v), Some(n)) = (&r.max_windows_per_request, max_windows_per_request)
            && n != 1
        {
            let message = "granularity `all` gives one bucket per request, so expected 1 (or no value)";
            ctx.error(v.referenced, per_request_path, format!("{message}, found `{n}`"));
            max_windows_per_request = None;
        } else {
            max_windows_per_request = max_windows_per_request.map(|_| 1);
        }
    }

    let schedule = r.schedule.as_ref().map(|v| {
        let text = ctx.text("schedule", v)?;
        // The zone only moves fire times; any valid zone checks the expression.
        match crate::schedule_time::Schedule::parse(text.trim(), chrono_tz::UTC) {
            Ok(_) => Some(text.trim().to_string()),
            Err(e) => {
                ctx.error(v.referenced, "schedule", e);
                None
            }
        }
    });
    let settle_secs = ctx.integer("settle_secs", r.settle_secs.as_ref(), 0, 7 * 86_400, 0);
    let include_partial = r.include_partial.as_ref().is_some_and(|v| v.value);
    let time_zone = match &r.time_zone {
        None => defaults.time_zone,
        Some(v) => ctx.time_zone("time_zone", v),
    };

    let job = (|| {
        Some(Job {
            name: name.clone()?.0,
            file: file.to_path_buf(),
            description: description?,
            source: source?,
            endpoint: endpoint?,
            window: window?,
            granularity: granularity?,
            scopes: scopes?,
            rooms: rooms?,
            aggregations: aggregations?,
            filters: filters?,
            start: start?,
            lookback_windows: u32::try_from(lookback_windows?).ok()?,
            schedule: schedule.map_or(Some(None), |s| s.map(Some))?,
            table: table.clone()?.0,
            time_zone: time_zone?,
            max_windows_per_request: u32::try_from(max_windows_per_request?).ok()?,
            settle_secs: settle_secs?,
            include_partial,
        })
    })();
    JobOutcome { name, table, job }
}

/// The job's source name and, when known, its kind.
fn job_source(ctx: &mut Ctx, value: &Spanned<String>, defaults: &JobDefaults) -> (Option<String>, Option<SourceKind>) {
    let Some(name) = ctx.text("source", value) else { return (None, None) };
    let Some(sources) = &defaults.sources else { return (Some(name), None) };
    match sources.get(&name) {
        Some(kind) => (Some(name), *kind),
        None => {
            let names: Vec<&str> = sources.keys().map(String::as_str).collect();
            let defined = if names.is_empty() { "no sources".to_string() } else { one_of(&names) };
            ctx.error(value.referenced, "source", format!("unknown source `{name}` (chatetl.yaml defines {defined})"));
            (None, None)
        }
    }
}

/// The endpoint, among those of the source's kind (of every kind when that is unknown).
fn job_endpoint(ctx: &mut Ctx, value: &Spanned<String>, kind: Option<SourceKind>) -> Option<Endpoint> {
    match kind {
        Some(kind) => {
            let kind_name = SOURCE_KINDS.iter().find(|(_, k)| *k == kind).map_or("this", |(n, _)| *n);
            ctx.choice("endpoint", value, &format!("endpoint for a {kind_name} source"), endpoints(kind))
        }
        None => {
            let all: Vec<(&str, Endpoint)> =
                SOURCE_KINDS.iter().flat_map(|(_, k)| endpoints(*k).iter().copied()).collect();
            ctx.choice("endpoint", value, "endpoint", &all)
        }
    }
}

/// `granularity`, defaulting to the window and never longer than it.
fn job_granularity(ctx: &mut Ctx, value: Option<&Spanned<String>>, window: Option<WindowUnit>) -> Option<Granularity> {
    let Some(value) = value else {
        return window.map(|w| match w {
            WindowUnit::Hour => Granularity::Hour,
            WindowUnit::Day => Granularity::Day,
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
    let Some(list) = value else { return Some(Vec::new()) };
    let mut rooms = Some(Vec::<String>::new());
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("rooms[{i}]");
        let room = ctx.non_empty(&path, item, "a room id").map(|room| room.trim().to_string());
        match (room, &mut rooms) {
            (Some(room), Some(rooms)) if rooms.contains(&room) => {
                ctx.error(item.referenced, &path, format!("room `{room}` is listed twice"));
            }
            (Some(room), Some(rooms)) => rooms.push(room),
            _ => rooms = None,
        }
    }
    rooms
}

fn job_aggregations(ctx: &mut Ctx, list: &Spanned<Vec<Spanned<RawAggregation>>>) -> Option<Vec<JobAggregation>> {
    if list.value.is_empty() {
        ctx.error(list.referenced, "aggregations", "expected at least one aggregation");
        return None;
    }
    let mut columns: HashMap<String, usize> = HashMap::new();
    let mut metrics: HashMap<String, usize> = HashMap::new();
    let mut out = Some(Vec::new());
    for (i, raw) in list.value.iter().enumerate() {
        let Some(aggregation) = job_aggregation(ctx, i, raw, &mut columns) else {
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
fn job_aggregation(
    ctx: &mut Ctx,
    i: usize,
    raw: &Spanned<RawAggregation>,
    columns: &mut HashMap<String, usize>,
) -> Option<JobAggregation> {
    let at = raw.referenced;
    let r = &raw.value;
    let path = |key: &str| format!("aggregations[{i}].{key}");
    let kinds = [AggregationKind::Count, AggregationKind::Sum, AggregationKind::Avg, AggregationKind::HyperUnique]
        .map(|k| (k.api_name(), k));
    let kind_names = kinds.map(|(name, _)| name);

    let kind = ctx
        .required(at, &path("type"), &r.kind, &one_of(&kind_names))
        .and_then(|v| ctx.choice(&path("type"), v, "aggregation type", &kinds));
    let field = match (&r.field, kind) {
        (Some(v), _) => aggregation_field(ctx, &path("field"), v, kind).map(Some),
        (None, Some(AggregationKind::Count)) => Some(None),
        (None, Some(k)) => {
            let message =
                format!("`{}` needs a field (expected one of {})", k.api_name(), k.allowed_fields().join(", "));
            ctx.error(at, &path("field"), message);
            None
        }
        (None, None) => None,
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
    let field = ctx.text(path, value)?.trim().to_string();
    let restricted = kind.filter(|k| *k != AggregationKind::Count);
    let allowed: Vec<&str> = match restricted {
        Some(k) => k.allowed_fields().to_vec(),
        None => DIMENSIONS.iter().map(|(name, _)| *name).collect(),
    };
    let problem = match restricted {
        _ if dimension_kind(&field).is_none() => format!("unknown dimension `{field}` (expected {})", one_of(&allowed)),
        Some(k) if !allowed.contains(&field.as_str()) => {
            format!("`{}` is not available for `{field}` (allowed: {})", k.api_name(), allowed.join(", "))
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
    let problem = if RESERVED_COLUMNS.contains(&column.as_str()) {
        format!("`{column}` is written by chatetl itself (reserved: {})", RESERVED_COLUMNS.join(", "))
    } else if let Some(first) = columns.get(&column) {
        format!("column `{column}` is already used by aggregations[{first}]")
    } else {
        columns.insert(column.clone(), i);
        return Some(column);
    };
    ctx.error(value.referenced, path, problem);
    None
}
