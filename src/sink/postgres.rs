//! The PostgreSQL warehouse: one typed table per job in the configured schema (the *target*),
//! state in the `chatetl` schema of the same database, every state row keyed by (target, job).
//!
//! Owns: connecting and applying `migrations/` (embedded at compile time, tracked in
//! `chatetl._sqlx_migrations`); each job's table with its natural key, its date index and its
//! comments; [`PostgresSink::commit`]: in ONE transaction, delete the windows' rows, `COPY` the
//! new rows (binary format with an explicit column list, [`binary_copy`], encoded on another
//! thread while the transaction runs), upsert the window loads, remove the windows' failures and
//! move the watermark over contiguous loads, in a fixed number of statements however many
//! windows the commit holds (a failure anywhere rolls all of it back, so a window is replaced
//! whole or not at all and the watermark never passes uncommitted data); adding value columns in place ([`PostgresSink::add_columns`]); swapping a rebuilt
//! shadow table in ([`PostgresSink::promote`]); and claiming state an earlier release kept per
//! job name ([`PostgresSink::claim_legacy_state`]).
//!
//! # State per target
//! The target is the schema the job's tables live in, so a demo (`chatetl_demo`) and a
//! production configuration (`analytics`) on one database never share a watermark, a load
//! record, a run or a job lock ([`lock_key`]). Every query here filters by it. Rows written
//! before migration 0003 have target NULL; the first target whose schema holds the job's table
//! claims them (when two schemas hold it, as a demo beside production under the old release
//! could, the first to open does; the other starts fresh and reloads what it backfills).
//!
//! # Tables BI users can lean on
//! - Natural key: the time column and the key dimensions. Dimensions are nullable by meaning (an
//!   org-scope row has no team or user), and a PRIMARY KEY's columns are NOT NULL, so a table
//!   with dimensions gets `UNIQUE NULLS NOT DISTINCT` (two org rows of one bucket still collide)
//!   and a table without any (`comm100_today`) a PRIMARY KEY on its time column. Both are named
//!   `<table>_natural_key`.
//! - `<table>_<date column>_idx` on `bucket_date` / `captured_date` serves the README's filters
//!   (`WHERE bucket_date >= current_date - 30`); `prepare` adds it to tables created before it.
//! - `COMMENT ON` the table and every column; the state tables' comments are in the migrations.
//!
//! # Changing a table without losing service
//! Added value columns are `ALTER TABLE … ADD COLUMN` (nullable: no rewrite) in one transaction
//! with the state. A rebuild loads `_rebuild_<table>` beside the live table under the job
//! `<name>~rebuild`; [`PostgresSink::promote`] then drops the live table and renames the shadow
//! (its key and index too) in one transaction: a reader waiting on the lock sees the new table
//! when it gets it, never an empty one. Grants on the live table are copied to the new one. DDL
//! waits at most [`LOCK_TIMEOUT`] for readers, so a long BI query makes it fail (retryable)
//! rather than queue every other reader behind it.
//!
//! Requires PostgreSQL 15 or later (`UNIQUE NULLS NOT DISTINCT`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row as _, SqlSafeStr, Transaction};
use tracing::{info, warn};

use super::{Commit, SHADOW_SUFFIX, SinkError};
use crate::batch::TableSchema;
use crate::config::{Job, Secret};
use crate::error::ErrorKind;
use crate::row::ColumnType;
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// The state migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "state", include_str!("../../migrations/0001_state.sql")),
    (2, "error kind", include_str!("../../migrations/0002_error_kind.sql")),
    (3, "state per target", include_str!("../../migrations/0003_state_per_target.sql")),
    (4, "shared budget", include_str!("../../migrations/0004_shared_budget.sql")),
];

/// How long DDL on a job's table (added columns, a promotion) waits for readers' locks.
pub const LOCK_TIMEOUT: &str = "10s";

/// The error recorded for a run whose process ended before it finished.
const DIED: &str = "the process ended before the run finished";

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// How long connecting (or waiting for a free connection) may take before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn db_err(what: &str) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| match e {
        sqlx::Error::PoolTimedOut => SinkError::warehouse(format!(
            "{what}: the postgres warehouse gave no connection within {} s (is the server up and reachable?)",
            CONNECT_TIMEOUT.as_secs()
        )),
        e => SinkError::warehouse(format!("{what}: {e}")),
    }
}

/// [`db_err`] for DDL on a job's table, saying what to do about the two failures a user can
/// cause: a query holding the table past [`LOCK_TIMEOUT`] (passes: retry) and views depending on
/// a table a promotion drops (does not: a configuration problem).
fn ddl_err(what: &str) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
        match code.as_deref() {
            Some("55P03") => SinkError::warehouse(format!(
                "{what}: another session held the table for more than {LOCK_TIMEOUT} (a long query?); retrying later helps: {e}"
            )),
            Some("2BP01") => SinkError::definition(format!(
                "{what}: other objects (views?) depend on the table, so it cannot be replaced; drop them, rerun, and recreate them: {e}"
            )),
            _ => SinkError::warehouse(format!("{what}: {e}")),
        }
    }
}

/// Bytes of encoded rows per block handed to a COPY ([`binary_copy::Encoder::stream`]).
const COPY_BLOCK_BYTES: usize = 1 << 20;

/// Blocks a commit's encoder may run ahead of its COPY.
const COPY_BLOCKS_IN_FLIGHT: usize = 4;

/// [`db_err`] for a COPY: a column whose type is not the one chatetl writes (SQLSTATE 22P03, the
/// binary format's "incorrect binary data format") is the table's fault, not the server's.
fn copy_err(what: &str) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("22P03") => SinkError::definition(format!(
            "{what}: a column of the table has another type than the job's definition gives it (altered by \
             hand?); restore its type or rebuild the table (`chatetl run --job <job> --rebuild`): {e}"
        )),
        // PostgreSQL stores no NUL character in text (22021) or in jsonb (22P05): the same
        // answer fails every time, so a retry cannot help.
        Some("22021" | "22P05") => SinkError::unstorable(format!(
            "{what}: the upstream sent text with a NUL character, which PostgreSQL cannot store (a retry will \
             not help; report the answer, `chatetl probe` shows one): {e}"
        )),
        _ => db_err(what)(e),
    }
}

/// Half-open spans in time order, with spans that touch or overlap merged (the windows of a chunk
/// are usually one span).
fn spans<T: Ord + Copy>(windows: impl Iterator<Item = (T, T)>) -> Vec<(T, T)> {
    let mut all: Vec<(T, T)> = windows.collect();
    all.sort();
    let mut out: Vec<(T, T)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `"schema"."table"`.
fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The DDL that creates the schema `target`, `schema`'s table in it (natural key included), its
/// date index and every comment; each statement is a no-op or a refresh on a table that exists.
fn table_ddl(target: &str, schema: &TableSchema) -> String {
    let table = qualified(target, &schema.table);
    let mut ddl = format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(target));
    let _ = write!(
        ddl,
        "CREATE TABLE IF NOT EXISTS {table} (\n  {} timestamptz NOT NULL,\n  {} date NOT NULL,\n",
        schema.time_column, schema.date_column
    );
    for d in &schema.dims {
        let _ = writeln!(ddl, "  {} text,", quote_ident(&d.name));
    }
    for m in &schema.metrics {
        let _ = writeln!(ddl, "  {} {},", quote_ident(&m.name), sql_type(m.ty));
    }
    let key: Vec<String> = std::iter::once(schema.time_column.to_string())
        .chain(schema.dims.iter().map(|d| quote_ident(&d.name)))
        .collect();
    // See the module doc: nullable dimensions rule out a primary key.
    let key_kind = if schema.dims.is_empty() { "PRIMARY KEY" } else { "UNIQUE NULLS NOT DISTINCT" };
    let _ = write!(
        ddl,
        "  _window_start timestamptz NOT NULL,\n  _loaded_at timestamptz NOT NULL,\n  _run_id text NOT NULL,\n  CONSTRAINT {} {key_kind} ({})\n);\n",
        quote_ident(&key_name(&schema.table)),
        key.join(", ")
    );
    let _ = writeln!(
        ddl,
        "CREATE INDEX IF NOT EXISTS {} ON {table} ({});",
        quote_ident(&date_index_name(&schema.table, schema.date_column)),
        schema.date_column
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
    ddl
}

/// The SQL type of a value column.
fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Int => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Text => "text",
        ColumnType::Bool => "boolean",
        ColumnType::Json => "jsonb",
    }
}

/// The type `information_schema.columns.data_type` names for column `name` of `schema`'s
/// table as chatetl creates it (`None`: not one of its columns).
fn column_type(schema: &TableSchema, name: &str) -> Option<&'static str> {
    const TIMESTAMPTZ: &str = "timestamp with time zone";
    if name == schema.time_column || name == "_window_start" || name == "_loaded_at" {
        return Some(TIMESTAMPTZ);
    }
    if name == schema.date_column {
        return Some("date");
    }
    if name == "_run_id" || schema.dims.iter().any(|d| d.name == name) {
        return Some("text");
    }
    schema.metrics.iter().find(|m| m.name == name).map(|m| sql_type(m.ty))
}

/// The name of a table's natural key constraint (and its index). A rebuild's are named after the
/// shadow table and renamed by [`PostgresSink::promote`], as every index named after it is.
fn key_name(table: &str) -> String {
    crate::sink::fit_identifier(format!("{table}_natural_key"))
}

/// The name of a table's index on its date column.
fn date_index_name(table: &str, date_column: &str) -> String {
    crate::sink::fit_identifier(format!("{table}_{date_column}_idx"))
}

/// The live job a name belongs to (a shadow job's name without [`SHADOW_SUFFIX`]).
fn live_name(job: &str) -> &str {
    job.strip_suffix(SHADOW_SUFFIX).unwrap_or(job)
}

/// The columns of `runs` read into a [`RunRecord`] by [`run_record`], in its order.
const RUN_COLUMNS: &str = "run_id, job, kind, started_at, finished_at, status, windows_planned, windows_loaded, \
     windows_skipped, windows_failed, rows, requests, retries, error, error_kind";

fn run_record(r: PgRow) -> RunRecord {
    RunRecord {
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
    }
}

/// A connection pool to the warehouse database, writing the tables of one schema (the target).
pub struct PostgresSink {
    pool: PgPool,
    schema: String,
}

impl PostgresSink {
    /// Connects and applies the state migrations.
    ///
    /// A malformed url is a configuration error; a server that does not answer within
    /// [`CONNECT_TIMEOUT`] a warehouse error naming host, port, database and user (never the
    /// password) and what to check.
    pub async fn connect(url: &Secret, schema: &str) -> Result<PostgresSink, SinkError> {
        let options: PgConnectOptions = url.expose().parse().map_err(|e: sqlx::Error| {
            // The parser's message quotes no part of the url; the url itself is never shown.
            SinkError::definition(format!(
                "the postgres warehouse url is not valid ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
        })?;
        // The job locks are session advisory locks: the server must notice a holder whose host
        // vanished (power cut, partition) within a minute or so, not after the OS default of
        // two hours of TCP silence, so its jobs pass to another process by the next tick.
        let options = options.options([
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
        ]);
        // An unencoded `/` or `@` in the password moves part of it into the host or database:
        // say so without echoing any of it.
        if options.get_host().contains('@') || options.get_database().is_some_and(|d| d.contains(['@', '/'])) {
            return Err(SinkError::definition(
                "the postgres warehouse url is not valid: its host or database holds `@` or `/`, as happens when the \
                 password has one; percent-encode them in the password (`@` as %40, `/` as %2F)",
            ));
        }
        let place = format!(
            "{}:{}, database {}, user {}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(the user's)"),
            options.get_username()
        );
        let unreachable = |cause: String| {
            SinkError::warehouse(format!(
                "cannot connect to the postgres warehouse at {place}: {cause}; check that the server is running and \
                 reachable from this host, and the host, port, database and user of the warehouse url"
            ))
        };
        // One connection first, for the real cause (refused, unknown database, authentication):
        // the pool retries those silently until its timeout.
        match tokio::time::timeout(CONNECT_TIMEOUT, <sqlx::PgConnection as sqlx::Connection>::connect_with(&options))
            .await
        {
            Err(_) => return Err(unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                unreachable(match e {
                    sqlx::Error::PoolTimedOut => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    e => e.to_string(),
                })
            })?;
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

    /// The schema of the job tables: the target every state row of this sink is keyed by.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The pool, for callers that query the warehouse (status, tests, the demo).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn table(&self, table: &str) -> String {
        qualified(&self.schema, table)
    }

    /// Creates the schema and table if missing (or adds what an older release's table lacks:
    /// its date index, refreshed comments), refuses a table lacking columns, registers the job
    /// and keeps its definition document.
    pub async fn prepare(
        &self,
        job: &Job,
        schema: &TableSchema,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let table = self.table(&schema.table);
        let index = format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&date_index_name(&schema.table, schema.date_column))
        );
        let what = format!("job {}: cannot prepare table {table}", job.name);
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        let (comment, indexed): (Option<String>, bool) =
            sqlx::query_as("SELECT obj_description(to_regclass($1), 'pg_class'), to_regclass($2) IS NOT NULL")
                .bind(&table)
                .bind(&index)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err(&what))?;
        let typed: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&self.schema)
        .bind(&schema.table)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err(&what))?;
        // The binary COPY hands PostgreSQL each value as the bytes of the type chatetl writes; a
        // column retyped by hand would read them as another type (a bigint's bytes as a numeric
        // are a wrong number, not an error), so such a table is refused before any load.
        let retyped: Vec<String> = typed
            .iter()
            .filter_map(|(name, found)| {
                let want = column_type(schema, name)?;
                let fits = found == want || (want == "text" && found == "character varying");
                (!fits).then(|| format!("{name} is {found} (chatetl writes {want})"))
            })
            .collect();
        if !retyped.is_empty() {
            return Err(SinkError::definition(format!(
                "job {}: table {table} has columns of another type than the job's definition gives them: {}; \
                 restore their types (ALTER TABLE … ALTER COLUMN … TYPE …)",
                job.name,
                retyped.join(", ")
            )));
        }
        let existing: Vec<String> = typed.into_iter().map(|(name, _)| name).collect();
        let missing: Vec<String> = schema.column_names().into_iter().filter(|c| !existing.contains(c)).collect();
        // Value columns the table lacks (an endpoint that gained a field in a chatetl release)
        // are added in place, null in the rows loaded before; a missing key or time column means
        // the table holds something else.
        let (values, keys): (Vec<String>, Vec<String>) =
            missing.into_iter().partition(|c| schema.metrics.iter().any(|m| &m.name == c));
        if !existing.is_empty() && !keys.is_empty() {
            let remedy = match job.kind {
                crate::config::JobKind::Windowed => format!(
                    "`chatetl run --job {} --rebuild` loads the whole history into a new table beside it and swaps it in",
                    live_name(&job.name)
                ),
                crate::config::JobKind::Snapshot => "a snapshot's captures cannot be fetched again, so chatetl never \
                     rebuilds its table: give the job a new `table:`"
                    .to_string(),
            };
            return Err(SinkError::definition(format!(
                "job {}: table {table} exists without key columns {keys:?} of the job's definition; {remedy}",
                job.name
            )));
        }
        if !existing.is_empty() && !values.is_empty() {
            let mut ddl = format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';\n");
            for column in schema.metrics.iter().filter(|m| values.contains(&m.name)) {
                let col = quote_ident(&column.name);
                let _ = writeln!(ddl, "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {};", sql_type(column.ty));
                let _ = writeln!(ddl, "COMMENT ON COLUMN {table}.{col} IS {};", quote_literal(&column.comment));
            }
            sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(ddl_err(&what))?;
            info!(job = %job.name, table = %table, columns = ?values, "value columns of the endpoint added to the table");
        }
        // A table with this comment and its date index was made by this code for this job: skip
        // the DDL (a daemon prepares on every tick). Otherwise create it or complete it.
        if comment.as_deref() != Some(schema.description.as_str()) || !indexed {
            // Concurrent CREATE ... IF NOT EXISTS can collide in the catalog; serialize DDL.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chatetl.ddl'))")
                .execute(&mut *tx)
                .await
                .map_err(db_err(&what))?;
            sqlx::raw_sql(AssertSqlSafe(table_ddl(&self.schema, schema)))
                .execute(&mut *tx)
                .await
                .map_err(db_err(&what))?;
        }
        self.register_in(&mut tx, &job.name, history_start, definition).await.map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))?;
        self.job_state(&job.name).await
    }

    /// A new job is registered with its definition; a job whose definition is unchanged but
    /// was stored without its document (an earlier release) gets the document.
    async fn register_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        job: &str,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO chatetl.jobs (target, job, definition_hash, definition, history_start)
             VALUES ($1, $2, $3, $4::jsonb, $5)
             ON CONFLICT (target, job) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()
             WHERE chatetl.jobs.definition IS NULL AND chatetl.jobs.definition_hash = EXCLUDED.definition_hash",
        )
        .bind(&self.schema)
        .bind(job)
        .bind(&definition.hash)
        .bind(definition.document.to_string())
        .bind(history_start)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// For a warehouse that keeps only its state here (the lake): registers `job` as `prepare`
    /// does, without a table, and returns its state.
    pub async fn register(
        &self,
        job: &str,
        history_start: DateTime<Utc>,
        definition: &Definition,
    ) -> Result<JobState, SinkError> {
        let what = format!("job {job}: cannot register it");
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        self.register_in(&mut tx, job, history_start, definition).await.map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))?;
        self.job_state(job).await
    }

    /// The stored state of `job` in this target.
    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        let what = format!("job {job}: cannot read its state");
        let row = sqlx::query(
            "SELECT definition_hash, definition::text, added_columns, watermark FROM chatetl.jobs
             WHERE target = $1 AND job = $2",
        )
        .bind(&self.schema)
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err(&what))?;
        let Some(r) = row else { return Ok(JobState::default()) };
        let definition = r
            .get::<Option<String>, _>(1)
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| SinkError::warehouse(format!("{what}: chatetl.jobs.definition is not JSON: {e}")))?;
        Ok(JobState { definition_hash: Some(r.get(0)), definition, added_columns: r.get(2), watermark: r.get(3) })
    }

    /// Replaces the windows of `c` and records them, in one transaction.
    ///
    /// The rows are encoded ([`binary_copy`]) on a blocking thread while the transaction deletes
    /// the windows' old rows, and streamed to the COPY in blocks as they are encoded, so encoding
    /// overlaps the server's work and a commit holds a few blocks, not its whole chunk encoded.
    /// Only then is the job's row locked: commits of one job write their rows concurrently
    /// (commits of the same window take turns, under a lock per window) and take turns for the
    /// state alone, so the watermark moves one
    /// commit at a time and they cannot deadlock on the window_loads foreign key. The statements
    /// are a fixed handful per commit, however many windows it holds: one DELETE, one COPY, the
    /// lock, one upsert of every window load that also removes their failures, one walk of the
    /// loads the watermark can move over and at most one UPDATE.
    pub async fn commit(&self, c: Commit<'_>) -> Result<u64, SinkError> {
        let table = self.table(&c.schema.table);
        let first = c.windows.first().map(|w| w.window.start.to_rfc3339()).unwrap_or_default();
        let what = format!("job {}: cannot replace the windows from {first} in {table}", c.job.name);
        let err = db_err(&what);
        let rows: u64 = c.windows.iter().map(|w| w.batch.num_rows() as u64).sum();
        let (sender, mut blocks) = tokio::sync::mpsc::channel::<Vec<u8>>(COPY_BLOCKS_IN_FLIGHT);
        let encoder = (rows > 0).then(|| {
            let encoder = binary_copy::Encoder::new(c.schema);
            let batches: Vec<RecordBatch> = c.windows.iter().map(|w| w.batch.clone()).collect();
            tokio::task::spawn_blocking(move || {
                encoder.stream(&batches, COPY_BLOCK_BYTES, |block| sender.blocking_send(block).is_ok())
            })
        });
        let mut tx = self.pool.begin().await.map_err(&err)?;
        // Commits of the same window take turns from here to their end (commits of other windows
        // still write at once): without it, two commits of one window would each delete the old
        // rows and keep their own, and the table would hold both loads. Keys in order, so two
        // commits sharing several windows cannot deadlock.
        let mut keys: Vec<i64> =
            c.windows.iter().map(|w| window_lock_key(&self.schema, &c.job.name, w.window.start)).collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, n) ORDER BY n")
            .bind(&keys)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        let time = c.schema.time_column;
        let (starts, ends): (Vec<_>, Vec<_>) =
            spans(c.windows.iter().map(|w| (w.window.start, w.window.end))).into_iter().unzip();
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} t USING unnest($1::timestamptz[], $2::timestamptz[]) AS w(s, e)
             WHERE t.{time} >= w.s AND t.{time} < w.e"
        )))
        .bind(&starts)
        .bind(&ends)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        if let Some(encoder) = encoder {
            let columns: Vec<String> = c.schema.column_names().iter().map(|n| quote_ident(n)).collect();
            let statement = format!("COPY {table} ({}) FROM STDIN WITH (FORMAT binary)", columns.join(", "));
            let mut copy = tx.copy_in_raw(&statement).await.map_err(copy_err(&what))?;
            while let Some(block) = blocks.recv().await {
                if let Err(e) = copy.send(block).await {
                    // The encoder stops at its next block.
                    drop(blocks);
                    let _ = copy.abort("chatetl: sending rows failed").await;
                    return Err(copy_err(&what)(e));
                }
            }
            match encoder.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    let _ = copy.abort("chatetl: encoding rows failed").await;
                    return Err(SinkError::warehouse(format!("{what}: {message}")));
                }
                Err(e) => {
                    let _ = copy.abort("chatetl: encoding rows failed").await;
                    return Err(SinkError::warehouse(format!("{what}: the task encoding the rows failed: {e}")));
                }
            }
            copy.finish().await.map_err(copy_err(&what))?;
        }
        self.record_loads(&mut tx, &c).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(rows)
    }

    /// For a warehouse that keeps only its state here (the lake), after its data is in place:
    /// records the complete windows of `c` and moves the watermark, in one transaction.
    pub async fn commit_state(&self, c: &Commit<'_>) -> Result<(), SinkError> {
        let first = c.windows.first().map(|w| w.window.start.to_rfc3339()).unwrap_or_default();
        let what = format!("job {}: cannot record the windows from {first}", c.job.name);
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        self.record_loads(&mut tx, c).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// The state part of a commit, in `tx`: locks the job's row, upserts the complete windows'
    /// loads (removing their failures) and moves the watermark.
    async fn record_loads(&self, tx: &mut Transaction<'_, Postgres>, c: &Commit<'_>) -> Result<(), sqlx::Error> {
        let current: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT watermark FROM chatetl.jobs WHERE target = $1 AND job = $2 FOR UPDATE")
                .bind(&self.schema)
                .bind(&c.job.name)
                .fetch_one(&mut **tx)
                .await?;
        let complete: Vec<_> = c.windows.iter().filter(|w| c.complete(&w.window)).collect();
        if !complete.is_empty() {
            let starts: Vec<DateTime<Utc>> = complete.iter().map(|w| w.window.start).collect();
            let ends: Vec<DateTime<Utc>> = complete.iter().map(|w| w.window.end).collect();
            let counts: Vec<i64> = complete.iter().map(|w| w.batch.num_rows() as i64).collect();
            sqlx::query(
                "WITH loaded AS (
                   INSERT INTO chatetl.window_loads
                     (target, job, window_start, window_end, rows, requests, run_id, definition_hash, loaded_at)
                   SELECT $1, $2, s, e, n, $6, $7, $8, $9
                   FROM unnest($3::timestamptz[], $4::timestamptz[], $5::bigint[]) AS w(s, e, n)
                   ON CONFLICT (target, job, window_start) DO UPDATE SET window_end = EXCLUDED.window_end,
                     rows = EXCLUDED.rows, requests = EXCLUDED.requests, run_id = EXCLUDED.run_id,
                     definition_hash = EXCLUDED.definition_hash, loaded_at = EXCLUDED.loaded_at
                   RETURNING window_start)
                 DELETE FROM chatetl.window_failures f USING loaded
                 WHERE f.target = $1 AND f.job = $2 AND f.window_start = loaded.window_start",
            )
            .bind(&self.schema)
            .bind(&c.job.name)
            .bind(&starts)
            .bind(&ends)
            .bind(&counts)
            .bind(c.requests as i32)
            .bind(c.run_id)
            .bind(c.definition_hash)
            .bind(Utc::now())
            .execute(&mut **tx)
            .await?;
        }
        // Only the chain of loads starting exactly at the watermark can move it (a snapshot
        // job's moves to its latest capture: no loads needed). Walking that chain by key costs
        // the windows it passes, each once in the job's life: a commit costs the same after
        // years of history, and while the window at the watermark is missing nothing is read.
        // The step is a LATERAL lookup with LIMIT 1 (the key is unique) so that it stays one
        // index probe per window: as a plain join, the generic plan scanned every load of the
        // job on each step, which made a long backfill quadratic.
        let loads: BTreeMap<DateTime<Utc>, DateTime<Utc>> = match c.job.kind {
            crate::config::JobKind::Snapshot => BTreeMap::new(),
            crate::config::JobKind::Windowed => sqlx::query_as::<_, (DateTime<Utc>, DateTime<Utc>)>(
                "WITH RECURSIVE chain (window_start, window_end) AS (
                   SELECT window_start, window_end FROM chatetl.window_loads
                   WHERE target = $1 AND job = $2 AND window_start = $3
                   UNION ALL
                   SELECT l.window_start, l.window_end FROM chain CROSS JOIN LATERAL (
                     SELECT window_start, window_end FROM chatetl.window_loads
                     WHERE target = $1 AND job = $2 AND window_start = chain.window_end LIMIT 1) l
                   WHERE l.window_end > l.window_start)
                 SELECT window_start, window_end FROM chain",
            )
            .bind(&self.schema)
            .bind(&c.job.name)
            .bind(current.unwrap_or(c.history_start))
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect(),
        };
        let next = c.next_watermark(current, &loads);
        if next != current {
            sqlx::query("UPDATE chatetl.jobs SET watermark = $3, updated_at = now() WHERE target = $1 AND job = $2")
                .bind(&self.schema)
                .bind(&c.job.name)
                .bind(next)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Takes the job's session advisory lock (for this target) on a connection detached from
    /// the pool.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<AdvisoryLock>, SinkError> {
        let what = format!("job {job}: cannot take its advisory lock");
        let err = db_err(&what);
        let mut conn = self.pool.acquire().await.map_err(&err)?.detach();
        let key = lock_key(&self.schema, job);
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await.map_err(&err)?;
        if got {
            Ok(Some(AdvisoryLock { conn, key }))
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }

    /// See `Sink::reset_job`: drops the shadow's table and forgets its job row, window loads
    /// and failures (by the foreign keys' cascade) and its runs, in one transaction.
    pub async fn reset_job(&self, job: &Job) -> Result<(), SinkError> {
        let table = self.table(&job.table);
        let what = format!("job {}: cannot reset the rebuild's table {table} and state", job.name);
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&mut *tx)
            .await
            .map_err(ddl_err(&what))?;
        self.forget_in(&mut tx, &job.name).await.map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))
    }

    /// Forgets `job`'s job row, window loads and failures (by the foreign keys' cascade) and
    /// its runs, in `tx`.
    async fn forget_in(&self, tx: &mut Transaction<'_, Postgres>, job: &str) -> Result<(), sqlx::Error> {
        for sql in [
            "DELETE FROM chatetl.runs WHERE target = $1 AND job = $2",
            "DELETE FROM chatetl.jobs WHERE target = $1 AND job = $2",
        ] {
            sqlx::query(sql).bind(&self.schema).bind(job).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// For a warehouse that keeps only its state here (the lake): forgets every state row of
    /// `job` (a rebuild's shadow) in one transaction.
    pub async fn forget(&self, job: &str) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot forget its state");
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        self.forget_in(&mut tx, job).await.map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))
    }

    /// See `Sink::add_columns`: the columns (with their comments) and the state, in one
    /// transaction; a missing table only updates the state (`prepare` creates it whole).
    pub async fn add_columns(
        &self,
        job: &Job,
        schema: &TableSchema,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), SinkError> {
        let table = self.table(&schema.table);
        let what = format!("job {}: cannot add columns {} to {table}", job.name, added.join(", "));
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await
            .map_err(&err)?;
        if exists {
            let mut ddl = format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';\n");
            for name in added {
                let column = schema.metrics.iter().find(|m| &m.name == name).ok_or_else(|| {
                    SinkError::definition(format!("{what}: the job's definition has no value column {name}"))
                })?;
                let col = quote_ident(name);
                let _ = writeln!(ddl, "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {};", sql_type(column.ty));
                let _ = writeln!(ddl, "COMMENT ON COLUMN {table}.{col} IS {};", quote_literal(&column.comment));
            }
            sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(ddl_err(&what))?;
        }
        self.record_added_columns_in(&mut tx, &job.name, added, definition).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        info!(job = %job.name, table = %table, columns = ?added, table_existed = exists, "value columns added");
        Ok(())
    }

    /// Stores `definition` as `job`'s and appends `added` to its added columns, in `tx`.
    async fn record_added_columns_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        job: &str,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), sqlx::Error> {
        let stored: Option<Vec<String>> =
            sqlx::query_scalar("SELECT added_columns FROM chatetl.jobs WHERE target = $1 AND job = $2 FOR UPDATE")
                .bind(&self.schema)
                .bind(job)
                .fetch_optional(&mut **tx)
                .await?;
        let mut columns = stored.unwrap_or_default();
        columns.extend(added.iter().filter(|c| !columns.contains(c)).cloned().collect::<Vec<_>>());
        sqlx::query(
            "UPDATE chatetl.jobs SET definition_hash = $3, definition = $4::jsonb, added_columns = $5, updated_at = now()
             WHERE target = $1 AND job = $2",
        )
        .bind(&self.schema)
        .bind(job)
        .bind(&definition.hash)
        .bind(definition.document.to_string())
        .bind(&columns)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// For a warehouse that keeps only its state here (the lake), once every file has the new
    /// columns: records them as `add_columns` does, in one transaction.
    pub async fn record_added_columns(
        &self,
        job: &str,
        added: &[String],
        definition: &Definition,
    ) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot record its added columns {}", added.join(", "));
        let mut tx = self.pool.begin().await.map_err(db_err(&what))?;
        self.record_added_columns_in(&mut tx, job, added, definition).await.map_err(db_err(&what))?;
        tx.commit().await.map_err(db_err(&what))
    }

    /// See `Sink::record_failures`: one upsert per window, in one transaction.
    pub async fn record_failures(&self, job: &str, failures: &[WindowFailure]) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot record its failed windows");
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        for f in failures {
            sqlx::query(
                "INSERT INTO chatetl.window_failures (target, job, window_start, window_end, run_id, kind, error, failed_at, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (target, job, window_start) DO UPDATE SET window_end = EXCLUDED.window_end,
                   run_id = EXCLUDED.run_id, kind = EXCLUDED.kind, error = EXCLUDED.error, failed_at = EXCLUDED.failed_at,
                   attempts = chatetl.window_failures.attempts + EXCLUDED.attempts",
            )
            .bind(&self.schema)
            .bind(job)
            .bind(f.window_start)
            .bind(f.window_end)
            .bind(&f.run_id)
            .bind(f.kind.as_str())
            .bind(&f.error)
            .bind(f.failed_at)
            .bind(f.attempts.max(1) as i32)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// See `Sink::window_failures`.
    pub async fn window_failures(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        let rows = sqlx::query(
            "SELECT window_start, window_end, run_id, kind, error, failed_at, attempts FROM chatetl.window_failures
             WHERE target = $1 AND job = $2",
        )
        .bind(&self.schema)
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err(&format!("job {job}: cannot read its failed windows")))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let failure = WindowFailure {
                    window_start: r.get(0),
                    window_end: r.get(1),
                    run_id: r.get(2),
                    // A kind this release does not know (written by a newer one) is still a failure.
                    kind: ErrorKind::parse(r.get(3)).unwrap_or(ErrorKind::Warehouse),
                    error: r.get(4),
                    failed_at: r.get(5),
                    attempts: r.get::<i32, _>(6) as u32,
                };
                (failure.window_start, failure)
            })
            .collect())
    }

    /// See `Sink::close_abandoned_runs`.
    pub async fn close_abandoned_runs(&self, job: &str, now: DateTime<Utc>) -> Result<u64, SinkError> {
        let done = sqlx::query(
            "UPDATE chatetl.runs SET status = 'died', finished_at = $3, error = $4
             WHERE target = $1 AND job = $2 AND status = 'running'",
        )
        .bind(&self.schema)
        .bind(job)
        .bind(now)
        .bind(DIED)
        .execute(&self.pool)
        .await
        .map_err(db_err(&format!("job {job}: cannot close its abandoned runs")))?;
        Ok(done.rows_affected())
    }

    /// See `Sink::claim_legacy_state`: when this schema holds the job's table and this target
    /// has no state of its own for the job, gives the job's legacy rows (target NULL) of every
    /// state table to this target, in one transaction.
    pub async fn claim_legacy_state(&self, job: &Job) -> Result<bool, SinkError> {
        let table = self.table(&job.table);
        let what = format!("job {}: cannot claim the state an earlier release kept for it", job.name);
        let err = db_err(&what);
        let legacy: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chatetl.jobs WHERE target IS NULL AND job = $1)")
                .bind(&job.name)
                .fetch_one(&self.pool)
                .await
                .map_err(&err)?;
        if !legacy {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await.map_err(&err)?;
        let holds_table: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await
            .map_err(&err)?;
        if !holds_table {
            return Ok(false);
        }
        // The earlier release shared one state between every schema of the database (the demo
        // beside production): when another schema holds a table of this name too, claim only
        // if this table holds the rows of the latest load the state records.
        let elsewhere: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = $1 AND schemaname <> $2")
                .bind(&job.table)
                .bind(&self.schema)
                .fetch_one(&mut *tx)
                .await
                .map_err(&err)?;
        if elsewhere > 0 {
            let latest: Option<(DateTime<Utc>, DateTime<Utc>, String)> = sqlx::query_as(
                "SELECT window_start, window_end, run_id FROM chatetl.window_loads
                 WHERE target IS NULL AND job = $1 AND rows > 0 ORDER BY loaded_at DESC LIMIT 1",
            )
            .bind(&job.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
            let time = if job.kind == crate::config::JobKind::Snapshot { "captured_at" } else { "bucket_start" };
            let ours = match latest {
                None => false,
                Some((start, end, run_id)) => sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM {table} WHERE {time} >= $1 AND {time} < $2 AND _run_id = $3)"
                )))
                .bind(start)
                .bind(end)
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(&err)?,
            };
            if !ours {
                warn!(job = %job.name, target = %self.schema, schemas_with_the_table = elsewhere + 1,
                    "state kept by an earlier release is left alone: another schema holds a table of this name, and this one does not hold its latest load");
                return Ok(false);
            }
        }
        // The row lock of this UPDATE makes a concurrent claim wait, then find nothing to claim.
        let claimed = sqlx::query(
            "UPDATE chatetl.jobs SET target = $1, updated_at = now() WHERE target IS NULL AND job = $2
             AND NOT EXISTS (SELECT 1 FROM chatetl.jobs WHERE target = $1 AND job = $2)",
        )
        .bind(&self.schema)
        .bind(&job.name)
        .execute(&mut *tx)
        .await
        .map_err(&err)?
        .rows_affected();
        if claimed == 0 {
            warn!(job = %job.name, target = %self.schema, "state kept by an earlier release is left alone: this target has its own");
            return Ok(false);
        }
        for sql in [
            "UPDATE chatetl.window_loads SET target = $1 WHERE target IS NULL AND job = $2",
            "UPDATE chatetl.runs SET target = $1 WHERE target IS NULL AND job = $2",
        ] {
            sqlx::query(sql).bind(&self.schema).bind(&job.name).execute(&mut *tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(true)
    }

    /// See `Sink::promote`: in one transaction, the shadow table replaces the live one (its
    /// key and index renamed, the live table's grants copied) and the shadow's state becomes the
    /// live job's.
    pub async fn promote(&self, live: &Job, shadow: &Job) -> Result<(), SinkError> {
        let (live_table, shadow_table) = (self.table(&live.table), self.table(&shadow.table));
        let what = format!("job {}: cannot replace {live_table} with the rebuilt {shadow_table}", live.name);
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        sqlx::query(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")))
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        let locked: Vec<String> = sqlx::query_scalar(
            "SELECT job FROM chatetl.jobs WHERE target = $1 AND job IN ($2, $3) ORDER BY job FOR UPDATE",
        )
        .bind(&self.schema)
        .bind(&live.name)
        .bind(&shadow.name)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        let has_table: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&shadow_table)
            .fetch_one(&mut *tx)
            .await
            .map_err(&err)?;
        if !locked.contains(&shadow.name) || !has_table {
            return Err(SinkError::warehouse(format!(
                "{what}: the rebuild's table or state is missing; run --rebuild again"
            )));
        }
        let grants = copy_grants(&mut tx, &live_table, &shadow_table).await.map_err(&err)?;
        // The shadow's key and date index are named after its table: they take the live names.
        let date_column = match live.kind {
            crate::config::JobKind::Windowed => "bucket_date",
            crate::config::JobKind::Snapshot => "captured_date",
        };
        let (shadow_key, shadow_index) = (key_name(&shadow.table), date_index_name(&shadow.table, date_column));
        let (has_key, has_index): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2),
                    to_regclass($3) IS NOT NULL",
        )
        .bind(&shadow_table)
        .bind(&shadow_key)
        .bind(self.table(&shadow_index))
        .fetch_one(&mut *tx)
        .await
        .map_err(&err)?;
        let mut ddl = format!(
            "DROP TABLE IF EXISTS {live_table};\nALTER TABLE {shadow_table} RENAME TO {};\n",
            quote_ident(&live.table)
        );
        if has_key {
            let _ = writeln!(
                ddl,
                "ALTER TABLE {live_table} RENAME CONSTRAINT {} TO {};",
                quote_ident(&shadow_key),
                quote_ident(&key_name(&live.table))
            );
        }
        if has_index {
            let _ = writeln!(
                ddl,
                "ALTER INDEX {} RENAME TO {};",
                self.table(&shadow_index),
                quote_ident(&date_index_name(&live.table, date_column))
            );
        }
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(ddl_err(&what))?;
        self.move_state_in(&mut tx, &live.name, &shadow.name).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        info!(job = %live.name, table = %live_table, grants, "the rebuilt table replaced the live one");
        Ok(())
    }

    /// The state part of a promotion, in `tx`: the live job takes the shadow's state.
    async fn move_state_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        live: &str,
        shadow: &str,
    ) -> Result<(), sqlx::Error> {
        // The live job takes the shadow's definition, watermark and history start (a job never
        // loaded before gets its row here), then its loads and runs; the shadow's row goes,
        // and with it (cascade) its failures, which a complete rebuild left none of.
        for sql in [
            "INSERT INTO chatetl.jobs (target, job, definition_hash, definition, watermark, history_start, added_columns)
             SELECT target, $2, definition_hash, definition, watermark, history_start, '{}' FROM chatetl.jobs
             WHERE target = $1 AND job = $3
             ON CONFLICT (target, job) DO UPDATE SET definition_hash = EXCLUDED.definition_hash,
               definition = EXCLUDED.definition, watermark = EXCLUDED.watermark,
               history_start = EXCLUDED.history_start, added_columns = '{}', updated_at = now()",
            "DELETE FROM chatetl.window_failures WHERE target = $1 AND job = $2 AND window_start IN
               (SELECT window_start FROM chatetl.window_loads WHERE target = $1 AND job = $3)",
            "DELETE FROM chatetl.window_loads WHERE target = $1 AND job = $2",
            "UPDATE chatetl.window_loads SET job = $2 WHERE target = $1 AND job = $3",
            "UPDATE chatetl.runs SET job = $2 WHERE target = $1 AND job = $3",
            "DELETE FROM chatetl.jobs WHERE target = $1 AND job = $3",
        ] {
            sqlx::query(sql).bind(&self.schema).bind(live).bind(shadow).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// For a warehouse that keeps only its state here (the lake), once the rebuilt data is in
    /// place: the live job takes the shadow's state, in one transaction. Returns false, changing
    /// nothing, when the shadow has no state (it was moved already).
    pub async fn move_promoted_state(&self, live: &str, shadow: &str) -> Result<bool, SinkError> {
        let what = format!("job {live}: cannot move the rebuilt state from {shadow}");
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        let locked: Vec<String> = sqlx::query_scalar(
            "SELECT job FROM chatetl.jobs WHERE target = $1 AND job IN ($2, $3) ORDER BY job FOR UPDATE",
        )
        .bind(&self.schema)
        .bind(live)
        .bind(shadow)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        if !locked.iter().any(|j| j == shadow) {
            return Ok(false);
        }
        self.move_state_in(&mut tx, live, shadow).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(true)
    }

    pub async fn ping(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err("the postgres warehouse does not answer"))?;
        Ok(())
    }

    /// Every window load of `job` in this target.
    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        let rows = sqlx::query(
            "SELECT window_start, window_end, rows, requests, run_id, definition_hash, loaded_at
             FROM chatetl.window_loads WHERE target = $1 AND job = $2",
        )
        .bind(&self.schema)
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
        let what = format!("job {job}: cannot update its stored definition hash");
        let err = db_err(&what);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        for table in ["chatetl.jobs", "chatetl.window_loads"] {
            let sql = format!(
                "UPDATE {table} SET definition_hash = $4 WHERE target = $1 AND job = $2 AND definition_hash = $3"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(&self.schema)
                .bind(job)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Inserts or updates a run record.
    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        sqlx::query(
            "INSERT INTO chatetl.runs (run_id, target, job, kind, started_at, finished_at, status, windows_planned,
               windows_loaded, windows_skipped, windows_failed, rows, requests, retries, error, error_kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (run_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, status = EXCLUDED.status,
               windows_planned = EXCLUDED.windows_planned, windows_loaded = EXCLUDED.windows_loaded,
               windows_skipped = EXCLUDED.windows_skipped, windows_failed = EXCLUDED.windows_failed, rows = EXCLUDED.rows,
               requests = EXCLUDED.requests, retries = EXCLUDED.retries, error = EXCLUDED.error,
               error_kind = EXCLUDED.error_kind",
        )
        .bind(&run.run_id)
        .bind(&self.schema)
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

    /// Status of each of `jobs` in this target.
    pub async fn status(&self, jobs: &[String]) -> Result<Vec<JobStatus>, SinkError> {
        let mut out = Vec::new();
        for job in jobs {
            let state = self.job_state(job).await?;
            let what = format!("job {job}: cannot read its status");
            let err = db_err(&what);
            // Outdated: loaded with another definition than the job's (before columns were added).
            let totals = sqlx::query(
                "SELECT count(*), coalesce(sum(l.rows), 0)::bigint,
                   count(*) FILTER (WHERE l.definition_hash IS DISTINCT FROM j.definition_hash),
                   (SELECT count(*) FROM chatetl.window_failures f WHERE f.target = $1 AND f.job = $2),
                   (SELECT max(r.finished_at) FROM chatetl.runs r
                     WHERE r.target = $1 AND r.job = $2 AND r.status = 'succeeded')
                 FROM chatetl.window_loads l LEFT JOIN chatetl.jobs j ON j.target = l.target AND j.job = l.job
                 WHERE l.target = $1 AND l.job = $2",
            )
            .bind(&self.schema)
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .map_err(&err)?;
            let runs: Vec<RunRecord> = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM chatetl.runs WHERE target = $1 AND job = $2 ORDER BY started_at DESC LIMIT 50"
            )))
            .bind(&self.schema)
            .bind(job)
            .fetch_all(&self.pool)
            .await
            .map_err(&err)?
            .into_iter()
            .map(run_record)
            .collect();
            out.push(JobStatus {
                job: job.clone(),
                watermark: state.watermark,
                definition_hash: state.definition_hash,
                windows_loaded: totals.get::<i64, _>(0) as u64,
                rows_loaded: totals.get::<i64, _>(1) as u64,
                windows_failed: totals.get::<i64, _>(3) as u64,
                windows_outdated: totals.get::<i64, _>(2) as u64,
                added_columns: state.added_columns,
                last_success: totals.get(4),
                last_error: runs.iter().find_map(|r| r.error.clone()),
                last_error_kind: runs.iter().find(|r| r.error.is_some()).and_then(|r| r.error_kind),
                last_run: runs.into_iter().next(),
            });
        }
        Ok(out)
    }
}

/// Grants the privileges others hold on `from` (not its owner's own) on `to` as well, so a
/// rebuilt table serves the BI roles the live one did; returns how many.
async fn copy_grants(tx: &mut Transaction<'_, Postgres>, from: &str, to: &str) -> Result<usize, sqlx::Error> {
    let grants: Vec<String> = sqlx::query_scalar(
        "SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $2::text,
           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
         FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await?;
    for grant in &grants {
        sqlx::raw_sql(AssertSqlSafe(grant.clone())).execute(&mut **tx).await?;
    }
    Ok(grants.len())
}

/// The advisory lock key of a job in a target: 64 bits of the sha256 of
/// `chatetl.job\0<target>\0<name>` (NUL appears in neither a schema nor a job name).
fn lock_key(target: &str, job: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("chatetl.job\0{target}\0{job}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The transaction advisory lock key of one window of a job in a target: 64 bits of the sha256
/// of `chatetl.window\0<target>\0<job>\0<window start in µs>` (another namespace than
/// [`lock_key`]'s; a collision only makes two commits take turns).
fn window_lock_key(target: &str, job: &str, start: chrono::DateTime<chrono::Utc>) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("chatetl.window\0{target}\0{job}\0{}", start.timestamp_micros()).as_bytes());
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

/// The rows of a commit in PostgreSQL's binary `COPY` format, for `COPY … WITH (FORMAT binary)`.
///
/// # Why binary
/// Text formats make both ends work: chatetl formats every float, timestamp and date as text and
/// PostgreSQL parses each back (timestamptz input is one of its slower parsers), and an f64 only
/// survives as text when written in shortest round-trip form. In the binary format every value is
/// its fixed-width big-endian bytes: a float is its IEEE 754 bits (bit-exact by construction), a
/// timestamp one i64 of microseconds since 2000-01-01, a date one i32 of days; only text is
/// copied as bytes. Encoding is then a few stores per value with no crate and no formatter, and
/// the server's share of a load drops to inserting the rows and maintaining the key.
///
/// The price is strictness: a column whose type differs from the job's definition (a table
/// altered by hand) fails the COPY with SQLSTATE 22P03, reported as a definition error naming
/// the table ([`copy_err`]).
///
/// Layout (PostgreSQL docs, "COPY", binary format): an 11-byte signature, a 4-byte flags field
/// and a 4-byte header extension length (both 0); per row an i16 column count, then per column an
/// i32 byte length (-1: NULL) and the bytes; finally an i16 -1.
pub mod binary_copy {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::{Array, BooleanArray, PrimitiveArray, RecordBatch, StringArray};
    use arrow_schema::{DataType, TimeUnit};

    use crate::batch::TableSchema;
    use crate::row::ColumnType;

    const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
    /// PostgreSQL's epoch (2000-01-01) in Unix microseconds and in Unix days.
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    const PG_EPOCH_DAYS: i32 = 10_957;
    /// jsonb's binary input: a version byte, then the JSON text.
    const JSONB_VERSION: u8 = 1;

    /// How one column is encoded, in table order (`TableSchema::column_names`).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Timestamp,
        Date,
        Text,
        Json,
        Int,
        Float,
        Bool,
    }

    /// One column of a batch, downcast once per batch (not once per value).
    enum Column<'a> {
        Timestamp(&'a PrimitiveArray<TimestampMicrosecondType>),
        Date(&'a PrimitiveArray<Date32Type>),
        Text(&'a StringArray, bool),
        Int(&'a PrimitiveArray<Int64Type>),
        Float(&'a PrimitiveArray<Float64Type>),
        Bool(&'a BooleanArray),
    }

    /// The encoder of one table's rows.
    #[derive(Debug, Clone)]
    pub struct Encoder {
        names: Arc<[String]>,
        kinds: Arc<[Kind]>,
    }

    impl Encoder {
        /// The encoder of `schema`'s table, columns in `column_names` order.
        pub fn new(schema: &TableSchema) -> Encoder {
            let mut kinds = vec![Kind::Timestamp, Kind::Date];
            kinds.extend(schema.dims.iter().map(|_| Kind::Text));
            kinds.extend(schema.metrics.iter().map(|m| match m.ty {
                ColumnType::Int => Kind::Int,
                ColumnType::Float => Kind::Float,
                ColumnType::Text => Kind::Text,
                ColumnType::Json => Kind::Json,
                ColumnType::Bool => Kind::Bool,
            }));
            kinds.extend([Kind::Timestamp, Kind::Timestamp, Kind::Text]);
            Encoder { names: schema.column_names().into(), kinds: kinds.into() }
        }

        /// Appends the header every COPY stream starts with.
        pub fn header(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(SIGNATURE);
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
        }

        /// Appends the trailer that ends a COPY stream.
        pub fn trailer(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&(-1i16).to_be_bytes());
        }

        /// Encodes every row of `batches` after a header and before the trailer, handing the
        /// bytes to `emit` in blocks of about `block_bytes` (the last one shorter); stops early
        /// (`Ok`) when `emit` returns false (the receiver is gone). Fails on a batch whose
        /// columns are not the table's or a float that is not finite (PostgreSQL would store
        /// NaN, but no source may produce one: `batch::build` refuses them too).
        pub fn stream(
            &self,
            batches: &[RecordBatch],
            block_bytes: usize,
            mut emit: impl FnMut(Vec<u8>) -> bool,
        ) -> Result<(), String> {
            let mut out = Vec::with_capacity(block_bytes + block_bytes / 8);
            self.header(&mut out);
            for batch in batches {
                let columns = self.columns(batch)?;
                for row in 0..batch.num_rows() {
                    self.row(&columns, row, &mut out)?;
                    if out.len() >= block_bytes {
                        let full = std::mem::replace(&mut out, Vec::with_capacity(block_bytes + block_bytes / 8));
                        if !emit(full) {
                            return Ok(());
                        }
                    }
                }
            }
            self.trailer(&mut out);
            emit(out);
            Ok(())
        }

        /// The columns of `batch`, checked against the table's.
        fn columns<'a>(&self, batch: &'a RecordBatch) -> Result<Vec<Column<'a>>, String> {
            if batch.num_columns() != self.kinds.len() {
                return Err(format!("a batch has {} columns, the table {}", batch.num_columns(), self.kinds.len()));
            }
            batch
                .columns()
                .iter()
                .zip(self.kinds.iter().zip(self.names.iter()))
                .map(|(array, (kind, name))| {
                    Ok(match (kind, array.data_type()) {
                        (Kind::Timestamp, DataType::Timestamp(TimeUnit::Microsecond, _)) => {
                            Column::Timestamp(array.as_primitive::<TimestampMicrosecondType>())
                        }
                        (Kind::Date, DataType::Date32) => Column::Date(array.as_primitive::<Date32Type>()),
                        (Kind::Text, DataType::Utf8) => Column::Text(array.as_string::<i32>(), false),
                        (Kind::Json, DataType::Utf8) => Column::Text(array.as_string::<i32>(), true),
                        (Kind::Int, DataType::Int64) => Column::Int(array.as_primitive::<Int64Type>()),
                        (Kind::Float, DataType::Float64) => Column::Float(array.as_primitive::<Float64Type>()),
                        (Kind::Bool, DataType::Boolean) => Column::Bool(array.as_boolean()),
                        (kind, other) => {
                            return Err(format!("column {name} holds {other}, the table expects {kind:?}"));
                        }
                    })
                })
                .collect()
        }

        /// Appends row `row` of `columns`.
        fn row(&self, columns: &[Column<'_>], row: usize, out: &mut Vec<u8>) -> Result<(), String> {
            out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
            for (i, column) in columns.iter().enumerate() {
                let valid = match column {
                    Column::Timestamp(a) => a.is_valid(row),
                    Column::Date(a) => a.is_valid(row),
                    Column::Text(a, _) => a.is_valid(row),
                    Column::Int(a) => a.is_valid(row),
                    Column::Float(a) => a.is_valid(row),
                    Column::Bool(a) => a.is_valid(row),
                };
                if !valid {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                match column {
                    Column::Timestamp(a) => {
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&(a.value(row) - PG_EPOCH_MICROS).to_be_bytes());
                    }
                    Column::Date(a) => {
                        out.extend_from_slice(&4i32.to_be_bytes());
                        out.extend_from_slice(&(a.value(row) - PG_EPOCH_DAYS).to_be_bytes());
                    }
                    Column::Int(a) => {
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&a.value(row).to_be_bytes());
                    }
                    Column::Float(a) => {
                        let x = a.value(row);
                        if !x.is_finite() {
                            return Err(format!(
                                "column {} holds {x}, which the warehouse cannot store",
                                self.names[i]
                            ));
                        }
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&x.to_bits().to_be_bytes());
                    }
                    Column::Bool(a) => {
                        out.extend_from_slice(&1i32.to_be_bytes());
                        out.push(u8::from(a.value(row)));
                    }
                    Column::Text(a, json) => {
                        let text = a.value(row).as_bytes();
                        let len = text.len() + usize::from(*json);
                        let len = i32::try_from(len)
                            .map_err(|_| format!("column {} holds a value of {len} bytes", self.names[i]))?;
                        out.extend_from_slice(&len.to_be_bytes());
                        if *json {
                            out.push(JSONB_VERSION);
                        }
                        out.extend_from_slice(text);
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Column;

    fn schema(dims: Vec<Column>) -> TableSchema {
        TableSchema {
            table: "t".into(),
            description: "it's a table".into(),
            time_zone: chrono_tz::Europe::Helsinki,
            time_column: "captured_at",
            date_column: "captured_date",
            time_comment: "when".into(),
            dims,
            metrics: vec![Column::new("n", ColumnType::Int, "how many")],
        }
    }

    #[test]
    fn a_table_without_dimensions_has_a_primary_key_and_one_with_them_a_unique_key() {
        let plain = table_ddl("analytics", &schema(Vec::new()));
        assert!(plain.contains("CONSTRAINT \"t_natural_key\" PRIMARY KEY (captured_at)"), "{plain}");
        let dims = table_ddl("analytics", &schema(vec![Column::new("agent_id", ColumnType::Text, "who")]));
        assert!(
            dims.contains("CONSTRAINT \"t_natural_key\" UNIQUE NULLS NOT DISTINCT (captured_at, \"agent_id\")"),
            "{dims}"
        );
        for ddl in [plain, dims] {
            assert!(ddl.contains(
                "CREATE INDEX IF NOT EXISTS \"t_captured_date_idx\" ON \"analytics\".\"t\" (captured_date);"
            ));
            assert!(ddl.contains("COMMENT ON TABLE \"analytics\".\"t\" IS 'it''s a table';"), "{ddl}");
        }
    }

    #[test]
    fn binary_copy_writes_each_value_as_postgres_reads_it() {
        use arrow_array::TimestampMicrosecondArray;
        use arrow_array::{BooleanArray, Date32Array, Float64Array, Int64Array, StringArray};
        use std::sync::Arc;
        let mut schema = schema(vec![Column::new("agent_id", ColumnType::Text, "who")]);
        schema.metrics = vec![
            Column::new("n", ColumnType::Int, "how many"),
            Column::new("x", ColumnType::Float, "a float"),
            Column::new("ok", ColumnType::Bool, "a flag"),
            Column::new("doc", ColumnType::Json, "a document"),
        ];
        let ts = |us: i64| Arc::new(TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC")) as _;
        // 2000-01-01T00:00:01Z, 2000-01-02; 0.1 + 0.2 keeps its last bit.
        let x = 0.1 + 0.2;
        let batch = RecordBatch::try_new(
            schema.arrow_schema(),
            vec![
                ts(946_684_801_000_000),
                Arc::new(Date32Array::from(vec![10_958])),
                Arc::new(StringArray::from(vec![None::<&str>])),
                Arc::new(Int64Array::from(vec![-2])),
                Arc::new(Float64Array::from(vec![x])),
                Arc::new(BooleanArray::from(vec![true])),
                Arc::new(StringArray::from(vec!["{}"])),
                ts(0),
                ts(0),
                Arc::new(StringArray::from(vec!["r"])),
            ],
        )
        .unwrap();
        let mut blocks = Vec::new();
        binary_copy::Encoder::new(&schema)
            .stream(&[batch], 1 << 20, |b| {
                blocks.push(b);
                true
            })
            .unwrap();
        let bytes = blocks.concat();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend(10i16.to_be_bytes());
        for field in [
            1_000_000i64.to_be_bytes().to_vec(),
            1i32.to_be_bytes().to_vec(),
            Vec::new(),
            (-2i64).to_be_bytes().to_vec(),
            x.to_bits().to_be_bytes().to_vec(),
            vec![1],
            b"\x01{}".to_vec(),
            (-946_684_800_000_000i64).to_be_bytes().to_vec(),
            (-946_684_800_000_000i64).to_be_bytes().to_vec(),
            b"r".to_vec(),
        ] {
            if field.is_empty() {
                want.extend((-1i32).to_be_bytes());
            } else {
                want.extend((field.len() as i32).to_be_bytes());
                want.extend(field);
            }
        }
        want.extend((-1i16).to_be_bytes());
        assert_eq!(bytes, want);
    }

    #[test]
    fn binary_copy_hands_over_blocks_and_stops_when_the_receiver_is_gone() {
        use arrow_array::{Date32Array, Int64Array, StringArray, TimestampMicrosecondArray};
        use std::sync::Arc;
        let schema = schema(Vec::new());
        let n = 10_000;
        let ts = || Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")) as _;
        let batch = RecordBatch::try_new(
            schema.arrow_schema(),
            vec![
                ts(),
                Arc::new(Date32Array::from(vec![0; n])),
                Arc::new(Int64Array::from(vec![7; n])),
                ts(),
                ts(),
                Arc::new(StringArray::from(vec!["run"; n])),
            ],
        )
        .unwrap();
        let encoder = binary_copy::Encoder::new(&schema);
        let mut sizes = Vec::new();
        encoder
            .stream(std::slice::from_ref(&batch), 4096, |b| {
                sizes.push(b.len());
                true
            })
            .unwrap();
        assert!(sizes.len() > 10 && sizes[..sizes.len() - 1].iter().all(|s| *s >= 4096), "{sizes:?}");
        let mut calls = 0;
        encoder
            .stream(&[batch], 4096, |_| {
                calls += 1;
                false
            })
            .unwrap();
        assert_eq!(calls, 1, "no block after the receiver went away");
    }

    #[test]
    fn touching_windows_are_deleted_as_one_span() {
        assert_eq!(spans([(3, 4), (1, 2), (2, 3), (6, 8), (7, 9)].into_iter()), [(1, 4), (6, 9)]);
        assert_eq!(spans(std::iter::empty::<(i32, i32)>()), []);
    }

    #[test]
    fn one_job_name_in_two_targets_has_two_locks() {
        assert_ne!(lock_key("analytics", "real_chats"), lock_key("chatetl_demo", "real_chats"));
        assert_ne!(lock_key("a", "b_c"), lock_key("a_b", "c"), "the separator cannot occur in a name");
        assert_eq!(lock_key("analytics", "real_chats"), lock_key("analytics", "real_chats"));
    }
}
