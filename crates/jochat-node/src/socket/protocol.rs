//! The socket front end's requests and replies, independent of the wire mode
//! (`legacy/SOCKET.md` sections 2-4). [`super::binary`] and [`super::json`] turn bytes into
//! [`Request`]s and [`Reply`]s into bytes.

/// The prototype's operations, with their binary ids (SOCKET.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// 1 `signup`
    Signup,
    /// 2 `login`
    Login,
    /// 3 `logout`
    Logout,
    /// 4 `count_unread`
    CountUnread,
    /// 5 `send_message`
    SendMessage,
    /// 6 `send_messages_to_client`
    Poll,
    /// 7 `fetch_away_msgs`
    FetchAway,
    /// 8 `list_accounts`
    ListAccounts,
    /// 9 `delete_messages`
    DeleteMessages,
    /// 10 `delete_account`
    DeleteAccount,
    /// 11 `reset_db`
    ResetDb,
}

impl Op {
    /// The binary op id.
    pub fn id(self) -> u8 {
        match self {
            Op::Signup => 1,
            Op::Login => 2,
            Op::Logout => 3,
            Op::CountUnread => 4,
            Op::SendMessage => 5,
            Op::Poll => 6,
            Op::FetchAway => 7,
            Op::ListAccounts => 8,
            Op::DeleteMessages => 9,
            Op::DeleteAccount => 10,
            Op::ResetDb => 11,
        }
    }

    /// The op with binary id `id` (1-11).
    pub fn from_id(id: u8) -> Option<Op> {
        Some(match id {
            1 => Op::Signup,
            2 => Op::Login,
            3 => Op::Logout,
            4 => Op::CountUnread,
            5 => Op::SendMessage,
            6 => Op::Poll,
            7 => Op::FetchAway,
            8 => Op::ListAccounts,
            9 => Op::DeleteMessages,
            10 => Op::DeleteAccount,
            11 => Op::ResetDb,
            _ => return None,
        })
    }

    /// The JSON `msg_type`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Signup => "signup",
            Op::Login => "login",
            Op::Logout => "logout",
            Op::CountUnread => "count_unread",
            Op::SendMessage => "send_message",
            Op::Poll => "send_messages_to_client",
            Op::FetchAway => "fetch_away_msgs",
            Op::ListAccounts => "list_accounts",
            Op::DeleteMessages => "delete_messages",
            Op::DeleteAccount => "delete_account",
            Op::ResetDb => "reset_db",
        }
    }

    /// The op whose JSON `msg_type` is `name`.
    pub fn from_name(name: &str) -> Option<Op> {
        (1..=11)
            .filter_map(Op::from_id)
            .find(|op| op.name() == name)
    }
}

/// `fetch_away_msgs`' limit as the request gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Missing or null (JSON only): the prototype answers "No limit specified." and then
    /// closes the connection.
    Missing,
    /// 0: "No limit specified.", then an ok reply with no messages.
    Zero,
    /// Negative (JSON only): no limit.
    Unlimited,
    /// A positive count.
    Count(u64),
}

/// One request, decoded. Text fields are `None` when absent; an empty text is `Some("")`
/// (the handler treats both as missing, as the prototype did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Op 1, `signup`.
    Signup {
        /// The account name.
        username: Option<String>,
        /// The password as the client sent it (the Streamlit client: SHA-256 hex).
        password: Option<String>,
    },
    /// Op 2, `login`.
    Login {
        /// The account name.
        username: Option<String>,
        /// The password as the client sent it.
        password: Option<String>,
    },
    /// Op 3, `logout`.
    Logout,
    /// Op 4, `count_unread`.
    CountUnread,
    /// Op 5, `send_message`.
    SendMessage {
        /// Who sends: must be the connection's account.
        sender: Option<String>,
        /// Who receives.
        recipient: Option<String>,
        /// The text.
        content: Option<String>,
    },
    /// Op 6, `send_messages_to_client`: the delivered messages.
    Poll,
    /// Op 7, `fetch_away_msgs`.
    FetchAway {
        /// How many away messages to take.
        limit: Limit,
    },
    /// Op 8, `list_accounts`.
    ListAccounts {
        /// The search text (`%` and `_` are wildcards).
        pattern: Option<String>,
        /// `(start, count)`: `None` when the JSON values are not integer-convertible (the
        /// "Invalid pagination parameters." reply); JSON defaults 0 and 10 when absent.
        /// Negative values as given (the handler applies SQLite's rules: negative count =
        /// no limit, negative start = 0).
        pagination: Option<(i64, i64)>,
    },
    /// Op 9, `delete_messages`.
    DeleteMessages {
        /// `None` when the ids are not a non-empty list ("No valid message IDs
        /// provided."). JSON list elements that are not integers are dropped.
        ids: Option<Vec<i64>>,
    },
    /// Op 10, `delete_account`.
    DeleteAccount,
    /// Op 11, `reset_db`.
    ResetDb,
    /// An unknown JSON `msg_type`, or binary op 255: answered "Unknown action" as a signup
    /// reply, and the connection stays open.
    Unknown,
}

/// A message as the replies carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// The message id (binary: u32).
    pub id: u64,
    /// Who sent it.
    pub sender: String,
    /// The text.
    pub content: String,
}

/// One reply. `Err(text)` is a `status: "error"` reply with that `msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Ops 1, 3, 5, 10, 11 (and "Unknown action" under op 1): status and text.
    Status {
        /// The op replied to.
        op: Op,
        /// The text, ok or error.
        result: Result<String, String>,
    },
    /// Ops 2 and 4. Binary: the count is u16, clamped to 65535.
    Count {
        /// The op replied to.
        op: Op,
        /// `(unread_count, msg)`, or the error text.
        result: Result<(u64, String), String>,
    },
    /// Op 6: the delivered messages (JSON items carry `"to_deliver": 1`). Binary: the first
    /// 255.
    Poll(Result<Vec<WireMessage>, String>),
    /// Op 7: the messages just taken. Binary: u16 count.
    Fetched(Result<Vec<WireMessage>, String>),
    /// Op 8: `(account id, username)` pairs. Binary: the first 255.
    Accounts(Result<Vec<(u64, String)>, String>),
    /// Op 9: `Ok((deleted_count, msg))`. Binary: u8 count, clamped to 255.
    Deleted(Result<(u64, String), String>),
}

/// What decoding the bytes at the front of a buffer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole request, and how many bytes of the buffer it took.
    Request(Request, usize),
    /// The buffer holds the start of a request: read more.
    Incomplete,
    /// The bytes break the format: the prototype closes the connection without a reply.
    /// The text says why (for the log); the count is how many bytes the prototype would
    /// have read by then (bytes past it were still unread when it closed).
    Malformed(String, usize),
}
