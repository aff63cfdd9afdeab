//! The README's queries, run as written against the demo's output: its SQL block in PostgreSQL
//! after `chatetl demo --postgres`, and its DuckDB and pyarrow one-liners over the Parquet
//! folder `chatetl demo` writes (through the Python that `scripts/test` installs them into).

use std::path::Path;

use sqlx::{Connection, Row};

use crate::util::{TestDb, chatetl};

/// The README's text.
fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The statements of the first ```sql block after `heading`, comments removed.
fn sql_statements(readme: &str, heading: &str) -> Vec<String> {
    let section = &readme[readme.find(heading).unwrap_or_else(|| panic!("README has no {heading}"))..];
    let block = &section[section.find("```sql\n").expect("an sql block") + 7..];
    let block = &block[..block.find("```").expect("the block ends")];
    let text: String =
        block.lines().map(|l| l.split_once("--").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_query_of_the_readme_runs_as_written_against_the_demo_in_postgres() {
    let db = TestDb::new().await;
    let (code, out, err) = chatetl(&["demo", "--postgres", &db.url, "--days", "3", "--sessions-per-day", "40"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let statements = sql_statements(&readme(), "## BI queries");
    assert!(statements.len() >= 10, "{statements:?}");
    assert!(statements[0].starts_with("SET search_path = chatetl_demo"), "{}", statements[0]);
    // One session, as a user pastes the block into psql: the SET applies to what follows.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in &statements {
        let rows = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("README query fails: {e}\n{statement}"));
        if !statement.starts_with("SET") {
            assert!(!rows.is_empty(), "README query returns nothing on the demo's output:\n{statement}");
        }
    }
    // The freshness query reads this schema's state only.
    let jobs: i64 = sqlx::query("SELECT count(*) FROM chatetl.jobs WHERE target = 'chatetl_demo'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert!(jobs >= 10, "{jobs} jobs of the demo");
}

/// The Python `scripts/test` installs pyarrow and duckdb into.
fn python() -> String {
    std::env::var("CHATETL_TEST_PYTHON").expect("CHATETL_TEST_PYTHON is set: run the suite with scripts/test")
}

#[test]
fn the_readme_parquet_one_liners_run_as_written_against_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = chatetl(&[
        "demo",
        "--out",
        dir.path().join("warehouse").to_str().unwrap(),
        "--days",
        "3",
        "--sessions-per-day",
        "40",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let readme = readme();
    let lines: Vec<&str> =
        readme.lines().filter(|l| l.starts_with("duckdb -c \"") || l.starts_with("python3 -c \"")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        let (tool, rest) = line.split_once(" -c \"").unwrap();
        let quoted = &rest[..rest.rfind('"').expect("a closing quote")];
        // The duckdb CLI is not on every machine: its SQL runs through duckdb's Python module.
        let script = match tool {
            "duckdb" => format!("import duckdb; print(duckdb.sql({quoted:?}))"),
            _ => quoted.to_string(),
        };
        let output =
            std::process::Command::new(python()).arg("-c").arg(&script).current_dir(dir.path()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "README line fails: {line}\n{stderr}");
        assert!(stdout.contains("org"), "README line prints the org scope's rows: {line}\n{stdout}");
    }
}
