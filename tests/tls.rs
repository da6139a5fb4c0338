//! TLS on both ports: a self-signed certificate made for the test, a gRPC client that trusts
//! it, a plaintext client that is refused, and the HTTP port answering over TLS.

use crate::support::{TestServer, digits_request};
use sluice_api::proto;
use sluice_api::proto::sluice_client::SluiceClient;
use sluice_frontend::tls::TlsIdentity;
use sluice_train::Digits;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate a certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_serve_tls_and_refuse_plaintext() {
    let (cert, key) = self_signed();
    let identity = TlsIdentity::from_pem(cert.clone().into_bytes(), key.into_bytes()).unwrap();
    let server =
        TestServer::start_tls(move |server| server.tls(Some(identity)), cert.as_bytes()).await;
    let mut server = server.load_samples().await;
    let digits = Digits::load_default().unwrap();
    let answer = server
        .client
        .predict(digits_request("digits-logreg", &digits.holdout[..2]))
        .await
        .expect("Predict over TLS")
        .into_inner();
    assert_eq!(answer.outputs.len(), 2);

    let plaintext = Endpoint::from_shared(format!("http://{}", server.server.grpc_addr))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => SluiceClient::new(channel)
            .list_models(proto::ListModelsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client gets nothing from a TLS port");

    let untrusted = Endpoint::from_shared(server.server.url())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self_signed().0)))
        .unwrap()
        .connect()
        .await;
    assert!(
        untrusted.is_err(),
        "a client that trusts another CA refuses the server"
    );

    // The HTTP port, with the same identity.
    let addr = server.server.http_addr;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"live\":true"), "{response}");
    server.shutdown().await;
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
    let (cert, _) = self_signed();
    let (_, other_key) = self_signed();
    let error = TlsIdentity::from_pem(cert.into_bytes(), other_key.into_bytes())
        .err()
        .expect("a mismatched pair is refused");
    assert!(error.to_string().contains("not usable together"), "{error}");
    let error = TlsIdentity::from_pem(b"not a pem".to_vec(), b"".to_vec())
        .err()
        .expect("garbage is refused");
    assert!(error.to_string().contains("certificate"), "{error}");
}
