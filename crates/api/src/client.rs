//! A client connection to a sluice server, for the command line, benchmarks and tests: plain
//! for `http://`, TLS for `https://` (trusting a given CA certificate). The gRPC types a client
//! needs are re-exported, so a client depends on this crate alone for the wire.

pub use tonic::transport::Channel;
pub use tonic::{Code, Request, Status};

use thiserror::Error;

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The address is not a URL (often: the scheme is missing).
    #[error("`{server}` is not a server URL{hint}")]
    InvalidUrl {
        /// What was given.
        server: String,
        /// How to write it instead, if that is clear.
        hint: String,
    },
    /// An `https://` server needs a CA certificate to check it against.
    #[error("an https:// server needs --ca-cert (the CA certificate that signed its certificate)")]
    NoCaCertificate,
    /// The TLS settings were refused.
    #[error("TLS: {0}")]
    Tls(tonic::transport::Error),
    /// Nothing answered at the address.
    #[error(
        "cannot reach the sluice server at {server} (is `sluice serve` running there?): {source}"
    )]
    Unreachable {
        /// The address.
        server: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
}

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The CA certificate (PEM) that signed an `https://` server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must carry, if not the URL's host.
    pub tls_domain: Option<String>,
}

/// Connects to `server` (`http://HOST:PORT` or `https://HOST:PORT`).
pub async fn connect(server: &str, options: ConnectOptions) -> Result<Channel, ConnectError> {
    let invalid = || ConnectError::InvalidUrl {
        server: server.to_string(),
        hint: if server.contains("://") {
            String::new()
        } else {
            format!("; write it with a scheme: http://{server}")
        },
    };
    if !server.contains("://") {
        return Err(invalid());
    }
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(server.to_string()).map_err(|_| invalid())?;
    if server.starts_with("https://") {
        let pem = options.ca_pem.ok_or(ConnectError::NoCaCertificate)?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        if let Some(domain) = options.tls_domain {
            tls = tls.domain_name(domain);
        }
        endpoint = endpoint.tls_config(tls).map_err(ConnectError::Tls)?;
    }
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            server: server.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_scheme_is_explained() {
        let err = connect("127.0.0.1:8001", ConnectOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`127.0.0.1:8001` is not a server URL; write it with a scheme: http://127.0.0.1:8001"
        );
    }

    #[tokio::test]
    async fn https_needs_a_ca_certificate() {
        let err = connect("https://127.0.0.1:1", ConnectOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::NoCaCertificate), "{err}");
    }
}
