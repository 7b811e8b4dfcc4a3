//! TLS on the client API (rustls through tonic): the node's certificate and
//! key, the CA a client trusts, and `woof cluster certs`, which makes a CA
//! and node certificates for a test cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::ServerConfig as HttpsConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::error::{Error, Result};

/// PEM files of certificates and keys are small; a bigger one is the wrong
/// file.
const PEM_BYTES_MAX: u64 = 1024 * 1024;
/// How long a client has to finish its TLS handshake: a connection that
/// opens and says nothing does not hold a handshake task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most certificates `woof cluster certs` makes at once.
pub const CERTS_NODES_MAX: usize = 64;

fn read_pem(path: &Path, what: &str, marker: &str) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Tls(format!("{what} {}: {reason}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > PEM_BYTES_MAX {
        return Err(bad(format!(
            "{} bytes is too large for a PEM file",
            meta.len()
        )));
    }
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if !pem.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        return Err(bad(format!("no PEM block with {marker:?} in it")));
    }
    Ok(pem)
}

/// The node's TLS settings from its certificate (chain) and key files,
/// checked now: a bad file stops the start with a clear error. The first
/// is the client API's (tonic); the second the dashboard's (HTTP/1.1),
/// the same certificate and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<(ServerTlsConfig, Arc<HttpsConfig>)> {
    let cert_pem = read_pem(cert, "--tls-cert", "BEGIN CERTIFICATE")?;
    let key_pem = read_pem(key, "--tls-key", "PRIVATE KEY")?;
    let both = |reason: String| {
        Error::Tls(format!(
            "--tls-cert {} with --tls-key {}: {reason}",
            cert.display(),
            key.display(),
        ))
    };
    let https = https_config(&cert_pem, &key_pem).map_err(both)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    // tonic parses the files only when the server is built: build one here
    // to find out.
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| both(chain(&e)))?;
    Ok((config, https))
}

/// The dashboard's TLS settings: rustls with the provider tonic uses,
/// HTTP/1.1 only.
fn https_config(cert_pem: &[u8], key_pem: &[u8]) -> std::result::Result<Arc<HttpsConfig>, String> {
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("reading the certificates: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("reading the key: {e}"))?;
    let mut config = HttpsConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long an HTTPS client has to finish its handshake.
pub const HTTPS_HANDSHAKE_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;

/// The CA a client trusts a node's certificate by.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca_pem: Arc<Vec<u8>>,
    /// Where it came from, for messages.
    pub source: String,
}

impl ClientTls {
    /// Reads a CA certificate file (PEM).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self {
            ca_pem: Arc::new(read_pem(path, "CA file", "BEGIN CERTIFICATE")?),
            source: path.display().to_string(),
        })
    }

    pub fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem.as_slice()))
    }
}

/// An error and its sources, in one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// What `woof cluster certs` wrote.
pub struct Written {
    pub ca: PathBuf,
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
}

/// Makes a CA (`ca.pem`, `ca.key`) and one certificate and key per node
/// (`NAME.pem`, `NAME.key`) in `dir`, each valid for localhost, 127.0.0.1,
/// ::1, its name and every extra name or address in `sans`. For test
/// clusters: the CA key sits beside the certificates.
pub fn make_certs(dir: &Path, names: &[String], sans: &[String]) -> Result<Written> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    if names.is_empty() || names.len() > CERTS_NODES_MAX {
        return Err(Error::Usage(format!(
            "certificates for 1 to {CERTS_NODES_MAX} nodes"
        )));
    }
    for n in names {
        if n.is_empty()
            || n.len() > 63
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Error::Usage(format!(
                "{n:?} is not a node name (letters, digits, '-' and '.', at most 63)"
            )));
        }
    }
    let failed = |e: rcgen::Error| Error::Tls(format!("making certificates: {e}"));
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let write = |name: &str, text: &str, private: bool| -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let io = |source| Error::Io {
            context: format!("writing {}", path.display()),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        Ok(path)
    };
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "woof test cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let ca = write("ca.pem", &ca_cert.pem(), false)?;
    write("ca.key", &ca_key.serialize_pem(), true)?;
    let mut nodes = Vec::new();
    for name in names {
        let mut alt: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        alt.push(name.clone());
        alt.extend(sans.iter().cloned());
        alt.dedup();
        let mut params = CertificateParams::new(alt)
            .map_err(|e| Error::Usage(format!("a name for {name}'s certificate: {e}")))?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(failed)?;
        // The chain: the node's certificate, then the CA's, so a node can
        // also trust its peers by its own chain.
        let pem = write(
            &format!("{name}.pem"),
            &format!("{}{}", cert.pem(), ca_cert.pem()),
            false,
        )?;
        let key = write(&format!("{name}.key"), &key.serialize_pem(), true)?;
        nodes.push((name.clone(), pem, key));
    }
    Ok(Written { ca, nodes })
}
