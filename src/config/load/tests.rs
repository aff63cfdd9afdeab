//! Loading real files from temporary folders: literal examples, and every kind of problem.

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use serde_json::json;
use tempfile::TempDir;

use super::{ConfigError, load, load_with_env};
use crate::config::{Config, Endpoint, JobAggregation, Scope, SourceAssumptions, SourceKind, Warehouse, WindowUnit};
use crate::query::{AggregationKind, Filter, Granularity, Ordering};

/// The `chatetl.yaml` of the documentation.
const CONFIG: &str = r#"time_zone: Europe/Helsinki        # optional, default "UTC"
jobs_dir: jobs
sources:
  giosg:
    kind: giosg
    base_url: ${GIOSG_BASE_URL:-https://api.giosg.com/}
    token: ${GIOSG_TOKEN}
    organization_id: ${GIOSG_ORG_ID}
    concurrency: 4
    requests_per_second: 5
    timeout_secs: 60
    max_retries: 5
    max_retry_delay_secs: 60
warehouse:
  kind: parquet
  path: ./warehouse
"#;

/// The job file of the documentation.
const REAL_CHATS: &str = r#"name: real_chats
description: Real chats (visitor or external, at least two user messages)
source: giosg
endpoint: chat_sessions
window: day
granularity: day
scopes: [org, team, user]
rooms: [ "2b5a4e8c-0000-4000-8000-000000000001" ]
aggregations:
  - type: count
    field: chat_session_id
    column: real_chats
filters:
  type: and
  fields:
    - type: or
      fields:
        - {type: selector, dimension: chat_type, value: visitor}
        - {type: selector, dimension: chat_type, value: external}
    - {type: bound, dimension: user_message_count, lower: 2, ordering: numeric}
start: 2024-01-01
lookback_windows: 1
schedule: "0 15 6 * * *"
table: real_chats
time_zone: Europe/Helsinki
max_windows_per_request: 31
"#;

/// A small valid job, to be broken line by line in tests.
const SMALL_JOB: &str = "description: Chats
source: giosg
endpoint: chat_sessions
window: day
aggregations:
  - {type: count, column: chats}
start: 2024-01-01
";

/// A config folder with `chatetl.yaml` and `jobs/<name>` files.
fn folder(config: &str, jobs: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatetl.yaml"), config).unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    for (name, text) in jobs {
        std::fs::write(dir.path().join("jobs").join(name), text).unwrap();
    }
    dir
}

/// The environment the documentation's config needs.
fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([("GIOSG_TOKEN", "tok-secret-123"), ("GIOSG_ORG_ID", "org-1")])
}

fn load_in(dir: &TempDir, env: &HashMap<&str, &str>) -> Result<Config, ConfigError> {
    load_with_env(&dir.path().join("chatetl.yaml"), &|name| env.get(name).map(|v| v.to_string()))
}

/// Every diagnostic as `file:line:col: message`, the file relative to `dir`.
fn errors_in(dir: &TempDir, env: &HashMap<&str, &str>) -> Vec<String> {
    let error = load_in(dir, env).expect_err("the files should not load");
    error
        .diagnostics
        .iter()
        .map(|d| {
            let file = d.file.strip_prefix(dir.path()).unwrap_or(&d.file);
            format!("{}:{}:{}: {}", file.display(), d.line, d.column, d.message)
        })
        .collect()
}

/// The single diagnostic of `errors`, which must start with `prefix`.
#[track_caller]
fn assert_only(errors: &[String], prefix: &str) {
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with(prefix), "expected `{prefix}…`, got {errors:#?}");
}

#[test]
fn config_loads_the_documented_example() {
    let dir = folder(CONFIG, &[("real_chats.yaml", REAL_CHATS)]);
    let config = load_in(&dir, &env()).unwrap();

    assert_eq!(config.path, dir.path().join("chatetl.yaml"));
    assert_eq!(config.default_time_zone, chrono_tz::Europe::Helsinki);
    assert_eq!(config.jobs_dir, dir.path().join("jobs"));
    let Warehouse::Parquet { path } = &config.warehouse else { panic!("{:?}", config.warehouse) };
    assert_eq!(path, &dir.path().join("./warehouse"));

    let source = &config.sources["giosg"];
    assert_eq!(source.name, "giosg");
    assert_eq!(source.kind, SourceKind::Giosg);
    assert_eq!(source.base_url, "https://api.giosg.com");
    assert_eq!(source.credentials, crate::config::Credentials::Token(crate::config::Secret::new("tok-secret-123")));
    assert_eq!(source.organization_id, "org-1");
    assert_eq!(source.concurrency, 4);
    assert_eq!(source.requests_per_second, 5.0);
    assert_eq!((source.timeout_secs, source.max_retries, source.max_retry_delay_secs), (60, 5, 60));

    assert_eq!(config.jobs.keys().collect::<Vec<_>>(), ["real_chats"]);
    let job = &config.jobs["real_chats"];
    assert_eq!(job.name, "real_chats");
    assert_eq!(job.file, dir.path().join("jobs/real_chats.yaml"));
    assert_eq!(job.description, "Real chats (visitor or external, at least two user messages)");
    assert_eq!(job.source, "giosg");
    assert_eq!(job.endpoint, Endpoint::ChatSessions);
    assert_eq!(job.window, WindowUnit::Day);
    assert_eq!(job.granularity, Granularity::Day);
    assert_eq!(job.scopes, [Scope::Org, Scope::Team, Scope::User]);
    assert_eq!(job.rooms, ["2b5a4e8c-0000-4000-8000-000000000001"]);
    assert_eq!(
        job.aggregations,
        [JobAggregation {
            kind: AggregationKind::Count,
            field: Some("chat_session_id".into()),
            column: "real_chats".into()
        }]
    );
    let selector = |value: &str| Filter::Selector { dimension: "chat_type".into(), value: json!(value) };
    let expected_filter = Filter::And {
        fields: vec![
            Filter::Or { fields: vec![selector("visitor"), selector("external")] },
            Filter::Bound {
                dimension: "user_message_count".into(),
                lower: Some(json!(2)),
                upper: None,
                lower_strict: false,
                upper_strict: false,
                ordering: Ordering::Numeric,
            },
        ],
    };
    assert_eq!(job.filters, Some(expected_filter));
    assert_eq!(job.start, NaiveDate::from_ymd_opt(2024, 1, 1).unwrap());
    assert_eq!(job.lookback_windows, 1);
    assert_eq!(job.schedule.as_deref(), Some("0 15 6 * * *"));
    assert_eq!(job.table, "real_chats");
    assert_eq!(job.time_zone, chrono_tz::Europe::Helsinki);
    assert_eq!(job.max_windows_per_request, 31);
}

#[test]
fn config_defaults_fill_what_a_minimal_job_leaves_out() {
    let config = "sources:\n  giosg:\n    kind: giosg\n    base_url: http://127.0.0.1:9/\n    token: t\n    \
                  organization_id: 7\nwarehouse:\n  kind: postgres\n  url: postgres://u:p@localhost/db\n";
    let dir = folder(config, &[("hourly_chats.yaml", &SMALL_JOB.replace("window: day", "window: hour"))]);
    // No `${VAR}` anywhere: the process environment is not consulted.
    let config = load(&dir.path().join("chatetl.yaml")).unwrap();

    assert_eq!(config.default_time_zone, chrono_tz::UTC);
    let source = &config.sources["giosg"];
    assert_eq!((source.base_url.as_str(), source.organization_id.as_str()), ("http://127.0.0.1:9", "7"));
    assert_eq!((source.concurrency, source.requests_per_second, source.timeout_secs), (4, 5.0, 60));
    assert_eq!((source.max_retries, source.max_retry_delay_secs), (5, 60));
    assert_eq!((source.max_response_bytes, source.max_pages), (64 * 1024 * 1024, 1000));
    let Warehouse::Postgres { schema, .. } = &config.warehouse else { panic!("{:?}", config.warehouse) };
    assert_eq!(schema, "public");

    let job = &config.jobs["hourly_chats"];
    assert_eq!((job.name.as_str(), job.table.as_str()), ("hourly_chats", "hourly_chats"));
    assert_eq!(job.granularity, Granularity::Hour);
    assert_eq!(job.scopes, [Scope::Org]);
    assert!(job.rooms.is_empty() && job.filters.is_none() && job.schedule.is_none());
    assert_eq!(job.aggregations[0].field, None);
    assert_eq!((job.lookback_windows, job.max_windows_per_request), (1, 168));
    assert_eq!(job.time_zone, chrono_tz::UTC);
}

#[test]
fn config_rejects_a_misspelled_key_with_its_location() {
    let job = SMALL_JOB.replace("window: day\n", "window: day\ngranulrity: day\n");
    let dir = folder(CONFIG, &[("chats.yaml", &job)]);
    let errors = errors_in(&dir, &env());
    assert_only(&errors, "jobs/chats.yaml:5:1: unknown field `granulrity`, expected one of ");
    assert!(errors[0].contains("granularity"), "{errors:?}");
}

#[test]
fn config_reports_every_problem_of_every_file_at_once() {
    let config = CONFIG.replace("kind: parquet\n  path: ./warehouse", "kind: sqlite\n  path: ./warehouse");
    let bad_fields = "description: \"\"
source: gisog
endpoint: chat_sessions
window: week
aggregations:
  - {type: sum, field: chat_type, column: Sales}
  - {type: count, column: bucket_start}
start: 2024-13-01
time_zone: Europe/Helsinky
lookback_windows: -1
schedule: 0 6 * * *
";
    let bad_yaml = "description: x\nsource: \"giosg\n";
    let dir = folder(&config, &[("a.yaml", bad_fields), ("b.yaml", bad_yaml), ("c.yaml", SMALL_JOB)]);
    let errors = errors_in(&dir, &env());
    let expected = [
        "chatetl.yaml:15:9: warehouse.kind: unknown warehouse kind `sqlite` (expected parquet or postgres)",
        "jobs/a.yaml:1:14: description: expected a description, found an empty value",
        "jobs/a.yaml:2:9: source: unknown source `gisog` (chatetl.yaml defines giosg)",
        "jobs/a.yaml:4:9: window: unknown window `week` (expected hour or day)",
        "jobs/a.yaml:6:24: aggregations[0].field: `sum` is not available for `chat_type` (allowed: order_count, \
         user_message_count, visitor_message_count, sales, subscription_sales)",
        "jobs/a.yaml:6:43: aggregations[0].column: `Sales` is not a valid identifier",
        "jobs/a.yaml:7:27: aggregations[1].column: `bucket_start` is written by chatetl itself",
        "jobs/a.yaml:8:8: start: expected a date like 2024-01-01, found `2024-13-01`",
        "jobs/a.yaml:9:12: time_zone: unknown time zone `Europe/Helsinky`",
        "jobs/a.yaml:10:19: lookback_windows: expected a whole number of at least 0, found `-1`",
        "jobs/a.yaml:11:11: schedule: cron expression `0 6 * * *` has five fields: add the seconds field first",
        "jobs/b.yaml:3:1: ",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(error.starts_with(expected), "expected `{expected}…`, got `{error}`");
    }
}

#[test]
fn config_reports_missing_keys_at_their_mapping() {
    let job = "source: giosg\naggregations:\n  - type: sum\n    column: total\n";
    let dir = folder(CONFIG, &[("chats.yaml", job)]);
    let errors = errors_in(&dir, &env());
    let expected = [
        "jobs/chats.yaml:1:1: description: required key is missing",
        "jobs/chats.yaml:1:1: endpoint: required key is missing",
        "jobs/chats.yaml:1:1: window: required key is missing",
        "jobs/chats.yaml:1:1: start: required key is missing",
        "jobs/chats.yaml:3:5: aggregations[0].field: `sum` needs a field (expected one of order_count,",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(error.starts_with(expected), "expected `{expected}…`, got `{error}`");
    }
}

#[test]
fn config_checks_source_and_warehouse_settings_without_echoing_secrets() {
    let config = "jobs_dir: missing
sources:
  giosg:
    kind: giosg
    base_url: ftp://x
    token: \"\"
    organization_id: o
    concurrency: 0
    requests_per_second: ${CFG_T4_RPS}
warehouse:
  kind: postgres
  url: mysql://root:pw-secret@h/db
  schema: Analytics
  path: ./x
";
    let dir = folder(config, &[]);
    let errors = errors_in(&dir, &HashMap::from([("CFG_T4_RPS", "-1")]));
    let expected = [
        format!(
            "chatetl.yaml:1:11: jobs_dir: cannot read the jobs directory `{}`",
            dir.path().join("missing").display()
        ),
        "chatetl.yaml:5:15: sources.giosg.base_url: expected an http:// or https:// URL, found `ftp://x`".into(),
        "chatetl.yaml:6:12: sources.giosg.token: expected an API token, found an empty value".into(),
        "chatetl.yaml:8:18: sources.giosg.concurrency: expected a whole number of at least 1, found `0`".into(),
        // The value came from the environment: named, not shown (any variable may hold a secret).
        "chatetl.yaml:9:26: sources.giosg.requests_per_second: expected a number greater than 0, found the value of \
         ${CFG_T4_RPS}"
            .into(),
        "chatetl.yaml:12:8: warehouse.url: expected a postgres:// or postgresql:// URL".into(),
        "chatetl.yaml:13:11: warehouse.schema: `Analytics` is not a valid identifier".into(),
        "chatetl.yaml:14:9: warehouse.path: not used by a postgres warehouse".into(),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(&expected) {
        assert!(error.starts_with(expected.as_str()), "expected `{expected}…`, got `{error}`");
        assert!(!error.contains("pw-secret"), "{error}");
    }
}

#[test]
fn config_reads_and_bounds_max_response_bytes_and_max_pages() {
    let with = |bytes: &str, pages: &str| {
        CONFIG.replace(
            "max_retry_delay_secs: 60\n",
            &format!("max_retry_delay_secs: 60\n    max_response_bytes: {bytes}\n    max_pages: {pages}\n"),
        )
    };
    let env = env();
    let dir = folder(&with("1024", "1"), &[("real_chats.yaml", REAL_CHATS)]);
    let config = load_in(&dir, &env).unwrap();
    assert_eq!((config.sources["giosg"].max_response_bytes, config.sources["giosg"].max_pages), (1024, 1));

    let dir = folder(&with("1023", "0"), &[("real_chats.yaml", REAL_CHATS)]);
    let errors = errors_in(&dir, &env);
    let expected = [
        "chatetl.yaml:14:25: sources.giosg.max_response_bytes: expected a whole number from 1024 to 17179869184, found `1023`",
        "chatetl.yaml:15:16: sources.giosg.max_pages: expected a whole number of at least 1, found `0`",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(error.starts_with(expected), "expected `{expected}…`, got `{error}`");
    }
}

#[test]
fn config_interpolates_variables_and_defaults_in_both_kinds_of_file() {
    let config = CONFIG
        .replace("concurrency: 4", "concurrency: ${CFG_T1_CONCURRENCY:-2}")
        .replace("path: ./warehouse", "path: \"${CFG_T1_WAREHOUSE}\"");
    let job = SMALL_JOB
        .replace("description: Chats", "description: 'Chats of ${CFG_T1_TEAM}'")
        .replace("start: 2024-01-01", "start: ${CFG_T1_START:-2023-06-01}\nrooms: [\"${CFG_T1_ROOM}\"]")
        + "filters: {type: selector, dimension: chat_type, value: \"${CFG_T1_CHAT_TYPE:-visitor}\"}\n";
    let dir = folder(&config, &[("chats.yaml", &job)]);
    let mut env = env();
    env.extend([
        ("GIOSG_BASE_URL", "http://localhost:8080"),
        ("CFG_T1_WAREHOUSE", "/srv/wh"),
        ("CFG_T1_TEAM", "sales"),
        ("CFG_T1_ROOM", ""),
    ]);
    let config = load_in(&dir, &env);
    // An empty value counts as set, and an empty room id is then rejected.
    assert!(config.is_err());
    let errors = errors_in(&dir, &env);
    assert_only(&errors, "jobs/chats.yaml:8:9: rooms[0]: expected a room id, found an empty value");

    env.insert("CFG_T1_ROOM", "room-1");
    let config = load_in(&dir, &env).unwrap();
    let source = &config.sources["giosg"];
    assert_eq!((source.base_url.as_str(), source.concurrency), ("http://localhost:8080", 2));
    let Warehouse::Parquet { path } = &config.warehouse else { panic!() };
    assert_eq!(path, Path::new("/srv/wh"));
    let job = &config.jobs["chats"];
    assert_eq!(job.description, "Chats of sales");
    assert_eq!(job.start, NaiveDate::from_ymd_opt(2023, 6, 1).unwrap());
    assert_eq!(job.rooms, ["room-1"]);
    assert_eq!(job.filters, Some(Filter::Selector { dimension: "chat_type".into(), value: json!("visitor") }));
}

#[test]
fn config_names_each_missing_variable_with_its_file_and_line() {
    let job = SMALL_JOB.replace("description: Chats", "description: ${CFG_T2_DESCRIPTION}");
    let dir = folder(CONFIG, &[("chats.yaml", &job)]);
    let errors = errors_in(&dir, &HashMap::new());
    let expected = [
        "chatetl.yaml:7:12: sources.giosg.token: environment variable `GIOSG_TOKEN` is not set",
        "chatetl.yaml:8:22: sources.giosg.organization_id: environment variable `GIOSG_ORG_ID` is not set",
        "jobs/chats.yaml:1:14: description: environment variable `CFG_T2_DESCRIPTION` is not set",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(error.starts_with(expected), "expected `{expected}…`, got `{error}`");
    }
}

#[test]
fn config_debug_never_shows_the_token_or_the_database_password() {
    let config = CONFIG.replace(
        "kind: parquet\n  path: ./warehouse",
        "kind: postgres\n  url: ${CFG_T3_DATABASE_URL}\n  schema: analytics",
    );
    let dir = folder(&config, &[("chats.yaml", SMALL_JOB)]);
    let mut env = env();
    env.insert("CFG_T3_DATABASE_URL", "postgres://etl:hunter2-pw@db:5432/metrics");
    let config = load_in(&dir, &env).unwrap();
    let Warehouse::Postgres { url, schema } = &config.warehouse else { panic!() };
    assert_eq!((url.expose(), schema.as_str()), ("postgres://etl:hunter2-pw@db:5432/metrics", "analytics"));

    for shown in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!shown.contains("tok-secret-123") && !shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }
}

#[test]
fn config_rejects_scope_filters_and_points_inside_filters() {
    let job = format!(
        "{SMALL_JOB}filters:
  type: and
  fields:
    - {{type: selector, dimension: chat_type, value: visitor}}
    - type: not
      field: {{type: selector, dimension: scope, value: org}}
    - {{type: bound, dimension: mood, lower: 1}}
"
    );
    let dir = folder(CONFIG, &[("chats.yaml", &job)]);
    let errors = errors_in(&dir, &env());
    let expected = [
        "jobs/chats.yaml:13:14: filters.fields[1].field: filtering on `scope` is not allowed: chatetl adds the scope \
         selector itself; list the scopes in `scopes` instead",
        "jobs/chats.yaml:14:32: filters.fields[2].dimension: unknown dimension `mood`",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(error.starts_with(expected), "expected `{expected}…`, got `{error}`");
    }
}

#[test]
fn config_reports_a_malformed_filter_at_the_operand_that_fails() {
    let job = format!(
        "{SMALL_JOB}filters:
  type: or
  fields:
    - {{type: selector, dimension: chat_type, value: visitor}}
    - {{type: regex, dimension: chat_type}}
    - {{type: selector, dimension: chat_type, value: x, extra: 1}}
"
    );
    let dir = folder(CONFIG, &[("chats.yaml", &job)]);
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("jobs/chats.yaml:12:7: filters.fields[1]: unknown variant `regex`"), "{errors:?}");
    assert!(errors[1].starts_with("jobs/chats.yaml:13:7: filters.fields[2]: unknown field `extra`"), "{errors:?}");
}

#[test]
fn config_keeps_granularity_within_the_window() {
    let hourly = SMALL_JOB.replace("window: day", "window: hour\ngranularity: day");
    let dir = folder(CONFIG, &[("a.yaml", &hourly)]);
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("jobs/a.yaml:5:14: granularity: `day` buckets do not fit in an hour window"));

    // A chat_sessions day job of granularity `all` asks for day buckets (documented in 001), so
    // its requests cover several windows like any other's; an hour job keeps one per window.
    let all = SMALL_JOB.replace("window: day", "window: hour\ngranularity: all");
    let seven = SMALL_JOB.replace("window: day", "window: day\ngranularity: all\nmax_windows_per_request: 7");
    let dir = folder(CONFIG, &[("a.yaml", &all), ("b.yaml", &seven)]);
    let config = load_in(&dir, &env()).unwrap();
    let (a, b) = (&config.jobs["a"], &config.jobs["b"]);
    assert_eq!((a.granularity, a.max_windows_per_request, a.bucketed), (Granularity::All, 1, false));
    assert_eq!((b.granularity, b.max_windows_per_request, b.bucketed), (Granularity::All, 7, true));
}

#[test]
fn config_rejects_duplicate_job_names_and_tables_in_the_later_file() {
    let renamed = format!("name: chats\n{SMALL_JOB}");
    let same_table = format!("table: chats\n{SMALL_JOB}");
    let dir = folder(
        CONFIG,
        &[("chats.yaml", SMALL_JOB), ("copy.yaml", &renamed), ("other.yml", &same_table), ("notes.txt", "x")],
    );
    let errors = errors_in(&dir, &env());
    let first = dir.path().join("jobs/chats.yaml");
    let expected = [
        format!("jobs/copy.yaml:1:7: name: job `chats` is already defined in {}", first.display()),
        format!("jobs/other.yml:1:8: table: table `chats` is already written by job `chats` ({})", first.display()),
    ];
    assert_eq!(errors, expected);
}

#[test]
fn config_still_checks_job_files_when_chatetl_yaml_has_an_unknown_key() {
    let config = CONFIG.replace("jobs_dir: jobs", "jobs_dir: jobs\njob_dir: jobs");
    let job = SMALL_JOB.replace("source: giosg", "source: other");
    let dir = folder(&config, &[("chats.yaml", &job)]);
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("chatetl.yaml:3:1: unknown field `job_dir`"), "{errors:?}");
    assert!(errors[1].starts_with("jobs/chats.yaml:2:9: source: unknown source `other`"), "{errors:?}");
}

#[test]
fn config_error_display_is_one_located_line_per_problem() {
    let dir = folder(CONFIG, &[("a.yaml", "# nothing yet\n"), ("b.yaml", "window: \"day\n")]);
    let error = load_in(&dir, &env()).unwrap_err();
    let shown = error.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    let a = dir.path().join("jobs/a.yaml");
    assert_eq!(lines[0], format!("{}:1:1: the file is empty (expected a mapping of settings)", a.display()));
    assert!(lines[1].starts_with(&format!("{}:", dir.path().join("jobs/b.yaml").display())), "{shown}");
}

/// Three sources, every credential from the environment; comm100 is disabled.
const THREE_SOURCES: &str = r#"time_zone: Europe/Helsinki
sources:
  giosg:
    kind: giosg
    base_url: https://api.giosg.com
    token: ${CFG_GIOSG_TOKEN}
    organization_id: ${CFG_GIOSG_ORG}
  thulium:
    kind: thulium
    base_url: https://x.thulium.com
    username: ${CFG_THULIUM_USER}
    password: ${CFG_THULIUM_PASSWORD}
    time_zone: ${CFG_THULIUM_ZONE:-Europe/Helsinki}
  comm100:
    kind: comm100
    enabled: false
    base_url: https://api11.comm100.io/v4
    token: ${CFG_COMM100_TOKEN}
warehouse:
  kind: parquet
  path: wh
"#;

const THULIUM_DAILY: &str = "description: Chats
source: thulium
endpoint: chat_summary
window: day
aggregate_by: day
start: 2024-01-01
";

const COMM100_QUEUE: &str = "description: Queue
source: comm100
endpoint: queue
kind: snapshot
";

fn deferred_in(dir: &TempDir, env: &HashMap<&str, &str>) -> Result<Config, ConfigError> {
    super::load_deferred_with_env(&dir.path().join("chatetl.yaml"), &|name| env.get(name).map(|v| v.to_string()))
}

#[test]
fn config_defers_unset_credentials_to_the_sources_that_need_them() {
    let jobs = [("chats.yaml", SMALL_JOB), ("daily.yaml", THULIUM_DAILY), ("queue.yaml", COMM100_QUEUE)];
    let dir = folder(THREE_SOURCES, &jobs);
    let env = HashMap::from([("CFG_THULIUM_USER", "u"), ("CFG_THULIUM_PASSWORD", "secret-pw")]);
    let config = deferred_in(&dir, &env).unwrap();
    let giosg = &config.sources["giosg"];
    let unset: Vec<(&str, usize, usize)> =
        giosg.unset.iter().map(|u| (u.variable.as_str(), u.at.line, u.at.column)).collect();
    assert_eq!(unset, [("CFG_GIOSG_TOKEN", 6, 12), ("CFG_GIOSG_ORG", 7, 22)]);
    assert!(giosg.unset[0].at.message.starts_with("sources.giosg.token: environment variable `CFG_GIOSG_TOKEN`"));
    assert_eq!(giosg.organization_id, "${CFG_GIOSG_ORG}", "plan shows the reference");
    assert!(config.sources["thulium"].unset.is_empty());
    // Only what a command contacts is required, and an enabled source only.
    assert!(config.require_credentials(["thulium"]).is_ok());
    assert!(config.require_credentials(["comm100"]).is_ok(), "a disabled source is never contacted");
    let error = config.require_credentials(["thulium", "giosg"]).unwrap_err().to_string();
    assert!(error.contains("chatetl.yaml:6:12: sources.giosg.token") && error.contains("CFG_GIOSG_ORG"), "{error}");
    assert!(!error.contains("secret-pw"));

    // Strict loading (the daemon's) refuses an enabled source's unset variables, not a disabled one's.
    let errors = errors_in(&dir, &env);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("chatetl.yaml:6:12: sources.giosg.token"), "{errors:#?}");
    // A malformed reference is an error in any case.
    let broken = THREE_SOURCES.replace("${CFG_THULIUM_PASSWORD}", "${CFG_THULIUM_PASSWORD");
    let dir = folder(&broken, &jobs);
    let error = deferred_in(&dir, &env).unwrap_err().to_string();
    assert!(error.contains("chatetl.yaml:12:15: sources.thulium.password: malformed"), "{error}");
}

#[test]
fn config_keeps_the_jobs_of_a_disabled_source_apart() {
    let jobs = [("chats.yaml", SMALL_JOB), ("daily.yaml", THULIUM_DAILY), ("queue.yaml", COMM100_QUEUE)];
    let dir = folder(THREE_SOURCES, &jobs);
    let env = HashMap::from([
        ("CFG_GIOSG_TOKEN", "t"),
        ("CFG_GIOSG_ORG", "o"),
        ("CFG_THULIUM_USER", "u"),
        ("CFG_THULIUM_PASSWORD", "p"),
    ]);
    let config = load_in(&dir, &env).unwrap();
    assert!(!config.sources["comm100"].enabled && config.sources["giosg"].enabled);
    assert_eq!(config.jobs.keys().collect::<Vec<_>>(), ["chats", "daily"]);
    assert_eq!(config.disabled_jobs.keys().collect::<Vec<_>>(), ["queue"]);
    assert_eq!(config.any_job("queue").map(|(j, enabled)| (j.name.as_str(), enabled)), Some(("queue", false)));
    // A disabled source's jobs are still checked.
    let broken = COMM100_QUEUE.replace("kind: snapshot", "kind: snapshot\nwindow: day");
    let dir = folder(THREE_SOURCES, &[("queue.yaml", &broken)]);
    assert_only(&errors_in(&dir, &env), "jobs/queue.yaml:5:9: window: not used by endpoint `queue`");
}

#[test]
fn config_realtime_base_url_defaults_to_base_url_and_is_giosg_only() {
    let dir = folder(CONFIG, &[("chats.yaml", SMALL_JOB)]);
    let source = &load_in(&dir, &env()).unwrap().sources["giosg"];
    assert_eq!(source.realtime_base_url, "https://api.giosg.com");
    let config = CONFIG.replace("    token:", "    realtime_base_url: https://service.giosg.com/\n    token:");
    let dir = folder(&config, &[("chats.yaml", SMALL_JOB)]);
    let source = &load_in(&dir, &env()).unwrap().sources["giosg"];
    assert_eq!(
        (source.base_url.as_str(), source.realtime_base_url.as_str()),
        ("https://api.giosg.com", "https://service.giosg.com")
    );
    let config = CONFIG.replace("    token:", "    realtime_base_url: service.giosg.com\n    token:");
    let dir = folder(&config, &[("chats.yaml", SMALL_JOB)]);
    assert_only(&errors_in(&dir, &env()), "chatetl.yaml:7:24: sources.giosg.realtime_base_url: expected an http://");
    let thulium = THREE_SOURCES.replace("    username:", "    realtime_base_url: https://x\n    username:");
    let dir = folder(&thulium, &[]);
    // No job names a source, so its unset credentials are not errors even in strict loading.
    let errors = errors_in(&dir, &HashMap::new());
    assert_only(&errors, "chatetl.yaml:11:24: sources.thulium.realtime_base_url: not used by a thulium source");
}

#[test]
fn config_finds_a_thulium_job_whose_zone_splits_the_accounts_days() {
    let env = HashMap::from([("CFG_THULIUM_ZONE", "Europe/Warsaw")]);
    // The job's zone is chatetl.yaml's default (Helsinki): pointed at the job file's mapping.
    let dir = folder(THREE_SOURCES, &[("daily.yaml", THULIUM_DAILY)]);
    let config = deferred_in(&dir, &env).unwrap();
    let [failure] = config.window_failures.as_slice() else { panic!("{:?}", config.window_failures) };
    assert_eq!((failure.job.as_str(), failure.diagnostic.line, failure.diagnostic.column), ("daily", 1, 1));
    let message = &failure.diagnostic.message;
    assert!(message.starts_with("time_zone: the job's zone (chatetl.yaml's time_zone) Europe/Helsinki"), "{message}");
    assert!(message.contains("give the job `time_zone: Europe/Warsaw`"), "{message}");
    // Its own zone: pointed at its `time_zone`; the account's zone fits.
    let job = format!("{THULIUM_DAILY}time_zone: America/New_York\n");
    let dir = folder(THREE_SOURCES, &[("daily.yaml", &job)]);
    let config = deferred_in(&dir, &env).unwrap();
    let d = &config.window_failures[0].diagnostic;
    assert_eq!((d.line, d.column), (7, 12));
    let job = format!("{THULIUM_DAILY}time_zone: Europe/Warsaw\n");
    let dir = folder(THREE_SOURCES, &[("daily.yaml", &job)]);
    assert!(deferred_in(&dir, &env).unwrap().window_failures.is_empty());
}

#[test]
fn config_selects_jobs_by_glob_and_source() {
    let hourly = THULIUM_DAILY.replace("window: day\naggregate_by: day", "window: hour\naggregate_by: hour");
    let jobs = [
        ("real_chats.yaml", SMALL_JOB),
        ("real_chats_with_sales.yaml", SMALL_JOB),
        ("short_chats.yaml", SMALL_JOB),
        ("thulium_daily.yaml", THULIUM_DAILY),
        ("thulium_hourly.yaml", hourly.as_str()),
        ("comm100_queue.yaml", COMM100_QUEUE),
    ];
    // Tables must differ: each small job is named after its file, so it is.
    let dir = folder(THREE_SOURCES, &jobs);
    let config = deferred_in(&dir, &HashMap::new()).unwrap();
    let names = |s: &crate::config::Selection| s.enabled.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    let select = |jobs: &[&str], sources: &[&str]| {
        let jobs: Vec<String> = jobs.iter().map(|s| s.to_string()).collect();
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        crate::config::select(&config, &jobs, &sources)
    };
    let all = select(&[], &[]).unwrap();
    assert_eq!(all.enabled.len(), 5);
    assert_eq!(all.disabled.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["comm100_queue"]);
    assert!(all.refuse_disabled().is_ok(), "everything: the disabled ones are left out");
    assert_eq!(names(&select(&["real_chats*"], &[]).unwrap()), ["real_chats", "real_chats_with_sales"]);
    assert_eq!(names(&select(&["short_chats", "*_daily"], &[]).unwrap()), ["short_chats", "thulium_daily"]);
    assert_eq!(names(&select(&["{real,short}_chats"], &[]).unwrap()), ["real_chats", "short_chats"]);
    assert_eq!(names(&select(&[], &["thulium"]).unwrap()), ["thulium_daily", "thulium_hourly"]);
    assert_eq!(names(&select(&["*hourly"], &["thulium"]).unwrap()), ["thulium_hourly"]);
    let error = select(&["real_chat?_x*"], &[]).unwrap_err();
    assert!(error.starts_with("no job matches `real_chat?_x*` (jobs in "), "{error}");
    assert!(select(&["nope"], &[]).unwrap_err().starts_with("unknown job `nope`"));
    let error = select(&["real*"], &["thulium"]).unwrap_err();
    assert!(
        error.starts_with("no job matches `real*` (jobs of source thulium: thulium_daily, thulium_hourly)"),
        "{error}"
    );
    assert!(
        select(&[], &["zendesk"])
            .unwrap_err()
            .starts_with("unknown source `zendesk` (chatetl.yaml defines comm100, giosg, thulium)")
    );
    assert!(select(&["[abc"], &[]).unwrap_err().contains("is not a valid glob"));
    // Disabled jobs: chosen by name, glob or source, they are refused by the commands that run jobs.
    let by_name = select(&["comm100_queue"], &[]).unwrap();
    assert_eq!(
        by_name.refuse_disabled().unwrap_err(),
        "job comm100_queue is disabled: its source comm100 has `enabled: false` in chatetl.yaml; set it to true to run its jobs"
    );
    assert!(
        select(&[], &["comm100"]).unwrap().refuse_disabled().unwrap_err().starts_with("source comm100 is disabled")
    );
    assert!(
        select(&["comm*"], &[])
            .unwrap()
            .refuse_disabled()
            .unwrap_err()
            .starts_with("`comm*` matches only disabled jobs (comm100_queue)")
    );
    let mixed = select(&["*"], &[]).unwrap();
    assert!(mixed.refuse_disabled().is_ok() && mixed.disabled.len() == 1);
}

#[test]
fn config_rejects_a_schedule_that_never_fires_and_a_start_out_of_range() {
    let job = |line: &str| SMALL_JOB.replace("start: 2024-01-01\n", line);
    let dir = folder(
        CONFIG,
        &[
            ("a.yaml", &job("start: 2024-01-01\nschedule: \"0 0 0 30 2 *\"\n")),
            ("b.yaml", &job("start: 0000-01-01\n")),
            ("c.yaml", &job("start: 2099-01-01\n")),
        ],
    );
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with("jobs/a.yaml:8:11: schedule: cron expression `0 0 0 30 2 *` never fires"),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("jobs/b.yaml:7:8: start: `0000-01-01` is before 2000-01-01"), "{errors:#?}");
    assert!(errors[2].starts_with("jobs/c.yaml:7:8: start: `2099-01-01` is in the future (today is "), "{errors:#?}");
}

#[test]
fn config_refuses_credentials_with_control_characters_without_showing_them() {
    let dir = folder(CONFIG, &[("real_chats.yaml", REAL_CHATS)]);
    for (token, which) in [("s3cr3t-tok\n", "a line break"), ("s3cr3t\u{1}tok", "a control character, U+0001")] {
        let env = HashMap::from([("GIOSG_TOKEN", token), ("GIOSG_ORG_ID", "org-1")]);
        let errors = errors_in(&dir, &env);
        assert_only(
            &errors,
            "chatetl.yaml:7:12: sources.giosg.token: expected an API token without control characters",
        );
        assert!(errors[0].contains(which) && !errors[0].contains("s3cr3t"), "{errors:#?}");
    }
}

#[test]
fn config_refuses_credentials_in_urls_and_secret_variables_outside_credentials() {
    let with = |url: &str| CONFIG.replace("${GIOSG_BASE_URL:-https://api.giosg.com/}", url);
    let dir = folder(&with("https://user:s3cr3t-pw@api.giosg.com"), &[]);
    let errors = errors_in(&dir, &env());
    assert_only(
        &errors,
        "chatetl.yaml:6:15: sources.giosg.base_url: holds credentials (`user:password@` before the host)",
    );
    assert!(!errors[0].contains("s3cr3t"), "{errors:#?}");
    let dir = folder(&with("https://api.giosg.com/?key=s3cr3t-key"), &[]);
    let errors = errors_in(&dir, &env());
    assert_only(&errors, "chatetl.yaml:6:15: sources.giosg.base_url: expected the API's root URL, without a query");
    assert!(!errors[0].contains("s3cr3t"), "{errors:#?}");
    // A variable that a credential reads may not be used elsewhere, where it would be printed.
    let dir = folder(&with("${GIOSG_TOKEN}"), &[("j.yaml", &SMALL_JOB.replace("Chats", "Chats ${GIOSG_TOKEN}"))]);
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "chatetl.yaml:6:15: sources.giosg.base_url: uses `${GIOSG_TOKEN}`, which holds a credential (it is read by \
             `sources.giosg.token`)"
        ),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("jobs/j.yaml:1:14: description: uses `${GIOSG_TOKEN}`"), "{errors:#?}");
    assert!(errors.iter().all(|e| !e.contains("tok-secret-123")), "{errors:#?}");
}

#[test]
fn config_names_the_variable_instead_of_showing_a_value_from_the_environment() {
    let config = CONFIG.replace("time_zone: Europe/Helsinki ", "time_zone: ${ZONE} ");
    let job = SMALL_JOB.replace("window: day", "window: ${WINDOW}").replace("column: chats}", "column: \"${COLUMN}\"}");
    let dir = folder(&config, &[("j.yaml", &job)]);
    let mut env = env();
    env.extend([("ZONE", "s3cr3t-zone"), ("WINDOW", "s3cr3t-window"), ("COLUMN", "S3cr3t")]);
    let errors = errors_in(&dir, &env);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with("chatetl.yaml:1:12: time_zone: unknown time zone the value of ${ZONE}"),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("jobs/j.yaml:4:9: window: unknown window the value of ${WINDOW}"), "{errors:#?}");
    assert!(
        errors[2].contains("aggregations[0].column: the value of ${COLUMN} is not a valid identifier"),
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| !e.to_lowercase().contains("s3cr3t")), "{errors:#?}");
}

#[test]
fn config_reports_job_names_that_are_not_files_and_an_unusable_warehouse() {
    let dir = folder(&CONFIG.replace("path: ./warehouse", "path: chatetl.yaml/wh"), &[]);
    std::os::unix::fs::symlink("nowhere.yaml", dir.path().join("jobs/dangling.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("jobs/folder.yaml")).unwrap();
    let errors = errors_in(&dir, &env());
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let file = dir.path().join("chatetl.yaml");
    assert!(
        errors[0].starts_with(&format!(
            "chatetl.yaml:16:9: warehouse.path: `{}` cannot be created: `{}` is not a folder",
            file.join("wh").display(),
            file.display()
        )),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("jobs/dangling.yaml:1:1: is a symbolic link that leads to no file"), "{errors:#?}");
    assert!(errors[2].starts_with("jobs/folder.yaml:1:1: is a folder, not a job file"), "{errors:#?}");
    let dir = folder(&CONFIG.replace("path: ./warehouse", "path: chatetl.yaml"), &[]);
    assert_only(&errors_in(&dir, &env()), "chatetl.yaml:16:9: warehouse.path: `");
    assert!(errors_in(&dir, &env())[0].ends_with("is not a folder (a file is in its place)"));
}

/// An events job of 001's shape (granularity `all`, org and user scope).
const EVENTS_JOB: &str = "description: Bot clicks
source: giosg
endpoint: events
window: day
granularity: all
scopes: [org, user]
aggregations:
  - {type: count, column: clicks}
start: 2024-01-01
";

/// A workflow job of 001's shape.
const WORKFLOW_JOB: &str = "description: Invite wait
source: giosg
endpoint: workflow
window: day
aggregations:
  - {type: avg, field: dim1, column: wait}
where:
  - {field: category, search: track_chat_invite}
start: 2024-01-01
";

#[test]
fn config_reads_assume_as_the_default_of_events_jobs_bucketed() {
    // Nothing assumed: one events request per window.
    let dir = folder(CONFIG, &[("clicks.yaml", EVENTS_JOB)]);
    let config = load_in(&dir, &env()).unwrap();
    assert_eq!(config.sources["giosg"].assume, SourceAssumptions::default());
    let clicks = &config.jobs["clicks"];
    assert_eq!((clicks.bucketed, clicks.max_windows_per_request), (false, 1));

    let assuming = CONFIG.replace(
        "    concurrency: 4\n",
        "    concurrency: 4\n    assume:\n      bucketed_events: true   # probed\n      fused_events: true\n",
    );
    let hourly = EVENTS_JOB.replace("window: day", "window: hour");
    let opted_out = format!("{EVENTS_JOB}bucketed: false\n");
    let dir = folder(
        &assuming,
        &[
            ("clicks.yaml", EVENTS_JOB),
            ("hourly.yaml", &hourly),
            ("out.yaml", &opted_out),
            ("wf.yaml", WORKFLOW_JOB),
            ("chats.yaml", SMALL_JOB),
        ],
    );
    let config = load_in(&dir, &env()).unwrap();
    assert_eq!(config.sources["giosg"].assume, SourceAssumptions { bucketed_events: true, fused_events: true });
    let shape = |name: &str| {
        let j = &config.jobs[name];
        (j.bucketed, j.max_windows_per_request, j.granularity)
    };
    // Bucketed events jobs chunk as chat_sessions does; the job's granularity stays `all`.
    assert_eq!(shape("clicks"), (true, 31, Granularity::All));
    assert_eq!(shape("hourly"), (true, 168, Granularity::All));
    assert_eq!(shape("out"), (false, 1, Granularity::All), "a job's `bucketed: false` wins");
    assert_eq!(shape("wf"), (false, 1, Granularity::All), "workflow queries are never bucketed");
    assert_eq!(shape("chats"), (true, 31, Granularity::Day), "chat_sessions day jobs are bucketed, assume or not");

    // A job opts in without the source, and may bound its chunks.
    let bounded = format!("{EVENTS_JOB}bucketed: true\nmax_windows_per_request: 7\n");
    let dir = folder(CONFIG, &[("clicks.yaml", &bounded)]);
    let clicks = &load_in(&dir, &env()).unwrap().jobs["clicks"];
    assert_eq!((clicks.bucketed, clicks.max_windows_per_request), (true, 7));
}

#[test]
fn config_refuses_bad_assume_and_bucketed_keys_with_their_location() {
    let with_assume =
        |lines: &str| CONFIG.replace("    concurrency: 4\n", &format!("    assume:\n{lines}    concurrency: 4\n"));
    let dir = folder(&with_assume("      bucketed_event: true\n"), &[]);
    let errors = errors_in(&dir, &env());
    assert!(errors.iter().any(|e| e.starts_with("chatetl.yaml:10:7: unknown field `bucketed_event`")), "{errors:#?}");
    let dir = folder(&with_assume("      fused_events: yes\n"), &[]);
    let errors = errors_in(&dir, &env());
    assert!(errors.iter().any(|e| e.starts_with("chatetl.yaml:10:21: invalid boolean")), "{errors:#?}");
    let thulium = THREE_SOURCES.replace("    username:", "    assume: {bucketed_events: true}\n    username:");
    let errors = errors_in(&folder(&thulium, &[]), &HashMap::new());
    assert_only(&errors, "chatetl.yaml:11:13: sources.thulium.assume: not used by a thulium source");

    let workflow = format!("{WORKFLOW_JOB}bucketed: true\n");
    let errors = errors_in(&folder(CONFIG, &[("wf.yaml", &workflow)]), &env());
    assert_only(&errors, "jobs/wf.yaml:10:11: bucketed: a workflow query cannot be bucketed");
    let chats = format!("{SMALL_JOB}bucketed: true\n");
    let errors = errors_in(&folder(CONFIG, &[("chats.yaml", &chats)]), &env());
    assert_only(
        &errors,
        "jobs/chats.yaml:8:11: bucketed: not used by endpoint `chat_sessions` (only by events or workflow)",
    );
    let text = format!("{EVENTS_JOB}bucketed: 1\n");
    let errors = errors_in(&folder(CONFIG, &[("clicks.yaml", &text)]), &env());
    assert_only(&errors, "jobs/clicks.yaml:10:11: invalid boolean");
    let unbucketed = format!("{EVENTS_JOB}max_windows_per_request: 7\n");
    let errors = errors_in(&folder(CONFIG, &[("clicks.yaml", &unbucketed)]), &env());
    assert_only(
        &errors,
        "jobs/clicks.yaml:10:26: max_windows_per_request: granularity `all` gives one bucket per request",
    );
    assert!(errors[0].ends_with("only with `bucketed: true`)"), "{errors:#?}");
}

#[test]
fn a_parquet_path_that_is_an_object_store_url_is_a_lake_with_its_state_in_postgres() {
    let lake = |warehouse: &str| CONFIG.replace("kind: parquet\n  path: ./warehouse", warehouse);
    let dir = folder(
        &lake("kind: parquet\n  path: s3://analytics/chatetl/\n  state: ${CFG_T9_STATE_URL}"),
        &[("chats.yaml", SMALL_JOB)],
    );
    let mut env = env();
    env.insert("CFG_T9_STATE_URL", "postgres://etl:state-pw-77@db:5432/metrics");
    let config = load_in(&dir, &env).unwrap();
    let Warehouse::Lake { url, state } = &config.warehouse else { panic!("{:?}", config.warehouse) };
    assert_eq!(url, "s3://analytics/chatetl", "the trailing slash goes");
    assert_eq!(state.expose(), "postgres://etl:state-pw-77@db:5432/metrics");
    assert!(!format!("{config:?}").contains("state-pw-77"), "the state URL never shows");

    let errors =
        errors_in(&folder(&lake("kind: parquet\n  path: gs://analytics/chatetl"), &[("chats.yaml", SMALL_JOB)]), &env);
    assert_only(
        &errors,
        "chatetl.yaml:15:3: warehouse.state: required key is missing (expected a postgres:// URL for the state of a warehouse in an object store, e.g. `${DATABASE_URL}`)",
    );
    let errors = errors_in(
        &folder(&lake("kind: parquet\n  path: ./warehouse\n  state: postgres://db/x"), &[("chats.yaml", SMALL_JOB)]),
        &env,
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("warehouse.state: used only by a warehouse in an object store"), "{errors:#?}");
    let errors = errors_in(
        &folder(&lake("kind: parquet\n  path: ftp://host/x\n  state: postgres://db/x"), &[("chats.yaml", SMALL_JOB)]),
        &env,
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("warehouse.path: `ftp://host/x`: unknown object store"), "{errors:#?}");
    let errors = errors_in(
        &folder(&lake("kind: parquet\n  path: s3://b/x\n  state: mysql://db/x"), &[("chats.yaml", SMALL_JOB)]),
        &env,
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("warehouse.state: expected a postgres:// or postgresql:// URL"), "{errors:#?}");
    let file = folder(
        &lake("kind: parquet\n  path: file:///srv/lake\n  state: postgres://db/x"),
        &[("chats.yaml", SMALL_JOB)],
    );
    let config = load_in(&file, &env).unwrap();
    assert!(matches!(&config.warehouse, Warehouse::Lake { url, .. } if url == "file:///srv/lake"));
}

#[test]
fn object_store_urls_are_checked_before_anything_is_opened() {
    use super::settings::check_object_store_url;
    for ok in ["s3://bucket/prefix", "gs://bucket", "az://container/p", "file:///srv/lake"] {
        assert_eq!(check_object_store_url(ok), Ok(()), "{ok}");
    }
    for bad in ["s3:/bucket", "http://example.com/x", "memory:///x"] {
        assert!(check_object_store_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn one_object_store_place_has_one_spelling_for_its_state() {
    use super::settings::normal_lake_url;
    assert_eq!(normal_lake_url("s3://b/p/"), "s3://b/p");
    assert_eq!(normal_lake_url("S3A://b//p//"), "s3://b/p");
    assert_eq!(normal_lake_url("file:///"), "file:///");
    assert_eq!(normal_lake_url("file:///srv//lake/"), "file:///srv/lake");
    assert_eq!(normal_lake_url("gs://bucket"), "gs://bucket");
}
