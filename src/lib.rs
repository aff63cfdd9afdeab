//! chatetl exports chat-analytics metrics from vendor reporting APIs (giosg, Thulium, Comm100)
//! into a warehouse (PostgreSQL tables or Parquet partitions) on a schedule.
//!
//! See `../shared/DESIGN.md` (in the project's shared folder) for the data flow and contracts.
//!
//! # Layout
//!
//! - `main.rs`: the CLI (clap): parses arguments, calls into this library, maps errors to exit codes.
//! - [`config`]: `chatetl.yaml` and job files: types, `${ENV}` interpolation, validation.
//! - [`plan`]: windows in a job's time zone (local days, wall-clock hours), incremental catch-up
//!   with lookback, `--from`/`--to` ranges, and chunks of windows per request (pure).
//! - [`telemetry`]: tracing set-up shared by every subcommand (`--log-format`, `-v`/`-q`).
//! - [`time`]: DST-safe local days and giosg's millisecond timestamps.
//! - [`source`]: the vendors' wire formats; today giosg's chat_sessions query language.
//! - [`simulator`]: `chatetl simulate`: the vendor APIs on loopback from a synthetic dataset, with
//!   faults and a request log.

pub mod config;
pub mod plan;
pub mod simulator;
pub mod source;
pub mod telemetry;
pub mod time;
