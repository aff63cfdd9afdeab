//! chatetl exports chat-analytics metrics from vendor reporting APIs (giosg, Thulium, Comm100)
//! into a warehouse (PostgreSQL tables or Parquet partitions) on a schedule.
//!
//! See `../shared/DESIGN.md` (in the project's shared folder) for the data flow and contracts:
//! config → plan → source → batch → sink → state, one direction.
//!
//! # Layout
//!
//! - `main.rs`, `commands.rs`: the CLI (clap): parses arguments, calls into this library, prints
//!   results, maps errors to exit codes.
//! - [`config`]: `chatetl.yaml` and job files: types, `${ENV}` interpolation, validation.
//! - [`plan`]: windows in a job's time zone (local days, wall-clock hours), incremental catch-up
//!   with lookback, `--from`/`--to` ranges, and chunks of windows per request (pure).
//! - [`source`]: one module per upstream API (giosg chat_sessions, events, workflow, realtime;
//!   Thulium; Comm100) behind [`source::Source`]; `source::http` is the shared client (Token,
//!   Bearer or basic auth, timeouts, retries honouring `Retry-After`, rate and concurrency limits).
//! - [`batch`]: a job's output schema (time column, key dimensions, typed values) and the Arrow
//!   `RecordBatch` of one window or snapshot.
//! - [`sink`]: PostgreSQL (delete-then-`COPY` in one transaction with the state) and Parquet (one
//!   file per window, atomically renamed into place).
//! - [`state`]: watermarks, window loads and run history, and how a watermark moves.
//! - [`runner`]: executes a plan: chunks, concurrency, progress, error isolation, run records.
//! - [`metrics`]: the daemon's health and metrics endpoint (`chatetl schedule --listen`): per-job
//!   counters and gauges, `GET /metrics` in the Prometheus text format, `GET /healthz`.
//! - [`scheduler`]: `chatetl schedule`: a tick loop per job, overlap guard, reload, graceful
//!   shutdown; [`metrics`] serves its health and Prometheus metrics.
//! - [`schedule_time`]: when a job's cron schedule fires, on its zone's wall clock across DST.
//! - [`demo`]: `chatetl demo`: the simulator and every shipped job into a local warehouse.
//! - [`readback`]: reading results back from a warehouse (the demo's summary).
//! - [`simulator`]: `chatetl simulate`: every vendor API on loopback from a synthetic dataset, with
//!   paging, faults and a request log.
//! - [`telemetry`]: tracing set-up shared by every subcommand (`--log-format`, `-v`/`-q`).
//! - [`time`]: DST-safe local days, giosg's millisecond timestamps, vendor durations as seconds.

pub mod batch;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod plan;
pub mod readback;
pub mod runner;
pub mod schedule_time;
pub mod scheduler;
pub mod simulator;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod time;
