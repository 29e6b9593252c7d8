//! A throw-away certificate authority for HTTPS stand-ins.
//!
//! Each [`TestCa`] makes a fresh CA and one server certificate for
//! `localhost` and `127.0.0.1` signed by it. A client that trusts only the
//! system roots refuses the stand-in; one given [`TestCa::ca_pem`] (the CLI's
//! `--ca-file`) accepts it. That is the pair of facts TLS tests need.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and a server certificate it signed.
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    server_pem: String,
    server_key_pem: String,
}

impl std::fmt::Debug for TestCa {
    // The server key is test material, but keep it out of assertion output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    /// Makes a new CA and a server certificate for `localhost` and
    /// `127.0.0.1` (rcgen's default validity: long enough for any test).
    ///
    /// Panics if key generation fails: nothing a test could recover from.
    pub fn new() -> TestCa {
        Self::try_new().expect("testkit: generating a test CA")
    }

    /// [`TestCa::new`], returning the error instead of panicking.
    pub fn try_new() -> anyhow::Result<TestCa> {
        Self::try_for_names(&["localhost", "127.0.0.1"])
    }

    /// A CA and a server certificate for `names` (the first is the common name):
    /// e.g. a Service's DNS name, for a client that checks the name a manifest gives.
    pub fn for_names(names: &[&str]) -> TestCa {
        Self::try_for_names(names).expect("testkit: generating a test CA")
    }

    /// [`TestCa::for_names`], returning the error instead of panicking.
    pub fn try_for_names(names: &[&str]) -> anyhow::Result<TestCa> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "testkit throw-away CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        server_params.use_authority_key_identifier_extension = true;
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM-encoded: what a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Writes the CA certificate to `dir/testkit-ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("testkit-ca.pem");
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// Writes the server certificate and its key as PEM files (`server.crt`,
    /// `server.key`) in `dir`, for servers that take files, and returns their paths.
    pub fn write_server_pem(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert, &self.server_pem)?;
        std::fs::write(&key, &self.server_key_pem)?;
        Ok((cert, key))
    }

    /// A rustls server configuration presenting the server certificate
    /// (HTTP/1.1 only, like the stand-ins).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.server_der.clone(), self.ca_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A rustls client configuration trusting only this CA (for self-tests
    /// and in-process clients).
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// For a stand-in that serves HTTPS when `tls` is set: a fresh [`TestCa`] and the server
/// configuration presenting its certificate; neither for plain HTTP.
pub fn optional(tls: bool) -> anyhow::Result<(Option<TestCa>, Option<Arc<rustls::ServerConfig>>)> {
    if !tls {
        return Ok((None, None));
    }
    let ca = TestCa::try_new()?;
    let config = ca.server_config()?;
    Ok((Some(ca), Some(config)))
}
