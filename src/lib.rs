//! The JoChat workspace's root package. It holds no code of its own: it carries the
//! runnable programs in `examples/` and the cross-crate tests in `tests/`, and re-exports the
//! client library for them.
//!
//! # Layout
//!
//! - `examples/`: programs that use the client library (`cargo run --example NAME`).
//! - `tests/`: integration tests against real nodes over gRPC, and property tests of the
//!   state machine across stores; `tests/common` holds their shared helpers.
//!
//! The crates themselves live under `crates/`; see `ARCHITECTURE.md`.

#![forbid(unsafe_code)]

pub use jochat_client as client;
