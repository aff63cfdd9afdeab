//! The integration tests: one binary (faster to link), one module per area.
//!
//! Everything runs against real parts: the simulator over HTTP on loopback, the `chatetl` binary.

mod alerts;
mod architecture;
mod bounds;
mod bucketed;
mod config_cli;
mod config_corpus;
mod container;
mod daemons;
mod ddl;
mod exporter;
mod fusion;
mod giosg_events;
mod history;
mod jobs;
mod lake;
mod lake_file;
mod operations;
mod orchestrators;
mod parquet_warehouse;
mod postgres_warehouse;
mod probe;
mod readme;
mod s3;
mod scheduler;
mod simulator_api;
mod simulator_cli;
mod simulator_faults;
mod snapshots;
mod thulium;
mod util;
mod vendor_answers;
