//! Cluster membership, for operators: add a node to the cluster or remove one. These calls
//! go to the leader's internal service (`jochat.internal.v1.Raft`, `Join` and `Leave`) and
//! carry the cluster secret when the cluster has one.

use std::time::{Duration, Instant};

use jochat_proto::internal::v1::raft_client::RaftClient;
use jochat_proto::internal::v1::{JoinRequest, LeaveRequest};
use tonic::{Request, Status};

use crate::client::{ChatServerClient, BACKOFF_INITIAL, BACKOFF_MAX};
use crate::error::ClientError;
use crate::routing::{jittered, parse_address};

/// The metadata key the cluster secret travels in.
const CLUSTER_SECRET_HEADER: &str = "jochat-cluster-secret";

/// One membership change, as sent to the leader.
#[derive(Clone, Copy)]
enum Change<'a> {
    Add { id: u64, address: &'a str },
    Remove { id: u64 },
}

impl ChatServerClient {
    /// Adds node `id`, serving at `address` (`host:port`), to the cluster: the leader adds it
    /// as a learner, sends it a snapshot and the log, and makes it a voter once it has caught
    /// up. Returns when the node is a voter. The node must be running (started with an empty
    /// database and `--peers` naming a member); adding a voter already in the cluster does
    /// nothing. `cluster_secret` is the cluster's `--cluster-secret`, if it has one.
    ///
    /// Catching up a large database takes time: give the client a deadline to match.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// use jochat_client::ClientError;
    ///
    /// // Server ids start at 1; the address is checked before anything is sent.
    /// let refused = client.add_member(0, "127.0.0.1:5004", None).await.unwrap_err();
    /// assert!(matches!(refused, ClientError::InvalidArgument(ref m) if m.starts_with("id: ")));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for id 0 or a bad address;
    /// [`ClientError::PermissionDenied`] for a wrong or missing secret;
    /// [`ClientError::Unavailable`] or [`ClientError::DeadlineExceeded`] when no leader
    /// completed the change in time.
    pub async fn add_member(
        &self,
        id: u64,
        address: &str,
        cluster_secret: Option<&str>,
    ) -> Result<(), ClientError> {
        if id == 0 {
            return Err(ClientError::InvalidArgument(
                "id: must be a positive server id".into(),
            ));
        }
        let address = parse_address(address)?;
        self.change_membership(
            Change::Add {
                id,
                address: &address,
            },
            cluster_secret,
        )
        .await
    }

    /// Removes node `id` (a voter or a learner) from the cluster. Removing the leader is
    /// allowed: it commits the change and the others elect a new leader. The removed node
    /// should then be stopped; its database no longer belongs to the cluster.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when `id` is not a member;
    /// [`ClientError::FailedPrecondition`] when the change is refused (for example removing
    /// the last voter); as [`ChatServerClient::add_member`] otherwise.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = jochat_node::spawn_ephemeral().await?;
    /// # let client = jochat_client::ChatServerClient::builder().servers([node.address()]).build()?;
    /// use jochat_client::ClientError;
    ///
    /// let unknown = client.remove_member(9, None).await.unwrap_err();
    /// assert!(matches!(unknown, ClientError::NotFound(_)));
    /// // The only voter cannot go: the cluster would have nobody left.
    /// let last = client.remove_member(1, None).await.unwrap_err();
    /// assert!(matches!(last, ClientError::FailedPrecondition(_)), "{last}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove_member(
        &self,
        id: u64,
        cluster_secret: Option<&str>,
    ) -> Result<(), ClientError> {
        self.change_membership(Change::Remove { id }, cluster_secret)
            .await
    }

    /// Finds the leader through ClusterInfo and asks it for `change`, retrying retryable
    /// failures (no leader yet, a leader change, a change already in progress elsewhere)
    /// until the deadline.
    async fn change_membership(
        &self,
        change: Change<'_>,
        cluster_secret: Option<&str>,
    ) -> Result<(), ClientError> {
        let operation = match change {
            Change::Add { .. } => "add_member",
            Change::Remove { .. } => "remove_member",
        };
        self.at_leader(operation, |leader, remaining| async move {
            send(self, &leader, change, cluster_secret, remaining).await
        })
        .await
    }

    /// Finds the leader through ClusterInfo and runs `attempt` against it (with the time
    /// left), retrying retryable failures (no leader yet, a leader change, a change already
    /// in progress elsewhere) with backoff until the client's deadline.
    pub(crate) async fn at_leader<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(String, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = self.deadline();
        let started = Instant::now();
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let error = match self.cluster_info().await?.leader_address {
                None => ClientError::Unavailable("the cluster has no leader right now".into()),
                Some(leader) => {
                    let remaining = deadline.saturating_sub(started.elapsed());
                    match attempt(leader.clone(), remaining).await {
                        Ok(value) => return Ok(value),
                        Err(status) => {
                            ClientError::from_status(&status, operation, deadline, &leader)
                        }
                    }
                }
            };
            if !error.is_retryable() {
                return Err(error);
            }
            let pause = jittered(backoff);
            if started.elapsed() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Sends one membership change to `leader`, within `remaining`.
async fn send(
    client: &ChatServerClient,
    leader: &str,
    change: Change<'_>,
    cluster_secret: Option<&str>,
    remaining: Duration,
) -> Result<(), Status> {
    let exchange = async {
        let channel = client
            .inner
            .transport
            .endpoint(leader, leader)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot reach the leader at {leader}: {e}"))
            })?;
        let mut client = RaftClient::new(channel);
        match change {
            Change::Add { id, address } => {
                let message = JoinRequest {
                    node_id: id,
                    address: address.to_owned(),
                };
                let request = with_secret(message, cluster_secret, Some(remaining))?;
                client.join(request).await.map(drop)
            }
            Change::Remove { id } => {
                let message = LeaveRequest { node_id: id };
                let request = with_secret(message, cluster_secret, Some(remaining))?;
                client.leave(request).await.map(drop)
            }
        }
    };
    tokio::time::timeout(remaining, exchange)
        .await
        .map_err(|_| Status::deadline_exceeded("the membership change did not finish in time"))?
}

/// Wraps `message` with the secret and, when given, the deadline (a stream's deadline would
/// bound the whole transfer).
pub(crate) fn with_secret<M>(
    message: M,
    cluster_secret: Option<&str>,
    remaining: Option<Duration>,
) -> Result<Request<M>, Status> {
    let mut request = Request::new(message);
    if let Some(remaining) = remaining {
        request.set_timeout(remaining);
    }
    if let Some(secret) = cluster_secret {
        let value = secret
            .parse()
            .map_err(|_| Status::invalid_argument("cluster secret: must be printable ASCII"))?;
        request.metadata_mut().insert(CLUSTER_SECRET_HEADER, value);
    }
    Ok(request)
}
