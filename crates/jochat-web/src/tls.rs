//! Serving the gateway over HTTPS itself (`jochat web --tls-cert --tls-key`): a rustls
//! acceptor, each connection's handshake on its own task, then HTTP/1.1 or HTTP/2 as the
//! browser negotiates (ALPN).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use jochat_client::ChatServerClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::{router_with, WebOptions};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after `accept` failed (out of file descriptors).
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The certificate and key the gateway serves HTTPS with.
#[derive(Clone)]
pub struct WebTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for WebTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTls").finish_non_exhaustive()
    }
}

impl WebTls {
    /// The certificate chain `cert_pem` (the server's certificate first) and its private key
    /// `key_pem`, both PEM.
    ///
    /// # Errors
    /// `InvalidInput`, saying which: the certificate or key is not PEM, or they do not match.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("tls-cert: not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("tls-cert: holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid(format!("tls-key: not a PEM private key: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("tls-key: does not go with the certificate: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Serves [`router_with`] over HTTPS on `listener` until `shutdown` completes; session
/// cookies are `Secure` and the page's own origin is `https://` and its host. Open
/// connections, live streams included, are cut at shutdown.
///
/// # Errors
/// None in practice: a failed `accept` (such as running out of file descriptors) is logged
/// and retried after a pause, and a failed handshake drops only its connection.
pub async fn serve_tls(
    listener: TcpListener,
    client: ChatServerClient,
    options: WebOptions,
    tls: WebTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let options = WebOptions {
        serves_https: true,
        ..options
    };
    let service = TowerToHyperService::new(router_with(client, options));
    let acceptor = TlsAcceptor::from(tls.config);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, caller) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%caller, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%caller, "TLS handshake timed out");
                        return;
                    }
                };
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%caller, %error, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}
