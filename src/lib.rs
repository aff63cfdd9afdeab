//! chatetl exports chat-analytics metrics from vendor reporting APIs (giosg, Thulium, Comm100)
//! into a warehouse (PostgreSQL tables or Parquet partitions) on a schedule.
//!
//! Data flows one way, config → plan → source → batch → sink → state, over shared types below
//! them (`time`, `error`, `row`, `query`); `docs/architecture.md` describes the flow and its
//! contracts, and `tests/it/architecture.rs` fails when a module imports against it.
//!
//! # Layout
//!
//! - `main.rs`, `commands.rs`: the CLI (clap): parses arguments, calls into this library, prints
//!   results, maps errors to exit codes.
//! - [`time`]: DST-safe local days, giosg's millisecond timestamps, vendor durations as seconds.
//! - [`error`]: [`error::ErrorKind`], what kind of failure a load error is (configuration,
//!   credentials, bad request, upstream unavailable, bad response, warehouse), whether a retry
//!   can help, and the exit code it gives.
//! - [`row`]: rows and columns, what a source returns and what a table holds.
//! - [`query`]: the giosg chat_sessions query language (api-docs 002), shared by job-file
//!   validation and the giosg clients.
//! - [`schedule_time`]: when a job's cron schedule fires, on its zone's wall clock across DST.
//! - [`config`]: `chatetl.yaml` and job files: types, `${ENV}` interpolation, validation, and the
//!   endpoint registry (`config::Endpoint::info`).
//! - [`plan`]: windows in a job's time zone (local days, wall-clock hours), incremental catch-up
//!   with lookback, `--from`/`--to` ranges, chunks of windows per request, and which jobs share
//!   requests (`plan::fusion`) (pure).
//! - [`state`]: watermarks, window loads, failed windows and run history, the rule that moves a
//!   watermark (on plain arguments), and job definitions (hash, canonical document, how two
//!   differ).
//! - [`budget`]: the vendor budget (each source's `requests_per_second` and `concurrency`) that
//!   every chatetl process on a PostgreSQL warehouse spends together: a rate row and
//!   concurrency leases in the `chatetl` schema.
//! - [`source`]: one module per upstream API (giosg chat_sessions, events, workflow, realtime;
//!   Thulium; Comm100) behind [`source::Api`], dispatched by [`source::api`]; `source::http` is
//!   the shared client (Token, Bearer or basic auth, timeouts, retries honouring `Retry-After`,
//!   rate and concurrency limits, per-chunk request counts, the one paging loop).
//! - [`batch`]: a job's output schema (time column, key dimensions, typed values, from the
//!   columns its caller passes) and the Arrow `RecordBatch` of one window or snapshot.
//! - [`sink`]: PostgreSQL (delete-then-`COPY` in one transaction with the state, kept per target
//!   schema) and Parquet (one file per table and month, or local day for snapshots, replaced
//!   atomically; state in SQLite in the warehouse folder); columns added in place, rebuilds into
//!   a shadow table swapped in at the end.
//! - [`runner`]: executes a plan: chunks, concurrency, progress, error isolation with typed load
//!   errors, run records, failed windows, definition changes (columns added, or refused until a
//!   shadow rebuild), and fused runs of jobs that share requests.
//! - [`probe`]: `chatetl probe`: one request per endpoint a job uses, its answer checked against
//!   every assumption the clients make where the vendors' docs are silent
//!   (`docs/assumptions.md`).
//! - [`metrics`]: the daemon's health and metrics endpoint (`chatetl schedule --listen`): per-job
//!   counters and gauges, `GET /metrics` in the OpenMetrics text format, `GET /healthz`.
//! - [`scheduler`]: `chatetl schedule`: a tick loop per job, overlap guard, reload, graceful
//!   shutdown; [`metrics`] serves its health and metrics.
//! - [`readback`]: reading results back from a warehouse (the demo's summary).
//! - [`ddl`]: `chatetl ddl`: the external-table DDL with which BigQuery, Snowflake, Athena,
//!   Trino, Databricks and DuckDB read a table of a Parquet warehouse.
//! - [`telemetry`]: tracing set-up shared by every subcommand (`--log-format`, `-v`/`-q`).
//! - [`demo`] (feature `simulator`, on by default): `chatetl demo`: the simulator and every
//!   shipped job into a local warehouse.
//! - [`simulator`] (feature `simulator`): `chatetl simulate`: every vendor API on loopback from a
//!   synthetic dataset, with its own wire types, paging, faults and a request log.

pub mod batch;
pub mod budget;
pub mod config;
pub mod ddl;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod error;
pub mod metrics;
pub mod plan;
pub mod probe;
pub mod query;
pub mod readback;
pub mod row;
pub mod runner;
pub mod schedule_time;
pub mod scheduler;
#[cfg(feature = "simulator")]
pub mod simulator;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod time;
