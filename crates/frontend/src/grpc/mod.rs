//! The gRPC port: the `sluice.v1.Sluice` service ([`sluice`]), KServe v2's
//! `inference.GRPCInferenceService` ([`kserve`]), `grpc.health.v1`, and server reflection
//! (`v1`, and `v1alpha` for the many tools that speak only it).

mod kserve;
mod sluice;

use crate::admin::check_admin;
use crate::error::ApiError;
use crate::tls::TlsIdentity;
use crate::{MAX_MESSAGE_BYTES, MAX_STREAMS_PER_CONNECTION, Shared};
use sluice_api::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use sluice_api::proto::sluice_server::SluiceServer;
use std::future::Future;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
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
    check_admin(
        shared.admin_token.as_deref(),
        authorization,
        request.remote_addr(),
    )
    .map_err(Status::from)
}

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight calls and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    tls: Option<TlsIdentity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(identity) = &tls {
        builder = builder.tls_config(identity.grpc_config())?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SluiceServer<sluice::SluiceApi>>()
        .await;
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
        // TCP_NODELAY: without it small replies wait on delayed ACKs (~40 ms tail spikes).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
