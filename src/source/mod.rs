//! Upstream APIs: the wire formats chatetl speaks to each vendor.
//!
//! Owns one module per vendor. Today that is giosg's chat_sessions query language (`giosg::query`),
//! shared by the exporter's client and the simulator so both speak exactly the documented format.
//! The `Source` trait and the shared HTTP plumbing join here with the exporter (DESIGN.md).

pub mod giosg;
