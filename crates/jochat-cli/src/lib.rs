//! The library half of the `jochat` command line: what other programs and tests can embed.
//!
//! - [`message_json`]: a message as JSON, as `--json` prints it. It is defined in `jochat-web`,
//!   whose API serves the same shape, so the two cannot drift apart.
//!
//! `jochat web` serves the web gateway of the `jochat-web` crate.

#![forbid(unsafe_code)]

pub use jochat_web::message_json;
