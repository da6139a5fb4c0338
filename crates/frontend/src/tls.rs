//! Optional TLS for both ports (rustls, ring provider): one certificate chain and key, read
//! from PEM files, serves gRPC (through tonic) and HTTP (through a rustls acceptor in front of
//! axum). The files are checked when the server starts, so a bad certificate stops `serve`
//! with a message instead of failing every handshake.

use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS identity is unusable.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The PEM does not hold what it should.
    #[error("{what}: {error}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// The parse error.
        error: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// Reads and checks the PEM files.
    pub fn read(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| TlsError::Read {
                path: path.display().to_string(),
                error,
            })
        };
        TlsIdentity::from_pem(read(cert)?, read(key)?)
    }

    /// Checks PEM bytes: at least one certificate, one private key, and a matching pair.
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<TlsIdentity, TlsError> {
        let identity = TlsIdentity { cert_pem, key_pem };
        identity.rustls_config()?;
        Ok(identity)
    }

    /// The identity for tonic's server.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// A rustls server config for the HTTP port (HTTP/1.1 over ALPN).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "the certificate file",
                error: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                what: "the certificate file",
                error: "no CERTIFICATE block".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::Pem {
            what: "the key file",
            error: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
