//! `chatetl ddl`: DuckDB reads a loaded warehouse through the printed view with the rows and
//! types pyarrow reads from the files; the other engines' statements are held by golden files
//! (`tests/fixtures/ddl/<engine>.sql`; `CHATETL_BLESS=1` rewrites them after a deliberate change).

use std::path::Path;

use crate::util::*;

const ENGINES: [&str; 6] = ["duckdb", "bigquery", "snowflake", "athena", "trino", "databricks"];

#[test]
fn every_engines_ddl_for_a_windowed_and_a_snapshot_job_is_its_golden_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/chatetl.yaml");
    for engine in ENGINES {
        let args = ["--config", &config, "ddl", "--engine", engine, "--job", "real_chats", "--job", "comm100_queue"];
        let (code, out, err) = chatetl(&[&args[..], &["--location", "s3://bucket/lake"]].concat());
        assert_eq!(code, 0, "{engine}: {err}");
        let golden = Path::new(root).join(format!("tests/fixtures/ddl/{engine}.sql"));
        if std::env::var_os("CHATETL_BLESS").is_some() {
            std::fs::write(&golden, &out).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(out, want, "{engine}: the DDL differs from {} (CHATETL_BLESS=1 rewrites it)", golden.display());
        // Both layouts: a month per file for windowed jobs, a day per file for snapshots.
        assert!(out.contains("real_chats") && out.contains("comm100_queue"), "{engine}: {out}");
    }
    // A PostgreSQL warehouse has no files to describe without --location.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    let pg = dir.path().join("chatetl.yaml");
    std::fs::write(
        &pg,
        std::fs::read_to_string(&config).unwrap().replace(
            "  kind: parquet\n  path: ${CHATETL_WAREHOUSE_PATH:-./warehouse}\n",
            "  kind: postgres\n  url: postgres://u@h/db\n",
        ),
    )
    .unwrap();
    let jobs = format!("{root}/jobs");
    std::fs::write(&pg, std::fs::read_to_string(&pg).unwrap().replace("jobs_dir: jobs", &format!("jobs_dir: {jobs}")))
        .unwrap();
    let (code, _, err) =
        chatetl(&["--config", pg.to_str().unwrap(), "ddl", "--engine", "duckdb", "--job", "real_chats"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give --location"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_loaded_warehouse_through_the_printed_view() {
    let d = dump(&["--seed", "31", "--start", "2024-01-01", "--days", "70", "--sessions-per-day", "20"]);
    let sim = serve(&d.path).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let jobs: Vec<_> = shipped_jobs(Some("2024-01-01")).into_iter().filter(|(f, _)| *f == "real_chats.yaml").collect();
    let config = write_config(dir.path(), &sim, TOKEN, TestWarehouse::Parquet(&wh), &jobs);
    let config = config.to_str().unwrap();
    let (code, out, err) = chatetl(&["--config", config, "run", "--from", "2024-01-20", "--to", "2024-02-10"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, ddl, err) = chatetl(&["--config", config, "ddl", "--engine", "duckdb", "--job", "real_chats"]);
    assert_eq!(code, 0, "{err}");
    let python =
        std::env::var("CHATETL_TEST_PYTHON").expect("CHATETL_TEST_PYTHON is set: run the suite with scripts/test");
    let script = r#"
import sys, duckdb, pyarrow.dataset as ds
con = duckdb.connect()
con.execute(sys.stdin.read())
n, chats, days, months = con.execute(
    "SELECT count(*), sum(real_chats), count(DISTINCT bucket_date), count(DISTINCT (year, month)) FROM real_chats").fetchone()
types = con.execute(
    "SELECT typeof(bucket_start), typeof(bucket_date), typeof(real_chats), typeof(year), typeof(month) FROM real_chats LIMIT 1").fetchone()
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
print(n, chats, days, months, t.num_rows, sum(v for v in t.column("real_chats").to_pylist() if v is not None))
print(*types, sep=",")
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script, wh.join("real_chats").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(ddl.as_bytes()).unwrap();
    let done = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}\n{ddl}", String::from_utf8_lossy(&done.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let counts: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(counts[0], counts[4], "DuckDB's view and pyarrow read the same rows: {stdout}");
    assert_eq!(counts[1], counts[5], "and the same sum: {stdout}");
    assert_eq!((counts[2], counts[3]), ("22", "2"), "22 days in January and February: {stdout}");
    assert_eq!(lines[1], "TIMESTAMP WITH TIME ZONE,DATE,BIGINT,BIGINT,BIGINT", "{stdout}");
}
