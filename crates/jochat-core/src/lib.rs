//! JoChat's pure domain: what the chat service does, with no I/O.
//!
//! Every change to chat state is a [`Command`], decided in full by the node that accepts the
//! request (time, password hash, token digest), and applied by [`apply`], a deterministic
//! function of the state and the command. Replicas that apply the same log therefore hold the
//! same rows. Reads are the functions of [`query`]. Both are written once against the
//! [`ChatRead`] / [`ChatStore`] traits, which `jochat-node` implements on SQLite and
//! [`MemoryStore`] implements in memory.
//!
//! # Layout
//!
//! - [`limits`]: every bound (name lengths, page sizes, content size, id counts).
//! - [`types`]: validated values; constructors name the field and rule they check.
//! - [`pattern`]: account search patterns (`*`, `?`, substring) and their SQL `LIKE` form.
//! - [`command`]: [`Command`], [`Action`] and [`Outcome`], the replicated write and its result.
//! - [`ops`]: one file per kind of write (the [`Operation`] trait): its command struct, its
//!   output, and the rules applying it checks.
//! - [`store`]: the storage traits and the rows they exchange.
//! - [`apply`](mod@apply): the state machine: retries, dispatch to [`ops`], remembering.
//! - [`query`]: authentication and the read queries.
//! - [`memory`]: the in-memory store, [`MemoryStore`].
//! - [`error`]: the error type, [`ChatError`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod command;
pub mod error;
pub mod limits;
pub mod memory;
pub mod ops;
pub mod pattern;
pub mod query;
pub mod store;
pub mod types;

pub use apply::apply;
pub use command::{Action, Command, Outcome};
pub use error::{ChatError, StoreError};
pub use memory::MemoryStore;
pub use ops::Operation;
pub use pattern::Pattern;
pub use store::{ChatRead, ChatStore};
