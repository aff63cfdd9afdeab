//! Query fusion: jobs whose requests differ only in their aggregations share one request per
//! chunk. Pure functions, like the rest of [`crate::plan`].
//!
//! Owns [`groups`] (which jobs of a list can share requests) and [`Fused`] (the one job whose
//! requests carry every member's aggregations, and how each member's values are read back out of
//! its rows).
//!
//! Two jobs fuse when everything that shapes their requests is equal: source, endpoint, window
//! unit, granularity, scopes, rooms, filters, zone, `max_windows_per_request`, the endpoint's own
//! parameters, and `settle_secs` and `include_partial` (so the members agree on which windows are
//! complete). What they may differ in: name, table, description, schedule, `start`,
//! `lookback_windows` and aggregations. The comparison is of a
//! copy of each job with those fields cleared, so a field added to [`Job`] later keeps jobs apart
//! until it is listed here: a new field can cost a fusion, never make a wrong one.
//!
//! The fused request asks for each distinct metric once (aggregations are the same metric when
//! their response names are, [`JobAggregation::metric_name`]: a `count` counts rows whatever field
//! it names, api-docs 002, so two counts are one). Whether an endpoint answers several
//! aggregations in one query is the caller's question (`fusable`): api-docs 002 documents it for
//! chat_sessions ("all different aggregations to be calculated in this query"); for events and
//! workflow it is an assumption a source opts into.
//!
//! The answer is read as the fused job's: the empty-bucket rule of `crate::source::giosg` (a line
//! whose count is 0 has counts and sums 0, averages null) applies to every member when one of them
//! has a count. Alone, an average-only job keeps what the upstream answers for an empty bucket
//! (null from Druid and the simulator; 0 from a server that zeroes them), so the two differ only
//! against such a server, where the fused null is the right value.
//!
//! Windows are not part of the key: a fused run loads the union of its members' windows, and
//! each member commits only its own (its watermark, lookback and failed windows stay its own).

use std::collections::BTreeMap;

use crate::config::{Config, Endpoint, Job, JobAggregation, JobKind, SourceConfig};
use crate::row::Row;

/// Whether `job`'s endpoint answers several aggregations in one query, as fusion needs: documented
/// for chat_sessions (api-docs 002); an assumption for events and workflow, which a source opts
/// into (`assume: {fused_events: true}`, checked by `chatetl probe`); the other endpoints take no
/// aggregations.
pub fn fusable(source: &SourceConfig, job: &Job) -> bool {
    match job.endpoint {
        Endpoint::ChatSessions => true,
        Endpoint::Events | Endpoint::Workflow => fused_events(source),
        Endpoint::RealtimeRooms
        | Endpoint::RealtimeUsers
        | Endpoint::ChatSummary
        | Endpoint::Agents
        | Endpoint::Queue
        | Endpoint::Today
        | Endpoint::RightNow => false,
    }
}

/// [`groups`] of `jobs` of `config`, each job's endpoint asked of its own source ([`fusable`]).
pub fn groups_in(config: &Config, jobs: &[&Job]) -> Vec<Vec<usize>> {
    groups(jobs, |job| config.sources.get(&job.source).is_some_and(|s| fusable(s, job)))
}

/// Whether `source` assumes events and workflow answer several aggregations in one query.
fn fused_events(source: &SourceConfig) -> bool {
    source.assume.fused_events
}

/// The jobs of `jobs` (by index) in groups that can share requests, each group in input order,
/// groups ordered by their first member. A job that is a snapshot or that `fusable` refuses is a
/// group of its own.
pub fn groups(jobs: &[&Job], fusable: impl Fn(&Job) -> bool) -> Vec<Vec<usize>> {
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.kind != JobKind::Windowed || job.aggregations.is_empty() || !fusable(job) {
            out.push(vec![i]);
            continue;
        }
        match by_key.get(&key(job)) {
            Some(&g) => out[g].push(i),
            None => {
                by_key.insert(key(job), out.len());
                out.push(vec![i]);
            }
        }
    }
    out
}

/// What makes two jobs' requests equal but for aggregations: the job with everything else cleared.
fn key(job: &Job) -> String {
    let mut shape = job.clone();
    shape.name.clear();
    shape.file = Default::default();
    shape.description.clear();
    shape.table.clear();
    shape.schedule = None;
    shape.start = chrono::NaiveDate::MIN;
    shape.lookback_windows = 0;
    shape.aggregations.clear();
    format!("{shape:?}")
}

/// The request-side job of a fused group, and where each member's values are in its rows.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The first member with every member's distinct metrics as its aggregations, named
    /// `a+b+c` after the members (for logs and errors; it has no table).
    pub job: Job,
    /// Per member, in member order: the index in `job.aggregations` of each of its own
    /// aggregations.
    pub columns: Vec<Vec<usize>>,
}

impl Fused {
    /// The fused job of `members` (at least one, from one group of [`groups`]).
    pub fn new(members: &[&Job]) -> Fused {
        let mut job = members[0].clone();
        job.name = members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join("+");
        let mut aggregations: Vec<JobAggregation> = Vec::new();
        let columns = members
            .iter()
            .map(|m| {
                m.aggregations
                    .iter()
                    .map(|a| {
                        let name = a.metric_name();
                        aggregations.iter().position(|x| x.metric_name() == name).unwrap_or_else(|| {
                            aggregations.push(a.clone());
                            aggregations.len() - 1
                        })
                    })
                    .collect()
            })
            .collect();
        job.aggregations = aggregations;
        Fused { job, columns }
    }

    /// Member `member`'s rows out of the fused job's: the same buckets and keys, its own values.
    pub fn rows_of(&self, member: usize, rows: &[Row]) -> Vec<Row> {
        let columns = &self.columns[member];
        rows.iter()
            .map(|r| Row {
                bucket_start: r.bucket_start,
                dims: r.dims.clone(),
                metrics: columns.iter().map(|&i| r.metrics[i].clone()).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Value;

    fn job(name: &str, aggregations: &str, extra: &str) -> String {
        format!(
            "name: {name}\ndescription: \"d\"\nsource: giosg\nendpoint: chat_sessions\nwindow: day\ngranularity: day\n\
             scopes: [org, user]\nstart: 2024-01-01\n{extra}aggregations:\n{aggregations}\
             filters: {{ type: selector, dimension: chat_type, value: visitor }}\n"
        )
    }

    fn load(files: &[(&str, String)]) -> Vec<Job> {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        crate::config::testing::jobs(&files).into_values().collect()
    }

    #[test]
    fn jobs_differing_only_in_aggregations_and_history_fuse_and_others_do_not() {
        let count = "  - { type: count, field: chat_session_id, column: chats }\n";
        let sum = "  - { type: sum, field: sales, column: sales }\n";
        let jobs = load(&[
            ("a.yaml", job("a", count, "")),
            ("b.yaml", job("b", sum, "lookback_windows: 5\nschedule: \"0 0 1 * * *\"\n")),
            // Another zone is another request.
            ("c.yaml", job("c", sum, "time_zone: Europe/Warsaw\n")),
            ("d.yaml", job("d", count, "start: 2024-06-01\n").replace("start: 2024-01-01\n", "")),
        ]);
        let refs: Vec<&Job> = jobs.iter().collect();
        let names = |g: &[usize]| g.iter().map(|&i| refs[i].name.as_str()).collect::<Vec<_>>();
        let groups = groups(&refs, |_| true);
        let named: Vec<Vec<&str>> = groups.iter().map(|g| names(g)).collect();
        assert_eq!(named, vec![vec!["a", "b", "d"], vec!["c"]]);
        // Refused by the caller (an endpoint without a documented multi-aggregation answer):
        // every job alone.
        assert_eq!(super::groups(&refs, |_| false).len(), 4);
    }

    #[test]
    fn the_fused_job_asks_each_metric_once_and_gives_each_member_its_own_values() {
        let count = "  - { type: count, field: chat_session_id, column: chats }\n";
        let both = "  - { type: sum, field: sales, column: sales }\n  - { type: count, column: n }\n";
        let jobs = load(&[("a.yaml", job("a", count, "")), ("b.yaml", job("b", both, ""))]);
        let fused = Fused::new(&[&jobs[0], &jobs[1]]);
        assert_eq!(fused.job.name, "a+b");
        let metrics: Vec<String> = fused.job.aggregations.iter().map(|a| a.metric_name()).collect();
        assert_eq!(metrics, vec!["count", "sales_sum"]);
        assert_eq!(fused.columns, vec![vec![0], vec![1, 0]]);
        let row = Row {
            bucket_start: chrono::Utc::now(),
            dims: vec![Some("org".into()), None, None],
            metrics: vec![Value::Number(3.0), Value::Number(12.5)],
        };
        let b = fused.rows_of(1, std::slice::from_ref(&row));
        assert_eq!(b[0].metrics, vec![Value::Number(12.5), Value::Number(3.0)]);
        assert_eq!(b[0].dims, row.dims);
        assert_eq!(fused.rows_of(0, &[row])[0].metrics, vec![Value::Number(3.0)]);
    }
}
