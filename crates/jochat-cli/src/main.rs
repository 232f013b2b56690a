//! `jochat`: JoChat from the command line, a thin frontend over `jochat-client`.
//!
//! # Layout
//!
//! - `args`: the command line (clap).
//! - `session`: the saved session file (owner-only permissions).
//! - `output`: text and JSON rendering.
//! - this file: running one command, and the exit status.

#![forbid(unsafe_code)]

mod args;
mod output;
mod session;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use args::{Cli, ClusterCommand, Command, PageArgs};
use clap::Parser;
use jochat_client::{
    AccountQuery, ChatServerClient, ClientError, InboxQuery, ReadConsistency, SessionToken,
};
use output::{accounts_json, message_json, message_table, status_name, Output};
use serde_json::json;
use session::SavedSession;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            if json {
                println!("{}", output.json);
            } else if !output.text.is_empty() {
                println!("{}", output.text);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            // One line, whatever the chain of causes.
            let message = format!("{error:#}").replace('\n', " ");
            eprintln!("error: {message}");
            let input_error = error.downcast_ref::<ClientError>().is_some_and(|e| {
                matches!(
                    e,
                    ClientError::InvalidArgument(_)
                        | ClientError::NotFound(_)
                        | ClientError::AlreadyExists(_)
                )
            });
            std::process::ExitCode::from(if input_error { 2 } else { 1 })
        }
    }
}

/// The password: `JOCHAT_PASSWORD` if set, else asked for without echo (twice when
/// `confirm`, and only when there is a terminal to ask on).
fn password(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("JOCHAT_PASSWORD") {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on: set JOCHAT_PASSWORD");
    }
    let first = rpassword::prompt_password(prompt).context("cannot read the password")?;
    if confirm {
        let second =
            rpassword::prompt_password("Repeat it: ").context("cannot read the password")?;
        if first != second {
            bail!("the passwords do not match");
        }
    }
    Ok(first)
}

fn consistency(page: PageArgs) -> ReadConsistency {
    if page.stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

async fn run(cli: Cli) -> anyhow::Result<Output> {
    let session_path: PathBuf = match cli.session_file {
        Some(path) => path,
        None => session::default_path()?,
    };
    let client = ChatServerClient::builder()
        .servers(cli.servers.iter().cloned())
        .deadline(Duration::from_millis(cli.deadline_ms))
        .build()?;
    let saved = || -> anyhow::Result<(SavedSession, SessionToken)> {
        let saved = session::load(&session_path)?;
        let token = SessionToken::from(saved.token.clone());
        Ok((saved, token))
    };

    Ok(match cli.command {
        Command::Signup { user } => {
            let password = password("Password: ", true)?;
            let account = client.sign_up(&user, &password).await?;
            Output::new(
                format!(
                    "signed up as {} (id {}); now run `jochat login {}`",
                    account.username, account.user_id, account.username
                ),
                json!({"user_id": account.user_id, "username": account.username}),
            )
        }
        Command::Login { user } => {
            let password = password("Password: ", false)?;
            let logged_in = client.log_in(&user, &password).await?;
            session::save(
                &session_path,
                &SavedSession {
                    username: logged_in.username.clone(),
                    token: logged_in.token.as_str().to_owned(),
                    servers: client.servers(),
                },
            )?;
            Output::new(
                format!(
                    "logged in as {}; {} unread message(s)",
                    logged_in.username, logged_in.unread_count
                ),
                json!({
                    "username": logged_in.username,
                    "user_id": logged_in.user_id,
                    "unread_count": logged_in.unread_count,
                    "expires_at_ms": logged_in.expires_at_ms,
                }),
            )
        }
        Command::Logout => {
            let (saved, token) = saved()?;
            let result = client.log_out(&token).await;
            // An already-invalid session is as logged out as it gets.
            match result {
                Ok(()) | Err(ClientError::Unauthenticated(_)) => session::remove(&session_path)?,
                Err(error) => return Err(error.into()),
            }
            Output::new(
                format!("logged out {}", saved.username),
                json!({"username": saved.username}),
            )
        }
        Command::Send { user, text } => {
            let (_, token) = saved()?;
            let sent = client.send_message(&token, &user, &text.join(" ")).await?;
            Output::new(
                format!(
                    "sent message {} to {user} ({})",
                    sent.id,
                    status_name(sent.status)
                ),
                json!({"id": sent.id, "timestamp_ms": sent.timestamp_ms, "status": status_name(sent.status)}),
            )
        }
        Command::Unread => {
            let (_, token) = saved()?;
            let unread = client.unread_count(&token).await?;
            Output::new(
                format!("{unread} unread message(s)"),
                json!({"unread_count": unread}),
            )
        }
        Command::Away { limit } => {
            let (_, token) = saved()?;
            let away = client.fetch_away(&token, limit).await?;
            let text = if away.messages.is_empty() {
                "no messages were waiting".to_owned()
            } else {
                format!(
                    "{}\n{} more waiting",
                    message_table(&away.messages),
                    away.remaining
                )
            };
            Output::new(
                text,
                json!({"messages": away.messages.iter().map(message_json).collect::<Vec<_>>(), "remaining": away.remaining}),
            )
        }
        Command::Inbox { with_user, page } => {
            let (_, token) = saved()?;
            let query = InboxQuery {
                offset: page.offset,
                limit: page.limit,
                with_user,
                consistency: consistency(page),
            };
            let listed = client.list_messages(&token, &query).await?;
            let text = if listed.messages.is_empty() {
                format!("no messages here ({} in all)", listed.total_count)
            } else {
                format!(
                    "{}\nmessages {}-{} of {}",
                    message_table(&listed.messages),
                    page.offset + 1,
                    page.offset + listed.messages.len() as u64,
                    listed.total_count
                )
            };
            Output::new(
                text,
                json!({"messages": listed.messages.iter().map(message_json).collect::<Vec<_>>(), "total_count": listed.total_count}),
            )
        }
        Command::DeleteMessages { ids } => {
            let (_, token) = saved()?;
            let deleted = client.delete_messages(&token, &ids).await?;
            Output::new(
                format!("deleted {deleted} message(s)"),
                json!({"deleted_count": deleted}),
            )
        }
        Command::Accounts { pattern, page } => {
            let (_, token) = saved()?;
            let query = AccountQuery {
                pattern,
                offset: page.offset,
                limit: page.limit,
                consistency: consistency(page),
            };
            let listed = client.list_accounts(&token, &query).await?;
            let mut text: String = listed
                .accounts
                .iter()
                .map(|a| format!("{:>8}  {}\n", a.id, a.username))
                .collect();
            text.push_str(&format!(
                "{} of {} matching account(s)",
                listed.accounts.len(),
                listed.total_count
            ));
            Output::new(text, accounts_json(&listed.accounts, listed.total_count))
        }
        Command::DeleteAccount => {
            let (saved, token) = saved()?;
            let password = password(
                &format!(
                    "Password for {} (the account will be deleted): ",
                    saved.username
                ),
                false,
            )?;
            let deleted = client.delete_account(&token, &password).await?;
            session::remove(&session_path)?;
            Output::new(
                format!(
                    "deleted account {} and {deleted} message(s)",
                    saved.username
                ),
                json!({"username": saved.username, "deleted_messages": deleted}),
            )
        }
        Command::Cluster {
            command: ClusterCommand::Info,
        } => output::cluster(&client.cluster_info().await?),
    })
}
