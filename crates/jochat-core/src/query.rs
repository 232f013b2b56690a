//! The read queries, written once against [`ChatRead`].

use crate::error::ChatError;
use crate::ops::within_reply_budget;
use crate::pattern::Pattern;
use crate::store::{AccountRecord, ChatRead, MessageRecord, UserRecord};
use crate::types::{MessageId, Page, SessionToken, TokenDigest, Username};

/// A page of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    /// Newest first; may be cut short by the reply size limit.
    pub messages: Vec<MessageRecord>,
    /// How many messages the whole listing holds.
    pub total_count: u64,
}

/// A page of accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPage {
    /// Ordered by name, ignoring case.
    pub accounts: Vec<AccountRecord>,
    /// How many accounts match.
    pub total_count: u64,
}

/// The user behind a session token at time `now_ms`.
///
/// # Errors
/// `Unauthenticated` when the token is unknown, revoked or expired.
pub fn authenticate<R: ChatRead + ?Sized>(
    store: &R,
    token: &SessionToken,
    now_ms: i64,
) -> Result<UserRecord, ChatError> {
    authenticate_digest(store, &token.digest(), now_ms)
}

/// The user behind a session digest at time `at_ms` (used by the state machine with the
/// command's time).
///
/// # Errors
/// `Unauthenticated` when the session is unknown, revoked or expired.
pub fn authenticate_digest<R: ChatRead + ?Sized>(
    store: &R,
    digest: &TokenDigest,
    at_ms: i64,
) -> Result<UserRecord, ChatError> {
    let Some(session) = store.session(digest)? else {
        return Err(ChatError::unauthenticated(
            "session token is not valid (unknown or revoked): log in again",
        ));
    };
    if session.expires_at_ms <= at_ms {
        return Err(ChatError::unauthenticated("session expired: log in again"));
    }
    store
        .user_by_id(session.user_id)?
        .ok_or_else(|| ChatError::unauthenticated("session's account no longer exists"))
}

/// The number of `user`'s away messages.
///
/// # Errors
/// Storage failures only.
pub fn unread_count<R: ChatRead + ?Sized>(store: &R, user: &UserRecord) -> Result<u64, ChatError> {
    Ok(store.away_count(&user.username)?)
}

/// A page of `user`'s inbox, optionally only the conversation with `with_user`.
///
/// # Errors
/// `NotFound` on `with_user` when no such account exists.
pub fn list_messages<R: ChatRead + ?Sized>(
    store: &R,
    user: &UserRecord,
    with_user: Option<&Username>,
    page: Page,
) -> Result<MessagePage, ChatError> {
    let other = match with_user {
        None => None,
        Some(name) => match store.user_by_name(name)? {
            Some(other) => Some(other.username),
            None => {
                return Err(ChatError::NotFound {
                    field: "with_user".into(),
                    value: name.as_str().to_owned(),
                })
            }
        },
    };
    let (mut messages, total_count) = store.inbox(&user.username, other.as_ref(), page)?;
    let kept = within_reply_budget(&messages).len();
    messages.truncate(kept);
    Ok(MessagePage {
        messages,
        total_count,
    })
}

/// Up to `limit` of `user`'s delivered messages, oldest first (the prototype's socket
/// clients poll these), cut to the reply budget like a page of the inbox.
///
/// # Errors
/// Storage failures only.
pub fn delivered_messages<R: ChatRead + ?Sized>(
    store: &R,
    user: &UserRecord,
    limit: u32,
) -> Result<Vec<MessageRecord>, ChatError> {
    let mut messages = store.delivered_messages(&user.username, limit)?;
    let kept = within_reply_budget(&messages).len();
    messages.truncate(kept);
    Ok(messages)
}

/// A page of the accounts matching `pattern`.
///
/// # Errors
/// Storage failures only.
pub fn list_accounts<R: ChatRead + ?Sized>(
    store: &R,
    pattern: &Pattern,
    page: Page,
) -> Result<AccountPage, ChatError> {
    let (accounts, total_count) = store.accounts(pattern, page)?;
    Ok(AccountPage {
        accounts,
        total_count,
    })
}

/// The messages with these ids, ascending (those that still exist).
///
/// # Errors
/// Storage failures only.
pub fn messages_by_ids<R: ChatRead + ?Sized>(
    store: &R,
    ids: &[MessageId],
) -> Result<Vec<MessageRecord>, ChatError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(store.message_by_id(id)?);
    }
    Ok(found)
}
