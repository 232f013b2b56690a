//! The Python prototype's database files (`legacy/REPLIES.md`): recognising one, reading it,
//! deciding what becomes of each row under JoChat's rules ([`Plan`]), and writing the rows
//! into a JoChat database.
//!
//! The rules for rows JoChat cannot take as they are — every such row is listed in the
//! [`Report`], with its original values, so nothing is lost silently:
//!
//! - **Names that break JoChat's rules** (1–32 letters, digits, `_`, `-`, `.`): the account is
//!   renamed — each other character becomes `_`, the name is cut to 32 characters, and a
//!   suffix `-2`, `-3`, … makes it unique. Its messages follow it.
//! - **Names equal ignoring case**: the account with the lowest id keeps the name; each later
//!   one is renamed with a suffix as above. Names that are valid and unique are reserved first,
//!   so a renamed account never takes the name of another.
//! - **Credentials**: kept as [`Credential::from_prototype`] makes them (the digest JoChat's
//!   clients send), so the same password logs in through every front end. An empty credential
//!   (the prototype never accepted one) leaves the account unable to log in.
//! - **Messages from or to a name that is no account** (matched exactly, as the prototype
//!   did), **with empty, non-UTF-8 or oversized content**: left out.
//! - **Ids**: accounts and messages keep their ids (positive in the prototype: SQLite's
//!   AUTOINCREMENT); a row without a positive id gets a new one above them all. Id counters
//!   start above the highest id the prototype ever handed out, so none is reused.
//! - **Delivery state**: `to_deliver` 0 (or NULL, its default) is away, 1 is delivered; any
//!   other value is read as delivered and reported.
//! - **Sessions** are dropped: everyone logs in again. Messages get the import time as their
//!   time (the prototype kept none); their order is their ids'.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use jochat_core::limits::USERNAME_CHARS_MAX;
use jochat_core::store::{ChatRead, ChatStore, LastIds, MessageRecord, UserRecord};
use jochat_core::types::{Credential, MessageId, UserId, Username};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::SqliteChat;
use crate::error::NodeError;

/// What a prototype file holds, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Rows of `users`.
    pub users: u64,
    /// Rows of `messages`.
    pub messages: u64,
    /// Rows of `sessions`.
    pub sessions: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} account(s), {} message(s), {} session(s)",
            self.users, self.messages, self.sessions
        )
    }
}

fn columns(conn: &Connection, table: &str) -> Result<HashSet<String>, NodeError> {
    let mut statement = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = statement
        .query_map([table], |row| row.get::<_, String>(0))?
        .collect::<Result<HashSet<_>, _>>()?;
    Ok(names)
}

fn count(conn: &Connection, table: &str) -> Result<u64, NodeError> {
    let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Opens `path` read-write without creating it (so SQLite rolls back a journal the prototype
/// left behind) and only if it is a prototype file.
fn open_prototype(path: &Path) -> Result<Option<Connection>, NodeError> {
    if !path.is_file() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let version: u32 = match conn.query_row("PRAGMA user_version", [], |row| row.get(0)) {
        Ok(version) => version,
        // Not a database: the start-up check reports that, not this.
        Err(_) => return Ok(None),
    };
    if version != 0 {
        return Ok(None);
    }
    let users = columns(&conn, "users")?;
    let messages = columns(&conn, "messages")?;
    let is_prototype = ["id", "username", "password_hash"]
        .iter()
        .all(|c| users.contains(*c))
        && ["id", "sender", "recipient", "content", "to_deliver"]
            .iter()
            .all(|c| messages.contains(*c))
        && !users.contains("created_at_ms");
    Ok(is_prototype.then_some(conn))
}

/// Whether the file at `path` is a prototype database, with its row counts. A missing file,
/// a JoChat database or a file that is no database is not.
///
/// # Errors
/// The file cannot be opened or read.
pub fn detect(path: &Path) -> Result<Option<Counts>, NodeError> {
    let Some(conn) = open_prototype(path)? else {
        return Ok(None);
    };
    let sessions = if columns(&conn, "sessions")?.is_empty() {
        0
    } else {
        count(&conn, "sessions")?
    };
    Ok(Some(Counts {
        users: count(&conn, "users")?,
        messages: count(&conn, "messages")?,
        sessions,
    }))
}

/// A text column as read: its text, with `None` for NULL and a note when it was not text or
/// not UTF-8 (the text is then SQLite's value made readable). In the report: the text (or
/// null), or `{"text": …, "note": …}` when there is a note.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: Option<String>,
    note: Option<&'static str>,
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self.note {
            None => self.text.serialize(serializer),
            Some(note) => {
                let mut noted = serializer.serialize_struct("Field", 2)?;
                noted.serialize_field("text", &self.text)?;
                noted.serialize_field("note", note)?;
                noted.end()
            }
        }
    }
}

impl Field {
    fn read(value: ValueRef<'_>) -> Self {
        let (text, note) = match value {
            ValueRef::Null => (None, None),
            ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (
                    Some(String::from_utf8_lossy(bytes).into_owned()),
                    Some("not UTF-8; invalid bytes shown as U+FFFD"),
                ),
            },
            ValueRef::Integer(n) => (Some(n.to_string()), Some("stored as a number")),
            ValueRef::Real(x) => (Some(x.to_string()), Some("stored as a number")),
            ValueRef::Blob(bytes) => (
                Some(String::from_utf8_lossy(bytes).into_owned()),
                Some("stored as a blob"),
            ),
        };
        Self { text, note }
    }

    /// The text, if it was clean UTF-8 text.
    fn clean(&self) -> Option<&str> {
        self.note
            .is_none()
            .then_some(self.text.as_deref())
            .flatten()
    }
}

/// A row of the prototype's `users`.
#[derive(Debug, Clone, Serialize)]
struct OldUser {
    id: Option<i64>,
    username: Field,
    /// Never shown in the report.
    #[serde(skip)]
    credential: Field,
}

/// A row of the prototype's `messages`.
#[derive(Debug, Clone, Serialize)]
struct OldMessage {
    id: Option<i64>,
    sender: Field,
    recipient: Field,
    content: Field,
    to_deliver: Option<i64>,
}

/// An account as it will be written.
#[derive(Debug, Clone)]
pub struct PlannedUser {
    /// Its id.
    pub id: UserId,
    /// Its name in JoChat.
    pub username: Username,
    /// What to hash: `None` leaves the account unable to log in.
    pub credential: Option<Credential>,
}

/// A message as it will be written (its time is the import's).
#[derive(Debug, Clone)]
pub struct PlannedMessage {
    /// Its id.
    pub id: MessageId,
    /// The sender's JoChat name.
    pub sender: Username,
    /// The recipient's JoChat name.
    pub recipient: Username,
    /// The text.
    pub content: String,
    /// Delivered (true) or away.
    pub delivered: bool,
}

/// One row that was changed or left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Odd {
    /// `"user"` or `"message"`.
    pub table: &'static str,
    /// Its id in the prototype (`None` for NULL).
    pub id: Option<i64>,
    /// What happened to it (`renamed "a b" -> "a_b"`, `left out`, …).
    pub action: String,
    /// Why.
    pub reason: String,
    /// The row as read, as JSON (credentials never shown).
    pub row: String,
}

/// What the import found and did, for the report file and the log.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What the file held.
    pub found: Counts,
    /// Accounts written.
    pub users: u64,
    /// Messages written.
    pub messages: u64,
    /// Other tables in the file, not imported.
    pub other_tables: Vec<String>,
    /// Every row changed or left out.
    pub odd: Vec<Odd>,
}

impl Report {
    /// The report as text: a summary, then one line per changed or omitted row.
    pub fn render(&self, source: &Path, kept_as: Option<&Path>) -> String {
        let mut text = String::from("JoChat: import of a prototype database\n");
        text.push_str(&format!("source: {}\n", source.display()));
        if let Some(kept) = kept_as {
            text.push_str(&format!("original kept as: {}\n", kept.display()));
        }
        text.push_str(&format!("found: {}\n", self.found));
        text.push_str(&format!(
            "imported: {} account(s), {} message(s); {} session(s) dropped (everyone logs in again)\n",
            self.users, self.messages, self.found.sessions
        ));
        if !self.other_tables.is_empty() {
            text.push_str(&format!(
                "not imported (not the prototype's): tables {}\n",
                self.other_tables.join(", ")
            ));
        }
        text.push_str(&format!("rows changed or left out: {}\n", self.odd.len()));
        for odd in &self.odd {
            let id = odd
                .id
                .map_or_else(|| "NULL".to_owned(), |id| id.to_string());
            text.push_str(&format!(
                "{} {id} {}: {}; row: {}\n",
                odd.table, odd.action, odd.reason, odd.row
            ));
        }
        text
    }
}

/// What becomes of a prototype file: the rows to write and the report.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Accounts, by id.
    pub users: Vec<PlannedUser>,
    /// Messages, by id.
    pub messages: Vec<PlannedMessage>,
    /// The id counters to start from: above every id the prototype handed out.
    pub last_ids: LastIds,
    /// What was found and done.
    pub report: Report,
}

fn row_json<T: Serialize>(row: &T) -> String {
    serde_json::to_string(row).unwrap_or_else(|error| format!("(not shown: {error})"))
}

/// The highest id SQLite's AUTOINCREMENT handed out for `table` (it never reuses one).
fn sequence(conn: &Connection, table: &str) -> Result<i64, NodeError> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(0);
    }
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0))
}

/// The name a renamed account gets: `base` made valid, cut to fit, with the first suffix
/// (none, `-2`, `-3`, …) that no account holds ignoring case.
fn free_name(base: &str, taken: &HashSet<String>) -> Username {
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        clean.push_str("user");
    }
    for n in 1u64.. {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let room = USERNAME_CHARS_MAX.saturating_sub(suffix.len());
        let candidate: String = clean.chars().take(room).collect::<String>() + &suffix;
        if let Ok(name) = Username::new(&candidate) {
            if !taken.contains(&name.folded()) {
                return name;
            }
        }
    }
    unreachable!("some suffix is always free: the names taken are finitely many")
}

/// Reads the prototype file at `path` and decides what becomes of each row, with content of
/// at most `content_bytes_max` bytes.
///
/// # Errors
/// `Config` on `db-file` when the file is not a prototype database; the file cannot be read.
pub fn plan(path: &Path, content_bytes_max: usize) -> Result<Plan, NodeError> {
    let Some(conn) = open_prototype(path)? else {
        return Err(NodeError::Config {
            flag: "db-file",
            rule: format!(
                "{} is not a prototype database (tables users and messages with the \
                 prototype's columns, schema version 0)",
                path.display()
            ),
        });
    };
    let found = detect(path)?.unwrap_or_default();
    let tx = conn.unchecked_transaction()?;
    let users: Vec<OldUser> = tx
        .prepare("SELECT id, username, password_hash FROM users ORDER BY id")?
        .query_map([], |row| {
            Ok(OldUser {
                id: row.get(0)?,
                username: Field::read(row.get_ref(1)?),
                credential: Field::read(row.get_ref(2)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    let messages: Vec<OldMessage> = tx
        .prepare("SELECT id, sender, recipient, content, to_deliver FROM messages ORDER BY id")?
        .query_map([], |row| {
            Ok(OldMessage {
                id: row.get(0)?,
                sender: Field::read(row.get_ref(1)?),
                recipient: Field::read(row.get_ref(2)?),
                content: Field::read(row.get_ref(3)?),
                to_deliver: match row.get_ref(4)? {
                    ValueRef::Integer(n) => Some(n),
                    ValueRef::Null => None,
                    _ => Some(-1),
                },
            })
        })?
        .collect::<Result<_, _>>()?;
    let other_tables: Vec<String> = tx
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT IN ('users', 'messages', 'sessions', 'sqlite_sequence') ORDER BY name",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let user_floor = sequence(&tx, "users")?;
    let message_floor = sequence(&tx, "messages")?;
    drop(tx);
    let mut plan = plan_rows(
        users,
        messages,
        content_bytes_max,
        user_floor,
        message_floor,
    );
    plan.report.found = found;
    plan.report.other_tables = other_tables;
    Ok(plan)
}

/// The rules of the module's documentation, on rows already read.
fn plan_rows(
    users: Vec<OldUser>,
    messages: Vec<OldMessage>,
    content_bytes_max: usize,
    user_floor: i64,
    message_floor: i64,
) -> Plan {
    let mut report = Report::default();
    // 1. Reserve every valid name, for its first holder by id.
    let mut taken: HashSet<String> = HashSet::new();
    let mut keeps_name: HashSet<usize> = HashSet::new();
    for (index, user) in users.iter().enumerate() {
        if let Some(name) = user.username.clean().and_then(|n| Username::new(n).ok()) {
            if taken.insert(name.folded()) {
                keeps_name.insert(index);
            }
        }
    }
    let mut first_holder: HashMap<String, (String, Option<i64>)> = HashMap::new();
    for index in &keeps_name {
        let user = &users[*index];
        let name = user.username.text.clone().unwrap_or_default();
        first_holder.insert(name.to_lowercase(), (name, user.id));
    }
    // 2. Ids: kept when positive and unique; others get new ones above all.
    let mut next_user = users
        .iter()
        .filter_map(|u| u.id)
        .max()
        .unwrap_or(0)
        .max(user_floor);
    let mut ids_seen = HashSet::new();
    // 3. Each account, renamed where it must be; the old exact name maps to the new one.
    let mut by_old_name: HashMap<String, Username> = HashMap::new();
    let mut planned_users = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let old_name = user.username.text.clone().unwrap_or_default();
        let username = if keeps_name.contains(&index) {
            Username::new(&old_name).expect("a kept name passed Username::new above")
        } else {
            let reason = match user.username.clean().map(Username::new) {
                Some(Ok(name)) => {
                    let (holder, holder_id) = first_holder
                        .get(&name.as_str().to_lowercase())
                        .cloned()
                        .unwrap_or_default();
                    format!(
                        "equal ignoring case to {holder:?} (user {}), which keeps the name",
                        holder_id.map_or_else(|| "NULL".to_owned(), |id| id.to_string())
                    )
                }
                Some(Err(error)) => format!("breaks JoChat's rule: {error}"),
                None => "the name is NULL or not UTF-8 text".to_owned(),
            };
            let new = free_name(&old_name, &taken);
            taken.insert(new.folded());
            report.odd.push(Odd {
                table: "user",
                id: user.id,
                action: format!("renamed {old_name:?} -> {:?}", new.as_str()),
                reason: format!(
                    "{reason}; logs in as {:?} with the same password",
                    new.as_str()
                ),
                row: row_json(user),
            });
            new
        };
        let id = match user.id {
            Some(id) if id > 0 && ids_seen.insert(id) => id,
            _ => {
                next_user += 1;
                report.odd.push(Odd {
                    table: "user",
                    id: user.id,
                    action: format!("given id {next_user}"),
                    reason: "its id is not a positive integer".into(),
                    row: row_json(user),
                });
                next_user
            }
        };
        let credential = match user.credential.text.as_deref() {
            Some(raw) if !raw.is_empty() => Credential::from_prototype(raw).ok(),
            _ => None,
        };
        if credential.is_none() {
            report.odd.push(Odd {
                table: "user",
                id: user.id,
                action: "imported without a password".into(),
                reason: "its credential is empty, so the account cannot log in".into(),
                row: row_json(user),
            });
        }
        if user.username.text.is_some() && user.username.note.is_none() {
            by_old_name.insert(old_name, username.clone());
        }
        planned_users.push(PlannedUser {
            id: UserId(id),
            username,
            credential,
        });
    }
    planned_users.sort_by_key(|u| u.id.0);
    report.users = planned_users.len() as u64;

    // 4. Messages: kept when both ends are accounts and the content is valid.
    let mut next_message = messages
        .iter()
        .filter_map(|m| m.id)
        .max()
        .unwrap_or(0)
        .max(message_floor);
    let mut message_ids = HashSet::new();
    let mut planned_messages = Vec::with_capacity(messages.len());
    for message in &messages {
        let end = |field: &Field| {
            field
                .clean()
                .and_then(|name| by_old_name.get(name))
                .cloned()
        };
        let left_out = |reason: String| Odd {
            table: "message",
            id: message.id,
            action: "left out".into(),
            reason,
            row: row_json(message),
        };
        let (Some(sender), Some(recipient)) = (end(&message.sender), end(&message.recipient))
        else {
            let which = if end(&message.sender).is_none() {
                ("sender", &message.sender)
            } else {
                ("recipient", &message.recipient)
            };
            report.odd.push(left_out(format!(
                "{} {:?} is not an account",
                which.0,
                which.1.text.as_deref().unwrap_or("NULL")
            )));
            continue;
        };
        let content = match message.content.clean() {
            None if message.content.text.is_some() => {
                report.odd.push(left_out(format!(
                    "content is {}",
                    message.content.note.unwrap_or("not text")
                )));
                continue;
            }
            None | Some("") => {
                report.odd.push(left_out("content is empty".into()));
                continue;
            }
            Some(text) if text.len() > content_bytes_max => {
                report.odd.push(left_out(format!(
                    "content is {} bytes, over the limit of {content_bytes_max} \
                     (--content-bytes-max)",
                    text.len()
                )));
                continue;
            }
            Some(text) => text.to_owned(),
        };
        let delivered = match message.to_deliver {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                report.odd.push(Odd {
                    table: "message",
                    id: message.id,
                    action: "imported as delivered".into(),
                    reason: format!("to_deliver is {other}, neither 0 (away) nor 1 (delivered)"),
                    row: row_json(message),
                });
                true
            }
        };
        let id = match message.id {
            Some(id) if id > 0 && message_ids.insert(id) => id,
            _ => {
                next_message += 1;
                report.odd.push(Odd {
                    table: "message",
                    id: message.id,
                    action: format!("given id {next_message}"),
                    reason: "its id is not a positive integer".into(),
                    row: row_json(message),
                });
                next_message
            }
        };
        planned_messages.push(PlannedMessage {
            id: MessageId(id),
            sender,
            recipient,
            content,
            delivered,
        });
    }
    planned_messages.sort_by_key(|m| m.id.0);
    report.messages = planned_messages.len() as u64;
    Plan {
        users: planned_users,
        messages: planned_messages,
        last_ids: LastIds {
            user: next_user,
            message: next_message,
        },
        report,
    }
}

/// Writes `plan`'s rows into the (new, migrated) JoChat database behind `tx`: accounts with
/// their argon2id hashes (`hashes`, by user id; an account without one cannot log in), every
/// message stamped `at_ms`, and the id counters.
///
/// # Errors
/// SQLite fails, or the database already holds chat state.
pub fn write_rows(
    tx: &rusqlite::Transaction<'_>,
    plan: &Plan,
    hashes: &BTreeMap<i64, String>,
    at_ms: i64,
) -> Result<(), NodeError> {
    let mut store = SqliteChat::new(tx);
    let before = store.last_ids().map_err(jochat_core::ChatError::from)?;
    if before != LastIds::default() {
        return Err(NodeError::Schema(
            "the database to import into already holds chat state".into(),
        ));
    }
    for user in &plan.users {
        store
            .insert_user(&UserRecord {
                id: user.id,
                username: user.username.clone(),
                // Not a PHC string: no password verifies against it.
                password_hash: hashes
                    .get(&user.id.0)
                    .cloned()
                    .unwrap_or_else(|| "!no-password".to_owned()),
                created_at_ms: at_ms,
            })
            .map_err(jochat_core::ChatError::from)?;
    }
    for message in &plan.messages {
        store
            .insert_message(&MessageRecord {
                id: message.id,
                sender: message.sender.clone(),
                recipient: message.recipient.clone(),
                content: message.content.clone(),
                timestamp_ms: at_ms,
                delivered: message.delivered,
            })
            .map_err(jochat_core::ChatError::from)?;
    }
    store
        .set_last_ids(before, plan.last_ids)
        .map_err(jochat_core::ChatError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str) -> Field {
        Field {
            text: Some(text.to_owned()),
            note: None,
        }
    }

    fn user(id: i64, name: &str, credential: &str) -> OldUser {
        OldUser {
            id: Some(id),
            username: field(name),
            credential: field(credential),
        }
    }

    fn message(id: i64, from: &str, to: &str, content: &str, to_deliver: i64) -> OldMessage {
        OldMessage {
            id: Some(id),
            sender: field(from),
            recipient: field(to),
            content: field(content),
            to_deliver: Some(to_deliver),
        }
    }

    #[test]
    fn odd_rows_are_renamed_or_left_out_and_reported() {
        let plan = plan_rows(
            vec![
                user(1, "alice", "pw"),
                user(2, "bob smith", "pw"),
                user(3, "ALICE", "pw"),
                user(4, "bob_smith", "pw"),
                user(5, "eve", ""),
            ],
            vec![
                message(1, "alice", "bob smith", "hi", 0),
                message(2, "ALICE", "alice", "2nd alice", 1),
                message(3, "alice", "ghost", "lost?", 0),
                message(4, "alice", "bob_smith", "", 0),
                message(5, "Alice", "alice", "no such exact sender", 0),
                message(6, "bob_smith", "alice", &"x".repeat(11), 7),
            ],
            10,
            9,
            40,
        );
        let names: Vec<(i64, &str)> = plan
            .users
            .iter()
            .map(|u| (u.id.0, u.username.as_str()))
            .collect();
        // The valid "bob_smith" (4) keeps its name; the invalid "bob smith" (2) may not take it.
        assert_eq!(
            names,
            [
                (1, "alice"),
                (2, "bob_smith-2"),
                (3, "ALICE-2"),
                (4, "bob_smith"),
                (5, "eve")
            ]
        );
        let kept: Vec<(i64, &str, &str, bool)> = plan
            .messages
            .iter()
            .map(|m| (m.id.0, m.sender.as_str(), m.recipient.as_str(), m.delivered))
            .collect();
        assert_eq!(
            kept,
            [
                (1, "alice", "bob_smith-2", false),
                (2, "ALICE-2", "alice", true)
            ]
        );
        assert!(plan.users[4].credential.is_none());
        assert_eq!(
            plan.last_ids,
            LastIds {
                user: 9,
                message: 40
            }
        );
        let reasons: Vec<String> = plan
            .report
            .odd
            .iter()
            .map(|o| format!("{} {:?} {}: {}", o.table, o.id, o.action, o.reason))
            .collect();
        let expect = [
            "user Some(2) renamed \"bob smith\" -> \"bob_smith-2\"",
            "user Some(3) renamed \"ALICE\" -> \"ALICE-2\": equal ignoring case to \"alice\" (user 1)",
            "user Some(5) imported without a password",
            "message Some(3) left out: recipient \"ghost\" is not an account",
            "message Some(4) left out: content is empty",
            "message Some(5) left out: sender \"Alice\" is not an account",
            "message Some(6) left out: content is 11 bytes, over the limit of 10",
        ];
        assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
        for (reason, expected) in reasons.iter().zip(expect) {
            assert!(reason.starts_with(expected), "{reason} / {expected}");
        }
        // The report never shows a credential, and carries each row's content.
        let text = plan.report.render(Path::new("old.db"), None);
        assert!(!text.contains("\"pw\""), "{text}");
        assert!(text.contains("\"lost?\""), "{text}");
    }

    #[test]
    fn renamed_names_fit_the_length_rule() {
        let long = "x y".repeat(20);
        let plan = plan_rows(
            vec![user(1, &long, "pw"), user(2, &long, "pw")],
            vec![],
            10,
            0,
            0,
        );
        let first = plan.users[0].username.as_str();
        let second = plan.users[1].username.as_str();
        assert_eq!(first.len(), USERNAME_CHARS_MAX);
        assert!(second.ends_with("-2") && second.len() == USERNAME_CHARS_MAX);
        assert!(first.chars().all(|c| c != ' '));
    }

    #[test]
    fn ids_that_are_not_positive_get_new_ones_above_all() {
        let mut odd = user(0, "zed", "pw");
        odd.id = None;
        let plan = plan_rows(
            vec![user(7, "amy", "pw"), odd],
            vec![message(-3, "amy", "zed", "hi", 0)],
            10,
            0,
            0,
        );
        assert_eq!(plan.users[1].id, UserId(8));
        assert_eq!(plan.messages[0].id, MessageId(1));
        assert_eq!(
            plan.last_ids,
            LastIds {
                user: 8,
                message: 1
            }
        );
    }
}
