//! The `chatetl simulate` command line: help text, dataset dump, serving and shutting down.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::util::{chatetl, dump, read_dump};

#[test]
fn help_documents_every_flag() {
    let (code, out, _) = chatetl(&["simulate", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--dataset",
        "--dump-dataset",
        "--seed",
        "--start",
        "--days",
        "--organizations",
        "--rooms",
        "--teams",
        "--users",
        "--sessions-per-day",
        "--time-zone",
        "--token",
        "--latency-ms",
        "--jitter-ms",
        "--error-rate",
        "--error-statuses",
        "--throttle-rate",
        "--retry-after-secs",
        "--reset-rate",
        "--truncate-rate",
        "--rps-limit",
        "--fault-seed",
        "--config",
        "--log-format",
        "--verbose",
        "--quiet",
    ] {
        assert!(out.contains(flag), "simulate --help lacks {flag}");
    }
    assert!(out.contains("docs/simulator.md"));
}

#[test]
fn the_dump_is_deterministic_and_has_realistic_shapes() {
    let args = ["--seed", "21", "--start", "2024-03-25", "--days", "14", "--sessions-per-day", "120"];
    let (a, b) = (dump(&args), dump(&args));
    assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap(), "same flags, same bytes");
    let (orgs, rows) = read_dump(&a.path);
    assert_eq!(orgs.len(), 2);
    let org_rows: Vec<_> = rows.iter().filter(|r| r.s("scope") == "org").collect();
    let share = |pred: &dyn Fn(&crate::util::Row) -> bool| {
        org_rows.iter().filter(|r| pred(r)).count() as f64 / org_rows.len() as f64
    };
    for t in ["visitor", "external", "operator", "group", "task"] {
        assert!(share(&|r| r.s("chat_type") == t) > 0.02, "chat_type {t} occurs");
    }
    for i in ["autosuggest", "visitor", "operator", "rule"] {
        assert!(share(&|r| r.s("chat_initiator") == i) > 0.02, "chat_initiator {i} occurs");
    }
    let real = share(&|r| {
        matches!(r.s("chat_type"), "visitor" | "external")
            && r.n("user_message_count") >= 2.0
            && r.n("visitor_message_count") >= 1.0
    });
    let short = share(&|r| {
        let (u, v) = (r.n("user_message_count"), r.n("visitor_message_count"));
        matches!(r.s("chat_type"), "visitor" | "external") && u >= 1.0 && !(u >= 2.0 && v >= 1.0)
    });
    assert!(real > 0.2 && short > 0.1, "real {real}, short {short}");
    assert!(share(&|r| r.n("order_count") > 0.0) > 0.03 && share(&|r| r.n("subscription_sales") > 0.0) > 0.003);
    assert!(share(&|r| r.list("room_ids").len() > 1) > 0.03, "sessions in several rooms");
    assert!(
        share(&|r| r.list("chatted_organization_ids").len() > 1) > 0.01,
        "sessions with users of two organizations"
    );
    // Several teams and users per session.
    let mut per_session: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    for r in &rows {
        let e = per_session.entry(r.s("chat_session_id")).or_default();
        match r.s("scope") {
            "team" => e.0 += 1,
            "user" => e.1 += 1,
            _ => {}
        }
    }
    assert!(per_session.values().any(|(t, _)| *t >= 2) && per_session.values().any(|(_, u)| *u >= 3));
    // Weekly seasonality: the Mondays are busier than the Sundays.
    let count_on = |d: u32| {
        org_rows
            .iter()
            .filter(|r| {
                r.time.with_timezone(&chrono_tz::Europe::Helsinki).date_naive().format("%d").to_string()
                    == format!("{d:02}")
            })
            .count()
    };
    assert!(count_on(25) > count_on(31) && count_on(1) > count_on(7), "Mon 25th vs Sun 31st, Mon 1st vs Sun 7th");
    // Daily seasonality: midday busier than 3-4 am.
    let hour = |h: u32| {
        org_rows
            .iter()
            .filter(|r| {
                r.time.with_timezone(&chrono_tz::Europe::Helsinki).format("%H").to_string() == format!("{h:02}")
            })
            .count()
    };
    assert!(hour(11) > 4 * hour(3));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let (code, _, err) = chatetl(&["simulate", "--time-zone", "Mars/Olympus", "--dump-dataset", "/dev/null"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Mars/Olympus"));
    let (code, _, err) = chatetl(&["simulate", "--dataset", "/nonexistent/ds.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/ds.jsonl"), "{err}");
    let (code, _, _) = chatetl(&["simulate", "--error-rate", "1.5", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2);
}

#[tokio::test]
async fn serves_over_http_and_stops_on_sigterm() {
    let d = dump(&["--seed", "4", "--start", "2024-01-01", "--days", "1", "--sessions-per-day", "10"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--dataset", d.path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "simulator exited early");
        if let Some(rest) = line.split("simulator on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let orgs: serde_json::Value =
        reqwest::get(format!("{url}/_sim/organizations")).await.unwrap().json().await.unwrap();
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    assert!(!orgs.to_string().contains("sim-token"), "tokens are not listed");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
}
