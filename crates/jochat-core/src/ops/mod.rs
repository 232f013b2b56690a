//! One file per kind of write: the replicated command, what applying it answers, and the
//! rules it applies.
//!
//! Each kind is a struct implementing [`Operation`]; [`crate::Action`] has one variant per
//! kind and [`crate::Outcome`] one per result, so a new kind of write is a new file here, a
//! variant in each enum, and the arms the compiler then asks for (every `match` over them is
//! exhaustive). ARCHITECTURE.md lists the rest ("Adding an operation").
//!
//! Every rule is checked before the first change, so a refused command changes nothing (the
//! SQLite store relies on this: commands share savepoints and one is rolled back alone only
//! after a storage failure part-way through it). Nothing here reads a clock or a random
//! source: the command carries its time.

mod create_session;
mod delete_account;
mod delete_messages;
mod mark_delivered;
mod reset_all;
mod reset_anonymous;
mod revoke_session;
mod send_message;
mod sign_up;

pub use create_session::{CreateSession, SessionCreated};
pub use delete_account::{AccountDeleted, DeleteAccount};
pub use delete_messages::{DeleteMessages, MessagesDeleted};
pub use mark_delivered::{within_reply_budget, Delivered, MarkDelivered};
pub use reset_all::ResetAll;
pub use reset_anonymous::ResetAnonymous;
pub use revoke_session::RevokeSession;
pub use send_message::{MessageSent, SendMessage};
pub use sign_up::{SignUp, SignedUp};

use crate::command::{Action, Outcome};
use crate::error::ChatError;
use crate::store::ChatStore;

/// One kind of write.
///
/// `apply` is deterministic: it reads only the store and the command (whose time is
/// `at_ms`), checks every rule before its first change, and returns [`Self::Output`], which
/// [`Self::into_outcome`] turns into the general [`Outcome`] that travels back through Raft
/// and is remembered for retries. [`Self::from_outcome`] takes it back out for the caller.
pub trait Operation: Into<Action> {
    /// What applying it answers.
    type Output;

    /// Applies it to `store` at the command's time `at_ms`.
    ///
    /// # Errors
    /// The rule it breaks, or a storage failure; in every case the store is unchanged.
    fn apply<S: ChatStore + ?Sized>(
        &self,
        store: &mut S,
        at_ms: i64,
    ) -> Result<Self::Output, ChatError>;

    /// The general outcome carrying `output`.
    fn into_outcome(output: Self::Output) -> Outcome;

    /// This kind's output out of an outcome; the outcome back when it is another kind's
    /// (which would be a bug: a command's outcome is always of its own kind).
    ///
    /// # Errors
    /// The outcome itself, when it is not this kind's.
    fn from_outcome(outcome: Outcome) -> Result<Self::Output, Outcome>;
}

/// Applies `operation` and wraps its output.
pub(crate) fn run<O: Operation, S: ChatStore + ?Sized>(
    operation: &O,
    store: &mut S,
    at_ms: i64,
) -> Result<Outcome, ChatError> {
    operation.apply(store, at_ms).map(O::into_outcome)
}
