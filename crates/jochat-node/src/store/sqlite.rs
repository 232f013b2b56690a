//! [`SqliteChat`]: the chat state in SQLite, implementing `jochat-core`'s storage traits over
//! a borrowed connection, so the same code serves the writer's transaction and the readers'.

use jochat_core::pattern::Pattern;
use jochat_core::store::*;
use jochat_core::types::{IdempotencyKey, MessageId, Page, TokenDigest, UserId, Username};
use jochat_core::StoreError;
use std::cell::Cell;

use rusqlite::{params, Connection, OptionalExtension, Row};

/// Chat state over one SQLite connection (or transaction, or savepoint: they all deref to a
/// connection). Statements are prepared once per connection and cached by rusqlite.
pub struct SqliteChat<'c> {
    conn: &'c Connection,
    /// The `counters` rows held in memory while a group of commands is applied
    /// ([`SqliteChat::deferring`]); `None` reads and writes them through.
    deferred: Option<Cell<Deferred>>,
}

/// The rows of the `counters` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    last_user_id: i64,
    last_message_id: i64,
    remembered_count: i64,
}

impl Counters {
    /// The rows whose value differs in `after`, with their new value.
    fn changed_to(self, after: Counters) -> impl Iterator<Item = (&'static str, i64)> {
        [
            ("last_user_id", self.last_user_id, after.last_user_id),
            (
                "last_message_id",
                self.last_message_id,
                after.last_message_id,
            ),
            (
                "remembered_count",
                self.remembered_count,
                after.remembered_count,
            ),
        ]
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .map(|(name, _, after)| (name, after))
    }
}

/// Counters kept in memory by a deferring [`SqliteChat`].
#[derive(Debug, Clone, Copy, Default)]
struct Deferred {
    /// As stored and as changed since, once read.
    counters: Option<(Counters, Counters)>,
    /// The oldest remembered outcome's time (`Some(None)`: none is remembered), once read.
    oldest_remembered_ms: Option<Option<i64>>,
}

impl<'c> SqliteChat<'c> {
    /// Chat state through `conn`.
    pub fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            deferred: None,
        }
    }

    /// Chat state through `conn` that keeps the id counters and the count of remembered
    /// outcomes in memory from their first use until [`SqliteChat::write_counters`], so
    /// that a group of commands reads them once and writes each changed one once, instead of
    /// two to four statements per command. Nothing else may read or write the `counters`
    /// table through `conn` in between; if the group is rolled back, drop this without
    /// writing.
    pub fn deferring(conn: &'c Connection) -> Self {
        Self {
            conn,
            deferred: Some(Cell::new(Deferred::default())),
        }
    }

    /// Writes the counters a deferring store changed (nothing for one that does not defer).
    ///
    /// # Errors
    /// SQLite fails; the transaction must then be rolled back.
    pub fn write_counters(&self) -> Result<(), rusqlite::Error> {
        let Some(cell) = &self.deferred else {
            return Ok(());
        };
        let mut deferred = cell.get();
        let Some((stored, current)) = deferred.counters else {
            return Ok(());
        };
        for (name, value) in stored.changed_to(current) {
            self.update_counter(name, value)?;
        }
        deferred.counters = Some((current, current));
        cell.set(deferred);
        Ok(())
    }

    /// The counters as this store sees them, reading them once when deferring.
    fn counters(&self) -> Result<Counters, StoreError> {
        if let Some((_, current)) = self.deferred.as_ref().and_then(|c| c.get().counters) {
            return Ok(current);
        }
        let counters = self
            .conn
            .prepare_cached(
                "SELECT (SELECT value FROM counters WHERE name = 'last_user_id'), \
                        (SELECT value FROM counters WHERE name = 'last_message_id'), \
                        (SELECT value FROM counters WHERE name = 'remembered_count')",
            )
            .and_then(|mut statement| {
                statement.query_row([], |row| {
                    Ok(Counters {
                        last_user_id: row.get(0)?,
                        last_message_id: row.get(1)?,
                        remembered_count: row.get(2)?,
                    })
                })
            })
            .map_err(storage)?;
        if let Some(cell) = &self.deferred {
            let mut deferred = cell.get();
            deferred.counters = Some((counters, counters));
            cell.set(deferred);
        }
        Ok(counters)
    }

    /// Changes the counters: in memory when deferring, else the changed rows at once.
    fn set_counters(&self, change: impl FnOnce(&mut Counters)) -> Result<(), StoreError> {
        let before = self.counters()?;
        let mut after = before;
        change(&mut after);
        if let Some(cell) = &self.deferred {
            let mut deferred = cell.get();
            deferred.counters = deferred.counters.map(|(stored, _)| (stored, after));
            cell.set(deferred);
            return Ok(());
        }
        for (name, value) in before.changed_to(after) {
            self.set_counter(name, value)?;
        }
        Ok(())
    }

    /// The oldest remembered outcome's time, read once when deferring.
    fn oldest_remembered_ms(&self) -> Result<Option<i64>, StoreError> {
        if let Some(known) = self
            .deferred
            .as_ref()
            .and_then(|c| c.get().oldest_remembered_ms)
        {
            return Ok(known);
        }
        let oldest = self
            .conn
            .prepare_cached("SELECT min(at_ms) FROM idempotency")
            .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
            .map_err(storage)?;
        self.set_oldest_remembered_ms(Some(oldest));
        Ok(oldest)
    }

    /// Records (when deferring) what is known of the oldest remembered outcome's time.
    fn set_oldest_remembered_ms(&self, known: Option<Option<i64>>) {
        if let Some(cell) = &self.deferred {
            let mut deferred = cell.get();
            deferred.oldest_remembered_ms = known;
            cell.set(deferred);
        }
    }

    /// How many sessions have not expired at `now_ms` (for the metrics).
    ///
    /// # Errors
    /// SQLite fails.
    pub fn live_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM sessions WHERE expires_at_ms > ?1")
            .and_then(|mut statement| statement.query_row([now_ms], |row| row.get(0)))
            .map_err(storage)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn storage(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &error {
        if is_environmental(failure.code) {
            ENVIRONMENTAL_FAILURE.with(|slot| {
                slot.replace(Some((*failure, error.to_string())));
            });
        }
    }
    StoreError(format!("sqlite: {error}"))
}

thread_local! {
    /// The last failure of this thread's chat statements that came from the machine rather
    /// than from the command (see [`take_environmental_failure`]).
    static ENVIRONMENTAL_FAILURE: std::cell::Cell<Option<(rusqlite::ffi::Error, String)>> =
        const { std::cell::Cell::new(None) };
}

/// Whether SQLite failing with `code` says something about this machine (its disk, memory,
/// file or locks), which another replica applying the same command would not meet, rather
/// than about the command (a constraint, a value too big), which every replica meets alike.
pub fn is_environmental(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        code,
        PermissionDenied
            | DatabaseBusy
            | DatabaseLocked
            | OutOfMemory
            | ReadOnly
            | OperationInterrupted
            | SystemIoFailure
            | DatabaseCorrupt
            | NotFound
            | DiskFull
            | CannotOpen
            | FileLockingProtocolFailed
            | NoLargeFileSupport
            | NotADatabase
    )
}

/// Takes the environmental failure (disk full, I/O error, corruption...) that a chat
/// statement on this thread met since the last call, if any. A command that failed that way
/// must not be recorded as failed: the node's storage is at fault, not the command, and the
/// other replicas apply it. The caller fails the whole apply instead (a storage fault).
pub fn take_environmental_failure() -> Option<rusqlite::Error> {
    ENVIRONMENTAL_FAILURE
        .with(std::cell::Cell::take)
        .map(|(failure, message)| rusqlite::Error::SqliteFailure(failure, Some(message)))
}

/// Rebuilds a validated value read back from the database. The database is written only
/// through validated values, so a failure means the file was edited by hand or is corrupt.
fn stored<T>(what: &str, parsed: Result<T, jochat_core::ChatError>) -> Result<T, StoreError> {
    parsed.map_err(|e| StoreError(format!("corrupt {what} in database: {e}")))
}

// The column lists as macros too, so that the statements every write runs are literals
// (`concat!`) rather than a `format!` allocation per call.
macro_rules! user_columns {
    () => {
        "id, username, password_hash, created_at_ms"
    };
}
macro_rules! session_columns {
    () => {
        "token_digest, user_id, created_at_ms, expires_at_ms"
    };
}
macro_rules! message_columns {
    () => {
        "id, sender, recipient, content, timestamp_ms, to_deliver"
    };
}
const USER_COLUMNS: &str = user_columns!();
const SESSION_COLUMNS: &str = session_columns!();
const MESSAGE_COLUMNS: &str = message_columns!();

type Raw<T> = Result<T, rusqlite::Error>;

fn user_row(row: &Row<'_>) -> Raw<(i64, String, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_user(
    (id, username, password_hash, created_at_ms): (i64, String, String, i64),
) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: UserId(id),
        username: stored("username", Username::new(&username))?,
        password_hash,
        created_at_ms,
    })
}

fn session_row(row: &Row<'_>) -> Raw<SessionRecord> {
    Ok(SessionRecord {
        token_digest: TokenDigest::from_stored(row.get(0)?),
        user_id: UserId(row.get(1)?),
        created_at_ms: row.get(2)?,
        expires_at_ms: row.get(3)?,
    })
}

type MessageRow = (i64, String, String, String, i64, i64);

fn message_row(row: &Row<'_>) -> Raw<MessageRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_message(
    (id, sender, recipient, content, timestamp_ms, to_deliver): MessageRow,
) -> Result<MessageRecord, StoreError> {
    Ok(MessageRecord {
        id: MessageId(id),
        sender: stored("sender", Username::new(&sender))?,
        recipient: stored("recipient", Username::new(&recipient))?,
        content,
        timestamp_ms,
        delivered: to_deliver != 0,
    })
}

impl SqliteChat<'_> {
    fn messages(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(storage)?;
        let rows = statement
            .query_map(params, message_row)
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        rows.into_iter().map(to_message).collect()
    }

    fn count(&self, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(storage)?;
        let count: i64 = statement
            .query_row(params, |row| row.get(0))
            .map_err(storage)?;
        Ok(count as u64)
    }

    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(storage)?;
        Ok(statement.execute(params).map_err(storage)? as u64)
    }

    fn set_counter(&self, name: &str, value: i64) -> Result<(), StoreError> {
        self.update_counter(name, value).map_err(storage)
    }

    fn update_counter(&self, name: &str, value: i64) -> Result<(), rusqlite::Error> {
        self.conn
            .prepare_cached("UPDATE counters SET value = ?2 WHERE name = ?1")?
            .execute(params![name, value])
            .map(drop)
    }
}

fn page_params(page: Page) -> (i64, i64) {
    // Page offsets are bounded far below i64::MAX by validation.
    (i64::from(page.limit), page.offset as i64)
}

impl ChatRead for SqliteChat<'_> {
    fn user_by_name(&self, name: &Username) -> Result<Option<UserRecord>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = ?1"
            ))
            .map_err(storage)?;
        let raw = statement
            .query_row([name.as_str()], user_row)
            .optional()
            .map_err(storage)?;
        raw.map(to_user).transpose()
    }

    fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE id = ?1"
            ))
            .map_err(storage)?;
        let raw = statement
            .query_row([id.0], user_row)
            .optional()
            .map_err(storage)?;
        raw.map(to_user).transpose()
    }

    fn session(&self, digest: &TokenDigest) -> Result<Option<SessionRecord>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions WHERE token_digest = ?1"
            ))
            .map_err(storage)?;
        statement
            .query_row([digest.as_str()], session_row)
            .optional()
            .map_err(storage)
    }

    fn has_live_session(&self, user: UserId, at_ms: i64) -> Result<bool, StoreError> {
        self.count(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE user_id = ?1 AND expires_at_ms > ?2)",
            params![user.0, at_ms],
        )
        .map(|found| found != 0)
    }

    fn away_count(&self, recipient: &Username) -> Result<u64, StoreError> {
        self.count(
            "SELECT count(*) FROM messages WHERE recipient = ?1 AND to_deliver = 0",
            [recipient.as_str()],
        )
    }

    fn away_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?1 AND to_deliver = 0 \
                 ORDER BY id LIMIT ?2"
            ),
            params![recipient.as_str(), limit],
        )
    }

    fn delivered_messages(
        &self,
        recipient: &Username,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?1 AND to_deliver = 1 \
                 ORDER BY id LIMIT ?2"
            ),
            params![recipient.as_str(), limit],
        )
    }

    fn message_by_id(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ?1"
        );
        Ok(self.messages(SQL, [id.0])?.pop())
    }

    fn messages_after(
        &self,
        recipient: &Username,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?1 AND id > ?2 \
                 ORDER BY id LIMIT ?3"
            ),
            params![recipient.as_str(), after.0, limit],
        )
    }

    fn inbox(
        &self,
        owner: &Username,
        with: Option<&Username>,
        page: Page,
    ) -> Result<(Vec<MessageRecord>, u64), StoreError> {
        let (limit, offset) = page_params(page);
        match with {
            None => Ok((
                self.messages(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE recipient = ?1 \
                         ORDER BY id DESC LIMIT ?2 OFFSET ?3"
                    ),
                    params![owner.as_str(), limit, offset],
                )?,
                self.count(
                    "SELECT coalesce(sum(messages), 0) FROM inbox_counts WHERE recipient = ?1",
                    [owner.as_str()],
                )?,
            )),
            Some(other) => {
                const BETWEEN: &str =
                    "(recipient = ?1 AND sender = ?2) OR (recipient = ?2 AND sender = ?1)";
                Ok((
                    self.messages(
                        &format!(
                            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {BETWEEN} \
                             ORDER BY id DESC LIMIT ?3 OFFSET ?4"
                        ),
                        params![owner.as_str(), other.as_str(), limit, offset],
                    )?,
                    self.count(
                        &format!("SELECT count(*) FROM messages WHERE {BETWEEN}"),
                        params![owner.as_str(), other.as_str()],
                    )?,
                ))
            }
        }
    }

    fn accounts(
        &self,
        pattern: &Pattern,
        page: Page,
    ) -> Result<(Vec<AccountRecord>, u64), StoreError> {
        let (limit, offset) = page_params(page);
        let like = pattern.to_like();
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, username FROM users WHERE username LIKE ?1 ESCAPE '\\' \
                 ORDER BY username LIMIT ?2 OFFSET ?3",
            )
            .map_err(storage)?;
        let rows = statement
            .query_map(params![like, limit, offset], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let accounts = rows
            .into_iter()
            .map(|(id, name)| {
                Ok(AccountRecord {
                    id: UserId(id),
                    username: stored("username", Username::new(&name))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let total = if pattern.matches_all() {
            // SQLite counts a whole table's rows page by page, without reading each name, far
            // faster than counting the matches of a pattern.
            self.count("SELECT count(*) FROM users", [])?
        } else {
            self.count(
                "SELECT count(*) FROM users WHERE username LIKE ?1 ESCAPE '\\'",
                [like],
            )?
        };
        Ok((accounts, total))
    }

    fn remembered_span(&self) -> Result<(u64, Option<i64>), StoreError> {
        let count = self.counters()?.remembered_count;
        Ok((count.max(0) as u64, self.oldest_remembered_ms()?))
    }

    fn remembered(&self, key: &IdempotencyKey) -> Result<Option<Remembered>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT scope, kind, outcome, at_ms FROM idempotency WHERE key = ?1")
            .map_err(storage)?;
        let raw = statement
            .query_row([key.as_str()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()
            .map_err(storage)?;
        raw.map(|(scope, kind, outcome, at_ms)| {
            Ok(Remembered {
                scope,
                kind,
                outcome: serde_json::from_str(&outcome).map_err(|e| {
                    StoreError(format!("corrupt remembered outcome in database: {e}"))
                })?,
                at_ms,
            })
        })
        .transpose()
    }

    fn last_ids(&self) -> Result<LastIds, StoreError> {
        let counters = self.counters()?;
        Ok(LastIds {
            user: counters.last_user_id,
            message: counters.last_message_id,
        })
    }

    fn dump(&self) -> Result<StateDump, StoreError> {
        let mut users_statement = self
            .conn
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
            .map_err(storage)?;
        let users = users_statement
            .query_map([], user_row)
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?
            .into_iter()
            .map(to_user)
            .collect::<Result<Vec<_>, _>>()?;
        let mut sessions_statement = self
            .conn
            .prepare(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY token_digest"
            ))
            .map_err(storage)?;
        let sessions = sessions_statement
            .query_map([], session_row)
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let messages = self.messages(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id"),
            [],
        )?;
        let mut keys_statement = self
            .conn
            .prepare("SELECT key FROM idempotency ORDER BY key")
            .map_err(storage)?;
        let keys = keys_statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        let mut remembered = Vec::with_capacity(keys.len());
        for raw in keys {
            let key = stored("idempotency key", IdempotencyKey::optional(&raw))?
                .ok_or_else(|| StoreError("empty idempotency key in database".into()))?;
            let entry = self
                .remembered(&key)?
                .ok_or_else(|| StoreError("idempotency row vanished during dump".into()))?;
            remembered.push((key, entry));
        }
        Ok(StateDump {
            users,
            sessions,
            messages,
            remembered,
            last_ids: self.last_ids()?,
        })
    }
}

impl ChatStore for SqliteChat<'_> {
    fn insert_user(&mut self, user: &UserRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO users (id, username, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user.id.0, user.username.as_str(), user.password_hash, user.created_at_ms],
        )
        .map(drop)
    }

    fn delete_user(&mut self, id: UserId) -> Result<(), StoreError> {
        self.execute("DELETE FROM users WHERE id = ?1", [id.0])
            .map(drop)
    }

    fn insert_session(&mut self, session: &SessionRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO sessions (token_digest, user_id, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![session.token_digest.as_str(), session.user_id.0, session.created_at_ms, session.expires_at_ms],
        )
        .map(drop)
    }

    fn delete_session(&mut self, digest: &TokenDigest) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM sessions WHERE token_digest = ?1",
            [digest.as_str()],
        )
        .map(|n| n > 0)
    }

    fn delete_sessions_of(&mut self, user: UserId) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE user_id = ?1", [user.0])
            .map(drop)
    }

    fn delete_expired_sessions(&mut self, at_ms: i64) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE expires_at_ms <= ?1", [at_ms])
            .map(drop)
    }

    fn insert_message(&mut self, message: &MessageRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO messages (id, sender, recipient, content, timestamp_ms, to_deliver) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                message.id.0,
                message.sender.as_str(),
                message.recipient.as_str(),
                message.content,
                message.timestamp_ms,
                i64::from(message.delivered)
            ],
        )?;
        self.execute(
            "INSERT INTO inbox_counts (recipient, messages) VALUES (?1, 1) \
             ON CONFLICT (recipient) DO UPDATE SET messages = messages + 1",
            [message.recipient.as_str()],
        )
        .map(drop)
    }

    fn mark_delivered(&mut self, ids: &[MessageId]) -> Result<(), StoreError> {
        for id in ids {
            self.execute("UPDATE messages SET to_deliver = 1 WHERE id = ?1", [id.0])?;
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
            count += self.execute(
                "DELETE FROM messages WHERE id = ?1 AND recipient = ?2",
                params![id.0, recipient.as_str()],
            )?;
        }
        if count > 0 {
            self.execute(
                "UPDATE inbox_counts SET messages = messages - ?2 WHERE recipient = ?1",
                params![recipient.as_str(), i64::try_from(count).unwrap_or(i64::MAX)],
            )?;
        }
        Ok(count)
    }

    fn delete_messages_of(&mut self, user: &Username) -> Result<u64, StoreError> {
        // What the user sent leaves other inboxes: take it off their counts first.
        self.execute(
            "UPDATE inbox_counts SET messages = messages - \
                 (SELECT count(*) FROM messages \
                  WHERE sender = ?1 AND recipient = inbox_counts.recipient) \
             WHERE recipient IN (SELECT recipient FROM messages WHERE sender = ?1)",
            [user.as_str()],
        )?;
        self.execute(
            "DELETE FROM inbox_counts WHERE recipient = ?1",
            [user.as_str()],
        )?;
        self.execute(
            "DELETE FROM messages WHERE sender = ?1 OR recipient = ?1",
            [user.as_str()],
        )
    }

    fn remember(&mut self, key: &IdempotencyKey, entry: &Remembered) -> Result<(), StoreError> {
        let outcome = serde_json::to_string(&entry.outcome)
            .map_err(|e| StoreError(format!("cannot encode outcome: {e}")))?;
        self.execute(
            "INSERT INTO idempotency (key, scope, kind, outcome, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.as_str(), entry.scope, entry.kind, outcome, entry.at_ms],
        )?;
        if let Some(known) = self
            .deferred
            .as_ref()
            .and_then(|c| c.get().oldest_remembered_ms)
        {
            let oldest = known.map_or(entry.at_ms, |oldest| oldest.min(entry.at_ms));
            self.set_oldest_remembered_ms(Some(Some(oldest)));
        }
        self.set_counters(|counters| counters.remembered_count += 1)
    }

    fn forget_remembered(&mut self, before_ms: i64, keep_max: u64) -> Result<(), StoreError> {
        // The count is kept in `counters` so that this runs in O(rows removed), not O(rows).
        let mut count = self.counters()?.remembered_count;
        count -= self.execute("DELETE FROM idempotency WHERE at_ms < ?1", [before_ms])? as i64;
        let excess = count - keep_max as i64;
        if excess > 0 {
            count -= self.execute(
                "DELETE FROM idempotency WHERE seq IN (SELECT seq FROM idempotency ORDER BY seq LIMIT ?1)",
                [excess],
            )? as i64;
        }
        self.set_oldest_remembered_ms(None);
        self.set_counters(|counters| counters.remembered_count = count)
    }

    fn set_last_ids(&mut self, from: LastIds, to: LastIds) -> Result<(), StoreError> {
        // Only the changed ones are written (a message moves only the message id).
        self.set_counters(|counters| {
            if to.user != from.user {
                counters.last_user_id = to.user;
            }
            if to.message != from.message {
                counters.last_message_id = to.message;
            }
        })
    }

    fn clear_chat_state(&mut self) -> Result<(), StoreError> {
        for table in [
            "users",
            "sessions",
            "messages",
            "inbox_counts",
            "idempotency",
        ] {
            self.execute(&format!("DELETE FROM {table}"), [])?;
        }
        self.set_oldest_remembered_ms(Some(None));
        self.set_counters(|counters| counters.remembered_count = 0)
    }
}
