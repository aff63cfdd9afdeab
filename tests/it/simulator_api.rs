//! The simulated chat_sessions endpoint against values computed directly from the dumped dataset:
//! every granularity, group_by team/user/room, every filter type with strict and non-strict
//! bounds, every aggregation, both DST changes of Europe/Helsinki and rows a millisecond from
//! midnight; then the docs' own bodies (001 and 002), auth, and malformed queries.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::util::{Row, TOKEN, dump, post_query, read_dump, serve};

const HEL: Tz = chrono_tz::Europe::Helsinki;

#[derive(Clone, Copy)]
enum Metric {
    Count,
    Sum(&'static str),
    Avg(&'static str),
    Distinct(&'static str),
}

struct Case {
    name: &'static str,
    granularity: &'static str,
    group_by: &'static [&'static str],
    aggregations: Value,
    filters: Value,
    /// The same filter, written by hand in Rust.
    keep: fn(&Row) -> bool,
    metrics: &'static [Metric],
}

fn midnight(d: NaiveDate) -> String {
    HEL.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

/// The bucket label of instant `t`, computed from the wall clock without the simulator's code.
fn label(g: &str, t: DateTime<Utc>, interval_start: &str) -> String {
    let l = t.with_timezone(&HEL);
    let d = l.date_naive();
    match g {
        "all" => interval_start.to_string(),
        "hour" => l.format("%Y-%m-%dT%H:00:00.000%:z").to_string(),
        "day" => midnight(d),
        "week" => midnight(d - Duration::days(d.weekday().num_days_from_monday() as i64)),
        "month" => midnight(d.with_day(1).unwrap()),
        g => panic!("no label for {g}"),
    }
}

fn group_values(row: &Row, dim: &str) -> Vec<Value> {
    match &row.v[dim] {
        Value::Array(a) if a.is_empty() => vec![Value::Null],
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    }
}

/// Expected metrics per (bucket label, group key), from the dump.
/// Keys are (bucket label, group values as JSON text).
fn expected(rows: &[Row], org: &str, start: &str, end: &str, case: &Case) -> BTreeMap<(String, String), Vec<Value>> {
    let s = DateTime::parse_from_rfc3339(start).unwrap().with_timezone(&Utc);
    let e = DateTime::parse_from_rfc3339(end).unwrap().with_timezone(&Utc);
    let mut groups: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for row in
        rows.iter().filter(|r| r.s("owner_organization_id") == org && r.time >= s && r.time <= e && (case.keep)(r))
    {
        let mut keys: Vec<Vec<Value>> = vec![vec![]];
        for dim in case.group_by {
            keys = keys
                .into_iter()
                .flat_map(|k| group_values(row, dim).into_iter().map(move |v| [k.clone(), vec![v]].concat()))
                .collect();
        }
        for k in keys {
            groups.entry((label(case.granularity, row.time, start), Value::from(k).to_string())).or_default().push(row);
        }
    }
    groups
        .into_iter()
        .map(|(k, rows)| {
            let vals = case
                .metrics
                .iter()
                .map(|m| match m {
                    Metric::Count => json!(rows.len()),
                    Metric::Sum(f) => json!(rows.iter().map(|r| r.n(f)).sum::<f64>()),
                    Metric::Avg(f) => json!(rows.iter().map(|r| r.n(f)).sum::<f64>() / rows.len() as f64),
                    Metric::Distinct(f) => {
                        let set: std::collections::HashSet<String> = rows.iter().flat_map(|r| r.list(f)).collect();
                        json!(set.len())
                    }
                })
                .collect();
            (k, vals)
        })
        .collect()
}

fn close(metric: Metric, got: &Value, want: &Value) -> bool {
    match metric {
        Metric::Count => got.as_u64() == want.as_u64(),
        Metric::Sum(_) | Metric::Avg(_) => {
            let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
            (g - w).abs() <= 1e-9 * w.abs().max(1.0)
        }
        Metric::Distinct(_) => {
            let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
            (g - w).abs() <= 0.02 * w.max(1.0)
        }
    }
}

/// Sends `case` and compares every bucket with the dump. Returns the number of non-empty buckets.
async fn check(
    sim: &chatetl::simulator::RunningSimulator,
    rows: &[Row],
    org: &str,
    start: &str,
    end: &str,
    case: &Case,
) -> usize {
    let body = json!({
        "interval": {"start": start, "end": end, "time_zone": "Europe/Helsinki"},
        "granularity": case.granularity,
        "group_by": case.group_by,
        "aggregations": case.aggregations,
        "filters": case.filters,
    });
    let (status, resp) = post_query(sim, org, Some(TOKEN), &body.to_string()).await;
    assert_eq!(status, 200, "{}: {resp}", case.name);
    let fields: Vec<&str> = resp["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(fields[0], "start_time", "{}", case.name);
    assert_eq!(&fields[1..1 + case.group_by.len()], case.group_by, "{}", case.name);
    assert_eq!(fields.len(), 1 + case.group_by.len() + case.metrics.len(), "{}", case.name);

    let want = expected(rows, org, start, end, case);
    let mut seen = 0;
    for line in resp["data"].as_array().unwrap() {
        let line = line.as_array().unwrap();
        let n = case.group_by.len();
        let key = (line[0].as_str().unwrap().to_string(), Value::from(line[1..1 + n].to_vec()).to_string());
        let got = &line[1 + n..];
        match want.get(&key) {
            Some(vals) => {
                seen += 1;
                for ((m, g), w) in case.metrics.iter().zip(got).zip(vals) {
                    assert!(close(*m, g, w), "{}: bucket {key:?}: got {g}, want {w}", case.name);
                }
            }
            None => {
                // Only an empty bucket of an ungrouped query may be absent from the dump.
                assert!(case.group_by.is_empty(), "{}: unexpected group {key:?}", case.name);
                for (m, g) in case.metrics.iter().zip(got) {
                    let empty = match m {
                        Metric::Avg(_) => g.is_null(),
                        _ => g.as_f64() == Some(0.0),
                    };
                    assert!(empty, "{}: bucket {key:?} has no rows but {g}", case.name);
                }
            }
        }
    }
    assert_eq!(seen, want.len(), "{}: every expected bucket is answered", case.name);
    seen
}

fn is_real(r: &Row) -> bool {
    matches!(r.s("chat_type"), "visitor" | "external")
        && r.n("user_message_count") >= 2.0
        && r.n("visitor_message_count") >= 1.0
}

fn real_chat_filter(scope: &str) -> Value {
    json!({"type": "and", "fields": [
        {"type": "or", "fields": [
            {"type": "selector", "dimension": "chat_type", "value": "visitor"},
            {"type": "selector", "dimension": "chat_type", "value": "external"}]},
        {"type": "bound", "dimension": "user_message_count", "lower": 2, "ordering": "numeric"},
        {"type": "bound", "dimension": "visitor_message_count", "lower": 1, "ordering": "numeric"},
        {"type": "selector", "dimension": "scope", "value": scope}]})
}

fn scope(s: &str) -> Value {
    json!({"type": "selector", "dimension": "scope", "value": s})
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "real chats per day, org scope",
            granularity: "day",
            group_by: &[],
            aggregations: json!([{"type": "count", "fields": ["chat_session_id"]}]),
            filters: real_chat_filter("org"),
            keep: |r| r.s("scope") == "org" && is_real(r),
            metrics: &[Metric::Count],
        },
        Case {
            name: "messages, sales and chats per team and day",
            granularity: "day",
            group_by: &["team_id"],
            aggregations: json!([{"type": "sum", "fields": ["user_message_count"]}, {"type": "avg", "fields": ["sales"]}, {"type": "count"}]),
            filters: real_chat_filter("team"),
            keep: |r| r.s("scope") == "team" && is_real(r),
            metrics: &[Metric::Sum("user_message_count"), Metric::Avg("sales"), Metric::Count],
        },
        Case {
            name: "distinct visitors and sessions per user and day",
            granularity: "day",
            group_by: &["user_id"],
            aggregations: json!([{"type": "hyperUnique", "fields": ["visitor_ids", "chat_session_id"]}, {"type": "sum", "fields": ["order_count"]}]),
            filters: scope("user"),
            keep: |r| r.s("scope") == "user",
            metrics: &[
                Metric::Distinct("visitor_ids"),
                Metric::Distinct("chat_session_id"),
                Metric::Sum("order_count"),
            ],
        },
        Case {
            name: "visitor chats per room (multi-value group_by)",
            granularity: "day",
            group_by: &["room_ids"],
            aggregations: json!([{"type": "count"}]),
            filters: json!({"type": "and", "fields": [scope("org"), {"type": "selector", "dimension": "chat_type", "value": "visitor"}]}),
            keep: |r| r.s("scope") == "org" && r.s("chat_type") == "visitor",
            metrics: &[Metric::Count],
        },
        Case {
            name: "weekly averages",
            granularity: "week",
            group_by: &[],
            aggregations: json!([{"type": "avg", "fields": ["visitor_message_count", "user_message_count"]}, {"type": "count"}]),
            filters: scope("org"),
            keep: |r| r.s("scope") == "org",
            metrics: &[Metric::Avg("visitor_message_count"), Metric::Avg("user_message_count"), Metric::Count],
        },
        Case {
            name: "monthly sales",
            granularity: "month",
            group_by: &[],
            aggregations: json!([{"type": "sum", "fields": ["sales", "subscription_sales"]}]),
            filters: scope("org"),
            keep: |r| r.s("scope") == "org",
            metrics: &[Metric::Sum("sales"), Metric::Sum("subscription_sales")],
        },
        Case {
            name: "all: distinct visitor sessions",
            granularity: "all",
            group_by: &[],
            aggregations: json!([{"type": "hyperUnique", "fields": ["visitor_session_ids"]}, {"type": "count"}]),
            filters: scope("org"),
            keep: |r| r.s("scope") == "org",
            metrics: &[Metric::Distinct("visitor_session_ids"), Metric::Count],
        },
        Case {
            name: "numeric bounds, strict and not",
            granularity: "day",
            group_by: &[],
            aggregations: json!([{"type": "count"}]),
            filters: json!({"type": "and", "fields": [scope("org"),
                {"type": "bound", "dimension": "user_message_count", "lower": 2, "lowerStrict": true, "upper": 6, "ordering": "numeric"},
                {"type": "bound", "dimension": "visitor_message_count", "lower": "1", "upper": "4", "upperStrict": true, "ordering": "numeric"}]}),
            keep: |r| {
                let (u, v) = (r.n("user_message_count"), r.n("visitor_message_count"));
                r.s("scope") == "org" && u > 2.0 && u <= 6.0 && (1.0..4.0).contains(&v)
            },
            metrics: &[Metric::Count],
        },
        Case {
            name: "lexicographic bound, upper strict, lower inclusive",
            granularity: "day",
            group_by: &["chat_initiator"],
            aggregations: json!([{"type": "count"}]),
            filters: json!({"type": "and", "fields": [scope("org"),
                {"type": "bound", "dimension": "chat_initiator", "lower": "operator", "upper": "visitor", "upperStrict": true}]}),
            keep: |r| r.s("scope") == "org" && r.s("chat_initiator") >= "operator" && r.s("chat_initiator") < "visitor",
            metrics: &[Metric::Count],
        },
        Case {
            name: "lexicographic bound, lower strict",
            granularity: "day",
            group_by: &["chat_type"],
            aggregations: json!([{"type": "count"}]),
            filters: json!({"type": "and", "fields": [scope("org"),
                {"type": "bound", "dimension": "chat_type", "lower": "group", "lowerStrict": true, "ordering": "lexicographic"}]}),
            keep: |r| r.s("scope") == "org" && r.s("chat_type") > "group",
            metrics: &[Metric::Count],
        },
        Case {
            name: "not, or and a multi-value selector",
            granularity: "day",
            group_by: &["chat_type", "chat_initiator"],
            aggregations: json!([{"type": "count"}, {"type": "sum", "fields": ["visitor_message_count"]}]),
            filters: json!({"type": "and", "fields": [
                {"type": "not", "field": {"type": "selector", "dimension": "user_id", "value": null}},
                {"type": "or", "fields": [
                    {"type": "not", "field": {"type": "selector", "dimension": "chat_type", "value": "visitor"}},
                    {"type": "bound", "dimension": "order_count", "lower": 0, "lowerStrict": true, "ordering": "numeric"}]}]}),
            keep: |r| !r.v["user_id"].is_null() && (r.s("chat_type") != "visitor" || r.n("order_count") > 0.0),
            metrics: &[Metric::Count, Metric::Sum("visitor_message_count")],
        },
    ]
}

#[tokio::test]
async fn answers_match_the_dump_across_the_spring_dst_change() {
    let d = dump(&["--seed", "11", "--start", "2024-03-28", "--days", "5", "--sessions-per-day", "150"]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    let (start, end) = ("2024-03-29T00:00:00.000+02:00", "2024-04-01T23:59:59.999+03:00");
    for case in cases() {
        let buckets = check(&sim, &rows, org, start, end, &case).await;
        assert!(buckets > 0, "{}: the dataset has rows for this case", case.name);
    }
}

#[tokio::test]
async fn answers_match_the_dump_across_the_autumn_dst_change_by_hour() {
    let d = dump(&["--seed", "12", "--start", "2024-10-26", "--days", "3", "--sessions-per-day", "300"]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    // 2024-10-27 in Helsinki has 25 hours: 03:00-04:00 happens twice (+03:00, then +02:00).
    let (start, end) = ("2024-10-27T00:00:00.000+03:00", "2024-10-27T23:59:59.999+02:00");
    let case = Case {
        name: "hourly chats on the 25-hour day",
        granularity: "hour",
        group_by: &[],
        aggregations: json!([{"type": "count"}, {"type": "sum", "fields": ["visitor_message_count"]}]),
        filters: scope("org"),
        keep: |r| r.s("scope") == "org",
        metrics: &[Metric::Count, Metric::Sum("visitor_message_count")],
    };
    check(&sim, &rows, org, start, end, &case).await;
    let body = json!({"interval": {"start": start, "end": end, "time_zone": "Europe/Helsinki"}, "granularity": "hour",
        "group_by": [], "aggregations": [{"type": "count"}], "filters": scope("org")});
    let (_, resp) = post_query(&sim, org, Some(TOKEN), &body.to_string()).await;
    let labels: Vec<&str> = resp["data"].as_array().unwrap().iter().map(|l| l[0].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 25);
    assert!(labels.contains(&"2024-10-27T03:00:00.000+03:00") && labels.contains(&"2024-10-27T03:00:00.000+02:00"));
    // Day buckets around the change, checked against the dump too.
    for case in cases().into_iter().take(2) {
        check(&sim, &rows, org, "2024-10-26T00:00:00.000+03:00", "2024-10-28T23:59:59.999+02:00", &case).await;
    }
}

#[tokio::test]
async fn rows_a_millisecond_from_midnight_land_in_their_own_day() {
    let d = dump(&["--seed", "13", "--start", "2024-03-30", "--days", "3", "--sessions-per-day", "20"]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    // 2024-04-01 00:00 Helsinki (+03:00) is 2024-03-31T21:00Z.
    let midnight = Utc.with_ymd_and_hms(2024, 3, 31, 21, 0, 0).unwrap();
    let edge = |r: &Row| r.s("scope") == "org" && r.s("owner_organization_id") == org;
    let before = rows.iter().filter(|r| edge(r) && r.time == midnight - Duration::milliseconds(1)).count();
    let at = rows.iter().filter(|r| edge(r) && r.time == midnight).count();
    assert!(before > 0 && at > 0, "the dataset has sessions at 23:59:59.999 and 00:00:00.000");

    let ask = |start: &str, end: &str| {
        json!({"interval": {"start": start, "end": end, "time_zone": "Europe/Helsinki"}, "granularity": "all",
               "group_by": [], "aggregations": [{"type": "count"}], "filters": scope("org")})
        .to_string()
    };
    let (_, r) =
        post_query(&sim, org, Some(TOKEN), &ask("2024-03-31T23:59:59.999+03:00", "2024-03-31T23:59:59.999+03:00"))
            .await;
    assert_eq!(r["data"][0][1].as_u64().unwrap() as usize, before, "end is inclusive");
    let (_, r) =
        post_query(&sim, org, Some(TOKEN), &ask("2024-04-01T00:00:00.000+03:00", "2024-04-01T00:00:00.000+03:00"))
            .await;
    assert_eq!(r["data"][0][1].as_u64().unwrap() as usize, at);
    let (_, r) =
        post_query(&sim, org, Some(TOKEN), &ask("2024-03-31T00:00:00.000+02:00", "2024-03-31T23:59:59.999+03:00"))
            .await;
    let day = rows
        .iter()
        .filter(|r| edge(r) && r.time.with_timezone(&HEL).date_naive() == NaiveDate::from_ymd_opt(2024, 3, 31).unwrap())
        .count();
    assert_eq!(r["data"][0][1].as_u64().unwrap() as usize, day, "the 23-hour day holds exactly its own rows");
}

fn fixtures() -> Vec<(String, String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api-docs-001");
    let index: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    index
        .into_iter()
        .filter(|e| e["endpoint"] == "chat_sessions")
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_string();
            (file.clone(), std::fs::read_to_string(dir.join(&file)).unwrap(), e)
        })
        .collect()
}

#[tokio::test]
async fn every_chat_sessions_body_of_the_docs_is_accepted_verbatim() {
    // The docs' bodies ask for 2020-10-29..30 and 2019-01-01 (Helsinki).
    let d = dump(&["--seed", "5", "--start", "2020-10-28", "--days", "4"]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    let all = fixtures();
    assert_eq!(all.len(), 28, "21 request bodies and 7 Python examples");
    let room = rows.iter().find(|r| r.s("owner_organization_id") == org).unwrap().list("room_ids")[0].clone();
    for (file, body, meta) in &all {
        let (status, resp) = post_query(&sim, org, Some(TOKEN), body).await;
        assert_eq!(status, 200, "{file}: {resp}");
        let query: Value = serde_json::from_str(body).unwrap();
        let group_by: Vec<Value> = query["group_by"].as_array().unwrap().clone();
        let fields = resp["fields"].as_array().unwrap();
        assert_eq!(fields[0]["name"], "start_time", "{file}");
        for (i, g) in group_by.iter().enumerate() {
            assert_eq!(&fields[1 + i]["name"], g, "{file}");
        }
        // With a real room in place of the placeholder, the real-chat metrics find rows.
        if body.contains("<room_id_here>") && meta["metric"] == "real_chats" {
            let (_, resp) = post_query(&sim, org, Some(TOKEN), &body.replace("<room_id_here>", &room)).await;
            let total: f64 = resp["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_array().unwrap().last().unwrap().as_f64().unwrap_or(0.0))
                .sum();
            assert!(total > 0.0, "{file}: real chats in room {room}");
        }
    }
    // 001's short-chats bodies also require user_message_count >= 2 and visitor_message_count >= 1,
    // which contradicts both branches of their own `or`: evaluated faithfully they always count 0.
    for (file, body, _) in all.iter().filter(|(f, _, _)| f.starts_with("short_chats")) {
        let (_, resp) = post_query(&sim, org, Some(TOKEN), body).await;
        for line in resp["data"].as_array().unwrap() {
            assert_eq!(line.as_array().unwrap().last().unwrap(), &json!(0), "{file}");
        }
    }
}

#[tokio::test]
async fn the_docs_example_counts_unique_visitors_of_new_years_day() {
    let d = dump(&["--seed", "9", "--start", "2018-12-31", "--days", "3"]);
    let (orgs, rows) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    let body =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api-docs-002/example.json"))
            .unwrap();
    let (status, resp) = post_query(&sim, org, Some(TOKEN), &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["fields"],
        json!([{"name": "start_time", "type": "dimension"}, {"name": "visitor_ids_hyper_unique", "type": "metric"}])
    );
    let day = NaiveDate::from_ymd_opt(2019, 1, 1).unwrap();
    let want: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r.s("owner_organization_id") == org && r.time.with_timezone(&HEL).date_naive() == day)
        .filter(|r| r.s("scope") == "org" && r.s("chat_type") == "visitor" && r.s("chat_initiator") == "visitor")
        .flat_map(|r| r.list("visitor_ids"))
        .collect();
    assert_eq!(resp["data"][0][0], "2019-01-01T00:00:00.000+02:00");
    let got = resp["data"][0][1].as_f64().unwrap();
    assert!(
        want.len() > 10 && (got - want.len() as f64).abs() <= 0.02 * want.len() as f64,
        "got {got}, want {}",
        want.len()
    );
}

#[tokio::test]
async fn auth_answers_401_403_404_as_the_docs_list() {
    let d = dump(&["--seed", "1", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "5"]);
    let (orgs, _) = read_dump(&d.path);
    let (home, other) = (orgs[0]["id"].as_str().unwrap(), orgs[1]["id"].as_str().unwrap());
    let sim = serve(&d.path).await;
    let body =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api-docs-002/example.json"))
            .unwrap();
    assert_eq!(post_query(&sim, home, None, &body).await.0, 401, "no Authorization header");
    assert_eq!(post_query(&sim, home, Some("wrong"), &body).await.0, 401, "unknown key");
    assert_eq!(post_query(&sim, other, Some(TOKEN), &body).await.0, 403, "another organization's data");
    assert_eq!(post_query(&sim, other, Some("sim-token-org1"), &body).await.0, 200, "its own key reads it");
    let (status, resp) = post_query(&sim, "00000000-0000-4000-8000-000000000000", Some(TOKEN), &body).await;
    assert_eq!(status, 404, "{resp}");
    assert_eq!(post_query(&sim, home, Some(TOKEN), &body).await.0, 200);
    // Bearer instead of Token is not giosg's scheme.
    let resp = reqwest::Client::new()
        .post(format!("{}{}", sim.base_url(), chatetl::simulator::chat_sessions_path(home)))
        .bearer_auth(TOKEN)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn malformed_queries_get_400_naming_the_problem() {
    let d = dump(&["--seed", "1", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "5"]);
    let (orgs, _) = read_dump(&d.path);
    let org = orgs[0]["id"].as_str().unwrap();
    let sim = serve(&d.path).await;
    let good: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api-docs-002/example.json"))
            .unwrap(),
    )
    .unwrap();
    let with = |path: &[&str], v: Value| {
        let mut q = good.clone();
        let mut at = &mut q;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        at[path[path.len() - 1]] = v;
        q.to_string()
    };
    let cases = [
        ("{not json".to_string(), "invalid query"),
        (with(&["filters", "type"], json!("regex")), "regex"),
        (with(&["filters", "fields"], json!([{"type": "selector", "dimension": "mood", "value": "x"}])), "mood"),
        (with(&["group_by"], json!(["colour"])), "colour"),
        (with(&["aggregations"], json!([{"type": "sum", "fields": ["chat_type"]}])), "chat_type"),
        (with(&["aggregations"], json!([{"type": "median", "fields": ["sales"]}])), "median"),
        (with(&["granularity"], json!("fortnight")), "fortnight"),
        (with(&["interval", "time_zone"], json!("Mars/Olympus")), "Mars/Olympus"),
        (with(&["interval", "end"], json!("2018-01-01T00:00:00.000+02:00")), "before start"),
        (with(&["interval", "start"], json!("yesterday")), "yesterday"),
        (with(&["granulrity"], json!("day")), "granulrity"),
        (
            with(
                &["filters", "fields"],
                json!([{"type": "bound", "dimension": "sales", "lower": "lots", "ordering": "numeric"}]),
            ),
            "lots",
        ),
    ];
    for (body, needle) in cases {
        let (status, resp) = post_query(&sim, org, Some(TOKEN), &body).await;
        assert_eq!(status, 400, "{body}: {resp}");
        let detail = resp["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{needle} missing from: {detail}");
    }
}
