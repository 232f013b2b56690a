//! Running one parsed command: which servers, which session, which password, which call, and
//! what it prints.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use jochat_client::{
    AccountQuery, ChatServerClient, ChatServerClientBuilder, ClientError, InboxQuery,
    ReadConsistency, SessionToken,
};
use serde_json::json;

use crate::args::{Cli, ClusterCommand, Command, PageArgs, TlsArgs};
use crate::output::{self, accounts_json, message_json, message_table, Output};
use crate::session::{self, SavedSession};

/// The servers used when neither `--servers`, `JOCHAT_SERVERS` nor a saved session names any.
pub const SERVERS_DEFAULT: &str = "127.0.0.1:5001";

/// The environment variable a password is read from instead of a prompt.
pub const PASSWORD_VARIABLE: &str = "JOCHAT_PASSWORD";

/// A mistake in what was typed (as opposed to a failure of the servers or the machine); the
/// binary exits with status 2 for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// The exit status for `error`: 2 for bad input (ours or the server's verdict on it), 1 for
/// everything else (servers unreachable, not logged in, wrong password, files).
pub fn exit_status(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<InputError>().is_some() {
        return 2;
    }
    match error.downcast_ref::<ClientError>() {
        Some(
            ClientError::InvalidArgument(_)
            | ClientError::NotFound(_)
            | ClientError::AlreadyExists(_)
            | ClientError::InvalidAddress { .. },
        ) => 2,
        _ => 1,
    }
}

/// The servers to call: those given with `--servers` (or `JOCHAT_SERVERS`), else those the
/// saved session was opened on, else [`SERVERS_DEFAULT`].
pub fn servers(given: Option<&[String]>, saved: Option<&SavedSession>) -> Vec<String> {
    match (given, saved) {
        (Some(given), _) if !given.is_empty() => given.to_vec(),
        (_, Some(saved)) if !saved.servers.is_empty() => saved.servers.clone(),
        _ => vec![SERVERS_DEFAULT.to_owned()],
    }
}

/// Whether a password prompt asks twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    /// Ask once (log in, delete the account: the server checks it).
    Once,
    /// Ask twice and refuse a mismatch (sign up: a typo would lock the account out).
    Twice,
}

/// The password: [`PASSWORD_VARIABLE`] if set, else asked for on the terminal without echo.
fn password(prompt: &str, confirm: Confirm) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_VARIABLE) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no terminal to ask for the password on: set {PASSWORD_VARIABLE}");
    }
    let first = rpassword::prompt_password(prompt).context("cannot read the password")?;
    if confirm == Confirm::Twice {
        let second =
            rpassword::prompt_password("Repeat it: ").context("cannot read the password")?;
        if first != second {
            return Err(InputError("the passwords do not match".into()).into());
        }
    }
    Ok(first)
}

/// The consistency asked for by `--stale`.
fn consistency(page: PageArgs) -> ReadConsistency {
    if page.stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// The saved session, or the error that says how to get one.
fn required(saved: &anyhow::Result<SavedSession>) -> anyhow::Result<(&SavedSession, SessionToken)> {
    match saved {
        Ok(saved) => Ok((saved, SessionToken::from(saved.token.clone()))),
        Err(error) => Err(anyhow::anyhow!("{error:#}")),
    }
}

/// The session file: `--session-file` (or `JOCHAT_SESSION_FILE`), else the default.
fn session_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => session::default_path(),
    }
}

/// The session file's path, for the commands that write or remove it. The error (no
/// configuration folder) is kept until then, so that commands without a session still run.
fn path_of(session_path: &anyhow::Result<PathBuf>) -> anyhow::Result<&Path> {
    session_path
        .as_deref()
        .map_err(|error| anyhow::anyhow!("{error:#}"))
}

/// A client builder with the TLS settings of `--ca-cert`, `--client-cert` and
/// `--client-key`.
///
/// # Errors
/// A file cannot be read (the message names its flag).
fn client_builder(tls: &TlsArgs) -> anyhow::Result<ChatServerClientBuilder> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("--{flag} {}: cannot read it", path.display()))
    };
    let mut builder = ChatServerClient::builder();
    if let Some(path) = &tls.ca_cert {
        builder = builder.ca_certificate(read("ca-cert", path)?);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        builder = builder.client_identity(read("client-cert", cert)?, read("client-key", key)?);
    }
    Ok(builder)
}

/// Runs `cli`'s command and returns what to print.
///
/// # Errors
/// Whatever failed, as one message; [`exit_status`] gives the exit status for it.
pub async fn run(cli: Cli) -> anyhow::Result<Output> {
    let session_path = session_path(cli.session_file);
    let saved = path_of(&session_path).and_then(session::load);
    let client = client_builder(&cli.tls)?
        .servers(servers(cli.servers.as_deref(), saved.as_ref().ok()))
        .deadline(Duration::from_millis(cli.deadline_ms))
        .build()?;
    match cli.command {
        Command::Signup { user } => sign_up(&client, &user).await,
        Command::Login { user } => log_in(&client, path_of(&session_path)?, &user).await,
        Command::Logout => {
            let (saved, token) = required(&saved)?;
            // An already-invalid session is as logged out as it gets.
            match client.log_out(&token).await {
                Ok(()) | Err(ClientError::Unauthenticated(_)) => {
                    session::remove(path_of(&session_path)?)?;
                }
                Err(error) => return Err(error.into()),
            }
            Ok(Output::new(
                format!("logged out {}", saved.username),
                json!({"username": saved.username}),
            ))
        }
        Command::Send { user, text } => {
            let (_, token) = required(&saved)?;
            let sent = client.send_message(&token, &user, &text.join(" ")).await?;
            Ok(Output::new(
                format!("sent message {} to {user} ({})", sent.id, sent.status),
                json!({"id": sent.id, "timestamp_ms": sent.timestamp_ms, "status": sent.status.as_str()}),
            ))
        }
        Command::Unread => {
            let (_, token) = required(&saved)?;
            let unread = client.unread_count(&token).await?;
            Ok(Output::new(
                format!("{unread} unread message(s)"),
                json!({"unread_count": unread}),
            ))
        }
        Command::Away { limit } => {
            let (_, token) = required(&saved)?;
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
            Ok(Output::new(
                text,
                json!({"messages": away.messages.iter().map(message_json).collect::<Vec<_>>(), "remaining": away.remaining}),
            ))
        }
        Command::Inbox { with_user, page } => {
            let (_, token) = required(&saved)?;
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
            Ok(Output::new(
                text,
                json!({"messages": listed.messages.iter().map(message_json).collect::<Vec<_>>(), "total_count": listed.total_count}),
            ))
        }
        Command::DeleteMessages { ids } => {
            let (_, token) = required(&saved)?;
            let deleted = client.delete_messages(&token, &ids).await?;
            Ok(Output::new(
                format!("deleted {deleted} message(s)"),
                json!({"deleted_count": deleted}),
            ))
        }
        Command::Accounts { pattern, page } => {
            let (_, token) = required(&saved)?;
            let query = AccountQuery {
                pattern,
                offset: page.offset,
                limit: page.limit,
                consistency: consistency(page),
            };
            let listed = client.list_accounts(&token, &query).await?;
            Ok(Output::new(
                output::account_table(&listed.accounts, listed.total_count),
                accounts_json(&listed.accounts, listed.total_count),
            ))
        }
        Command::DeleteAccount => {
            let (saved, token) = required(&saved)?;
            let prompt = format!(
                "Password for {} (the account will be deleted): ",
                saved.username
            );
            let password = password(&prompt, Confirm::Once)?;
            let deleted = client.delete_account(&token, &password).await?;
            session::remove(path_of(&session_path)?)?;
            Ok(Output::new(
                format!(
                    "deleted account {} and {deleted} message(s)",
                    saved.username
                ),
                json!({"username": saved.username, "deleted_messages": deleted}),
            ))
        }
        Command::Bench(ref args) => match args.mode {
            Some(crate::args::BenchMode::Failover(ref failover)) => {
                crate::bench::failover(args, failover).await
            }
            None => {
                crate::bench::run(
                    args,
                    servers(cli.servers.as_deref(), saved.as_ref().ok()),
                    client_builder(&cli.tls)?,
                )
                .await
            }
        },
        Command::Web {
            ref listen,
            ref public_origin,
            ref tls_cert,
            ref tls_key,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(web_tls(cert, key)?),
                _ => None,
            };
            web(client, listen, public_origin.clone(), tls).await
        }
        Command::Watch { after } => {
            let (_, token) = required(&saved)?;
            crate::live::watch(&client, &token, after, cli.json).await
        }
        Command::Chat { ref user } => {
            let (_, token) = required(&saved)?;
            crate::live::chat(&client, &token, user.as_deref()).await
        }
        Command::Cert { ref command } => crate::cert::run(command),
        Command::Cluster {
            command: ClusterCommand::Info,
        } => Ok(output::cluster(&client.cluster_info().await?)),
        Command::Cluster {
            command:
                ClusterCommand::Add {
                    id,
                    ref address,
                    ref secret,
                },
        } => {
            client
                .add_member(id, address, secret.cluster_secret.as_deref())
                .await?;
            Ok(Output::new(
                format!("node {id} at {address} is a voter of the cluster"),
                json!({"added": id, "address": address}),
            ))
        }
        Command::Backup {
            ref out,
            ref secret,
        } => backup(&client, out, secret.cluster_secret.as_deref()).await,
        Command::Cluster {
            command: ClusterCommand::Remove { id, ref secret },
        } => {
            client
                .remove_member(id, secret.cluster_secret.as_deref())
                .await?;
            Ok(Output::new(
                format!("node {id} is no longer a member of the cluster"),
                json!({"removed": id}),
            ))
        }
    }
}

/// `jochat signup USER`.
async fn sign_up(client: &ChatServerClient, user: &str) -> anyhow::Result<Output> {
    let password = password("Password: ", Confirm::Twice)?;
    let account = client.sign_up(user, &password).await?;
    Ok(Output::new(
        format!(
            "signed up as {} (id {}); now run `jochat login {}`",
            account.username, account.user_id, account.username
        ),
        json!({"user_id": account.user_id, "username": account.username}),
    ))
}

/// `jochat login USER`: logs in and saves the session (token and servers) for later commands.
async fn log_in(
    client: &ChatServerClient,
    session_path: &Path,
    user: &str,
) -> anyhow::Result<Output> {
    let password = password("Password: ", Confirm::Once)?;
    let logged_in = client.log_in(user, &password).await?;
    session::save(
        session_path,
        &SavedSession {
            username: logged_in.username.clone(),
            token: logged_in.token.as_str().to_owned(),
            servers: client.servers(),
        },
    )?;
    Ok(Output::new(
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
    ))
}

/// The certificate and key `jochat web` serves HTTPS with.
fn web_tls(cert: &Path, key: &Path) -> anyhow::Result<jochat_web::WebTls> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("--tls-cert {}: cannot read it", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("--tls-key {}: cannot read it", key.display()))?;
    Ok(jochat_web::WebTls::from_pem(&cert_pem, &key_pem)?)
}

/// `jochat web`: serves the page on `listen` (over HTTPS with `tls`) until Ctrl-C.
async fn web(
    client: ChatServerClient,
    listen: &str,
    public_origin: Option<jochat_web::PublicOrigin>,
    tls: Option<jochat_web::WebTls>,
) -> anyhow::Result<Output> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there"))?;
    let address = listener
        .local_addr()
        .context("--listen: the bound socket has no address")?;
    // Printed at once (and flushed) so that scripts and tests can find the port.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("JoChat web: {scheme}://{address}/ (Ctrl-C stops)");
    std::io::Write::flush(&mut std::io::stdout()).context("stdout is gone")?;
    let stop = async {
        // Without a Ctrl-C handler the process still stops on the signal's default action.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let options = public_origin
        .map(jochat_web::WebOptions::with_public_origin)
        .unwrap_or_default();
    match tls {
        Some(tls) => jochat_web::serve_tls(listener, client, options, tls, stop).await,
        None => jochat_web::serve_with(listener, client, options, stop).await,
    }
    .context("serving the web page")?;
    Ok(Output::new(
        "JoChat web stopped",
        json!({"stopped": address.to_string()}),
    ))
}

/// `jochat backup`: the copy, with a progress bar on a terminal.
async fn backup(
    client: &ChatServerClient,
    out: &std::path::Path,
    secret: Option<&str>,
) -> anyhow::Result<Output> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let saved = client
        .backup_to(out, secret, |received, total| {
            bar.set_length(total);
            bar.set_position(received);
        })
        .await;
    bar.finish_and_clear();
    let saved = saved?;
    Ok(Output::new(
        format!(
            "backup at log index {} written to {} ({} bytes, SHA-256 {})",
            saved.index,
            out.display(),
            saved.bytes,
            saved.sha256
        ),
        json!({
            "index": saved.index,
            "file": out.display().to_string(),
            "bytes": saved.bytes,
            "sha256": saved.sha256,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(servers: &[&str]) -> SavedSession {
        SavedSession {
            username: "alice".into(),
            token: "t0k3n".into(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn servers_come_from_the_flag_then_the_session_then_the_default() {
        let given = vec!["a:1".to_owned(), "b:2".to_owned()];
        let session = saved(&["c:3"]);
        assert_eq!(servers(Some(&given), Some(&session)), given);
        assert_eq!(servers(None, Some(&session)), ["c:3"]);
        assert_eq!(servers(None, Some(&saved(&[]))), [SERVERS_DEFAULT]);
        assert_eq!(servers(None, None), [SERVERS_DEFAULT]);
    }

    #[test]
    fn input_errors_exit_with_2_and_the_rest_with_1() {
        let status = |error: anyhow::Error| exit_status(&error);
        assert_eq!(
            status(InputError("the passwords do not match".into()).into()),
            2
        );
        assert_eq!(
            status(ClientError::InvalidArgument("content: empty".into()).into()),
            2
        );
        assert_eq!(
            status(ClientError::NotFound("recipient: no account".into()).into()),
            2
        );
        let address = ClientError::InvalidAddress {
            address: "x".into(),
            reason: "expected HOST:PORT".into(),
        };
        assert_eq!(status(address.into()), 2);
        assert_eq!(status(ClientError::Unavailable("refused".into()).into()), 1);
        assert_eq!(
            status(ClientError::Unauthenticated("wrong".into()).into()),
            1
        );
        assert_eq!(
            status(anyhow::anyhow!("not logged in: run `jochat login USER`")),
            1
        );
    }

    #[test]
    fn commands_needing_a_session_say_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = session::load(&dir.path().join("session.json"));
        let error = required(&missing).unwrap_err();
        assert_eq!(error.to_string(), "not logged in: run `jochat login USER`");
        let present = Ok(saved(&["a:1"]));
        let (session, token) = required(&present).unwrap();
        assert_eq!(session.username, "alice");
        assert_eq!(token.as_str(), "t0k3n");
    }
}
