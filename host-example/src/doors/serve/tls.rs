//! The service's TLS configuration, read again when its files change: cert-manager (or
//! an operator) renews the mounted Secret in place, and a server that runs for months
//! must present the new certificate before the old one expires.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

/// The certificate and key files and the configuration they made last.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<([u8; 32], Arc<ServerConfig>)>,
}

impl Tls {
    /// Reads `cert` (a PEM chain) and `key` (a PEM private key).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let (digest, config) = read(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((digest, config)),
        })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Reads the files again; `Ok(true)` when they changed and the new pair is now
    /// served. A broken pair (a half-written renewal) keeps the previous one.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let digest = digest(&self.cert, &self.key)?;
        if digest == self.current.read().unwrap_or_else(|p| p.into_inner()).0 {
            return Ok(false);
        }
        let next = read(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }
}

fn digest(cert: &Path, key: &Path) -> anyhow::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
        let bytes = std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

fn read(cert: &Path, key: &Path) -> anyhow::Result<([u8; 32], Arc<ServerConfig>)> {
    let digest = digest(cert, key)?;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--tls-cert {}: no certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("--tls-cert and --tls-key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((digest, Arc::new(config)))
}
