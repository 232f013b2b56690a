//! What a command prints: a text for people and one JSON document for scripts.

use jochat_client::{Account, ClusterInfo, Message};
use serde_json::{json, Value};

/// A command's result in both forms.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Printed by default.
    pub text: String,
    /// Printed with `--json`; numbers are JSON numbers.
    pub json: Value,
}

impl Output {
    /// Both forms.
    /// Nothing more to print (the command printed as it went).
    pub fn none() -> Self {
        Self::new("", Value::Null)
    }

    /// What to print: `text` for people, `json` with `--json`.
    pub fn new(text: impl Into<String>, json: Value) -> Self {
        Self {
            text: text.into(),
            json,
        }
    }
}

/// A message as JSON (defined by `jochat-web`: the same shape `jochat web` serves).
pub use jochat_web::message_json;

/// Messages as a table: id, time (UTC), from, to, status, content.
pub fn message_table(messages: &[Message]) -> String {
    let mut out = format!(
        "{:>8}  {:19}  {:12}  {:12}  {:9}  content\n",
        "id", "time (UTC)", "from", "to", "status"
    );
    for m in messages {
        out.push_str(&format!(
            "{:>8}  {:19}  {:12}  {:12}  {:9}  {}\n",
            m.id,
            utc(m.timestamp_ms),
            m.sender,
            m.recipient,
            m.status.as_str(),
            printable(&m.content),
        ));
    }
    out.pop();
    out
}

/// `text` safe to print in one table row: line breaks and tabs become spaces, and other
/// control characters (a terminal escape sequence sent as a message) are shown escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => " ".to_owned(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Accounts as a list of ids and names, and how many match in all.
pub fn account_table(accounts: &[Account], total_count: u64) -> String {
    let mut text: String = accounts
        .iter()
        .map(|a| format!("{:>8}  {}\n", a.id, a.username))
        .collect();
    text.push_str(&format!(
        "{} of {} matching account(s)",
        accounts.len(),
        total_count
    ));
    text
}

/// Accounts as JSON.
pub fn accounts_json(accounts: &[Account], total_count: u64) -> Value {
    json!({
        "accounts": accounts.iter().map(|a| json!({"id": a.id, "username": a.username})).collect::<Vec<_>>(),
        "total_count": total_count,
    })
}

/// Cluster information in both forms.
pub fn cluster(info: &ClusterInfo) -> Output {
    let mut text = format!(
        "node {} answered; leader: {}; term {}; commit index {}\n",
        info.node_id,
        info.leader_id.map_or("unknown".to_owned(), |id| format!(
            "{id} at {}",
            info.leader_address.as_deref().unwrap_or("?")
        )),
        info.term,
        info.commit_index
    );
    for m in &info.members {
        text.push_str(&format!(
            "  {:>4}  {:21}  {:7}  {:11}  applied {}\n",
            m.id,
            m.address,
            m.role.as_str(),
            if m.reachable {
                "reachable"
            } else {
                "unreachable"
            },
            m.applied_index
        ));
    }
    for alarm in &info.alarms {
        text.push_str(&format!("  ALARM: {alarm}\n"));
    }
    text.pop();
    let json = json!({
        "alarms": info.alarms,
        "node_id": info.node_id,
        "leader_id": info.leader_id,
        "leader_address": info.leader_address,
        "term": info.term,
        "commit_index": info.commit_index,
        "members": info.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "role": m.role.as_str(),
            "reachable": m.reachable,
            "applied_index": m.applied_index,
        })).collect::<Vec<_>>(),
    });
    Output::new(text, json)
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use jochat_client::MessageStatus;

    use super::*;

    fn message() -> Message {
        Message {
            id: 7,
            sender: "alice".into(),
            recipient: "bob".into(),
            content: "hi".into(),
            timestamp_ms: 1_700_000_000_000,
            status: MessageStatus::Away,
        }
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59");
    }

    #[test]
    fn json_keeps_numbers_as_numbers() {
        let value = message_json(&message());
        assert_eq!(value["id"], json!(7));
        assert_eq!(value["timestamp_ms"], json!(1_700_000_000_000i64));
        assert_eq!(value["status"], json!("away"));
        let accounts = accounts_json(
            &[Account {
                id: 1,
                username: "alice".into(),
            }],
            5,
        );
        assert_eq!(
            accounts.to_string(),
            r#"{"accounts":[{"id":1,"username":"alice"}],"total_count":5}"#
        );
    }

    #[test]
    fn replies_render_as_one_json_document_each() {
        let page = json!({
            "messages": [message_json(&message())],
            "total_count": 1,
        });
        assert_eq!(
            page.to_string(),
            r#"{"messages":[{"content":"hi","id":7,"recipient":"bob","sender":"alice","status":"away","timestamp_ms":1700000000000}],"total_count":1}"#
        );
        let info = ClusterInfo {
            node_id: 1,
            leader_id: None,
            leader_address: None,
            term: 2,
            commit_index: 5,
            members: vec![jochat_client::Member {
                id: 1,
                address: "127.0.0.1:5001".into(),
                role: jochat_client::MemberRole::Voter,
                reachable: true,
                applied_index: 5,
            }],
            alarms: vec!["node 3 (127.0.0.1:5003): chat state differs".into()],
        };
        let rendered = cluster(&info);
        assert!(rendered
            .text
            .ends_with("\n  ALARM: node 3 (127.0.0.1:5003): chat state differs"));
        assert_eq!(
            rendered.json["alarms"][0],
            "node 3 (127.0.0.1:5003): chat state differs"
        );
        assert_eq!(rendered.json["leader_id"], Value::Null);
        assert_eq!(rendered.json["members"][0]["role"], "voter");
        assert_eq!(rendered.json["members"][0]["applied_index"], 5);
        assert!(rendered
            .text
            .starts_with("node 1 answered; leader: unknown; term 2"));
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert_eq!(printable("two\nlines\ttab"), "two lines tab");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("héllo 👋"), "héllo 👋");
    }

    #[test]
    fn account_lists_end_with_the_total() {
        let accounts = [Account {
            id: 3,
            username: "bob".into(),
        }];
        assert_eq!(
            account_table(&accounts, 9),
            "       3  bob\n1 of 9 matching account(s)"
        );
    }

    #[test]
    fn tables_show_every_column() {
        let table = message_table(&[message()]);
        assert!(table.contains("2023-11-14 22:13:20"));
        assert!(table
            .lines()
            .nth(1)
            .unwrap()
            .trim_start()
            .starts_with("7  "));
        assert!(table.ends_with("hi"));
    }
}
