//! The PostgreSQL warehouse: one typed table per job in the configured schema, state in the
//! `chatetl` schema of the same database.
//!
//! Owns: connecting and applying `migrations/` (embedded at compile time, tracked in
//! `chatetl._sqlx_migrations`), creating each job's table with its natural key and comments, and
//! [`PostgresSink::commit`]: in ONE transaction, delete the windows' rows, `COPY` the new rows
//! (CSV with an explicit column list), upsert the window loads, and move the watermark over
//! contiguous loads. A failure anywhere rolls all of it back, so a window is replaced whole or
//! not at all and the watermark never passes uncommitted data.
//!
//! Requires PostgreSQL 15 or later (`UNIQUE NULLS NOT DISTINCT` on the natural key).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row as _, SqlSafeStr};

use super::{Commit, SinkError};
use crate::batch::TableSchema;
use crate::config::{Job, Secret};
use crate::error::ErrorKind;
use crate::row::ColumnType;
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// The state migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "state", include_str!("../../migrations/0001_state.sql")),
    (2, "error kind", include_str!("../../migrations/0002_error_kind.sql")),
];

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn db_err(what: &str) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| SinkError::warehouse(format!("{what}: {e}"))
}

/// A connection pool to the warehouse database.
pub struct PostgresSink {
    pool: PgPool,
    schema: String,
}

impl PostgresSink {
    /// Connects and applies the state migrations.
    pub async fn connect(url: &Secret, schema: &str) -> Result<PostgresSink, SinkError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url.expose())
            .await
            .map_err(|e| SinkError::warehouse(format!("cannot connect to the postgres warehouse: {e}")))?;
        let mut migrator = Migrator::with_migrations(
            MIGRATIONS
                .iter()
                .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false))
                .collect(),
        );
        migrator.dangerous_set_table_name("chatetl._sqlx_migrations");
        migrator.create_schema("chatetl");
        migrator
            .run(&pool)
            .await
            .map_err(|e| SinkError::warehouse(format!("cannot apply the chatetl state migrations: {e}")))?;
        Ok(PostgresSink { pool, schema: schema.to_string() })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The pool, for callers that query the warehouse (status, tests, the demo).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn table(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// Creates the schema and table if missing, checks its columns, registers the job.
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let definition_hash = definition.hash.as_str();
        let table = self.table(&schema.table);
        let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(&self.schema));
        let _ = write!(
            ddl,
            "CREATE TABLE IF NOT EXISTS {table} (\n  {} timestamptz NOT NULL,\n  {} date NOT NULL,\n",
            schema.time_column, schema.date_column
        );
        for d in &schema.dims {
            let _ = writeln!(ddl, "  {} text,", quote_ident(&d.name));
        }
        for m in &schema.metrics {
            let ty = match m.ty {
                ColumnType::Int => "bigint",
                ColumnType::Float => "double precision",
                ColumnType::Text => "text",
                ColumnType::Bool => "boolean",
                ColumnType::Json => "jsonb",
            };
            let _ = writeln!(ddl, "  {} {ty},", quote_ident(&m.name));
        }
        let key: Vec<String> = std::iter::once(schema.time_column.to_string())
            .chain(schema.dims.iter().map(|d| quote_ident(&d.name)))
            .collect();
        let _ = write!(
            ddl,
            "  _window_start timestamptz NOT NULL,\n  _loaded_at timestamptz NOT NULL,\n  _run_id text NOT NULL,\n  CONSTRAINT {} UNIQUE NULLS NOT DISTINCT ({})\n);\n",
            quote_ident(&format!("{}_natural_key", schema.table)),
            key.join(", ")
        );
        let _ = writeln!(ddl, "COMMENT ON TABLE {table} IS {};", quote_literal(&schema.description));
        let mut comments = vec![
            (schema.time_column, schema.time_comment.clone()),
            (schema.date_column, format!("local date of {} in {}", schema.time_column, schema.time_zone.name())),
            ("_window_start", "start of the load window this row was replaced with".to_string()),
            ("_loaded_at", "when chatetl loaded this row".to_string()),
            ("_run_id", "the chatetl run that loaded this row".to_string()),
        ];
        comments.extend(schema.dims.iter().map(|d| (d.name.as_str(), d.comment.clone())));
        comments.extend(schema.metrics.iter().map(|m| (m.name.as_str(), m.comment.clone())));
        for (col, text) in comments {
            let _ = writeln!(ddl, "COMMENT ON COLUMN {table}.{} IS {};", quote_ident(col), quote_literal(&text));
        }
        let what = format!("job {}: cannot create table {table}", job.name);
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        // A table with the same comment was created by this code for this job: skip the DDL
        // (a daemon prepares on every tick). Otherwise create it or refresh its comments.
        let comment: Option<String> = sqlx::query_scalar("SELECT obj_description(to_regclass($1), 'pg_class')")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err(&what))?;
        if comment.as_deref() != Some(schema.description.as_str()) {
            // Concurrent CREATE ... IF NOT EXISTS can collide in the catalog; serialize DDL.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chatetl.ddl'))")
                .execute(&mut *tx)
                .await
                .map_err(db_err(&what))?;
            sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(db_err(&what))?;
        }
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&self.schema)
        .bind(&schema.table)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err(&what))?;
        let missing: Vec<String> = schema.column_names().into_iter().filter(|c| !existing.contains(c)).collect();
        if !missing.is_empty() {
            return Err(SinkError::definition(format!(
                "job {}: table {table} exists without columns {missing:?} (the job's aggregations changed?); rename or drop the table and reload",
                job.name
            )));
        }
        sqlx::query("INSERT INTO chatetl.jobs (job, definition_hash, history_start) VALUES ($1, $2, $3) ON CONFLICT (job) DO NOTHING")
            .bind(&job.name)
            .bind(definition_hash)
            .bind(history_start)
            .execute(&mut *tx)
            .await
            .map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))?;
        self.job_state(&job.name).await
    }

    /// The stored state of `job`.
    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        let row = sqlx::query("SELECT definition_hash, watermark FROM chatetl.jobs WHERE job = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(&format!("job {job}: cannot read its state")))?;
        Ok(match row {
            Some(r) => JobState { definition_hash: Some(r.get(0)), watermark: r.get(1), ..JobState::default() },
            None => JobState::default(),
        })
    }

    /// Replaces the windows of `c` and records them, in one transaction.
    pub async fn commit(&self, c: Commit<'_>) -> Result<u64, SinkError> {
        let table = self.table(&c.schema.table);
        let first = c.windows.first().map(|w| w.window.start.to_rfc3339()).unwrap_or_default();
        let what = format!("cannot replace the windows from {first} in {table}");
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        // Lock the job's row first: commits of one job take turns (fetching still overlaps), so
        // they cannot deadlock on the window_loads foreign key and move the watermark one at a time.
        let current: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE job = $1 FOR UPDATE")
                .bind(&c.job.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(&err)?;
        for w in &c.windows {
            let time = c.schema.time_column;
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE {time} >= $1 AND {time} < $2")))
                .bind(w.window.start)
                .bind(w.window.end)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        let mut csv = Vec::new();
        let mut rows = 0u64;
        for w in &c.windows {
            rows += w.batch.num_rows() as u64;
            write_csv(&w.batch, &mut csv).map_err(|e| SinkError::warehouse(format!("{what}: {e}")))?;
        }
        if rows > 0 {
            let columns: Vec<String> = c.schema.column_names().iter().map(|n| quote_ident(n)).collect();
            let statement = format!("COPY {table} ({}) FROM STDIN WITH (FORMAT csv)", columns.join(", "));
            let mut copy = tx.copy_in_raw(&statement).await.map_err(&err)?;
            if let Err(e) = copy.send(csv).await {
                let _ = copy.abort("chatetl: sending rows failed").await;
                return Err(err(e));
            }
            copy.finish().await.map_err(&err)?;
        }
        let now = Utc::now();
        for w in c.windows.iter().filter(|w| c.complete(&w.window)) {
            sqlx::query(
                "INSERT INTO chatetl.window_loads (job, window_start, window_end, rows, requests, run_id, definition_hash, loaded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (job, window_start) DO UPDATE SET window_end = EXCLUDED.window_end, rows = EXCLUDED.rows,
                   requests = EXCLUDED.requests, run_id = EXCLUDED.run_id, definition_hash = EXCLUDED.definition_hash,
                   loaded_at = EXCLUDED.loaded_at",
            )
            .bind(&c.job.name)
            .bind(w.window.start)
            .bind(w.window.end)
            .bind(w.batch.num_rows() as i64)
            .bind(c.requests as i32)
            .bind(c.run_id)
            .bind(c.definition_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        let from = current.unwrap_or(c.history_start);
        let loads: BTreeMap<DateTime<Utc>, DateTime<Utc>> =
            sqlx::query("SELECT window_start, window_end FROM chatetl.window_loads WHERE job = $1 AND window_start >= $2 ORDER BY window_start")
                .bind(&c.job.name)
                .bind(from)
                .fetch_all(&mut *tx)
                .await
                .map_err(&err)?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
        let next = c.next_watermark(current, &loads);
        if next != current {
            sqlx::query("UPDATE chatetl.jobs SET watermark = $2, updated_at = now() WHERE job = $1")
                .bind(&c.job.name)
                .bind(next)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(rows)
    }

    /// Takes the job's session advisory lock on a connection detached from the pool.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<AdvisoryLock>, SinkError> {
        let err = db_err("cannot take the job's advisory lock");
        let mut conn = self.pool.acquire().await.map_err(&err)?.detach();
        let key = lock_key(job);
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await.map_err(&err)?;
        if got {
            Ok(Some(AdvisoryLock { conn, key }))
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }

    /// Drops the job's table and load records; the job row keeps only the new definition hash.
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        let definition_hash = "";
        let table = self.table(&job.table);
        let err = db_err("cannot reset the job's history");
        let mut tx = self.pool.begin().await.map_err(&err)?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(&mut *tx).await.map_err(&err)?;
        sqlx::query("DELETE FROM chatetl.window_loads WHERE job = $1")
            .bind(&job.name)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        sqlx::query(
            "UPDATE chatetl.jobs SET definition_hash = $2, watermark = NULL, updated_at = now() WHERE job = $1",
        )
        .bind(&job.name)
        .bind(definition_hash)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// See `Sink::add_columns`.
    pub async fn add_columns(
        &self,
        _job: &Job,
        _schema: &TableSchema,
        _added: &[String],
        _definition: &Definition,
    ) -> Result<(), SinkError> {
        Err(SinkError::warehouse("add_columns: not implemented yet"))
    }

    /// See `Sink::record_failures`.
    pub async fn record_failures(&self, _job: &str, _failures: &[WindowFailure]) -> Result<(), SinkError> {
        Err(SinkError::warehouse("record_failures: not implemented yet"))
    }

    /// See `Sink::window_failures`.
    pub async fn window_failures(&self, _job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        Err(SinkError::warehouse("window_failures: not implemented yet"))
    }

    /// See `Sink::close_abandoned_runs`.
    pub async fn close_abandoned_runs(&self, _job: &str, _now: DateTime<Utc>) -> Result<u64, SinkError> {
        Err(SinkError::warehouse("close_abandoned_runs: not implemented yet"))
    }

    /// See `Sink::claim_legacy_state`.
    pub async fn claim_legacy_state(&self, _job: &Job) -> Result<bool, SinkError> {
        Ok(false)
    }

    /// See `Sink::promote`.
    pub async fn promote(&self, _live: &Job, _shadow: &Job) -> Result<(), SinkError> {
        Err(SinkError::warehouse("promote: not implemented yet"))
    }

    pub async fn ping(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err("the postgres warehouse does not answer"))?;
        Ok(())
    }

    /// Every window load of `job`.
    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        let rows = sqlx::query(
            "SELECT window_start, window_end, rows, requests, run_id, definition_hash, loaded_at
             FROM chatetl.window_loads WHERE job = $1",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(&format!("job {job}: cannot read its window loads")))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let load = WindowLoad {
                    window_start: r.get(0),
                    window_end: r.get(1),
                    rows: r.get::<i64, _>(2) as u64,
                    requests: r.get::<i32, _>(3) as u32,
                    run_id: r.get(4),
                    definition_hash: r.get(5),
                    loaded_at: r.get(6),
                };
                (load.window_start, load)
            })
            .collect())
    }

    /// See `Sink::adopt_definition_hash`; one transaction.
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        let err = db_err("cannot update the stored definition hash");
        let mut tx = self.pool.begin().await.map_err(&err)?;
        for table in ["chatetl.jobs", "chatetl.window_loads"] {
            let sql = format!("UPDATE {table} SET definition_hash = $3 WHERE job = $1 AND definition_hash = $2");
            sqlx::query(AssertSqlSafe(sql)).bind(job).bind(from).bind(to).execute(&mut *tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Inserts or updates a run record.
    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        sqlx::query(
            "INSERT INTO chatetl.runs (run_id, job, kind, started_at, finished_at, status, windows_planned, windows_loaded,
               windows_skipped, windows_failed, rows, requests, retries, error, error_kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (run_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, status = EXCLUDED.status,
               windows_planned = EXCLUDED.windows_planned, windows_loaded = EXCLUDED.windows_loaded,
               windows_skipped = EXCLUDED.windows_skipped, windows_failed = EXCLUDED.windows_failed, rows = EXCLUDED.rows,
               requests = EXCLUDED.requests, retries = EXCLUDED.retries, error = EXCLUDED.error,
               error_kind = EXCLUDED.error_kind",
        )
        .bind(&run.run_id)
        .bind(&run.job)
        .bind(&run.kind)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(&run.status)
        .bind(run.windows_planned as i32)
        .bind(run.windows_loaded as i32)
        .bind(run.windows_skipped as i32)
        .bind(run.windows_failed as i32)
        .bind(run.rows as i64)
        .bind(run.requests as i32)
        .bind(run.retries as i32)
        .bind(&run.error)
        .bind(run.error_kind.map(|k| k.as_str()))
        .execute(&self.pool)
        .await
        .map_err(db_err(&format!("job {}: cannot record run {}", run.job, run.run_id)))?;
        Ok(())
    }

    /// Status of each of `jobs`.
    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        let mut out = Vec::new();
        for job in jobs {
            let state = self.job_state(job).await?;
            let err = db_err("cannot read run history");
            let totals =
                sqlx::query("SELECT count(*), coalesce(sum(rows), 0)::bigint FROM chatetl.window_loads WHERE job = $1")
                    .bind(job)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(&err)?;
            let runs = sqlx::query(
                "SELECT run_id, job, kind, started_at, finished_at, status, windows_planned, windows_loaded, windows_skipped,
                   windows_failed, rows, requests, retries, error, error_kind
                 FROM chatetl.runs WHERE job = $1 ORDER BY started_at DESC LIMIT 50",
            )
            .bind(job)
            .fetch_all(&self.pool)
            .await
            .map_err(&err)?;
            let runs: Vec<RunRecord> = runs
                .into_iter()
                .map(|r| RunRecord {
                    run_id: r.get(0),
                    job: r.get(1),
                    kind: r.get(2),
                    started_at: r.get(3),
                    finished_at: r.get(4),
                    status: r.get(5),
                    windows_planned: r.get::<i32, _>(6) as u32,
                    windows_loaded: r.get::<i32, _>(7) as u32,
                    windows_skipped: r.get::<i32, _>(8) as u32,
                    windows_failed: r.get::<i32, _>(9) as u32,
                    rows: r.get::<i64, _>(10) as u64,
                    requests: r.get::<i32, _>(11) as u32,
                    retries: r.get::<i32, _>(12) as u32,
                    error: r.get(13),
                    error_kind: r.get::<Option<String>, _>(14).as_deref().and_then(ErrorKind::parse),
                })
                .collect();
            out.push(JobStatus {
                job: job.clone(),
                watermark: state.watermark,
                definition_hash: state.definition_hash,
                windows_loaded: totals.get::<i64, _>(0) as u64,
                rows_loaded: totals.get::<i64, _>(1) as u64,
                windows_failed: 0,
                windows_outdated: 0,
                added_columns: Vec::new(),
                last_error: runs.iter().find_map(|r| r.error.clone()),
                last_error_kind: runs.iter().find(|r| r.error.is_some()).and_then(|r| r.error_kind),
                last_run: runs.into_iter().next(),
            });
        }
        Ok(out)
    }
}

/// The advisory lock key of a job: 64 bits of the sha256 of `chatetl.job:<name>`.
fn lock_key(job: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("chatetl.job:{job}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A held session advisory lock; its connection belongs to no pool, so closing or dropping it
/// (on any exit path) ends the session and PostgreSQL releases the lock.
pub struct AdvisoryLock {
    conn: sqlx::PgConnection,
    key: i64,
}

impl AdvisoryLock {
    /// Unlocks and closes the connection.
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(self.key).execute(&mut self.conn).await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// Appends `batch` as CSV rows for `COPY … WITH (FORMAT csv)`: nulls unquoted-empty, text
/// always quoted, timestamps RFC 3339 UTC with microseconds.
pub fn write_csv(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), String> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    let mut line = String::new();
    for row in 0..batch.num_rows() {
        line.clear();
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            if col.is_null(row) {
                continue;
            }
            match col.data_type() {
                DataType::Timestamp(_, _) => {
                    let us = col.as_primitive::<TimestampMicrosecondType>().value(row);
                    let t = DateTime::<Utc>::from_timestamp_micros(us).ok_or("timestamp out of range")?;
                    let _ = write!(line, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
                }
                DataType::Date32 => {
                    let d = epoch + chrono::Duration::days(col.as_primitive::<Date32Type>().value(row) as i64);
                    let _ = write!(line, "{d}");
                }
                DataType::Int64 => {
                    let _ = write!(line, "{}", col.as_primitive::<Int64Type>().value(row));
                }
                DataType::Float64 => {
                    let x = col.as_primitive::<Float64Type>().value(row);
                    if !x.is_finite() {
                        return Err(format!("column {i} holds {x}, which the warehouse cannot store"));
                    }
                    let _ = write!(line, "{x}");
                }
                DataType::Boolean => line.push_str(if col.as_boolean().value(row) { "t" } else { "f" }),
                DataType::Utf8 => {
                    line.push('"');
                    line.push_str(&col.as_string::<i32>().value(row).replace('"', "\"\""));
                    line.push('"');
                }
                other => return Err(format!("no CSV encoding for {other}")),
            }
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    Ok(())
}
