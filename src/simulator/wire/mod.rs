//! The simulator's own wire types: what its handlers parse and what they write, one module per
//! vendor API, each written from the vendor's docs (`/work/shared/api-docs`, kept as
//! `tests/fixtures/api-docs-*` where they give request bodies).
//!
//! Owns: [`giosg`] (chat_sessions, events and workflow bodies, the filter language, the dimension
//! tables, the `{fields, data}` answer; api-docs 001 and 002) and [`thulium`] (`aggregate_by` and
//! the chat summary row; api-docs 004). The giosg realtime (000) and Comm100 (003) handlers read
//! plain query parameters and build their answers in their own modules.
//!
//! Why they exist: the simulator must not agree with the client by construction. Nothing under
//! `simulator/` imports the client's `source` or `config` modules; the client is checked against the docs'
//! examples in its own tests, the simulator's types in the tests of these modules, so a wrong
//! guess on either side shows up as a disagreement (a 400 from the simulator, or a failed parse
//! in the client) instead of being shared.

pub mod giosg;
pub mod thulium;
