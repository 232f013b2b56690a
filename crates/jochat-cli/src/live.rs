//! The live commands: `jochat watch` prints incoming messages as they arrive, `jochat chat`
//! also sends what is typed. Both run on the client's subscription, which resumes on another
//! server after a failure, so they survive a leader change.

use anyhow::Context;
use jochat_client::{ChatServerClient, ClientError, Message, SessionToken};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::output::{printable, utc, Output};

/// An incoming message as `watch` prints it: one line of text, or one JSON object.
pub fn incoming_line(message: &Message, json: bool) -> String {
    if json {
        json!({
            "id": message.id,
            "sender": message.sender,
            "content": message.content,
            "timestamp_ms": message.timestamp_ms,
        })
        .to_string()
    } else {
        format!(
            "[{}] {}: {}",
            utc(message.timestamp_ms),
            message.sender,
            printable(&message.content)
        )
    }
}

/// Prints one item of the subscription; `Some` when the command ends with it.
fn show(item: Option<Result<Message, ClientError>>, json: bool) -> Option<anyhow::Result<Output>> {
    match item {
        Some(Ok(message)) => {
            println!("{}", incoming_line(&message, json));
            None
        }
        Some(Err(error)) => Some(Err(ended(error))),
        None => Some(Ok(Output::none())),
    }
}

/// The end of a live command on Ctrl-C.
fn interrupted(signal: std::io::Result<()>) -> anyhow::Result<Output> {
    signal.context("cannot listen for Ctrl-C")?;
    Ok(Output::none())
}

/// Why a live command stopped.
fn ended(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Unauthenticated(message) => {
            anyhow::anyhow!("the session ended ({message}); run `jochat login` again")
        }
        other => other.into(),
    }
}

/// `jochat watch`: prints every message addressed to the session's account, after message
/// `after` (0: from now on), until interrupted or the session ends.
///
/// # Errors
/// The session ended, or the stream failed for good.
pub async fn watch(
    client: &ChatServerClient,
    token: &SessionToken,
    after: i64,
    json: bool,
) -> anyhow::Result<Output> {
    let mut stream = client.subscribe(token, after);
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => return interrupted(signal),
            item = stream.next() => if let Some(end) = show(item, json) {
                return end;
            },
        }
    }
}

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed<'a> {
    /// Send `text` to `to`.
    Send { to: &'a str, text: &'a str },
    /// Leave.
    Quit,
    /// Nothing (an empty line).
    Nothing,
    /// A line that says nobody to send to.
    NoRecipient,
}

/// Reads a typed line: `@user text` sends to user, `/quit` leaves, anything else goes to
/// `default` (the USER of `jochat chat USER`) when there is one.
pub fn parse_typed<'a>(line: &'a str, default: Option<&'a str>) -> Typed<'a> {
    let line = line.trim();
    if line.is_empty() {
        return Typed::Nothing;
    }
    if line == "/quit" || line == "/exit" {
        return Typed::Quit;
    }
    if let Some(rest) = line.strip_prefix('@') {
        let (to, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return Typed::Send {
            to,
            text: text.trim(),
        };
    }
    match default {
        Some(to) => Typed::Send { to, text: line },
        None => Typed::NoRecipient,
    }
}

/// `jochat chat [USER]`: shows the unread count, then incoming messages live, and sends each
/// typed line (to USER, or `@user text`), until `/quit`, end of input or Ctrl-C.
///
/// # Errors
/// The session ended, or the stream failed for good.
pub async fn chat(
    client: &ChatServerClient,
    token: &SessionToken,
    default: Option<&str>,
) -> anyhow::Result<Output> {
    // Live first, so that nothing falls between the unread count and the stream.
    let mut stream = client.subscribe(token, 0);
    stream.started().await?;
    let unread = client.unread_count(token).await?;
    println!(
        "{unread} unread message(s) (`jochat away` shows them). {}; /quit leaves.",
        match default {
            Some(user) => format!("Lines go to {user}, or to @user"),
            None => "Start a line with @user to send it".to_owned(),
        }
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => return interrupted(signal),
            item = stream.next() => if let Some(end) = show(item, false) {
                return end;
            },
            line = lines.next_line() => {
                let Some(line) = line.context("cannot read the terminal")? else {
                    return Ok(Output::none());
                };
                match parse_typed(&line, default) {
                    Typed::Quit => return Ok(Output::none()),
                    Typed::Nothing => {}
                    Typed::NoRecipient => println!("(start the line with @user to say who it is for)"),
                    Typed::Send { to, text } => match client.send_message(token, to, text).await {
                        Ok(sent) => println!("(sent to {to}, id {}, {})", sent.id, sent.status),
                        // A refused message is reported and the chat goes on.
                        Err(error) if !error.is_retryable() => println!("(not sent: {error})"),
                        Err(error) => return Err(error.into()),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_say_whom_to_send_to() {
        assert_eq!(
            parse_typed("@bob hi there", None),
            Typed::Send {
                to: "bob",
                text: "hi there"
            }
        );
        assert_eq!(
            parse_typed("hello", Some("carol")),
            Typed::Send {
                to: "carol",
                text: "hello"
            }
        );
        assert_eq!(
            parse_typed("@dave  spaced ", Some("carol")),
            Typed::Send {
                to: "dave",
                text: "spaced"
            }
        );
        assert_eq!(parse_typed("hello", None), Typed::NoRecipient);
        assert_eq!(parse_typed("  ", None), Typed::Nothing);
        assert_eq!(parse_typed("/quit", Some("carol")), Typed::Quit);
    }
}
