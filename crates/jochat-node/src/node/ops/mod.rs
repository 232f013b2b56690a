//! The chat operations, one file each, as `impl Node` blocks: the writes build one
//! [`Operation`](jochat_core::Operation) and submit it with `Node::write`; the reads run a
//! `jochat_core::query` function with `Node::read` at the consistency the caller asked for.

mod delete_account;
mod delete_messages;
mod fetch_away;
mod list_accounts;
mod list_messages;
mod log_in;
mod log_out;
mod reset_all;
mod send_message;
mod sign_up;
mod unread_count;

pub use fetch_away::Fetched;
pub use log_in::LoggedIn;
