//! The library half of the `jochat` command line: what other programs and tests can embed.
//!
//! - [`web`]: `jochat web`, the page for people who chat and its JSON API.
//! - [`message_json`]: a message as JSON, as `--json` prints it and the web API serves it.

#![forbid(unsafe_code)]

pub mod web;

use jochat_client::Message;
use serde_json::{json, Value};

/// A message as JSON: `id`, `sender`, `recipient`, `content`, `timestamp_ms`, `status`
/// (`delivered` or `away`).
pub fn message_json(message: &Message) -> Value {
    json!({
        "id": message.id,
        "sender": message.sender,
        "recipient": message.recipient,
        "content": message.content,
        "timestamp_ms": message.timestamp_ms,
        "status": message.status.as_str(),
    })
}
