//! Binary ("custom") mode, SOCKET.md section 4: `[op u8][flag u8][payload]`, no framing, so
//! requests are parsed field by field. All integers are unsigned big-endian; `str8`/`str16`
//! are a u8/u16 byte length followed by UTF-8 bytes.

use super::protocol::{Decoded, Limit, Op, Reply, Request, WireMessage};

/// Why parsing stopped before a whole request was read.
enum Stop {
    Incomplete,
    Malformed(String),
}

/// A cursor over the buffer; every read is checked, so no input can make it panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let end = self.pos.checked_add(n).ok_or(Stop::Incomplete)?;
        let taken = self.buf.get(self.pos..end).ok_or(Stop::Incomplete)?;
        self.pos = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        <[u8; N]>::try_from(self.bytes(N)?).map_err(|_| Stop::Incomplete)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A string of `len` bytes. `required`: a zero length is a read failure (decided as soon
    /// as the length is known, like the prototype).
    fn text(&mut self, len: usize, required: bool, what: &str) -> Result<String, Stop> {
        if required && len == 0 {
            return Err(Stop::Malformed(format!("empty {what}")));
        }
        let raw = self.bytes(len)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| Stop::Malformed(format!("invalid UTF-8 in {what}")))
    }

    fn str8(&mut self, required: bool, what: &str) -> Result<String, Stop> {
        let len = self.u8()?;
        self.text(usize::from(len), required, what)
    }

    fn str16(&mut self, required: bool, what: &str) -> Result<String, Stop> {
        let len = self.u16()?;
        self.text(usize::from(len), required, what)
    }
}

/// Decodes one request from the front of `buf`.
///
/// `Incomplete` when `buf` ends inside the request; `Malformed` for an unknown op id (as soon
/// as the first byte is seen), an empty string in ops 1, 2 or 5, or invalid UTF-8. A flag byte
/// of exactly 1 makes the payload parse with the op's response layout, and the request then
/// carries no fields (the prototype's quirk, section 4).
pub fn decode(buf: &[u8]) -> Decoded {
    let mut reader = Reader { buf, pos: 0 };
    match parse(&mut reader) {
        Ok(request) => Decoded::Request(request, reader.pos),
        Err(Stop::Incomplete) => Decoded::Incomplete,
        // The prototype read the two header bytes before it judged the op.
        Err(Stop::Malformed(reason)) => {
            Decoded::Malformed(reason, reader.pos.max(2).min(buf.len()))
        }
    }
}

fn parse(r: &mut Reader) -> Result<Request, Stop> {
    let id = r.u8()?;
    let op = match Op::from_id(id) {
        Some(op) => Some(op),
        None if id == 255 => None,
        None => return Err(Stop::Malformed(format!("unknown op id {id}"))),
    };
    let flag = r.u8()?;
    let Some(op) = op else {
        // Op 255 ("failure"): `str16 text` with either flag.
        r.str16(false, "failure text")?;
        return Ok(Request::Unknown);
    };
    if flag == 1 {
        skip_response(r, op)?;
        return Ok(fieldless(op));
    }
    Ok(match op {
        Op::Signup | Op::Login => {
            let username = Some(r.str8(true, "username")?);
            let password = Some(r.str8(true, "password")?);
            if op == Op::Signup {
                Request::Signup { username, password }
            } else {
                Request::Login { username, password }
            }
        }
        Op::SendMessage => Request::SendMessage {
            sender: Some(r.str8(true, "sender")?),
            recipient: Some(r.str8(true, "recipient")?),
            content: Some(r.str16(true, "content")?),
        },
        Op::FetchAway => Request::FetchAway {
            limit: match r.u8()? {
                0 => Limit::Zero,
                n => Limit::Count(u64::from(n)),
            },
        },
        Op::ListAccounts => {
            let count = r.u8()?;
            let start = r.u32()?;
            Request::ListAccounts {
                pattern: Some(r.str8(false, "pattern")?),
                pagination: Some((i64::from(start), i64::from(count))),
            }
        }
        Op::DeleteMessages => {
            let n = r.u8()?;
            let ids = (0..n)
                .map(|_| r.u32().map(i64::from))
                .collect::<Result<Vec<_>, _>>()?;
            Request::DeleteMessages {
                ids: (!ids.is_empty()).then_some(ids),
            }
        }
        Op::Logout => Request::Logout,
        Op::CountUnread => Request::CountUnread,
        Op::Poll => Request::Poll,
        Op::DeleteAccount => Request::DeleteAccount,
        Op::ResetDb => Request::ResetDb,
    })
}

/// Consumes `op`'s response layout (flag 1). Status byte 1 is ok, any other value error, as
/// in the prototype's decoder. Empty strings are accepted here.
fn skip_response(r: &mut Reader, op: Op) -> Result<(), Stop> {
    let ok = r.u8()? == 1;
    match op {
        Op::Login | Op::CountUnread => {
            r.u16()?;
        }
        Op::Poll | Op::FetchAway if ok => {
            let n = if op == Op::Poll {
                u16::from(r.u8()?)
            } else {
                r.u16()?
            };
            for _ in 0..n {
                r.u32()?;
                r.str8(false, "sender")?;
                r.str16(false, "content")?;
            }
            return Ok(());
        }
        Op::ListAccounts if ok => {
            for _ in 0..r.u8()? {
                r.u32()?;
                r.str8(false, "username")?;
            }
            return Ok(());
        }
        Op::DeleteMessages if ok => {
            r.u8()?;
        }
        _ => {}
    }
    r.str8(false, "msg").map(drop)
}

/// The request a flag-1 message hands to the action: every field absent.
fn fieldless(op: Op) -> Request {
    match op {
        Op::Signup => Request::Signup {
            username: None,
            password: None,
        },
        Op::Login => Request::Login {
            username: None,
            password: None,
        },
        Op::SendMessage => Request::SendMessage {
            sender: None,
            recipient: None,
            content: None,
        },
        Op::FetchAway => Request::FetchAway {
            limit: Limit::Missing,
        },
        Op::ListAccounts => Request::ListAccounts {
            pattern: None,
            pagination: Some((0, 10)),
        },
        Op::DeleteMessages => Request::DeleteMessages { ids: None },
        Op::Logout => Request::Logout,
        Op::CountUnread => Request::CountUnread,
        Op::Poll => Request::Poll,
        Op::DeleteAccount => Request::DeleteAccount,
        Op::ResetDb => Request::ResetDb,
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    (0..=max.min(s.len()))
        .rev()
        .find_map(|end| s.get(..end))
        .unwrap_or("")
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    let s = cut(s, 255);
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let s = cut(s, 65535);
    out.extend(u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Ids do not fit u32 beyond `u32::MAX`; they saturate to `u32::MAX` (the prototype raised).
fn put_id(out: &mut Vec<u8>, id: u64) {
    out.extend(u32::try_from(id).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_message(out: &mut Vec<u8>, m: &WireMessage) {
    put_id(out, m.id);
    put_str8(out, &m.sender);
    put_str16(out, &m.content);
}

/// Writes the status byte, then `ok`'s fields on success or `str8 msg` on error (the layout
/// of every reply except ops 2 and 4).
fn put_result<T>(out: &mut Vec<u8>, r: &Result<T, String>, ok: impl FnOnce(&mut Vec<u8>, &T)) {
    match r {
        Ok(value) => {
            out.push(1);
            ok(out, value);
        }
        Err(msg) => {
            out.push(0);
            put_str8(out, msg);
        }
    }
}

/// Appends `[op][01][payload]` for `reply` (section 4 "Responses").
///
/// Texts longer than their field (255 bytes for `str8`, 65535 for `str16`) are cut at the
/// last character boundary that fits. Counts saturate (u16 unread count, u8 deleted count);
/// op 6 and 8 lists keep their first 255 entries, op 7 its first 65535. Ids above
/// `u32::MAX` are written as `u32::MAX` (the prototype raised and dropped the connection).
/// `Reply::Status` is meant for ops 1, 3, 5, 10, 11 and `Reply::Count` for ops 2 and 4; the
/// layout follows the variant, the op byte follows `op`.
pub fn encode(reply: &Reply, out: &mut Vec<u8>) {
    let op = match reply {
        Reply::Status { op, .. } | Reply::Count { op, .. } => *op,
        Reply::Poll(_) => Op::Poll,
        Reply::Fetched(_) => Op::FetchAway,
        Reply::Accounts(_) => Op::ListAccounts,
        Reply::Deleted(_) => Op::DeleteMessages,
    };
    out.extend([op.id(), 1]);
    match reply {
        Reply::Status { result, .. } => put_result(out, result, |out, msg| put_str8(out, msg)),
        Reply::Count { result, .. } => {
            let (ok, count, msg) = match result {
                Ok((count, msg)) => (1, *count, msg),
                Err(msg) => (0, 0, msg),
            };
            out.push(ok);
            out.extend(u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
            put_str8(out, msg);
        }
        Reply::Poll(result) => put_result(out, result, |out, msgs| {
            let msgs = msgs.get(..msgs.len().min(255)).unwrap_or_default();
            out.push(u8::try_from(msgs.len()).unwrap_or(u8::MAX));
            msgs.iter().for_each(|m| put_message(out, m));
        }),
        Reply::Fetched(result) => put_result(out, result, |out, msgs| {
            let msgs = msgs.get(..msgs.len().min(65535)).unwrap_or_default();
            out.extend(u16::try_from(msgs.len()).unwrap_or(u16::MAX).to_be_bytes());
            msgs.iter().for_each(|m| put_message(out, m));
        }),
        Reply::Accounts(result) => put_result(out, result, |out, users| {
            let users = users.get(..users.len().min(255)).unwrap_or_default();
            out.push(u8::try_from(users.len()).unwrap_or(u8::MAX));
            for (id, name) in users {
                put_id(out, *id);
                put_str8(out, name);
            }
        }),
        Reply::Deleted(result) => put_result(out, result, |out, (count, msg)| {
            out.push(u8::try_from(*count).unwrap_or(u8::MAX));
            put_str8(out, msg);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Mirrors the Python client's request encoder: absent fields become defaults (empty
    /// strings, limit 10, count 10, start 0), limit/count clamp to 255, at most 255 ids.
    fn enc(req: &Request) -> Vec<u8> {
        fn s8(out: &mut Vec<u8>, s: &Option<String>) {
            let b = s.as_deref().unwrap_or("").as_bytes();
            let b = &b[..b.len().min(255)];
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        let mut out = Vec::new();
        let id = match req {
            Request::Signup { username, password } | Request::Login { username, password } => {
                s8(&mut out, username);
                s8(&mut out, password);
                if matches!(req, Request::Signup { .. }) {
                    1
                } else {
                    2
                }
            }
            Request::SendMessage {
                sender,
                recipient,
                content,
            } => {
                s8(&mut out, sender);
                s8(&mut out, recipient);
                let c = content.as_deref().unwrap_or("").as_bytes();
                out.extend((c.len() as u16).to_be_bytes());
                out.extend_from_slice(c);
                5
            }
            Request::FetchAway { limit } => {
                out.push(match limit {
                    Limit::Zero => 0,
                    Limit::Count(n) => (*n).min(255) as u8,
                    Limit::Missing | Limit::Unlimited => 10,
                });
                7
            }
            Request::ListAccounts {
                pattern,
                pagination,
            } => {
                let (start, count) = pagination.unwrap_or((0, 10));
                out.push(count.min(255) as u8);
                out.extend((start as u32).to_be_bytes());
                s8(&mut out, pattern);
                8
            }
            Request::DeleteMessages { ids } => {
                let ids = ids.clone().unwrap_or_default();
                out.push(ids.len().min(255) as u8);
                ids.iter()
                    .take(255)
                    .for_each(|id| out.extend((*id as u32).to_be_bytes()));
                9
            }
            Request::Logout => 3,
            Request::CountUnread => 4,
            Request::Poll => 6,
            Request::DeleteAccount => 10,
            Request::ResetDb => 11,
            Request::Unknown => {
                out.extend(b"\x00\x03abc");
                255
            }
        };
        [vec![id, 0], out].concat()
    }

    /// SOCKET.md's notation: hex bytes and "quoted raw text", e.g. `0B 01 "ok"`.
    fn hex(s: &str) -> Vec<u8> {
        let part = |(i, p): (usize, &str)| match i % 2 {
            1 => p.as_bytes().to_vec(),
            _ => p
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect(),
        };
        s.split('"').enumerate().flat_map(part).collect()
    }

    fn reply(r: Reply) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&r, &mut out);
        out
    }

    fn status(op: Op, result: Result<&str, &str>) -> Reply {
        let result = result.map(String::from).map_err(String::from);
        Reply::Status { op, result }
    }

    fn msg(id: u64, sender: &str, content: &str) -> WireMessage {
        let (sender, content) = (sender.to_string(), content.to_string());
        WireMessage {
            id,
            sender,
            content,
        }
    }

    /// The request `bytes` hold, which must use up all of them.
    fn whole(bytes: &[u8]) -> Request {
        match decode(bytes) {
            Decoded::Request(req, n) if n == bytes.len() => req,
            other => panic!("{bytes:02x?} gave {other:?}"),
        }
    }

    /// `whole(hex(s))`, as Debug text.
    fn decoded(s: &str) -> String {
        format!("{:?}", whole(&hex(s)))
    }

    fn all_prefixes_incomplete(bytes: &[u8]) {
        for end in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..end]),
                Decoded::Incomplete,
                "{bytes:02x?} to {end}"
            );
        }
    }

    #[test]
    fn section4_examples() {
        assert_eq!(whole(&hex("0B 00")), Request::ResetDb);
        assert_eq!(
            decode(&hex(r#"FF 00 00 03 "abc""#)),
            Decoded::Request(Request::Unknown, 7)
        );
        assert_eq!(decoded("07 00 00"), "FetchAway { limit: Zero }");
        let login = |result| Reply::Count {
            op: Op::Login,
            result,
        };
        let refused = "This user is already logged in.";
        let cases = [
            (
                status(Op::ResetDb, Ok("Database reset.")),
                r#"0B 01 01 0F "Database reset.""#,
            ),
            (
                login(Ok((0, "Login successful.".into()))),
                r#"02 01 01 00 00 11 "Login successful.""#,
            ),
            (
                login(Err(refused.into())),
                r#"02 01 00 00 00 1F "This user is already logged in.""#,
            ),
            (
                Reply::Poll(Ok(vec![msg(1, "Al", "hi")])),
                r#"06 01 01 01 00 00 00 01 02 "Al" 00 02 "hi""#,
            ),
            (Reply::Fetched(Ok(vec![])), "07 01 01 00 00"),
            (
                Reply::Accounts(Ok(vec![(1, "Al".into())])),
                r#"08 01 01 01 00 00 00 01 02 "Al""#,
            ),
            (
                Reply::Deleted(Ok((1, "Deleted 1 messages.".into()))),
                r#"09 01 01 01 13 "Deleted 1 messages.""#,
            ),
            (Reply::Deleted(Err("No.".into())), r#"09 01 00 03 "No.""#),
            (
                status(Op::Signup, Err("Unknown action")),
                r#"01 01 00 0E "Unknown action""#,
            ),
            // limit 0 gets this, then the empty ok reply above.
            (
                Reply::Fetched(Err("No limit specified.".into())),
                r#"07 01 00 13 "No limit specified.""#,
            ),
        ];
        for (r, want) in cases {
            assert_eq!(reply(r), hex(want));
        }
    }

    #[test]
    fn malformed_and_odd_input() {
        let cases = [
            "00",
            "0C",
            "FE",
            "64 00 05 01",            // unknown op ids
            "01 00 00",               // signup, empty username
            r#"02 00 00 04 "pass""#,  // login, empty username (bytes left over)
            r#"02 00 05 "Alice" 00"#, // login, empty password
            "05 00 00",
            r#"05 00 01 "a" 00"#,
            r#"05 00 01 "a" 01 "b" 00 00"#,
            r#"01 00 01 FF 01 "a""#,              // invalid UTF-8
            "08 00 0A 00 00 00 00 01 C3",         // cut-off 'é'
            r#"05 00 01 "a" 01 "b" 00 02 C0 80"#, // overlong encoding
            "FF 00 00 01 FF",
        ];
        for case in cases {
            assert!(
                matches!(decode(&hex(case)), Decoded::Malformed(..)),
                "{case}"
            );
        }
        let empty_pattern = r#"ListAccounts { pattern: Some(""), pagination: Some((0, 10)) }"#;
        assert_eq!(decoded("08 00 0A 00 00 00 00 00"), empty_pattern);
        assert_eq!(decoded("09 00 00"), "DeleteMessages { ids: None }");
        assert_eq!(decoded("07 02 05"), "FetchAway { limit: Count(5) }"); // flag 2 = request
    }

    /// One valid request of every kind, as the Python client sends them, decoded.
    const SAMPLES: [(&str, &str); 12] = [
        (
            r#"01 00 05 "Alice" 06 "secret""#,
            r#"Signup { username: Some("Alice"), password: Some("secret") }"#,
        ),
        (
            r#"02 00 03 "Bob" 04 "pass""#,
            r#"Login { username: Some("Bob"), password: Some("pass") }"#,
        ),
        ("03 00", "Logout"),
        ("04 00", "CountUnread"),
        (
            r#"05 00 02 "Al" 02 "Bo" 00 08 "hé 😀""#,
            r#"SendMessage { sender: Some("Al"), recipient: Some("Bo"), content: Some("hé 😀") }"#,
        ),
        ("06 00", "Poll"),
        ("07 00 0A", "FetchAway { limit: Count(10) }"),
        (
            r#"08 00 05 00 01 11 70 04 "user""#,
            r#"ListAccounts { pattern: Some("user"), pagination: Some((70000, 5)) }"#,
        ),
        (
            "09 00 02 00 00 00 01 EE 6B 28 00",
            "DeleteMessages { ids: Some([1, 4000000000]) }",
        ),
        ("0A 00", "DeleteAccount"),
        ("0B 00", "ResetDb"),
        (r#"FF 00 00 03 "abc""#, "Unknown"),
    ];

    #[test]
    fn every_kind_decodes_prefixes_are_incomplete_and_pipelining_consumes_one() {
        for (i, (text, want)) in SAMPLES.iter().enumerate() {
            let bytes = hex(text);
            assert_eq!(decoded(text), *want);
            assert_eq!(enc(&whole(&bytes)), bytes);
            all_prefixes_incomplete(&bytes);
            let two = [bytes.clone(), hex(SAMPLES[(i + 1) % SAMPLES.len()].0)].concat();
            assert_eq!(decode(&two), Decoded::Request(whole(&bytes), bytes.len()));
        }
    }

    #[test]
    fn flag_one_parses_the_response_layout() {
        let cases = [
            ("01 01 01 00", "Signup { username: None, password: None }"),
            (
                r#"02 01 00 00 00 03 "abc""#,
                "Login { username: None, password: None }",
            ),
            (r#"04 01 01 00 05 02 "ok""#, "CountUnread"),
            (
                r#"05 01 00 02 "ok""#,
                "SendMessage { sender: None, recipient: None, content: None }",
            ),
            (
                r#"06 01 01 02 00 00 00 01 00 00 00 00 00 00 02 01 "A" 00 01 "x""#,
                "Poll",
            ),
            ("06 01 00 00", "Poll"),
            (
                "07 01 01 00 01 00 00 00 09 00 00 00",
                "FetchAway { limit: Missing }",
            ),
            (r#"07 01 00 01 "e""#, "FetchAway { limit: Missing }"),
            (
                r#"08 01 01 01 00 00 00 01 02 "Al""#,
                "ListAccounts { pattern: None, pagination: Some((0, 10)) }",
            ),
            (
                "08 01 02 00",
                "ListAccounts { pattern: None, pagination: Some((0, 10)) }",
            ), // status 2 = error
            ("09 01 01 07 00", "DeleteMessages { ids: None }"),
            ("09 01 00 00", "DeleteMessages { ids: None }"),
            ("0B 01 01 00", "ResetDb"),
            ("FF 01 00 00", "Unknown"),
        ];
        for (bytes, want) in cases {
            assert_eq!(decoded(bytes), want);
            all_prefixes_incomplete(&hex(bytes));
        }
        assert!(matches!(
            decode(&hex("03 01 01 01 FF")),
            Decoded::Malformed(..)
        ));
    }

    #[test]
    fn texts_are_cut_at_char_boundaries() {
        assert_eq!(
            (cut("é", 1), cut("aé", 2), cut("abc", 255)),
            ("", "a", "abc")
        );
        let long = format!("{}é", "a".repeat(254)); // 256 bytes; 255 would split 'é'
        let out = reply(status(Op::Logout, Ok(&long)));
        assert_eq!((out.len(), out[3]), (4 + 254, 254));
        let content = format!("{}😀", "a".repeat(65532)); // 65536 bytes
        let out = reply(Reply::Fetched(Ok(vec![msg(1, &"é".repeat(200), &content)])));
        // header 5, id 4, sender 1 + 254 (127 'é'), content 2 + 65532
        assert_eq!((out.len(), out[9]), (5 + 4 + 1 + 254 + 2 + 65532, 254));
        assert_eq!(out[264..266], [0xFF, 0xFC]);
    }

    #[test]
    fn counts_ids_and_lists_saturate() {
        let unread = Reply::Count {
            op: Op::CountUnread,
            result: Ok((70_000, String::new())),
        };
        assert_eq!(reply(unread), hex("04 01 01 FF FF 00"));
        assert_eq!(
            reply(Reply::Deleted(Ok((300, String::new())))),
            hex("09 01 01 FF 00")
        );
        let out = reply(Reply::Accounts(Ok(vec![(u64::MAX, String::new()); 300])));
        assert_eq!(
            (out[3], &out[4..8], out.len()),
            (255, &[0xFF; 4][..], 4 + 255 * 5)
        );
        let out = reply(Reply::Poll(Ok(vec![msg(2, "", ""); 256])));
        assert_eq!((out[3], out.len()), (255, 4 + 255 * 7));
        let out = reply(Reply::Fetched(Ok(vec![msg(2, "", ""); 256])));
        assert_eq!((&out[3..5], out.len()), (&[1, 0][..], 5 + 256 * 7));
    }

    fn valid_request() -> impl Strategy<Value = Request> {
        let name = || "\\PC{1,60}"; // at most 240 bytes
        prop_oneof![
            (name(), name(), any::<bool>()).prop_map(|(u, p, signup)| {
                let (username, password) = (Some(u), Some(p));
                if signup {
                    Request::Signup { username, password }
                } else {
                    Request::Login { username, password }
                }
            }),
            (name(), name(), "\\PC{1,300}").prop_map(|(s, r, c)| {
                let (sender, recipient, content) = (Some(s), Some(r), Some(c));
                Request::SendMessage {
                    sender,
                    recipient,
                    content,
                }
            }),
            any::<u8>().prop_map(|n| {
                let limit = if n == 0 {
                    Limit::Zero
                } else {
                    Limit::Count(n.into())
                };
                Request::FetchAway { limit }
            }),
            ("\\PC{0,60}", any::<u32>(), any::<u8>()).prop_map(|(p, s, c)| {
                let (pattern, pagination) = (Some(p), Some((s.into(), c.into())));
                Request::ListAccounts {
                    pattern,
                    pagination,
                }
            }),
            prop::collection::vec(any::<u32>(), 0..=255).prop_map(|ids| {
                let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
                Request::DeleteMessages {
                    ids: (!ids.is_empty()).then_some(ids),
                }
            }),
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
            prop_assert_eq!(decode(&bytes), Decoded::Request(req.clone(), bytes.len()));
            all_prefixes_incomplete(&bytes);
            let two = [bytes.clone(), enc(&next)].concat();
            prop_assert_eq!(decode(&two), Decoded::Request(req, bytes.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            op in prop_oneof![1u8..=11, Just(255u8), any::<u8>()],
            flag in 0u8..3,
            rest in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let bytes = [vec![op, flag], rest].concat();
            for end in 0..=bytes.len() {
                if let Decoded::Request(_, n) = decode(&bytes[..end]) {
                    prop_assert!((2..=end).contains(&n));
                }
            }
        }
    }
}
