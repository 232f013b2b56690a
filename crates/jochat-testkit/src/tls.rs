//! Certificates for the TLS tests that run nodes in process: a throwaway CA and a certificate
//! it signs for `127.0.0.1` and `localhost`, valid for serving and for calling peers, as
//! `jochat cert create-ca` and `create-node` make them.

use std::path::PathBuf;

use jochat_node::config::NodeConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA and one node certificate, as PEM files in a temporary folder removed on drop.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes `ca.crt`, `node.crt` and `node.key`.
    ///
    /// # Panics
    /// When the keys or files cannot be made.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder for certificates");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.distinguished_name
            .push(DnType::CommonName, "JoChat test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA signs itself");
        let mut node = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("node parameters");
        node.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let node_key = KeyPair::generate().expect("a node key");
        let issuer = Issuer::from_params(&ca, &ca_key);
        let node_cert = node.signed_by(&node_key, &issuer).expect("the CA signs");
        for (name, pem) in [
            ("ca.crt", ca_cert.pem()),
            ("node.crt", node_cert.pem()),
            ("node.key", node_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("a certificate file is written");
        }
        Self { dir }
    }

    /// The file `name` (`ca.crt`, `node.crt`, `node.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The PEM of file `name`.
    pub fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("the certificate file reads")
    }

    /// `config` serving TLS with these certificates.
    pub fn node_config(&self, config: NodeConfig) -> NodeConfig {
        NodeConfig {
            tls_cert: Some(self.path("node.crt")),
            tls_key: Some(self.path("node.key")),
            tls_ca: Some(self.path("ca.crt")),
            ..config
        }
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}
