//! Property tests of the state machine: random command sequences applied to the memory store
//! and to the SQLite store (through the node's batched writer path) give identical outcomes,
//! identical rows and identical query answers, and agree with a small reference model written
//! independently of `jochat-core`.

use std::collections::BTreeMap;

use jochat_core::command::{Action, Command, Outcome};
use jochat_core::ops::{
    CreateSession, DeleteAccount, DeleteMessages, MarkDelivered, ResetAll, ResetAnonymous,
    RevokeSession, SendMessage, SignUp,
};
use jochat_core::query;
use jochat_core::store::{ChatRead, StateDump};
use jochat_core::types::*;
use jochat_core::{ChatError, MemoryStore, Pattern};
use jochat_node::store::schema::migrate;
use jochat_node::store::{apply_batch, SqliteChat};
use proptest::prelude::*;
use rusqlite::Connection;

const NAMES: &[&str] = &["alice", "Bob", "carol_1", "d.e-f"];
const SEEDS: u8 = 5;

fn name(index: usize, upper: bool) -> Username {
    let raw = NAMES[index % NAMES.len()];
    let raw = if upper {
        raw.to_ascii_uppercase()
    } else {
        raw.to_owned()
    };
    Username::new(&raw).expect("test names are valid")
}

fn digest(seed: u8) -> TokenDigest {
    SessionToken::from_random_bytes([seed; 32]).digest()
}

/// Generates actions over a small universe so that sequences collide often: names taken
/// twice, sessions replaced, messages deleted by the wrong user.
fn action() -> impl Strategy<Value = Action> {
    let user = (0..NAMES.len(), any::<bool>());
    prop_oneof![
        10 => user.clone().prop_map(|(i, upper)| Action::SignUp(SignUp {
            username: name(i, upper),
            password_hash: format!("$argon2id$fake${i}"),
        })),
        10 => (1..6i64, 0..SEEDS, 1..50i64).prop_map(|(user, seed, ttl)| Action::CreateSession(CreateSession {
            user_id: UserId(user),
            token_digest: digest(seed),
            expires_at_ms: ttl,
        })),
        10 => (0..SEEDS).prop_map(|seed| Action::RevokeSession(RevokeSession {
            session: digest(seed)
        })),
        10 => (0..SEEDS, user.clone(), "[a-z ]{1,12}").prop_map(|(seed, (i, upper), text)| {
            Action::SendMessage(SendMessage {
                session: digest(seed),
                recipient: name(i, upper),
                content: Content::new(text, 64).expect("generated content fits"),
            })
        }),
        10 => (0..SEEDS, 0..4i64).prop_map(|(seed, limit)| Action::MarkDelivered(MarkDelivered {
            session: digest(seed),
            limit: FetchLimit::new(limit).expect("small limits are valid"),
        })),
        10 => (0..SEEDS, proptest::collection::vec(1..20i64, 1..5)).prop_map(|(seed, ids)| {
            Action::DeleteMessages(DeleteMessages {
                session: digest(seed),
                ids: MessageIds::new(&ids).expect("generated ids are valid"),
            })
        }),
        10 => (0..SEEDS).prop_map(|seed| Action::DeleteAccount(DeleteAccount {
            session: digest(seed)
        })),
        // Rare, or it would empty most sequences.
        1 => (0..SEEDS).prop_map(|seed| Action::ResetAll(ResetAll { session: digest(seed) })),
        1 => Just(Action::ResetAnonymous(ResetAnonymous {})),
    ]
}

/// Commands with non-decreasing times (as a leader issues them) and occasional keys, some
/// of them repeated, so that retries are exercised too.
fn commands() -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec(
        (action(), 0..4i64, proptest::option::weighted(0.3, 0..6u8)),
        1..60,
    )
    .prop_map(|steps| {
        let mut at_ms = 0;
        steps
            .into_iter()
            .map(|(action, advance, key)| {
                at_ms += advance;
                // Session lifetimes are generated relative to "now".
                let action = match action {
                    Action::CreateSession(CreateSession {
                        user_id,
                        token_digest,
                        expires_at_ms,
                    }) => Action::CreateSession(CreateSession {
                        user_id,
                        token_digest,
                        expires_at_ms: at_ms + expires_at_ms,
                    }),
                    other => other,
                };
                Command {
                    at_ms,
                    idempotency_key: key.map(|k| {
                        IdempotencyKey::optional(&format!("key-{k}"))
                            .expect("valid key")
                            .expect("non-empty key")
                    }),
                    action,
                }
            })
            .collect()
    })
}

fn sqlite() -> Connection {
    let mut conn = Connection::open_in_memory().expect("in-memory sqlite opens");
    migrate(&mut conn).expect("schema applies");
    conn
}

/// A reference model of the observable state, deliberately naive: it knows nothing of
/// `jochat-core` beyond the rules in the product contract.
#[derive(Debug, Default)]
struct Model {
    /// id → display name.
    users: BTreeMap<i64, String>,
    /// token seed digest → (user id, expires_at_ms).
    sessions: BTreeMap<String, (i64, i64)>,
    /// id → (sender, recipient, delivered).
    messages: BTreeMap<i64, (String, String, bool)>,
    /// key → (scope, kind): which retries replay.
    keys: BTreeMap<String, (String, &'static str)>,
    last_user: i64,
    last_message: i64,
}

impl Model {
    fn user_named(&self, raw: &str) -> Option<(i64, String)> {
        self.users
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(raw))
            .map(|(id, n)| (*id, n.clone()))
    }

    fn session_user(&self, digest: &TokenDigest, at_ms: i64) -> Option<(i64, String)> {
        let (user, expires) = *self.sessions.get(digest.as_str())?;
        (expires > at_ms).then(|| (user, self.users[&user].clone()))
    }

    /// Whether the command succeeds; applies it if so.
    fn step(&mut self, command: &Command) -> bool {
        let at = command.at_ms;
        let scope = command.action.idempotency_scope();
        if let (Some(key), Some(scope)) = (&command.idempotency_key, &scope) {
            if let Some((first_scope, kind)) = self.keys.get(key.as_str()) {
                return first_scope == scope && *kind == command.action.kind();
            }
        }
        let ok = match &command.action {
            Action::SignUp(SignUp { username, .. }) => {
                if self.user_named(username.as_str()).is_some() {
                    false
                } else {
                    self.last_user += 1;
                    self.users
                        .insert(self.last_user, username.as_str().to_owned());
                    true
                }
            }
            Action::CreateSession(CreateSession {
                user_id,
                token_digest,
                expires_at_ms,
            }) => {
                if !self.users.contains_key(&user_id.0)
                    || *expires_at_ms <= at
                    || self.sessions.contains_key(token_digest.as_str())
                {
                    false
                } else {
                    self.sessions.retain(|_, (u, e)| *u != user_id.0 && *e > at);
                    self.sessions.insert(
                        token_digest.as_str().to_owned(),
                        (user_id.0, *expires_at_ms),
                    );
                    true
                }
            }
            Action::RevokeSession(RevokeSession { session }) => {
                match self.session_user(session, at) {
                    Some(_) => {
                        self.sessions.remove(session.as_str());
                        true
                    }
                    None => false,
                }
            }
            Action::SendMessage(SendMessage {
                session, recipient, ..
            }) => {
                match (
                    self.session_user(session, at),
                    self.user_named(recipient.as_str()),
                ) {
                    (Some((_, sender)), Some((rid, rname))) => {
                        let live = self.sessions.values().any(|(u, e)| *u == rid && *e > at);
                        self.last_message += 1;
                        self.messages
                            .insert(self.last_message, (sender, rname, live));
                        true
                    }
                    _ => false,
                }
            }
            Action::MarkDelivered(MarkDelivered { session, limit }) => {
                match self.session_user(session, at) {
                    Some((_, me)) => {
                        let ids: Vec<i64> = self
                            .messages
                            .iter()
                            .filter(|(_, (_, r, d))| *r == me && !*d)
                            .map(|(id, _)| *id)
                            .take(limit.get() as usize)
                            .collect();
                        for id in ids {
                            self.messages.get_mut(&id).expect("id was just found").2 = true;
                        }
                        true
                    }
                    None => false,
                }
            }
            Action::DeleteMessages(DeleteMessages { session, ids }) => {
                match self.session_user(session, at) {
                    Some((_, me)) => {
                        for id in ids.as_slice() {
                            if self.messages.get(&id.0).is_some_and(|(_, r, _)| *r == me) {
                                self.messages.remove(&id.0);
                            }
                        }
                        true
                    }
                    None => false,
                }
            }
            Action::ResetAll(ResetAll { session }) => match self.session_user(session, at) {
                Some(_) => {
                    self.users.clear();
                    self.sessions.clear();
                    self.messages.clear();
                    self.keys.clear();
                    true
                }
                None => false,
            },
            Action::ResetAnonymous(ResetAnonymous {}) => {
                self.users.clear();
                self.sessions.clear();
                self.messages.clear();
                self.keys.clear();
                true
            }
            Action::DeleteAccount(DeleteAccount { session }) => {
                match self.session_user(session, at) {
                    Some((id, me)) => {
                        self.messages.retain(|_, (s, r, _)| *s != me && *r != me);
                        self.sessions.retain(|_, (u, _)| *u != id);
                        self.users.remove(&id);
                        true
                    }
                    None => false,
                }
            }
        };
        if ok {
            if let (Some(key), Some(scope)) = (&command.idempotency_key, scope) {
                self.keys
                    .insert(key.as_str().to_owned(), (scope, command.action.kind()));
            }
        }
        ok
    }

    fn assert_matches(&self, dump: &StateDump) {
        let users: BTreeMap<i64, String> = dump
            .users
            .iter()
            .map(|u| (u.id.0, u.username.as_str().to_owned()))
            .collect();
        assert_eq!(users, self.users, "users differ from the model");
        let sessions: BTreeMap<String, (i64, i64)> = dump
            .sessions
            .iter()
            .map(|s| {
                (
                    s.token_digest.as_str().to_owned(),
                    (s.user_id.0, s.expires_at_ms),
                )
            })
            .collect();
        assert_eq!(sessions, self.sessions, "sessions differ from the model");
        let messages: BTreeMap<i64, (String, String, bool)> = dump
            .messages
            .iter()
            .map(|m| {
                (
                    m.id.0,
                    (
                        m.sender.as_str().to_owned(),
                        m.recipient.as_str().to_owned(),
                        m.delivered,
                    ),
                )
            })
            .collect();
        assert_eq!(messages, self.messages, "messages differ from the model");
        assert_eq!(dump.last_ids.user, self.last_user);
        assert_eq!(dump.last_ids.message, self.last_message);
    }
}

fn kind_of(
    result: &Result<Outcome, ChatError>,
) -> Result<&Outcome, std::mem::Discriminant<ChatError>> {
    result.as_ref().map_err(std::mem::discriminant)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_sqlite_agree_with_each_other_and_the_model(
        commands in commands(),
        batch_size in 1..8usize,
        patterns in proptest::collection::vec("[ab*?%_\\\\.]{0,4}", 3),
    ) {
        let mut memory = MemoryStore::new();
        let mut conn = sqlite();
        let mut model = Model::default();

        // 1. Apply in batches on SQLite (one transaction, one savepoint per command) and one
        //    by one in memory and in the model.
        for chunk in commands.chunks(batch_size) {
            let refs: Vec<&Command> = chunk.iter().collect();
            let sqlite_results = apply_batch(&mut conn, &refs);
            for (command, sqlite_result) in chunk.iter().zip(sqlite_results) {
                let memory_result = jochat_core::apply(&mut memory, command);
                prop_assert_eq!(kind_of(&memory_result), kind_of(&sqlite_result), "command {:?}", command);
                prop_assert_eq!(memory_result.is_ok(), model.step(command), "model disagrees on {:?}", command);
            }
        }

        // 2. Identical rows everywhere.
        let memory_dump = memory.dump().unwrap();
        let sqlite_dump = SqliteChat::new(&conn).dump().unwrap();
        prop_assert_eq!(&memory_dump, &sqlite_dump);
        model.assert_matches(&memory_dump);

        // 3. Identical answers to the read queries.
        let sqlite_view = SqliteChat::new(&conn);
        for pattern in &patterns {
            let pattern = Pattern::new(pattern).unwrap();
            for page in [Page::new(0, 0).unwrap(), Page::new(1, 2).unwrap()] {
                prop_assert_eq!(
                    query::list_accounts(&memory, &pattern, page).unwrap(),
                    query::list_accounts(&sqlite_view, &pattern, page).unwrap()
                );
            }
        }
        for user in &memory_dump.users {
            prop_assert_eq!(memory.away_count(&user.username).unwrap(), sqlite_view.away_count(&user.username).unwrap());
            for other in [None, Some(&memory_dump.users[0].username)] {
                for page in [Page::new(0, 0).unwrap(), Page::new(1, 1).unwrap()] {
                    prop_assert_eq!(
                        query::list_messages(&memory, user, other, page).unwrap(),
                        query::list_messages(&sqlite_view, user, other, page).unwrap()
                    );
                }
            }
        }
    }
}

#[test]
fn sqlite_rows_are_readable_with_the_documented_columns() {
    // The `sqlite3` shell is the operator's view: check the columns it shows.
    let mut conn = sqlite();
    let a = digest(1);
    let commands = [
        Command {
            at_ms: 1,
            idempotency_key: None,
            action: Action::SignUp(SignUp {
                username: name(0, false),
                password_hash: "h".into(),
            }),
        },
        Command {
            at_ms: 1,
            idempotency_key: None,
            action: Action::SignUp(SignUp {
                username: name(1, false),
                password_hash: "h".into(),
            }),
        },
        Command {
            at_ms: 2,
            idempotency_key: None,
            action: Action::CreateSession(CreateSession {
                user_id: UserId(1),
                token_digest: a.clone(),
                expires_at_ms: 100,
            }),
        },
        Command {
            at_ms: 3,
            idempotency_key: None,
            action: Action::SendMessage(SendMessage {
                session: a,
                recipient: name(1, true),
                content: Content::new("hi".into(), 10).unwrap(),
            }),
        },
    ];
    let refs: Vec<&Command> = commands.iter().collect();
    assert!(apply_batch(&mut conn, &refs).iter().all(Result::is_ok));
    let row: (i64, String, String, String, i64) = conn
        .query_row(
            "SELECT id, sender, recipient, content, to_deliver FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(row, (1, "alice".into(), "Bob".into(), "hi".into(), 0));
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        version,
        i64::from(jochat_node::store::schema::SCHEMA_VERSION)
    );
}
