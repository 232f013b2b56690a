//! JSON mode, SOCKET.md section 3: every message is a 4-byte big-endian length N followed by
//! N bytes of UTF-8 JSON `{"msg_type": ..., "data": ...}`. Requests are parsed with
//! `serde_json`; replies are printed by a small serializer that reproduces Python's
//! `json.dumps` defaults byte for byte.

use super::protocol::{Decoded, Limit, Op, Reply, Request, WireMessage};
use serde_json::{Map, Value};

/// Decodes one framed request from the front of `buf`.
///
/// `Incomplete` until the 4 prefix bytes and the N body bytes are there; `Malformed` for
/// N = 0, N > `frame_max` (decided as soon as the prefix is complete), a body that is not a
/// UTF-8 JSON object with a string `msg_type` and a `data` key, or a `data` that is not an
/// object for an op that reads fields. An unknown `msg_type` gives [`Request::Unknown`].
pub fn decode(buf: &[u8], frame_max: usize) -> Decoded {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Decoded::Incomplete;
    };
    let len = u32::from_be_bytes(*prefix);
    let end = match usize::try_from(len) {
        Ok(0) => return Decoded::Malformed("zero-length frame".into(), 4),
        Ok(n) if n <= frame_max => n.checked_add(4),
        _ => None,
    };
    let Some(end) = end else {
        return Decoded::Malformed(format!("frame of {len} bytes exceeds {frame_max}"), 4);
    };
    match buf.get(4..end) {
        None => Decoded::Incomplete,
        Some(body) => match parse(body) {
            Ok(request) => Decoded::Request(request, end),
            Err(reason) => Decoded::Malformed(reason, end),
        },
    }
}

fn parse(body: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    let Some(Value::String(msg_type)) = value.get("msg_type") else {
        return Err("no string msg_type in a JSON object".into());
    };
    let data = value.get("data").ok_or("no data")?;
    let Some(op) = Op::from_name(msg_type) else {
        return Ok(Request::Unknown);
    };
    let fields = || {
        data.as_object()
            .ok_or_else(|| format!("{msg_type}: data is not an object"))
    };
    Ok(match op {
        Op::Signup | Op::Login => {
            let d = fields()?;
            let (username, password) = (text_field(d, "username"), text_field(d, "password"));
            if op == Op::Signup {
                Request::Signup { username, password }
            } else {
                Request::Login { username, password }
            }
        }
        Op::SendMessage => {
            let d = fields()?;
            Request::SendMessage {
                sender: text_field(d, "sender"),
                recipient: text_field(d, "recipient"),
                content: text_field(d, "content"),
            }
        }
        Op::FetchAway => Request::FetchAway {
            limit: match fields()?.get("limit").and_then(py_int) {
                None => Limit::Missing,
                Some(0) => Limit::Zero,
                Some(n) if n < 0 => Limit::Unlimited,
                Some(n) => Limit::Count(u64::try_from(n).unwrap_or(u64::MAX)),
            },
        },
        Op::ListAccounts => {
            let d = fields()?;
            let number = |key, default| match d.get(key) {
                None => Some(default),
                Some(v) => py_int(v).map(|n| n.clamp(i64::MIN.into(), i64::MAX.into()) as i64),
            };
            Request::ListAccounts {
                pattern: text_field(d, "pattern"),
                pagination: number("start", 0).zip(number("count", 10)),
            }
        }
        Op::DeleteMessages => Request::DeleteMessages {
            ids: match fields()?.get("message_ids_to_delete") {
                Some(Value::Array(items)) if !items.is_empty() => {
                    Some(items.iter().filter_map(Value::as_i64).collect())
                }
                _ => None,
            },
        },
        Op::Logout => Request::Logout,
        Op::CountUnread => Request::CountUnread,
        Op::Poll => Request::Poll,
        Op::DeleteAccount => Request::DeleteAccount,
        Op::ResetDb => Request::ResetDb,
    })
}

fn text_field(data: &Map<String, Value>, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Python's `int(v)` for a JSON value: booleans are 1/0, floats truncate toward zero,
/// strings hold an optionally signed decimal integer (surrounding whitespace and single
/// underscores between digits allowed). Huge values saturate. `None` where Python raises.
fn py_int(v: &Value) -> Option<i128> {
    match v {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Some(i128::from(i)),
            (None, Some(u), _) => Some(i128::from(u)),
            (None, None, f) => f.filter(|f| f.is_finite()).map(|f| f.trunc() as i128),
        },
        Value::String(s) => {
            // Python's str.isspace() also counts U+001C..U+001F.
            let s = s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
            let (negative, digits) = match s.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, s.strip_prefix('+').unwrap_or(s)),
            };
            if digits.split('_').any(str::is_empty) {
                return None; // empty, or an underscore not between two digits
            }
            let n = digits
                .chars()
                .filter(|&c| c != '_')
                .try_fold(0i128, |n, c| {
                    Some(n.saturating_mul(10).saturating_add(c.to_digit(10)?.into()))
                })?;
            Some(if negative { -n } else { n })
        }
        _ => None,
    }
}

/// A JSON string as Python's `json.dumps` prints it (`ensure_ascii=True`).
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn object(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}: {v}", string(k)))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn list<T>(items: &[T], item: impl Fn(&T) -> String) -> String {
    format!(
        "[{}]",
        items.iter().map(item).collect::<Vec<_>>().join(", ")
    )
}

fn message(m: &WireMessage, to_deliver: bool) -> String {
    let mut fields = vec![("id", m.id.to_string()), ("sender", string(&m.sender))];
    fields.push(("content", string(&m.content)));
    if to_deliver {
        fields.push(("to_deliver", "1".into()));
    }
    object(&fields)
}

fn account((id, name): &(u64, String)) -> String {
    format!("[{id}, {}]", string(name))
}

/// `{"status": "ok", ...ok(value)}` or `{"status": "error", "msg": TEXT}`.
fn data<T>(
    result: &Result<T, String>,
    ok: impl FnOnce(&T) -> Vec<(&'static str, String)>,
) -> String {
    match result {
        Ok(value) => object(&[vec![("status", string("ok"))], ok(value)].concat()),
        Err(msg) => object(&[("status", string("error")), ("msg", string(msg))]),
    }
}

/// Appends the framed reply: a 4-byte big-endian length, then exactly the bytes Python's
/// `json.dumps({"msg_type": NAME, "data": DATA})` prints (section 3 "Responses"). A body over
/// `u32::MAX` bytes cannot be framed; its prefix saturates to `u32::MAX`.
pub fn encode(reply: &Reply, out: &mut Vec<u8>) {
    let text_and = |m: &String, key, n: u64| vec![("msg", string(m)), (key, n.to_string())];
    let messages = |msgs: &[WireMessage], to_deliver| list(msgs, |m| message(m, to_deliver));
    let (op, data) = match reply {
        Reply::Status { op, result } => (*op, data(result, |m| vec![("msg", string(m))])),
        Reply::Count { op, result } => {
            (*op, data(result, |(n, m)| text_and(m, "unread_count", *n)))
        }
        Reply::Poll(r) => (Op::Poll, data(r, |v| vec![("msg", messages(v, true))])),
        Reply::Fetched(r) => (
            Op::FetchAway,
            data(r, |v| vec![("msg", messages(v, false))]),
        ),
        Reply::Accounts(r) => (
            Op::ListAccounts,
            data(r, |v| vec![("users", list(v, account))]),
        ),
        Reply::Deleted(r) => (
            Op::DeleteMessages,
            data(r, |(n, m)| text_and(m, "deleted_count", *n)),
        ),
    };
    let body = object(&[("msg_type", string(op.name())), ("data", data)]);
    out.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn frame(body: &str) -> Vec<u8> {
        [&(body.len() as u32).to_be_bytes()[..], body.as_bytes()].concat()
    }

    /// Mirrors the Python client: `json.dumps({"msg_type": ..., "data": ...})`, framed.
    /// Absent fields are left out.
    fn enc(req: &Request) -> Vec<u8> {
        let mut d = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                d.insert(k.into(), v);
            }
        };
        let s = |v: &Option<String>| v.clone().map(Value::from);
        let name = match req {
            Request::Signup { username, password } | Request::Login { username, password } => {
                put("username", s(username));
                put("password", s(password));
                if matches!(req, Request::Signup { .. }) {
                    "signup"
                } else {
                    "login"
                }
            }
            Request::SendMessage {
                sender,
                recipient,
                content,
            } => {
                put("sender", s(sender));
                put("recipient", s(recipient));
                put("content", s(content));
                "send_message"
            }
            Request::FetchAway { limit } => {
                put(
                    "limit",
                    match limit {
                        Limit::Missing => None,
                        Limit::Zero => Some(json!(0)),
                        Limit::Unlimited => Some(json!(-1)),
                        Limit::Count(n) => Some(json!(n)),
                    },
                );
                "fetch_away_msgs"
            }
            Request::ListAccounts {
                pattern,
                pagination,
            } => {
                put("pattern", s(pattern));
                match pagination {
                    Some((start, count)) => {
                        put("start", Some(json!(start)));
                        put("count", Some(json!(count)));
                    }
                    None => put("start", Some(json!("x"))),
                }
                "list_accounts"
            }
            Request::DeleteMessages { ids } => {
                put("message_ids_to_delete", ids.clone().map(Value::from));
                "delete_messages"
            }
            Request::Logout => "logout",
            Request::CountUnread => "count_unread",
            Request::Poll => "send_messages_to_client",
            Request::DeleteAccount => "delete_account",
            Request::ResetDb => "reset_db",
            Request::Unknown => "failure",
        };
        frame(&json!({"msg_type": name, "data": d}).to_string())
    }

    fn reply(r: Reply) -> String {
        let mut out = Vec::new();
        encode(&r, &mut out);
        assert_eq!(out[..4], ((out.len() - 4) as u32).to_be_bytes());
        String::from_utf8(out[4..].to_vec()).unwrap()
    }

    /// Decodes the framed `body`, which must be used up, as Debug text.
    fn decoded(body: &str) -> String {
        let bytes = frame(body);
        match decode(&bytes, MAX) {
            Decoded::Request(req, n) if n == bytes.len() => format!("{req:?}"),
            other => panic!("{body} gave {other:?}"),
        }
    }

    /// `decoded` for `{"msg_type": msg_type, "data": data}`.
    fn with(msg_type: &str, data: Value) -> String {
        decoded(&json!({"msg_type": msg_type, "data": data}).to_string())
    }

    #[test]
    fn reset_example_is_byte_exact() {
        let mut out = Vec::new();
        let result = Ok("Database reset.".into());
        encode(
            &Reply::Status {
                op: Op::ResetDb,
                result,
            },
            &mut out,
        );
        let body =
            r#"{"msg_type": "reset_db", "data": {"status": "ok", "msg": "Database reset."}}"#;
        assert_eq!(body.len(), 0x4C);
        assert_eq!(out, [&[0, 0, 0, 0x4C][..], body.as_bytes()].concat());
    }

    #[test]
    fn reply_shapes() {
        let m = |id, s: &str, c: &str| WireMessage {
            id,
            sender: s.into(),
            content: c.into(),
        };
        let cases = [
            (
                Reply::Status {
                    op: Op::Signup,
                    result: Err("Unknown action".into()),
                },
                r#"{"msg_type": "signup", "data": {"status": "error", "msg": "Unknown action"}}"#,
            ),
            (
                Reply::Count {
                    op: Op::Login,
                    result: Ok((3, "Login successful.".into())),
                },
                r#"{"msg_type": "login", "data": {"status": "ok", "msg": "Login successful.", "unread_count": 3}}"#,
            ),
            (
                Reply::Count {
                    op: Op::CountUnread,
                    result: Err("No.".into()),
                },
                r#"{"msg_type": "count_unread", "data": {"status": "error", "msg": "No."}}"#,
            ),
            (
                Reply::Poll(Ok(vec![m(1, "Al", "hi"), m(2, "Bo", "yo")])),
                r#"{"msg_type": "send_messages_to_client", "data": {"status": "ok", "msg": [{"id": 1, "sender": "Al", "content": "hi", "to_deliver": 1}, {"id": 2, "sender": "Bo", "content": "yo", "to_deliver": 1}]}}"#,
            ),
            (
                Reply::Fetched(Ok(vec![m(7, "Al", "hi")])),
                r#"{"msg_type": "fetch_away_msgs", "data": {"status": "ok", "msg": [{"id": 7, "sender": "Al", "content": "hi"}]}}"#,
            ),
            (
                Reply::Fetched(Ok(vec![])),
                r#"{"msg_type": "fetch_away_msgs", "data": {"status": "ok", "msg": []}}"#,
            ),
            (
                Reply::Accounts(Ok(vec![(1, "Al".into()), (2, "Bo".into())])),
                r#"{"msg_type": "list_accounts", "data": {"status": "ok", "users": [[1, "Al"], [2, "Bo"]]}}"#,
            ),
            (
                Reply::Deleted(Ok((1, "Deleted 1 messages.".into()))),
                r#"{"msg_type": "delete_messages", "data": {"status": "ok", "msg": "Deleted 1 messages.", "deleted_count": 1}}"#,
            ),
            (
                Reply::Accounts(Err("No pattern provided.".into())),
                r#"{"msg_type": "list_accounts", "data": {"status": "error", "msg": "No pattern provided."}}"#,
            ),
        ];
        for (r, want) in cases {
            assert_eq!(reply(r), want);
        }
    }

    #[test]
    fn python_escaping() {
        assert_eq!(string("é"), r#""\u00e9""#);
        assert_eq!(string("😀"), r#""\ud83d\ude00""#);
        assert_eq!(string("a\"b\\c/"), r#""a\"b\\c/""#);
        let controls = "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}";
        assert_eq!(string(controls), r#""\n\r\t\b\f\u0000\u001f\u007f""#);
        assert_eq!(string("€ ~"), r#""\u20ac ~""#);
    }

    #[test]
    fn field_rules() {
        let cases = [
            (
                "signup",
                json!({"username": "Al", "password": 5}),
                r#"Signup { username: Some("Al"), password: None }"#,
            ),
            (
                "login",
                json!({}),
                "Login { username: None, password: None }",
            ),
            (
                "send_message",
                json!({"sender": "Al", "recipient": null, "content": ""}),
                r#"SendMessage { sender: Some("Al"), recipient: None, content: Some("") }"#,
            ),
            ("fetch_away_msgs", json!({}), "FetchAway { limit: Missing }"),
            (
                "list_accounts",
                json!({"pattern": "a"}),
                r#"ListAccounts { pattern: Some("a"), pagination: Some((0, 10)) }"#,
            ),
            (
                "list_accounts",
                json!({"pattern": 1, "start": "5", "count": 2.5}),
                "ListAccounts { pattern: None, pagination: Some((5, 2)) }",
            ),
            (
                "list_accounts",
                json!({"start": -1, "count": -1}),
                "ListAccounts { pattern: None, pagination: Some((-1, -1)) }",
            ),
            (
                "list_accounts",
                json!({"count": "x"}),
                "ListAccounts { pattern: None, pagination: None }",
            ),
            (
                "list_accounts",
                json!({"start": null}),
                "ListAccounts { pattern: None, pagination: None }",
            ),
            ("delete_messages", json!({}), "DeleteMessages { ids: None }"),
            ("reset_db", json!({}), "ResetDb"),
            ("send_messages_to_client", json!([]), "Poll"),
        ];
        for (msg_type, data, want) in cases {
            assert_eq!(with(msg_type, data), want);
        }
        let limits = [
            (json!(null), "Missing"),
            (json!(0), "Zero"),
            (json!(-3), "Unlimited"),
            (json!(5), "Count(5)"),
            (json!(u64::MAX), "Count(18446744073709551615)"),
            (json!(1e300), "Count(18446744073709551615)"),
            (json!(" +7\n"), "Count(7)"),
            (json!("1_0"), "Count(10)"),
            (json!("-2"), "Unlimited"),
            (json!("0"), "Zero"),
            (json!(2.9), "Count(2)"),
            (json!(-0.5), "Zero"),
            (json!(true), "Count(1)"),
            (json!(false), "Zero"),
        ];
        for (v, want) in limits {
            assert_eq!(
                with("fetch_away_msgs", json!({ "limit": v })),
                format!("FetchAway {{ limit: {want} }}")
            );
        }
        for bad in [
            json!("1.5"),
            json!("x"),
            json!(""),
            json!("_1"),
            json!("1__0"),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(
                with("fetch_away_msgs", json!({ "limit": bad })),
                "FetchAway { limit: Missing }"
            );
        }
        let ids = [
            (json!([3, "4", 5.0, -6, u64::MAX, null]), "Some([3, -6])"),
            (json!(["x"]), "Some([])"),
            (json!([]), "None"),
            (json!(7), "None"),
        ];
        for (v, want) in ids {
            let got = with("delete_messages", json!({ "message_ids_to_delete": v }));
            assert_eq!(got, format!("DeleteMessages {{ ids: {want} }}"));
        }
    }

    #[test]
    fn bad_input() {
        let mut cases = vec![
            vec![0, 0, 0, 0],
            frame("not json"),
            frame("[1, 2]"),
            vec![0, 0, 0, 2, 0xC3, 0x28],
            frame(r#"{"data": {}}"#),
            frame(r#"{"msg_type": "logout"}"#),
            frame(r#"{"msg_type": 3, "data": {}}"#),
            frame(r#"{"msg_type": "logout", "data": {}} x"#),
        ];
        for op in [
            "signup",
            "login",
            "send_message",
            "fetch_away_msgs",
            "list_accounts",
            "delete_messages",
        ] {
            cases.push(frame(&format!(r#"{{"msg_type": "{op}", "data": null}}"#)));
            cases.push(frame(&format!(r#"{{"msg_type": "{op}", "data": [1]}}"#)));
        }
        for bytes in cases {
            assert!(
                matches!(decode(&bytes, MAX), Decoded::Malformed(..)),
                "{bytes:02x?}"
            );
        }
        assert_eq!(with("logout", json!(null)), "Logout");
        assert_eq!(with("count_unread", json!(1)), "CountUnread");
        assert_eq!(with("delete_account", json!("x")), "DeleteAccount");
        assert_eq!(with("nope", json!(null)), "Unknown");
        // Too long: rejected from the prefix alone.
        assert!(matches!(decode(&[0, 0, 1, 0], 255), Decoded::Malformed(..)));
        assert_eq!(decode(&[0, 0, 0, 255], 255), Decoded::Incomplete);
    }

    #[test]
    fn every_kind_prefixes_are_incomplete_and_pipelining_consumes_one() {
        let samples = [
            r#"{"msg_type": "signup", "data": {"username": "Al", "password": "x"}}"#,
            r#"{"msg_type": "login", "data": {"username": "Al", "password": "x"}}"#,
            r#"{"msg_type": "logout", "data": {}}"#,
            r#"{"msg_type": "count_unread", "data": {}}"#,
            r#"{"msg_type": "send_message", "data": {"sender": "Al", "recipient": "Bo", "content": "h\u00e9"}}"#,
            r#"{"msg_type": "send_messages_to_client", "data": {}}"#,
            r#"{"msg_type": "fetch_away_msgs", "data": {"limit": 10}}"#,
            r#"{"msg_type": "list_accounts", "data": {"pattern": "u", "start": 5, "count": 5}}"#,
            r#"{"msg_type": "delete_messages", "data": {"message_ids_to_delete": [1, 2]}}"#,
            r#"{"msg_type": "delete_account", "data": {}}"#,
            r#"{"msg_type": "reset_db", "data": {}}"#,
            r#"{"msg_type": "failure", "data": {}}"#,
        ];
        for (i, body) in samples.iter().enumerate() {
            let bytes = frame(body);
            for end in 0..bytes.len() {
                assert_eq!(decode(&bytes[..end], MAX), Decoded::Incomplete);
            }
            let two = [bytes.clone(), frame(samples[(i + 1) % samples.len()])].concat();
            let alone = decode(&bytes, MAX);
            assert!(
                matches!(alone, Decoded::Request(_, n) if n == bytes.len()),
                "{body}"
            );
            assert_eq!(decode(&two, MAX), alone);
        }
    }

    fn valid_request() -> impl Strategy<Value = Request> {
        let text = || proptest::option::of(any::<String>());
        let limit = prop_oneof![
            Just(Limit::Missing),
            Just(Limit::Zero),
            Just(Limit::Unlimited),
            (1..=u64::MAX).prop_map(Limit::Count),
        ];
        prop_oneof![
            (text(), text(), any::<bool>()).prop_map(|(username, password, signup)| if signup {
                Request::Signup { username, password }
            } else {
                Request::Login { username, password }
            }),
            (text(), text(), text()).prop_map(|(sender, recipient, content)| {
                Request::SendMessage {
                    sender,
                    recipient,
                    content,
                }
            }),
            limit.prop_map(|limit| Request::FetchAway { limit }),
            (text(), any::<Option<(i64, i64)>>()).prop_map(|(pattern, pagination)| {
                Request::ListAccounts {
                    pattern,
                    pagination,
                }
            }),
            proptest::option::of(prop::collection::vec(any::<i64>(), 1..20))
                .prop_map(|ids| Request::DeleteMessages { ids }),
            prop::sample::select(vec![
                Request::Logout,
                Request::CountUnread,
                Request::Poll,
                Request::DeleteAccount,
                Request::ResetDb,
                Request::Unknown,
            ]),
        ]
    }

    proptest! {
        #[test]
        fn valid_requests_round_trip(req in valid_request(), next in valid_request()) {
            let bytes = enc(&req);
            prop_assert_eq!(decode(&bytes, MAX), Decoded::Request(req.clone(), bytes.len()));
            for end in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..end], MAX), Decoded::Incomplete);
            }
            let two = [bytes.clone(), enc(&next)].concat();
            prop_assert_eq!(decode(&two, MAX), Decoded::Request(req, bytes.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(len in 0u32..80, body in prop::collection::vec(any::<u8>(), 0..80)) {
            let bytes = [&len.to_be_bytes()[..], &body].concat();
            for buf in [&bytes[..], &body[..]] {
                if let Decoded::Request(_, n) = decode(buf, 64) {
                    prop_assert!(n <= buf.len());
                }
            }
        }

        #[test]
        fn replies_parse_back(text in any::<String>(), id in any::<u64>()) {
            let mut out = Vec::new();
            let (sender, content) = (text.clone(), text.clone());
            encode(&Reply::Poll(Ok(vec![WireMessage { id, sender, content }])), &mut out);
            prop_assert!(out[4..].is_ascii());
            let v: Value = serde_json::from_slice(&out[4..]).unwrap();
            prop_assert_eq!(&v["data"]["msg"][0], &json!({"id": id, "sender": text, "content": text, "to_deliver": 1}));
        }
    }
}
