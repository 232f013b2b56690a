//! How the client reaches servers: plaintext HTTP/2, or TLS with a CA certificate (or the
//! system's roots) and an optional client certificate. [`Transport`] turns a `host:port` into
//! the endpoint every server of one client shares.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;

/// TLS settings given to the builder, checked by [`Transport::new`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    /// PEM of the CA certificates to trust instead of the system's roots.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate and its key.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsSettings {
    /// Whether any TLS setting was given.
    pub(crate) fn any(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }
}

/// How every server of one client is called.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub(crate) connect_timeout: Duration,
    /// `None`: plaintext.
    tls: Option<ClientTlsConfig>,
}

impl Transport {
    /// Plaintext, or TLS when `use_tls`, with `settings` checked here (a CA or identity that
    /// does not parse is refused now rather than at every connection).
    pub(crate) fn new(
        connect_timeout: Duration,
        use_tls: bool,
        settings: &TlsSettings,
    ) -> Result<Self, ClientError> {
        if !use_tls {
            return Ok(Self {
                connect_timeout,
                tls: None,
            });
        }
        let mut config = ClientTlsConfig::new().timeout(connect_timeout);
        config = match &settings.ca_pem {
            Some(pem) => {
                let count = CertificateDer::pem_slice_iter(pem)
                    .try_fold(0usize, |n, cert| cert.map(|_| n + 1))
                    .map_err(|e| invalid("ca_certificate", &format!("not PEM: {e}")))?;
                if count == 0 {
                    return Err(invalid("ca_certificate", "holds no certificate"));
                }
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &settings.identity {
            let has_cert = CertificateDer::pem_slice_iter(cert)
                .next()
                .is_some_and(|c| c.is_ok());
            if !has_cert {
                return Err(invalid("client_identity", "the certificate is not PEM"));
            }
            PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| invalid("client_identity", &format!("the key is not PEM: {e}")))?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(Self {
            connect_timeout,
            tls: Some(config),
        })
    }

    /// Whether servers are called over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint of the server at `host_port`, `original` being the address as given
    /// (for the error).
    pub(crate) fn endpoint(
        &self,
        host_port: &str,
        original: &str,
    ) -> Result<Endpoint, ClientError> {
        let scheme = if self.is_tls() { "https" } else { "http" };
        let bad = |reason: String| ClientError::InvalidAddress {
            address: original.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        match &self.tls {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| bad(format!("TLS: {e}"))),
        }
    }
}

fn invalid(setting: &str, rule: &str) -> ClientError {
    ClientError::InvalidTls(format!("{setting}: {rule}"))
}
