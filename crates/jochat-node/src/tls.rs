//! TLS for a node (`--tls-cert`, `--tls-key`, `--tls-ca`): what it serves with, what it
//! presents to its peers, and which callers count as members of the cluster.
//!
//! One port serves everything, so the server asks every caller for a certificate without
//! requiring one: clients of the chat API need none, but a certificate that is offered must
//! be signed by the cluster CA or the handshake fails. The internal Raft service then accepts
//! only callers whose verified certificate was issued for serving ([`is_cluster_member`]):
//! node certificates are (`jochat cert create-node`), client certificates are not.
//!
//! [`NodeTls`] keeps the files' paths and the material read from them; [`NodeTls::reload`]
//! reads them again (on SIGHUP) and swaps the material for new connections, keeping the old
//! one if the new files do not load.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::NodeError;

/// How long a TLS handshake may take before the connection is dropped, so that a caller that
/// connects and says nothing does not hold a connection place for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three PEM files of a node's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate (`--tls-cert`), naming every host it is called by.
    pub cert: PathBuf,
    /// The node's private key (`--tls-key`).
    pub key: PathBuf,
    /// The cluster CA's certificate (`--tls-ca`): peers and client certificates must be
    /// signed by it.
    pub ca: PathBuf,
}

/// What one reading of the files gives.
struct Material {
    server: Arc<rustls::ServerConfig>,
    peers: ClientTlsConfig,
}

/// A node's TLS: the files and the material last read from them.
pub struct NodeTls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads and checks `files`.
    ///
    /// # Errors
    /// `NodeError::Config` naming the flag whose file cannot be read or used.
    pub fn load(files: TlsFiles) -> Result<Self, NodeError> {
        let material = Material::read(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(material)),
        })
    }

    /// The files this TLS was read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and uses them for every new connection, in and out. On error the
    /// material in use stays.
    ///
    /// # Errors
    /// As [`NodeTls::load`].
    pub fn reload(&self) -> Result<(), NodeError> {
        let material = Material::read(&self.files)?;
        *self
            .current
            .write()
            .expect("the TLS material's lock is never held across a panic") = Arc::new(material);
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        Arc::clone(
            &self
                .current
                .read()
                .expect("the TLS material's lock is never held across a panic"),
        )
    }

    /// The acceptor for the next incoming connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.material().server))
    }

    /// How this node calls its peers: trusting the cluster CA only, presenting its own
    /// certificate.
    pub(crate) fn peer_config(&self) -> ClientTlsConfig {
        self.material().peers.clone()
    }
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, NodeError> {
        let cert_pem = read_pem("tls-cert", &files.cert)?;
        let key_pem = read_pem("tls-key", &files.key)?;
        let ca_pem = read_pem("tls-ca", &files.ca)?;
        let invalid = |flag: &'static str, path: &Path, rule: String| NodeError::Config {
            flag,
            rule: format!("{}: {rule}", path.display()),
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(
                    "tls-cert",
                    &files.cert,
                    format!("not a PEM certificate: {e}"),
                )
            })?;
        if chain.is_empty() {
            return Err(invalid(
                "tls-cert",
                &files.cert,
                "holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid("tls-key", &files.key, format!("not a PEM private key: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            let ca = ca
                .map_err(|e| invalid("tls-ca", &files.ca, format!("not a PEM certificate: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| invalid("tls-ca", &files.ca, format!("unusable CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid("tls-ca", &files.ca, "holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid("tls-ca", &files.ca, e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls-cert", &files.cert, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                invalid(
                    "tls-key",
                    &files.key,
                    format!("does not go with --tls-cert: {e}"),
                )
            })?;
        // gRPC is HTTP/2 only.
        server.alpn_protocols = vec![b"h2".to_vec()];
        let peers = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&cert_pem, &key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        Ok(Self {
            server: Arc::new(server),
            peers,
        })
    }
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, NodeError> {
    std::fs::read(path).map_err(|error| NodeError::Config {
        flag,
        rule: format!("cannot read {}: {error}", path.display()),
    })
}

/// Whether `certificate` (already verified against the cluster CA by the handshake) belongs
/// to a node of the cluster: it was issued for serving (extended key usage `serverAuth`).
/// Node certificates are; client certificates carry `clientAuth` only.
pub(crate) fn is_cluster_member(certificate: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return false;
    };
    matches!(parsed.extended_key_usage(), Ok(Some(usage)) if usage.value.server_auth)
}

/// Why a TLS handshake failed, when it is worth an operator's attention: a certificate the
/// cluster does not trust. Other failures (a plaintext caller, a dropped connection) are
/// routine.
pub(crate) fn refused_certificate(error: &std::io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .filter(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jochat_testkit::tls::TestCerts;

    fn files(certs: &TestCerts) -> TlsFiles {
        TlsFiles {
            cert: certs.path("node.crt"),
            key: certs.path("node.key"),
            ca: certs.path("ca.crt"),
        }
    }

    #[test]
    fn files_that_do_not_load_are_refused_naming_their_flag() {
        let certs = TestCerts::new();
        let tls = NodeTls::load(files(&certs)).expect("the test certificates load");
        tls.reload().expect("and load again");

        let missing = TlsFiles {
            cert: certs.path("absent.crt"),
            ..files(&certs)
        };
        let error = NodeTls::load(missing).unwrap_err().to_string();
        assert!(error.starts_with("--tls-cert: cannot read"), "{error}");
        let not_a_key = TlsFiles {
            key: certs.path("ca.crt"),
            ..files(&certs)
        };
        let error = NodeTls::load(not_a_key).unwrap_err().to_string();
        assert!(error.starts_with("--tls-key: "), "{error}");
        let not_a_ca = TlsFiles {
            ca: certs.path("node.key"),
            ..files(&certs)
        };
        let error = NodeTls::load(not_a_ca).unwrap_err().to_string();
        assert!(error.starts_with("--tls-ca: "), "{error}");
    }

    #[test]
    fn only_certificates_issued_for_serving_are_cluster_members() {
        let certs = TestCerts::new();
        let node = CertificateDer::from_pem_slice(&certs.pem("node.crt")).unwrap();
        let ca = CertificateDer::from_pem_slice(&certs.pem("ca.crt")).unwrap();
        assert!(is_cluster_member(&node));
        assert!(!is_cluster_member(&ca), "no extended key usage at all");
        assert!(!is_cluster_member(&CertificateDer::from(vec![0u8; 8])));
    }
}
