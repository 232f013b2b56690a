//! `jochat cert`: the certificates a TLS cluster needs, made in one folder.
//!
//! - `create-ca` makes the cluster's certificate authority: `ca.crt` and its key `ca.key`.
//! - `create-node HOST...` makes `node.crt` / `node.key`, signed by that CA, naming every
//!   host a node is reached at (DNS names and IP addresses) and valid both for serving and
//!   for calling other nodes (mutual TLS between nodes).
//! - `create-client NAME` makes `client.NAME.crt` / `client.NAME.key`, for clients that
//!   authenticate with a certificate.
//!
//! Keys are ECDSA P-256, written owner-only (0600) and never replaced unless `--overwrite`
//! is given; certificates are PEM. The CA is valid for ten years, the others for five.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use jochat_core::types::is_host_name;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::args::CertCommand;
use crate::output::Output;

/// How long the CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(10 * 365);
/// How long node and client certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(5 * 365);
/// The CA certificate and key, in the certificates folder.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

/// Runs one `jochat cert` command.
///
/// # Errors
/// A file exists already (without `--overwrite`), the CA is missing or unreadable, a host
/// or name is invalid, or a file cannot be written.
pub fn run(command: &CertCommand) -> anyhow::Result<Output> {
    match command {
        CertCommand::CreateCa {
            certs_dir,
            overwrite,
        } => create_ca(certs_dir, *overwrite),
        CertCommand::CreateNode {
            certs_dir,
            hosts,
            overwrite,
        } => create_node(certs_dir, hosts, *overwrite),
        CertCommand::CreateClient {
            certs_dir,
            name,
            overwrite,
        } => create_client(certs_dir, name, *overwrite),
    }
}

pub(crate) fn create_ca(dir: &Path, overwrite: bool) -> anyhow::Result<Output> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "JoChat cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    valid_for(&mut params, CA_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let files = write_pair(dir, "ca", &cert.pem(), &key.serialize_pem(), overwrite)?;
    Ok(written("the cluster's CA", &files))
}

pub(crate) fn create_node(dir: &Path, hosts: &[String], overwrite: bool) -> anyhow::Result<Output> {
    let Some(first) = hosts.first() else {
        bail!("create-node needs at least one HOST the node is reached at");
    };
    if let Some(bad) = hosts
        .iter()
        .find(|host| host.parse::<std::net::IpAddr>().is_err() && !is_host_name(host))
    {
        bail!("HOST: {bad:?} is neither a DNS name nor an IP address");
    }
    let mut params = CertificateParams::new(hosts.to_vec())
        .with_context(|| format!("HOST: {hosts:?} must be DNS names or IP addresses"))?;
    params.distinguished_name.push(DnType::CommonName, first);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // A node serves clients and peers, and calls its peers with the same certificate.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let files = sign_and_write(dir, params, "node", overwrite)?;
    Ok(written(
        &format!("a node certificate for {}", hosts.join(", ")),
        &files,
    ))
}

fn create_client(dir: &Path, name: &str, overwrite: bool) -> anyhow::Result<Output> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        bail!("NAME: {name:?} must be 1 to 64 letters, digits, '_', '-' or '.'");
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let files = sign_and_write(dir, params, &format!("client.{name}"), overwrite)?;
    Ok(written(&format!("a client certificate for {name}"), &files))
}

/// Signs `params` with the CA in `dir` and writes `<stem>.crt` / `<stem>.key` there.
fn sign_and_write(
    dir: &Path,
    mut params: CertificateParams,
    stem: &str,
    overwrite: bool,
) -> anyhow::Result<[PathBuf; 2]> {
    let ca_cert = std::fs::read_to_string(dir.join(CA_CERT)).with_context(|| {
        format!(
            "{}: run `jochat cert create-ca` first",
            dir.join(CA_CERT).display()
        )
    })?;
    let ca_key = std::fs::read_to_string(dir.join(CA_KEY)).with_context(|| {
        format!(
            "{}: run `jochat cert create-ca` first",
            dir.join(CA_KEY).display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key)
        .with_context(|| format!("{}: not a private key", dir.join(CA_KEY).display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .with_context(|| format!("{}: not a CA certificate", dir.join(CA_CERT).display()))?;
    valid_for(&mut params, LEAF_VALIDITY);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, stem, &cert.pem(), &key.serialize_pem(), overwrite)
}

/// Valid from an hour ago (clocks differ a little) for `validity`.
fn valid_for(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
}

/// Writes `<stem>.crt` (0644) and `<stem>.key` (0600) in `dir`, creating `dir` if needed;
/// refuses to replace either unless `overwrite`.
fn write_pair(
    dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
    overwrite: bool,
) -> anyhow::Result<[PathBuf; 2]> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--certs-dir {}: cannot create it", dir.display()))?;
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    for path in [&cert, &key] {
        if path.exists() && !overwrite {
            bail!(
                "{} exists already: keep it, or pass --overwrite to replace it",
                path.display()
            );
        }
    }
    write_file(&key, key_pem, 0o600)?;
    write_file(&cert, cert_pem, 0o644)?;
    Ok([cert, key])
}

/// Writes `text` to `path` with permissions `mode` (set at creation, so a key is never
/// readable by others, even for a moment).
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("{}: cannot write it", path.display()))?;
    #[cfg(unix)]
    {
        // An existing file keeps its old mode through `open`: set it again.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set its permissions", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}: cannot write it", path.display()))
}

fn written(what: &str, files: &[PathBuf; 2]) -> Output {
    let [cert, key] = files;
    Output::new(
        format!(
            "wrote {what}: {} and {} (0600)",
            cert.display(),
            key.display()
        ),
        json!({"certificate": cert.display().to_string(), "key": key.display().to_string()}),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    /// The certificate in the PEM file at `path`, as DER.
    fn der(path: &Path) -> Vec<u8> {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[test]
    fn a_ca_signs_node_and_client_certificates_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        create_ca(&certs, false).unwrap();
        create_node(
            &certs,
            &["127.0.0.1".into(), "node1.chat.internal".into()],
            false,
        )
        .unwrap();
        create_client(&certs, "alice", false).unwrap();

        // 1. Keys are owner-only.
        for key in ["ca.key", "node.key", "client.alice.key"] {
            let mode = std::fs::metadata(certs.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }

        // 2. The CA is a CA; the node and client certificates are signed by it.
        let ca_der = der(&certs.join("ca.crt"));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        let node_der = der(&certs.join("node.crt"));
        let (_, node) = x509_parser::parse_x509_certificate(&node_der).unwrap();
        node.verify_signature(Some(ca.public_key()))
            .expect("the node certificate is signed by the CA");
        assert!(!node.is_ca());
        let client_der = der(&certs.join("client.alice.crt"));
        let (_, client) = x509_parser::parse_x509_certificate(&client_der).unwrap();
        client
            .verify_signature(Some(ca.public_key()))
            .expect("the client certificate is signed by the CA");

        // 3. The node names every host; it serves and calls (mutual TLS); the client only
        //    calls, under its name.
        let names = node.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = names
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["[127, 0, 0, 1]", "node1.chat.internal"]);
        let usage = node.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.server_auth && usage.client_auth);
        let usage = client.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && !usage.server_auth);
        let common_name = client
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok());
        assert_eq!(common_name, Some("alice"));
    }

    #[test]
    fn nothing_is_replaced_without_overwrite_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path();
        // No CA yet: a node certificate cannot be made.
        let error = create_node(certs, &["node1".into()], false).unwrap_err();
        assert!(format!("{error:#}").contains("create-ca"), "{error:#}");

        create_ca(certs, false).unwrap();
        let before = std::fs::read(certs.join("ca.key")).unwrap();
        let error = create_ca(certs, false).unwrap_err();
        assert!(error.to_string().contains("--overwrite"), "{error}");
        assert_eq!(std::fs::read(certs.join("ca.key")).unwrap(), before);
        create_ca(certs, true).unwrap();
        assert_ne!(std::fs::read(certs.join("ca.key")).unwrap(), before);

        assert!(create_node(certs, &[], false).is_err());
        assert!(create_node(certs, &["not a host".into()], false).is_err());
        assert!(create_client(certs, "../evil", false).is_err());
        assert!(!certs.join("client.../evil.crt").exists());
    }
}
