//! [`MemoryStore`]: the chat state in ordinary collections, for tests and as the reference
//! the SQLite store is compared with.

use std::collections::{BTreeMap, VecDeque};

use crate::error::StoreError;
use crate::pattern::Pattern;
use crate::store::*;
use crate::types::{IdempotencyKey, MessageId, Page, TokenDigest, UserId, Username};

/// Chat state in memory. Every method is infallible; the `Result`s are the trait's.
///
/// A command either fully applies or returns an error before its first change (see
/// [`crate::apply`]), so no rollback is needed here.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    users: BTreeMap<UserId, UserRecord>,
    /// Folded (lower-case) name → id, for lookups ignoring case.
    names: BTreeMap<String, UserId>,
    sessions: BTreeMap<TokenDigest, SessionRecord>,
    messages: BTreeMap<MessageId, MessageRecord>,
    remembered: BTreeMap<IdempotencyKey, Remembered>,
    /// Remembered keys in the order they were added, oldest first.
    remembered_order: VecDeque<IdempotencyKey>,
    last_ids: LastIds,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn page_of<T: Clone>(items: &[T], page: Page) -> Vec<T> {
    let start = usize::try_from(page.offset)
        .unwrap_or(usize::MAX)
        .min(items.len());
    let end = start.saturating_add(page.limit as usize).min(items.len());
    items[start..end].to_vec()
}

impl MemoryStore {
    /// The `limit` oldest messages of `recipient` that are delivered (or away).
    fn oldest_of(&self, recipient: &Username, delivered: bool, limit: u32) -> Vec<MessageRecord> {
        self.messages
            .values()
            .filter(|m| m.delivered == delivered && m.recipient == *recipient)
            .take(limit as usize)
            .cloned()
            .collect()
    }
}

impl ChatRead for MemoryStore {
    fn user_by_name(&self, name: &Username) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .names
            .get(&name.folded())
            .and_then(|id| self.users.get(id))
            .cloned())
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users.get(&id).cloned())
    }

    fn session(&self, digest: &TokenDigest) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.sessions.get(digest).cloned())
    }

    fn has_live_session(&self, user: UserId, at_ms: i64) -> Result<bool, StoreError> {
        Ok(self
            .sessions
            .values()
            .any(|s| s.user_id == user && s.expires_at_ms > at_ms))
    }

    fn away_count(&self, recipient: &Username) -> Result<u64, StoreError> {
        Ok(self
            .messages
            .values()
            .filter(|m| !m.delivered && m.recipient == *recipient)
            .count() as u64)
    }

    fn away_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self.oldest_of(recipient, false, limit))
    }

    fn delivered_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self.oldest_of(recipient, true, limit))
    }

    fn message_by_id(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self.messages.get(&id).cloned())
    }

    fn messages_after(
        &self,
        recipient: &Username,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self
            .messages
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, m)| m)
            .filter(|m| m.recipient == *recipient)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    fn inbox(
        &self,
        owner: &Username,
        with: Option<&Username>,
        page: Page,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError> {
        let matching: Vec<MessageRecord> = self
            .messages
            .values()
            .rev()
            .filter(|m| match with {
                None => m.recipient == *owner,
                Some(other) => {
                    (m.recipient == *owner && m.sender == *other)
                        || (m.recipient == *other && m.sender == *owner)
                }
            })
            .cloned()
            .collect();
        Ok((page_of(&matching, page), matching.len() as u64))
    }

    fn accounts(
        &self,
        pattern: &Pattern,
        page: Page,
    ) -> Result<(Vec<AccountRecord>, u64), StoreError> {
        // `names` is ordered by folded name, which is the listing order.
        let matching: Vec<AccountRecord> = self
            .names
            .values()
            .filter_map(|id| self.users.get(id))
            .filter(|u| pattern.matches(u.username.as_str()))
            .map(|u| AccountRecord {
                id: u.id,
                username: u.username.clone(),
            })
            .collect();
        Ok((page_of(&matching, page), matching.len() as u64))
    }

    fn remembered(&self, key: &IdempotencyKey) -> Result<Option<Remembered>, StoreError> {
        Ok(self.remembered.get(key).cloned())
    }

    fn remembered_span(&self) -> Result<(u64, Option<i64>), StoreError> {
        // A scan: this store is the model for tests, not a hot path.
        let oldest = self.remembered.values().map(|r| r.at_ms).min();
        Ok((self.remembered.len() as u64, oldest))
    }

    fn last_ids(&self) -> Result<LastIds, StoreError> {
        Ok(self.last_ids)
    }

    fn dump(&self) -> Result<StateDump, StoreError> {
        Ok(StateDump {
            users: self.users.values().cloned().collect(),
            sessions: self.sessions.values().cloned().collect(),
            messages: self.messages.values().cloned().collect(),
            remembered: self
                .remembered
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            last_ids: self.last_ids,
        })
    }
}

impl ChatStore for MemoryStore {
    fn insert_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        self.names.insert(user.username.folded(), user.id);
        self.users.insert(user.id, user.clone());
        Ok(())
    }

    fn delete_user(&mut self, id: UserId) -> Result<(), StoreError> {
        if let Some(user) = self.users.remove(&id) {
            self.names.remove(&user.username.folded());
        }
        Ok(())
    }

    fn insert_session(&mut self, session: &SessionRecord) -> Result<(), StoreError> {
        self.sessions
            .insert(session.token_digest.clone(), session.clone());
        Ok(())
    }

    fn delete_session(&mut self, digest: &TokenDigest) -> Result<bool, StoreError> {
        Ok(self.sessions.remove(digest).is_some())
    }

    fn delete_sessions_of(&mut self, user: UserId) -> Result<(), StoreError> {
        self.sessions.retain(|_, s| s.user_id != user);
        Ok(())
    }

    fn delete_expired_sessions(&mut self, at_ms: i64) -> Result<(), StoreError> {
        self.sessions.retain(|_, s| s.expires_at_ms > at_ms);
        Ok(())
    }

    fn insert_message(&mut self, message: &MessageRecord) -> Result<(), StoreError> {
        self.messages.insert(message.id, message.clone());
        Ok(())
    }

    fn mark_delivered(&mut self, ids: &[MessageId]) -> Result<(), StoreError> {
        for id in ids {
            if let Some(message) = self.messages.get_mut(id) {
                message.delivered = true;
            }
        }
        Ok(())
    }

    fn delete_inbox_messages(
        &mut self,
        recipient: &Username,
        ids: &[MessageId],
    ) -> Result<u64, StoreError> {
        let mut count = 0;
        for id in ids {
            if self
                .messages
                .get(id)
                .is_some_and(|m| m.recipient == *recipient)
            {
                self.messages.remove(id);
                count += 1;
            }
        }
        Ok(count)
    }

    fn delete_messages_of(&mut self, user: &Username) -> Result<u64, StoreError> {
        let before = self.messages.len();
        self.messages
            .retain(|_, m| m.sender != *user && m.recipient != *user);
        Ok((before - self.messages.len()) as u64)
    }

    fn remember(&mut self, key: &IdempotencyKey, entry: &Remembered) -> Result<(), StoreError> {
        if self.remembered.insert(key.clone(), entry.clone()).is_none() {
            self.remembered_order.push_back(key.clone());
        }
        Ok(())
    }

    fn forget_remembered(&mut self, before_ms: i64, keep_max: u64) -> Result<(), StoreError> {
        self.remembered.retain(|_, r| r.at_ms >= before_ms);
        let remembered = &self.remembered;
        self.remembered_order.retain(|k| remembered.contains_key(k));
        while self.remembered_order.len() as u64 > keep_max {
            if let Some(oldest) = self.remembered_order.pop_front() {
                self.remembered.remove(&oldest);
            }
        }
        Ok(())
    }

    fn set_last_ids(&mut self, _from: LastIds, to: LastIds) -> Result<(), StoreError> {
        self.last_ids = to;
        Ok(())
    }

    fn clear_chat_state(&mut self) -> Result<(), StoreError> {
        *self = Self {
            last_ids: self.last_ids,
            ..Self::default()
        };
        Ok(())
    }
}
