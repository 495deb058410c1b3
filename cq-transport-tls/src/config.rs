//! PEM files to rustls configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(String),
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let fail = |reason: String| TlsConfigError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsConfigError::File {
        what: "a private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("the CA certificate", ca)? {
        roots.add(cert).map_err(|e| TlsConfigError::File {
            what: "the CA certificate",
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The server side: its certificate and key, and the CA that signs client certificates.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Loads the CA certificate, the server certificate (chain) and its key from PEM files.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] naming the file that could not be used.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsConfigError> {
        Self::with_crl(ca, cert, key, None)
    }

    /// [`from_files`](Self::from_files), refusing client certificates that the revocation
    /// list in `crl` (PEM, signed by the CA) revokes.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] naming the file that could not be used.
    pub fn with_crl(
        ca: &Path,
        cert: &Path,
        key: &Path,
        crl: Option<&Path>,
    ) -> Result<Self, TlsConfigError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
        if let Some(path) = crl {
            let fail = |reason: String| TlsConfigError::File {
                what: "a certificate revocation list",
                path: path.to_owned(),
                reason,
            };
            let crls = CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if crls.is_empty() {
                return Err(fail("no PEM revocation list in the file".to_owned()));
            }
            builder = builder.with_crls(crls);
        }
        let verifier = builder
            .build()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certificates("the server certificate", cert)?,
                private_key(key)?,
            )
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// The client side: the CA that signs the server's certificate, and the client's own
/// certificate and key.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Loads the CA certificate, the client certificate (chain) and its key from PEM files.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] naming the file that could not be used.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsConfigError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(
                certificates("the client certificate", cert)?,
                private_key(key)?,
            )
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A client with no certificate of its own. cq servers refuse it; it exists so that tests
    /// and diagnostics can show exactly that.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError`] when the CA certificate cannot be used.
    pub fn without_identity(ca: &Path) -> Result<Self, TlsConfigError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}
