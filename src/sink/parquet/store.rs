//! The state database of a Parquet warehouse: `<root>/_chatetl/state.db` (SQLite through sqlx).
//!
//! Owns: opening it (WAL, `synchronous=FULL`, a busy timeout, the migrations of
//! `migrations/sqlite/` embedded at compile time) and every statement on it: jobs, window loads,
//! window failures, runs (the newest [`RUNS_KEPT`] per job) and promotions in progress. Instants
//! are stored as integer microseconds (UTC). Writes run in `BEGIN IMMEDIATE` transactions, so two
//! processes sharing the file wait for each other (the busy timeout) instead of failing on a
//! read-to-write upgrade. A commit is a fixed handful of statements (its loads go in as one JSON
//! array) touching only the committed windows and the chain of loads the watermark moves over,
//! so a commit costs the same after years of history.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlSafeStr, Sqlite, Transaction};

use crate::config::JobKind;
use crate::error::ErrorKind;
use crate::sink::SinkError;
use crate::state::{Definition, JobState, JobStatus, RunRecord, WindowFailure, WindowLoad};

/// The state migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "state", include_str!("../../../migrations/sqlite/0001_state.sql"))];

/// Runs kept per job.
pub const RUNS_KEPT: i64 = 1000;

/// Page cache per connection, in KiB.
const CACHE_KIB: u32 = 256;

/// How long a statement waits for another process's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Microseconds since the epoch.
pub fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn db_err(what: impl std::fmt::Display) -> impl Fn(sqlx::Error) -> SinkError {
    move |e| SinkError::warehouse(format!("{what}: {e}"))
}

/// A window load to record.
pub struct NewLoad<'a> {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub rows: u64,
    pub requests: u32,
    pub run_id: &'a str,
    pub definition_hash: &'a str,
}

/// A promotion recorded before its folders were exchanged.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub live_job: String,
    pub shadow_job: String,
    pub live_table: String,
    pub shadow_table: String,
    pub id: String,
    pub moved: bool,
}

/// The open state database.
pub struct Store {
    pool: SqlitePool,
    path: String,
}

impl Store {
    /// Opens (creating) `path` and applies the migrations.
    pub async fn open(path: &Path) -> Result<Store, SinkError> {
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            // A commit touches a few index pages; SQLite's default cache (2 MiB per connection)
            // would fill as the history grows and make a long backfill's memory grow with it.
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_err(format!("cannot open the state database {shown}")))?;
        let migrator = Migrator::with_migrations(
            MIGRATIONS
                .iter()
                .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, sql.into_sql_str(), false))
                .collect(),
        );
        // Two processes opening a new warehouse at once both see no migration applied, and the
        // second one's then fails on what the first created: trying again finds it applied.
        let mut attempt = 0;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "state migrations failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    return Err(SinkError::warehouse(format!("cannot apply the state migrations to {shown}: {e}")));
                }
            }
        }
        Ok(Store { pool, path: shown })
    }

    async fn write(&self, what: &str) -> Result<Transaction<'static, Sqlite>, SinkError> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err(format!("{}: {what}", self.path)))
    }

    fn err(&self, what: impl std::fmt::Display) -> impl Fn(sqlx::Error) -> SinkError {
        db_err(format!("{}: {what}", self.path))
    }

    /// Registers `job` if new; stores the definition document when the stored hash is
    /// `definition.hash` and no document was kept.
    pub async fn register(&self, job: &str, history_start: DateTime<Utc>, d: &Definition) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot register it");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        let document = d.document.to_string();
        sqlx::query(
            "INSERT INTO jobs (job, definition_hash, definition, history_start, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job) DO UPDATE SET definition = excluded.definition, definition_hash = excluded.definition_hash
             WHERE (jobs.definition IS NULL AND jobs.definition_hash = excluded.definition_hash)
                OR jobs.definition_hash = ''",
        )
        .bind(job)
        .bind(&d.hash)
        .bind(&document)
        .bind(us(history_start))
        .bind(us(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// Imports a job of a legacy JSON state file: the job row (when missing), its loads and its
    /// runs (upserted, so importing twice changes nothing).
    pub async fn import(
        &self,
        job: &str,
        definition_hash: Option<&str>,
        history_start: Option<DateTime<Utc>>,
        watermark: Option<DateTime<Utc>>,
        loads: &[WindowLoad],
        runs: &[RunRecord],
    ) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot import its legacy state");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        let start = history_start.or(loads.first().map(|l| l.window_start)).unwrap_or_else(Utc::now);
        sqlx::query(
            "INSERT INTO jobs (job, definition_hash, history_start, watermark, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job) DO NOTHING",
        )
        .bind(job)
        .bind(definition_hash.unwrap_or(""))
        .bind(us(start))
        .bind(watermark.map(us))
        .bind(us(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        // Grouped by load time (kept as imported): one statement per distinct time, usually one.
        let mut by_time: BTreeMap<DateTime<Utc>, Vec<NewLoad<'_>>> = BTreeMap::new();
        for l in loads {
            by_time.entry(l.loaded_at).or_default().push(NewLoad {
                window_start: l.window_start,
                window_end: l.window_end,
                rows: l.rows,
                requests: l.requests,
                run_id: &l.run_id,
                definition_hash: &l.definition_hash,
            });
        }
        for (loaded_at, loads) in &by_time {
            upsert_loads(&mut tx, job, loads, *loaded_at).await.map_err(&err)?;
        }
        for r in runs {
            upsert_run(&mut tx, r).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// The stored state of `job` (empty if it was never registered).
    pub async fn job_state(&self, job: &str) -> Result<JobState, SinkError> {
        let row = sqlx::query("SELECT definition_hash, definition, added_columns, watermark FROM jobs WHERE job = ?1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err(format!("job {job}: cannot read its state")))?;
        let Some(r) = row else { return Ok(JobState::default()) };
        let definition: Option<String> = r.get(1);
        let added: String = r.get(2);
        // An empty hash: a job an earlier release kept runs of but never loaded (a paused one).
        let hash: String = r.get(0);
        Ok(JobState {
            definition_hash: Some(hash).filter(|h| !h.is_empty()),
            definition: definition.and_then(|d| serde_json::from_str(&d).ok()),
            added_columns: serde_json::from_str(&added).unwrap_or_default(),
            watermark: r.get::<Option<i64>, _>(3).map(at),
        })
    }

    /// Records `loads` (complete windows) in one transaction, removes their failures and moves
    /// the watermark with `next` (from the current watermark and the chain of loads starting at
    /// it). A fixed handful of statements however many windows: the loads go in as one JSON
    /// array (`json_each`), and the watermark walk reads only the loads it can move over.
    pub async fn commit(
        &self,
        job: &str,
        kind: JobKind,
        loads: &[NewLoad<'_>],
        next: impl FnOnce(Option<DateTime<Utc>>, &BTreeMap<DateTime<Utc>, DateTime<Utc>>) -> Option<DateTime<Utc>>,
    ) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot record its window loads");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        let current: Option<(Option<i64>, i64)> =
            sqlx::query_as("SELECT watermark, history_start FROM jobs WHERE job = ?1")
                .bind(job)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&err)?;
        let Some((current, history_start)) = current else {
            return Err(SinkError::warehouse(format!("{}: {what}: the job is not registered", self.path)));
        };
        let now = Utc::now();
        if !loads.is_empty() {
            upsert_loads(&mut tx, job, loads, now).await.map_err(&err)?;
            sqlx::query(
                "DELETE FROM window_failures WHERE job = ?1 AND window_start IN (SELECT value ->> 0 FROM json_each(?2))",
            )
            .bind(job)
            .bind(loads_json(loads))
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        let current = current.map(at);
        let from = current.map(us).unwrap_or(history_start);
        // Only the chain of loads starting exactly at the watermark can move it (a snapshot
        // job's moves to its latest capture: no loads needed). Walking it by key costs the
        // windows it passes, each once in the job's life: a commit costs the same after years of
        // history, and while the window at the watermark is missing nothing is read.
        let chain: BTreeMap<DateTime<Utc>, DateTime<Utc>> = match kind {
            JobKind::Snapshot => BTreeMap::new(),
            JobKind::Windowed => sqlx::query_as::<_, (i64, i64)>(
                "WITH RECURSIVE chain (window_start, window_end) AS (
                   SELECT window_start, window_end FROM window_loads WHERE job = ?1 AND window_start = ?2
                   UNION ALL
                   SELECT l.window_start, l.window_end FROM chain
                   JOIN window_loads l ON l.job = ?1 AND l.window_start = chain.window_end
                   WHERE l.window_end > l.window_start)
                 SELECT window_start, window_end FROM chain",
            )
            .bind(job)
            .bind(from)
            .fetch_all(&mut *tx)
            .await
            .map_err(&err)?
            .into_iter()
            .map(|(s, e)| (at(s), at(e)))
            .collect(),
        };
        let next = next(current, &chain);
        if next != current {
            sqlx::query("UPDATE jobs SET watermark = ?2, updated_at = ?3 WHERE job = ?1")
                .bind(job)
                .bind(next.map(us))
                .bind(us(now))
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Every window load of `job`.
    pub async fn window_loads(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowLoad>, SinkError> {
        let rows = sqlx::query(
            "SELECT window_start, window_end, rows, requests, run_id, definition_hash, loaded_at
             FROM window_loads WHERE job = ?1",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err(format!("job {job}: cannot read its window loads")))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let load = WindowLoad {
                    window_start: at(r.get(0)),
                    window_end: at(r.get(1)),
                    rows: r.get::<i64, _>(2) as u64,
                    requests: r.get::<i64, _>(3) as u32,
                    run_id: r.get(4),
                    definition_hash: r.get(5),
                    loaded_at: at(r.get(6)),
                };
                (load.window_start, load)
            })
            .collect())
    }

    /// Upserts failures: `attempts` counts up, the newest error wins.
    pub async fn record_failures(&self, job: &str, failures: &[WindowFailure]) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot record its failed windows");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        for f in failures {
            sqlx::query(
                "INSERT INTO window_failures (job, window_start, window_end, run_id, kind, error, failed_at, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (job, window_start) DO UPDATE SET window_end = excluded.window_end,
                   run_id = excluded.run_id, kind = excluded.kind, error = excluded.error,
                   failed_at = excluded.failed_at, attempts = window_failures.attempts + excluded.attempts",
            )
            .bind(job)
            .bind(us(f.window_start))
            .bind(us(f.window_end))
            .bind(&f.run_id)
            .bind(f.kind.as_str())
            .bind(&f.error)
            .bind(us(f.failed_at))
            .bind(f.attempts.max(1) as i64)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// The failed windows of `job`.
    pub async fn window_failures(&self, job: &str) -> Result<BTreeMap<DateTime<Utc>, WindowFailure>, SinkError> {
        let rows = sqlx::query(
            "SELECT window_start, window_end, run_id, kind, error, failed_at, attempts
             FROM window_failures WHERE job = ?1",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err(format!("job {job}: cannot read its failed windows")))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let f = WindowFailure {
                    window_start: at(r.get(0)),
                    window_end: at(r.get(1)),
                    run_id: r.get(2),
                    kind: ErrorKind::parse(&r.get::<String, _>(3)).unwrap_or(ErrorKind::Warehouse),
                    error: r.get(4),
                    failed_at: at(r.get(5)),
                    attempts: r.get::<i64, _>(6) as u32,
                };
                (f.window_start, f)
            })
            .collect())
    }

    /// Marks `job`'s `running` runs `died`; returns how many.
    pub async fn close_abandoned_runs(&self, job: &str, now: DateTime<Utc>) -> Result<u64, SinkError> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'died', finished_at = ?2,
               error = 'the process ended before the run finished'
             WHERE job = ?1 AND status = 'running'",
        )
        .bind(job)
        .bind(us(now))
        .execute(&self.pool)
        .await
        .map_err(self.err(format!("job {job}: cannot close its abandoned runs")))?;
        Ok(done.rows_affected())
    }

    /// Inserts or updates a run, keeping the job's newest [`RUNS_KEPT`].
    pub async fn record_run(&self, run: &RunRecord) -> Result<(), SinkError> {
        let what = format!("job {}: cannot record run {}", run.job, run.run_id);
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        upsert_run(&mut tx, run).await.map_err(&err)?;
        sqlx::query(
            "DELETE FROM runs WHERE job = ?1 AND started_at < (
               SELECT started_at FROM runs WHERE job = ?1 ORDER BY started_at DESC LIMIT 1 OFFSET ?2)",
        )
        .bind(&run.job)
        .bind(RUNS_KEPT - 1)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// `job`'s newest runs, newest first.
    async fn runs(&self, job: &str, limit: i64) -> Result<Vec<RunRecord>, SinkError> {
        let rows = sqlx::query(
            "SELECT run_id, job, kind, started_at, finished_at, status, windows_planned, windows_loaded,
               windows_skipped, windows_failed, rows, requests, retries, error, error_kind
             FROM runs WHERE job = ?1 ORDER BY started_at DESC LIMIT ?2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(self.err(format!("job {job}: cannot read its runs")))?;
        Ok(rows
            .into_iter()
            .map(|r| RunRecord {
                run_id: r.get(0),
                job: r.get(1),
                kind: r.get(2),
                started_at: at(r.get(3)),
                finished_at: r.get::<Option<i64>, _>(4).map(at),
                status: r.get(5),
                windows_planned: r.get::<i64, _>(6) as u32,
                windows_loaded: r.get::<i64, _>(7) as u32,
                windows_skipped: r.get::<i64, _>(8) as u32,
                windows_failed: r.get::<i64, _>(9) as u32,
                rows: r.get::<i64, _>(10) as u64,
                requests: r.get::<i64, _>(11) as u32,
                retries: r.get::<i64, _>(12) as u32,
                error: r.get(13),
                error_kind: r.get::<Option<String>, _>(14).as_deref().and_then(ErrorKind::parse),
            })
            .collect())
    }

    /// What `chatetl status` shows for `job`.
    pub async fn status(&self, job: &str) -> Result<JobStatus, SinkError> {
        let state = self.job_state(job).await?;
        let hash = state.definition_hash.clone().unwrap_or_default();
        let (loaded, rows, outdated): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(definition_hash <> ?2), 0)
             FROM window_loads WHERE job = ?1",
        )
        .bind(job)
        .bind(&hash)
        .fetch_one(&self.pool)
        .await
        .map_err(self.err(format!("job {job}: cannot count its window loads")))?;
        let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM window_failures WHERE job = ?1")
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .map_err(self.err(format!("job {job}: cannot count its failed windows")))?;
        let last_success: Option<i64> =
            sqlx::query_scalar("SELECT max(finished_at) FROM runs WHERE job = ?1 AND status = 'succeeded'")
                .bind(job)
                .fetch_one(&self.pool)
                .await
                .map_err(self.err(format!("job {job}: cannot read its last success")))?;
        let runs = self.runs(job, 50).await?;
        Ok(JobStatus {
            job: job.to_string(),
            watermark: state.watermark,
            definition_hash: state.definition_hash,
            windows_loaded: loaded as u64,
            rows_loaded: rows as u64,
            windows_failed: failed as u64,
            windows_outdated: outdated as u64,
            added_columns: state.added_columns,
            last_success: last_success.map(at),
            last_error: runs.iter().find_map(|r| r.error.clone()),
            last_error_kind: runs.iter().find(|r| r.error.is_some()).and_then(|r| r.error_kind),
            last_run: runs.into_iter().next(),
        })
    }

    /// Stores `definition` as `job`'s and appends `added` to its added columns (those not there
    /// yet).
    pub async fn add_columns(&self, job: &str, added: &[String], definition: &Definition) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot record its added columns");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        let stored: Option<String> = sqlx::query_scalar("SELECT added_columns FROM jobs WHERE job = ?1")
            .bind(job)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?;
        let mut columns: Vec<String> = stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        for c in added {
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
        sqlx::query(
            "UPDATE jobs SET definition_hash = ?2, definition = ?3, added_columns = ?4, updated_at = ?5 WHERE job = ?1",
        )
        .bind(job)
        .bind(&definition.hash)
        .bind(definition.document.to_string())
        .bind(serde_json::Value::from(columns).to_string())
        .bind(us(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    /// Replaces the hash `from` of `job` and its loads with `to`.
    pub async fn adopt_definition_hash(&self, job: &str, from: &str, to: &str) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot update its stored definition hash");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        for table in ["jobs", "window_loads"] {
            let sql = format!("UPDATE {table} SET definition_hash = ?3 WHERE job = ?1 AND definition_hash = ?2");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(job)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Forgets every row of `job`.
    pub async fn forget(&self, job: &str) -> Result<(), SinkError> {
        let what = format!("job {job}: cannot forget its state");
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        for table in ["window_loads", "window_failures", "runs", "jobs"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE job = ?1")))
                .bind(job)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Records a promotion before its folders are exchanged.
    pub async fn begin_promotion(&self, p: &Promotion) -> Result<(), SinkError> {
        sqlx::query(
            "INSERT OR REPLACE INTO promotions (live_job, shadow_job, live_table, shadow_table, id, moved, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
        )
        .bind(&p.live_job)
        .bind(&p.shadow_job)
        .bind(&p.live_table)
        .bind(&p.shadow_table)
        .bind(&p.id)
        .bind(us(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(self.err(format!("job {}: cannot record its promotion", p.live_job)))?;
        Ok(())
    }

    /// Promotions recorded and not finished.
    pub async fn promotions(&self) -> Result<Vec<Promotion>, SinkError> {
        let rows = sqlx::query_as::<_, (String, String, String, String, String, bool)>(
            "SELECT live_job, shadow_job, live_table, shadow_table, id, moved FROM promotions ORDER BY live_job",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("cannot read the promotions in progress"))?;
        Ok(rows
            .into_iter()
            .map(|(live_job, shadow_job, live_table, shadow_table, id, moved)| Promotion {
                live_job,
                shadow_job,
                live_table,
                shadow_table,
                id,
                moved,
            })
            .collect())
    }

    /// Moves the shadow's state to the live job (after the folders were exchanged), in one
    /// transaction: loads, failures, runs, the job row (added columns emptied); marks the
    /// promotion moved.
    pub async fn move_promoted_state(&self, p: &Promotion) -> Result<(), SinkError> {
        let what = format!("job {}: cannot move the rebuilt state from {}", p.live_job, p.shadow_job);
        let err = self.err(&what);
        let mut tx = self.write(&what).await?;
        let (live, shadow) = (p.live_job.as_str(), p.shadow_job.as_str());
        let statements = [
            "DELETE FROM window_loads WHERE job = ?1",
            "UPDATE window_loads SET job = ?1 WHERE job = ?2",
            "DELETE FROM window_failures WHERE job = ?1",
            "UPDATE window_failures SET job = ?1 WHERE job = ?2",
            "UPDATE runs SET job = ?1 WHERE job = ?2",
            "INSERT INTO jobs (job, definition_hash, definition, added_columns, history_start, watermark, updated_at)
               SELECT ?1, definition_hash, definition, '[]', history_start, watermark, updated_at FROM jobs WHERE job = ?2
             ON CONFLICT (job) DO UPDATE SET definition_hash = excluded.definition_hash,
               definition = excluded.definition, added_columns = '[]', history_start = excluded.history_start,
               watermark = excluded.watermark, updated_at = excluded.updated_at",
            "DELETE FROM jobs WHERE job = ?2",
            "UPDATE promotions SET moved = 1 WHERE live_job = ?1",
        ];
        for sql in statements {
            sqlx::query(sql).bind(live).bind(shadow).execute(&mut *tx).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Forgets a finished promotion.
    pub async fn end_promotion(&self, live_job: &str) -> Result<(), SinkError> {
        sqlx::query("DELETE FROM promotions WHERE live_job = ?1")
            .bind(live_job)
            .execute(&self.pool)
            .await
            .map_err(self.err(format!("job {live_job}: cannot record its promotion finished")))?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(self.err("the state database does not answer"))?;
        Ok(())
    }
}

/// `loads` as the JSON array the batched statements read with `json_each`: per load
/// `[window_start, window_end, rows, requests, run_id, definition_hash]`.
fn loads_json(loads: &[NewLoad<'_>]) -> String {
    let rows: Vec<serde_json::Value> = loads
        .iter()
        .map(|l| {
            serde_json::json!([us(l.window_start), us(l.window_end), l.rows, l.requests, l.run_id, l.definition_hash])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Upserts `loads` of `job` (loaded at `loaded_at`) in one statement.
async fn upsert_loads(
    tx: &mut Transaction<'static, Sqlite>,
    job: &str,
    loads: &[NewLoad<'_>],
    loaded_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO window_loads
           (job, window_start, window_end, rows, requests, run_id, definition_hash, loaded_at)
         SELECT ?1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, ?3
         FROM json_each(?2)",
    )
    .bind(job)
    .bind(loads_json(loads))
    .bind(us(loaded_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_run(tx: &mut Transaction<'static, Sqlite>, run: &RunRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO runs (run_id, job, kind, started_at, finished_at, status, windows_planned,
           windows_loaded, windows_skipped, windows_failed, rows, requests, retries, error, error_kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .bind(&run.run_id)
    .bind(&run.job)
    .bind(&run.kind)
    .bind(us(run.started_at))
    .bind(run.finished_at.map(us))
    .bind(&run.status)
    .bind(run.windows_planned as i64)
    .bind(run.windows_loaded as i64)
    .bind(run.windows_skipped as i64)
    .bind(run.windows_failed as i64)
    .bind(run.rows as i64)
    .bind(run.requests as i64)
    .bind(run.retries as i64)
    .bind(&run.error)
    .bind(run.error_kind.map(|k| k.as_str()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
