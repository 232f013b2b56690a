//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The JoChat command line.
#[derive(Debug, Parser)]
#[command(name = "jochat", version, about = "JoChat from the command line")]
pub struct Cli {
    /// Servers to talk to, as HOST:PORT,... [default: the servers of the saved session, else
    /// 127.0.0.1:5001]
    #[arg(long, env = "JOCHAT_SERVERS", value_delimiter = ',', global = true)]
    pub servers: Option<Vec<String>>,
    /// Where the session token is kept [default: jochat/session.json in the user
    /// configuration folder]
    #[arg(long = "session-file", env = "JOCHAT_SESSION_FILE", global = true)]
    pub session_file: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one command may wait for the servers, in milliseconds (retries included).
    #[arg(
        long = "deadline-ms",
        env = "JOCHAT_DEADLINE_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub deadline_ms: u64,
    /// How to reach servers that serve TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// TLS towards the servers.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM, `ca.crt` of `jochat cert create-ca`): servers are
    /// then called over TLS and must present a certificate it signed.
    #[arg(long = "ca-cert", env = "JOCHAT_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for servers that ask for one.
    #[arg(
        long = "client-cert",
        env = "JOCHAT_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long = "client-key",
        env = "JOCHAT_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// A page of a listing.
#[derive(Debug, Clone, Copy, Args)]
pub struct PageArgs {
    /// Items to skip.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Items to show (1-1000; 0 for the server's default of 50).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Read from whichever server answers, even if slightly behind.
    #[arg(long)]
    pub stale: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account (the password is asked for, or read from JOCHAT_PASSWORD).
    Signup {
        /// 1-32 letters, digits, '_', '-', '.'.
        user: String,
    },
    /// Log in and keep the session for the next commands.
    Login {
        /// The account.
        user: String,
    },
    /// End the session.
    Logout,
    /// Send a message.
    Send {
        /// The recipient.
        user: String,
        /// The text (the words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// How many messages arrived while you were away.
    Unread,
    /// Fetch the messages that arrived while you were away (marks them delivered).
    Away {
        /// How many at most (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Your inbox, newest first.
    Inbox {
        /// Only the conversation with this user.
        #[arg(long = "with")]
        with_user: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete messages from your inbox by id.
    DeleteMessages {
        /// The ids (at most 1000).
        #[arg(required = true, num_args = 1..)]
        ids: Vec<i64>,
    },
    /// Search accounts: '*' any run, '?' one character, plain text a substring.
    Accounts {
        /// The pattern (all accounts when left out).
        #[arg(default_value = "")]
        pattern: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete your account and all its messages (asks for the password again).
    DeleteAccount,
    /// Print incoming messages as they arrive (one JSON object per line with `--json`), until
    /// Ctrl-C; follows the cluster through failovers.
    Watch {
        /// Start after this message id (to resume); by default, only new messages.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Chat interactively: the unread count, then incoming messages live, and each line typed
    /// is sent (to USER, or `@user text`); `/quit` leaves.
    Chat {
        /// Whom lines without `@user` go to.
        user: Option<String>,
    },
    /// Serve the web page for people who chat, and its JSON API, until Ctrl-C. Every call goes
    /// through the failover client to `--servers`.
    Web {
        /// Where to serve, `HOST:PORT` (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// The origin browsers see when the page is served through a proxy, e.g.
        /// `https://chat.example.com`: API calls must come from it, and with `https` the
        /// session cookie is `Secure`.
        #[arg(long = "public-origin", env = "JOCHAT_PUBLIC_ORIGIN", value_parser = jochat_web::PublicOrigin::parse)]
        public_origin: Option<jochat_web::PublicOrigin>,
        /// Serve HTTPS with this certificate (PEM, the chain with the server's first);
        /// session cookies are then `Secure`.
        #[arg(long = "tls-cert", env = "JOCHAT_WEB_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The key of `--tls-cert` (PEM).
        #[arg(long = "tls-key", env = "JOCHAT_WEB_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Measure: closed-loop load through the failover client, latency in an HDR histogram
    /// (`--json`: one object on the last line). `--local N` starts its own N-node cluster.
    Bench(BenchArgs),
    /// Certificates for a TLS cluster: a CA, node and client certificates signed by it.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Save a consistent copy of the cluster's chat state: the leader copies it (with every
    /// write acknowledged before the command; writes go on meanwhile) and streams it here.
    /// The file is written atomically, checked against the leader's SHA-256 (also written to
    /// FILE.sha256) and is plain SQLite; `jochat-node --restore FILE` starts a new cluster
    /// from it. Under TLS needs a certificate the cluster's CA signed as
    /// `--client-cert`/`--client-key` (or the cluster secret); otherwise the cluster secret
    /// when there is one.
    Backup {
        /// Where to write the backup (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        secret: SecretArg,
    },
}

/// Certificate commands.
// The subcommands are `create-ca`, `create-node` and `create-client`, the names operators
// know from other databases' certificate tools; clap derives them from the variants.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Makes the cluster's certificate authority: `ca.crt` and `ca.key` (0600).
    CreateCa {
        /// The folder the certificates and keys go in.
        #[arg(long = "certs-dir", env = "JOCHAT_CERTS_DIR")]
        certs_dir: PathBuf,
        /// Replace files that exist already.
        #[arg(long)]
        overwrite: bool,
    },
    /// Makes `node.crt` and `node.key` (0600), signed by the CA in the folder, naming every
    /// HOST the node is reached at (DNS names and IP addresses), for serving and for
    /// calling other nodes.
    CreateNode {
        /// The folder holding `ca.crt` and `ca.key`; the node's files go there too.
        #[arg(long = "certs-dir", env = "JOCHAT_CERTS_DIR")]
        certs_dir: PathBuf,
        /// The names and addresses the node is reached at.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Replace files that exist already.
        #[arg(long)]
        overwrite: bool,
    },
    /// Makes `client.NAME.crt` and `client.NAME.key` (0600), signed by the CA in the folder,
    /// for a client that authenticates with a certificate.
    CreateClient {
        /// The folder holding `ca.crt` and `ca.key`; the client's files go there too.
        #[arg(long = "certs-dir", env = "JOCHAT_CERTS_DIR")]
        certs_dir: PathBuf,
        /// The client's name (letters, digits, `_`, `-`, `.`).
        name: String,
        /// Replace files that exist already.
        #[arg(long)]
        overwrite: bool,
    },
}

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term and indexes as a node sees them.
    Info,
    /// Adds a running node (started with an empty database and `--peers` naming a member) to
    /// the cluster: a learner first, a voter once it has caught up. Give a deadline
    /// (`--deadline-ms`) long enough for it to receive the whole database.
    Add {
        /// The node's server id.
        id: u64,
        /// Where it serves, `HOST:PORT`.
        address: String,
        #[command(flatten)]
        secret: SecretArg,
    },
    /// Removes a node (voter or learner) from the cluster. Stop it afterwards; its database
    /// no longer belongs to the cluster.
    Remove {
        /// The node's server id.
        id: u64,
        #[command(flatten)]
        secret: SecretArg,
    },
}

/// What `jochat bench` measures, and against what.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// `failover`: kill the leader again and again instead of measuring one operation.
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Start an N-node cluster of `jochat-node` processes in a temporary folder (the binary
    /// beside this one, or `--node-binary`), and stop it at the end; instead of `--servers`.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub local: Option<u64>,
    /// The `jochat-node` binary for `--local`.
    #[arg(long = "node-binary", global = true, env = "JOCHAT_NODE_BINARY")]
    pub node_binary: Option<PathBuf>,
    /// The operation: send, login, inbox (a page of 50), accounts (a search, page of 50),
    /// subscribe (send to oneself, wait for it on one's live stream), or mixed (50% send,
    /// 40% inbox, 10% accounts).
    #[arg(long, value_enum, default_value_t = BenchOp::Send)]
    pub op: BenchOp,
    /// Client tasks calling at once, each one call at a time.
    #[arg(
        long = "concurrency",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub concurrency_raw: u64,
    /// How long to measure (`10s`, `500ms`, `2m`).
    #[arg(long, default_value = "10s", value_parser = crate::bench::parse_duration)]
    pub duration: std::time::Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = crate::bench::parse_duration)]
    pub warmup: std::time::Duration,
    /// Messages to store first, through the normal write path (for inbox and accounts at
    /// scale).
    #[arg(long = "preload-messages", default_value_t = 0)]
    pub preload_messages: u64,
    /// Accounts to make first, through the normal write path (each sign-up is one argon2
    /// hash on the server), named like the benchmark's own, so the `accounts` search
    /// (`bench*`) runs over all of them.
    #[arg(long = "preload-accounts", default_value_t = 0)]
    pub preload_accounts: u64,
    /// Pad the content of preloaded and sent messages to this many bytes (to fill a database
    /// to a given size); 0 keeps them short.
    #[arg(long = "content-bytes", default_value_t = 0)]
    pub content_bytes: usize,
    /// With `--local`: make a CA and a node certificate in the cluster's folder and run the
    /// nodes over TLS (mutual TLS between nodes), the client trusting that CA.
    #[arg(long, global = true, requires = "local")]
    pub tls: bool,
}

impl BenchArgs {
    /// The number of client tasks.
    pub fn concurrency(&self) -> usize {
        usize::try_from(self.concurrency_raw).unwrap_or(usize::MAX)
    }
}

/// What `jochat bench` does instead of measuring one operation.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchMode {
    /// Write continuously while SIGKILLing the leader, restarting it, and again (`--local`
    /// with at least 3 nodes): reports each pause from the kill to the first acknowledged
    /// write, and checks that no acknowledged write was lost or doubled.
    Failover(FailoverArgs),
}

/// How `jochat bench failover` runs.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub kills: u64,
    /// Client tasks writing at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub writers: u64,
}

/// The operation `jochat bench` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// Send a message.
    Send,
    /// Log in (argon2id on the server).
    Login,
    /// Read a page of 50 from one's inbox.
    Inbox,
    /// Search accounts (`bench*`), a page of 50.
    Accounts,
    /// Send a message to oneself and wait until it arrives on one's live stream (Subscribe):
    /// the latency from sending to delivery.
    Subscribe,
    /// 50% send, 40% inbox, 10% accounts.
    Mixed,
}

impl BenchOp {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Login => "login",
            Self::Inbox => "inbox",
            Self::Accounts => "accounts",
            Self::Subscribe => "subscribe",
            Self::Mixed => "mixed",
        }
    }
}

/// The cluster's secret, for membership changes.
#[derive(Debug, Clone, Args)]
pub struct SecretArg {
    /// The cluster's `--cluster-secret`, if it has one.
    #[arg(
        long = "cluster-secret",
        env = "JOCHAT_CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jochat").chain(args.iter().copied()))
    }

    #[test]
    fn commands_parse() {
        let cli = parse(&[
            "--servers",
            "a:1,b:2",
            "--json",
            "send",
            "bob",
            "hello",
            "there",
        ])
        .unwrap();
        assert_eq!(cli.servers, Some(vec!["a:1".to_owned(), "b:2".to_owned()]));
        assert!(cli.json);
        assert!(
            matches!(cli.command, Command::Send { ref user, ref text } if user == "bob" && text == &["hello", "there"])
        );

        let cli = parse(&[
            "inbox", "--offset", "20", "--limit", "10", "--with", "alice",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Inbox { ref with_user, page } if with_user.as_deref() == Some("alice") && page.offset == 20 && page.limit == 10)
        );

        let cli = parse(&[
            "unread",
            "--deadline-ms",
            "500",
            "--session-file",
            "/tmp/s.json",
        ])
        .unwrap();
        assert_eq!(cli.deadline_ms, 500);
        assert_eq!(cli.session_file, Some(PathBuf::from("/tmp/s.json")));
        assert!(!cli.json);

        let cli = parse(&["away"]).unwrap();
        assert!(matches!(cli.command, Command::Away { limit: 100 }));

        let cli = parse(&["accounts", "al*", "--stale", "--offset", "3"]).unwrap();
        assert!(
            matches!(cli.command, Command::Accounts { ref pattern, page } if pattern == "al*" && page.stale && page.offset == 3)
        );

        let cli = parse(&["accounts"]).unwrap();
        assert!(matches!(cli.command, Command::Accounts { ref pattern, .. } if pattern.is_empty()));
        assert!(matches!(
            parse(&["cluster", "info"]).unwrap().command,
            Command::Cluster {
                command: ClusterCommand::Info
            }
        ));
        assert!(
            matches!(parse(&["delete-messages", "1", "2"]).unwrap().command, Command::DeleteMessages { ref ids } if ids == &[1, 2])
        );
        assert!(matches!(
            parse(&["cluster", "add", "4", "127.0.0.1:5004", "--cluster-secret", "s"]).unwrap().command,
            Command::Cluster { command: ClusterCommand::Add { id: 4, ref address, ref secret } }
                if address == "127.0.0.1:5004" && secret.cluster_secret.as_deref() == Some("s")
        ));
        assert!(matches!(
            parse(&["cluster", "remove", "2"]).unwrap().command,
            Command::Cluster {
                command: ClusterCommand::Remove { id: 2, .. }
            }
        ));
    }

    #[test]
    fn bad_usage_is_refused() {
        assert!(parse(&["send", "bob"]).is_err());
        assert!(parse(&["inbox", "--offset", "-1"]).is_err());
        assert!(parse(&["delete-messages"]).is_err());
        assert!(parse(&["fly"]).is_err());
        assert!(parse(&["--deadline-ms", "0", "unread"]).is_err());
        assert!(parse(&["delete-messages", "seven"]).is_err());
        assert!(parse(&["cluster"]).is_err());
    }
}
