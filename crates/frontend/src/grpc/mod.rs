//! The gRPC port: the `sluice.v1.Sluice` service ([`sluice`]), KServe v2's
//! `inference.GRPCInferenceService` ([`kserve`]), `grpc.health.v1`, and server reflection
//! (`v1`, and `v1alpha` for the many tools that speak only it).

mod kserve;
mod sluice;

use crate::admin::check_admin;
use crate::connections::Connections;
use crate::connections::listener::{Admitting, Peer};
use crate::connections::requests::{Limited, Protocol};
use crate::error::ApiError;
use crate::tls::TlsIdentity;
use crate::{MAX_MESSAGE_BYTES, MAX_STREAMS_PER_CONNECTION, Shared};
use sluice_api::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use sluice_api::proto::sluice_server::SluiceServer;
use std::future::Future;
use std::sync::Arc;
use tonic::transport::server::TlsConnectInfo;
use tonic::{Request, Status};

/// A malformed request's status; the message is bounded like every other
/// ([`crate::status::bounded`]).
fn invalid_argument(message: impl Into<String>) -> Status {
    Status::from(ApiError::invalid_argument(message))
}

/// Checks an admin call's credentials (see [`check_admin`]).
fn authorize<T>(shared: &Shared, request: &Request<T>) -> Result<(), Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let peer = peer(request.extensions()).map(Peer::addr);
    check_admin(shared.admin_token.as_deref(), authorization, peer).map_err(Status::from)
}

/// The connection a request came on (tonic files it under the TLS info when there is TLS).
fn peer(extensions: &http::Extensions) -> Option<&Peer> {
    extensions.get::<Peer>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<Peer>>()
            .map(TlsConnectInfo::get_ref)
    })
}

/// The gRPC port as the connection limits see it: length-prefixed messages, refusals as
/// trailers-only statuses.
#[derive(Clone)]
pub(crate) struct Grpc;

impl Protocol for Grpc {
    type Body = tonic::body::Body;
    const GRPC_FRAMING: bool = true;

    fn wrap(
        body: impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
    ) -> tonic::body::Body {
        tonic::body::Body::new(body)
    }

    fn refusal(error: ApiError) -> http::Response<tonic::body::Body> {
        Status::from(error).into_http()
    }

    /// tonic answers a message over the size limit with `OUT_OF_RANGE`; gRPC's own servers
    /// (and so KServe's and Triton's clients) say `RESOURCE_EXHAUSTED`.
    fn finish(
        mut response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let headers = response.headers_mut();
        let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
        let too_large = headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().windows(16).any(|w| w == b"length%20too%20l"));
        if out_of_range && too_large {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        }
        response
    }

    fn peer<B>(request: &http::Request<B>) -> Option<&Peer> {
        peer(request.extensions())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight calls and returns;
/// under `connections`' limits.
pub(crate) async fn serve(
    listener: Admitting,
    shared: Shared,
    tls: Option<TlsIdentity>,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(identity) = &tls {
        builder = builder.tls_config(identity.grpc_config())?;
    }
    let mut builder = builder
        .layer(Limited::<Grpc>::new(connections))
        .layer(crate::traces::Traced::grpc());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SluiceServer<sluice::SluiceApi>>()
        .await;
    // Draining: the health service says NOT_SERVING (the server as a whole, "", and each
    // service), as KServe's server-ready says false.
    tokio::spawn({
        let (reporter, draining) = (health_reporter.clone(), shared.draining.clone());
        async move {
            draining.cancelled().await;
            reporter
                .set_not_serving::<SluiceServer<sluice::SluiceApi>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_api::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let sluice = SluiceServer::new(sluice::SluiceApi::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let kserve = GrpcInferenceServiceServer::new(kserve::KserveApi::new(shared))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sluice)
        .add_service(kserve)
        .serve_with_incoming_shutdown(listener, shutdown)
        .await
}
