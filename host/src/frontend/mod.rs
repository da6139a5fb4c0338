//! The gRPC frontend, on one port: the `sluice.v1.Sluice` service, the Open Inference Protocol
//! (`inference.GRPCInferenceService`, KServe v2 with Triton's repository extension), the
//! standard `grpc.health.v1` service and server reflection (so `grpcurl` and other generic
//! tools work).

mod api;
pub mod apps;
pub mod convert;
pub mod json;
pub mod kserve;
pub mod loaded;
pub mod rest;
pub mod status;
mod target;
pub mod tls;

pub(crate) use target::{AppParameters, InferTarget};

use crate::batching::BatchingConfig;
use crate::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::sluice_server::SluiceServer;
use crate::registry::{Model, Registry};
use crate::repository::Repository;
use crate::runtime::ModelLimits;
use crate::runtime::Tensor;
use crate::selection::{Applications, Store};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

/// The largest gRPC message accepted: room for a component upload or a large batch.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 streams a client may have open on one connection; beyond it the client waits
/// before sending, so a burst queues at its source instead of in the server's memory.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How the frontend behaves.
#[derive(Clone, Default)]
pub struct FrontendOptions {
    /// When set, admin calls (load, unload) need `authorization: Bearer <token>` and are then
    /// accepted from any peer; when unset they are accepted from loopback peers only.
    pub admin_token: Option<String>,
    /// Limits for models loaded without their own.
    pub default_limits: ModelLimits,
    /// Batching for models loaded without their own.
    pub default_batching: BatchingConfig,
    /// The model repository, if the server has one (for the repository extension's
    /// load and unload).
    pub repository: Option<Arc<Repository>>,
    /// The durable store (applications, selection state, models loaded through the API);
    /// `None` gives the server an in-memory one (nothing survives it).
    pub state: Option<Store>,
    /// Applications and their selection state, kept in `state`; `None` opens them from
    /// `state` with a 64 MiB prediction cache.
    pub applications: Option<Arc<Applications>>,
    /// Serve both ports over TLS with this identity.
    pub tls: Option<tls::TlsIdentity>,
}

/// The prediction cache of servers that were given no applications.
const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl FrontendOptions {
    /// These options with `state` and `applications` set (see their defaults), so that every
    /// protocol of one server shares them.
    pub fn with_applications(mut self, registry: &Arc<Registry>) -> FrontendOptions {
        let store = self.state.get_or_insert_with(Store::in_memory).clone();
        if self.applications.is_none() {
            let cache = Arc::new(crate::cache::PredictionCache::new(DEFAULT_CACHE_BYTES));
            let applications = Applications::open(registry.clone(), cache, store)
                .unwrap_or_else(|e| panic!("opening applications from the store: {e}"));
            self.applications = Some(Arc::new(applications));
        }
        self
    }

    /// The durable store (see [`FrontendOptions::with_applications`]).
    pub(crate) fn store(&self) -> Store {
        self.state
            .clone()
            .expect("set by with_applications before serving")
    }

    /// The applications (see [`FrontendOptions::with_applications`]).
    pub(crate) fn applications(&self) -> Arc<Applications> {
        self.applications
            .clone()
            .expect("set by with_applications before serving")
    }
}

/// Protobuf's empty string means "not given": `None` for it, the value otherwise.
pub(crate) fn non_empty<S: AsRef<str>>(s: S) -> Option<S> {
    (!s.as_ref().is_empty()).then_some(s)
}

/// Admin calls load code into the server: they are accepted from loopback peers, or, when the
/// server has an admin token, from any peer whose `authorization` is `Bearer <token>`.
pub(crate) fn check_admin(
    options: &FrontendOptions,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), Status> {
    match &options.admin_token {
        Some(token) => {
            let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
            if presented == Some(token.as_str()) {
                Ok(())
            } else {
                Err(Status::unauthenticated(
                    "this call needs `authorization: Bearer <admin token>`",
                ))
            }
        }
        None => match peer {
            Some(peer) if peer.ip().is_loopback() => Ok(()),
            peer => Err(Status::permission_denied(format!(
                "admin calls are accepted only from loopback (peer: {peer:?}); start the \
                 server with --admin-token to allow remote administration"
            ))),
        },
    }
}

/// [`check_admin`] for a gRPC request.
pub(crate) fn authorize_admin<T>(
    options: &FrontendOptions,
    request: &Request<T>,
) -> Result<(), Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    check_admin(options, authorization, request.remote_addr())
}

/// Runs a request on `model` (all protocols go through here), records it, and maps a failure
/// to its status.
pub(crate) async fn predict(
    model: &Model,
    inputs: Vec<Tensor>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Vec<Tensor>, Status> {
    crate::metrics::predict_recorded(model, inputs, deadline)
        .await
        .map_err(status::to_status)
}

/// Serves on `listener` until `shutdown` resolves, then finishes in-flight calls and returns.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: FrontendOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let options = options.with_applications(&registry);
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(identity) = &options.tls {
        builder = builder.tls_config(identity.grpc_config())?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SluiceServer<api::SluiceApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let sluice = SluiceServer::new(api::SluiceApi::new(registry.clone(), options.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let kserve = GrpcInferenceServiceServer::new(kserve::KserveApi::new(registry, options))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(sluice)
        .add_service(kserve)
        // TCP_NODELAY: without it small replies wait on delayed ACKs (~40 ms tail spikes).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// A server running on a background task, for tests and embedding.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    scheme: &'static str,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn start(
        addr: SocketAddr,
        registry: Arc<Registry>,
        options: FrontendOptions,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let options = options.with_applications(&registry);
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, registry, options, async {
            let _ = stopped.await;
        }));
        Ok(RunningServer {
            addr,
            scheme,
            stop,
            task,
        })
    }

    /// The `http://` URL clients connect to (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting, waits for in-flight calls, and returns the server's result.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.stop.send(());
        self.task.await.expect("the server task panicked")
    }
}
