//! Backups, for operators: a consistent copy of the cluster's chat state, from the leader's
//! internal service (`jochat.internal.v1.Raft`, `Backup`), saved to a local file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::BackupRequest;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::admin::with_secret;
use crate::client::ChatServerClient;
use crate::error::ClientError;

/// How long the stream may stay silent between two chunks before the backup is abandoned.
pub const BACKUP_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// A backup saved by [`ChatServerClient::backup_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The last log index the backup holds: every write the cluster acknowledged before the
    /// backup began is in it.
    pub index: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The file's SHA-256, lowercase hex (also written to `<file>.sha256`).
    pub sha256: String,
}

fn io(path: &Path, what: &str, error: &std::io::Error) -> ClientError {
    ClientError::Io(format!("{what} {}: {error}", path.display()))
}

impl ChatServerClient {
    /// Saves a consistent copy of the cluster's chat state to `out`: the leader copies it
    /// (holding every write acknowledged before the call; writes go on meanwhile) and streams
    /// it; the copy is written to `out.partial`, its SHA-256 checked against the leader's,
    /// flushed to disk and renamed to `out` (replacing any file there), and the checksum
    /// written to `out.sha256` in `sha256sum`'s format. The file is a plain SQLite database
    /// that `jochat-node --restore` starts a new cluster from. `progress` is called with the
    /// bytes received and the total as chunks arrive.
    ///
    /// Backups are for operators: under TLS the client needs a certificate the cluster's CA
    /// signed as its identity (a client or node certificate), or else `cluster_secret`, the
    /// cluster's `--cluster-secret`; without TLS the secret when the cluster has one. The client's deadline bounds finding the leader and the start of the copy;
    /// after that the transfer may take as long as it needs while chunks keep coming
    /// ([`BACKUP_CHUNK_TIMEOUT`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// let dir = tempfile::tempdir()?;
    /// let out = dir.path().join("chat.backup");
    /// let backup = client.backup_to(&out, None, |_, _| {}).await?;
    /// assert_eq!(std::fs::metadata(&out)?.len(), backup.bytes);
    /// assert!(dir.path().join("chat.backup.sha256").exists());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::PermissionDenied`] without the secret or certificate the cluster asks
    /// for; [`ClientError::Unavailable`] or [`ClientError::DeadlineExceeded`] when no leader
    /// began the copy in time; [`ClientError::InvalidResponse`] when the stream ends early or
    /// the checksum does not match; [`ClientError::Io`] when the file cannot be written.
    /// Nothing is left at `out` on failure.
    pub async fn backup_to(
        &self,
        out: &Path,
        cluster_secret: Option<&str>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Backup, ClientError> {
        let mut stream = self.start_backup(cluster_secret).await?;
        let partial = PathBuf::from(format!("{}.partial", out.display()));
        let result = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| io(&partial, "cannot create", &e))?;
            let mut hasher = Sha256::new();
            let (mut index, mut total, mut received) = (0, 0, 0u64);
            let mut first = true;
            let announced = loop {
                let next = tokio::time::timeout(BACKUP_CHUNK_TIMEOUT, stream.message())
                    .await
                    .map_err(|_| {
                        ClientError::Unavailable(format!(
                            "the backup stream stalled for {BACKUP_CHUNK_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(|status| {
                        ClientError::from_status(&status, "backup", self.deadline(), "the leader")
                    })?;
                let Some(chunk) = next else {
                    return Err(ClientError::InvalidResponse(format!(
                        "the backup stream ended after {received} of {total} bytes, before its \
                         checksum"
                    )));
                };
                if first {
                    (index, total) = (chunk.index, chunk.total_bytes);
                    first = false;
                }
                hasher.update(&chunk.data);
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| io(&partial, "cannot write", &e))?;
                received += chunk.data.len() as u64;
                progress(received, total);
                if !chunk.sha256.is_empty() {
                    break chunk.sha256;
                }
            };
            let actual = hasher.finalize();
            if announced != actual.as_slice() || received != total {
                return Err(ClientError::InvalidResponse(format!(
                    "the backup arrived damaged: {received} of {total} bytes, SHA-256 {} where \
                     the leader sent {}",
                    hex::encode(actual),
                    hex::encode(&announced)
                )));
            }
            file.sync_all()
                .await
                .map_err(|e| io(&partial, "cannot flush", &e))?;
            drop(file);
            let sha256 = hex::encode(actual);
            let name = out
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let sums = PathBuf::from(format!("{}.sha256", out.display()));
            tokio::fs::write(&sums, format!("{sha256}  {name}\n"))
                .await
                .map_err(|e| io(&sums, "cannot write", &e))?;
            tokio::fs::rename(&partial, out)
                .await
                .map_err(|e| io(out, "cannot rename the backup to", &e))?;
            Ok(Backup {
                index,
                bytes: received,
                sha256,
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Finds the leader and starts its backup stream, retrying retryable failures (no
    /// leader yet, a leader change) until the client's deadline.
    async fn start_backup(
        &self,
        cluster_secret: Option<&str>,
    ) -> Result<tonic::Streaming<jochat_proto::internal::v1::BackupChunk>, ClientError> {
        self.at_leader("backup", |leader, remaining| async move {
            let attempt = async {
                let channel = self
                    .inner
                    .transport
                    .endpoint(&leader, &leader)
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
                    .connect()
                    .await
                    .map_err(|e| {
                        tonic::Status::unavailable(format!(
                            "cannot reach the leader at {leader}: {e}"
                        ))
                    })?;
                // No deadline on the request: it would bound the whole transfer.
                let request = with_secret(BackupRequest {}, cluster_secret, None)?;
                RaftClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .backup(request)
                    .await
            };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(stream) => stream.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(
                    "the leader did not begin the backup in time",
                )),
            }
        })
        .await
    }
}
