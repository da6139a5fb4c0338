//! # sluice-frontend: the protocols
//!
//! One [`Server`] serves two ports that share one registry, one set of applications and one
//! durable store:
//! - gRPC ([`grpc`]): the `sluice.v1.Sluice` service, the Open Inference Protocol
//!   (`inference.GRPCInferenceService`, KServe v2 with Triton's repository extension), the
//!   standard `grpc.health.v1` service and server reflection;
//! - HTTP ([`http`]): KServe v2 REST (with Triton's binary tensor data extension), the
//!   sluice application API in JSON, and Prometheus metrics.
//!
//! What both KServe protocols do alike (resolving a name to a model or an application,
//! metadata, requested outputs, the repository extension) lives in [`kserve`], so they cannot
//! drift apart. Errors travel as [`ApiError`] (an [`sluice_types::ErrorKind`] and a message)
//! and become a gRPC status or an HTTP status only in [`status`].

mod admin;
pub mod connections;
mod error;
pub mod grpc;
pub mod http;
mod kserve;
pub mod messages;
pub mod status;
pub mod tls;
mod traces;

pub use connections::ConnectionLimits;
pub use error::ApiError;

use sluice_api::proto;
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::cache::PredictionCache;
use sluice_serving::lifecycle::{Lifecycle, Restored};
use sluice_serving::onnx::OnnxRunners;
use sluice_serving::registry::Registry;
use sluice_serving::repository::Repository;
use sluice_serving::selection::Applications;
use sluice_serving::store::{Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tls::TlsIdentity;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The largest gRPC message accepted: room for a component upload or a large batch.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 streams a client may have open on one connection; beyond it the client waits
/// before sending, so a burst queues at its source instead of in the server's memory.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// The prediction cache of a server that is given no size.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// What every protocol of one server shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) applications: Arc<Applications>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) repository: Option<Arc<Repository>>,
    /// When set, admin calls need `authorization: Bearer <token>` and are then accepted from
    /// any peer; when unset they are accepted from loopback peers only.
    pub(crate) admin_token: Option<String>,
    /// Cancelled when shutdown begins: from then on the server reports itself not ready
    /// (KServe's server-ready, the gRPC health service) while it drains.
    pub(crate) draining: CancellationToken,
}

impl Shared {
    /// Whether the server takes new work: false once it is draining.
    pub(crate) fn ready(&self) -> bool {
        !self.draining.is_cancelled()
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A port could not be bound or served.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The TLS identity is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// A server: its services, ready to serve on two listeners.
pub struct Server {
    shared: Shared,
    tls: Option<TlsIdentity>,
    limits: ConnectionLimits,
}

/// Builds a [`Server`]; every setting has a default.
pub struct ServerBuilder {
    registry: Arc<Registry>,
    store: Option<Store>,
    cache_bytes: usize,
    repository: Option<Arc<Repository>>,
    default_limits: ModelLimits,
    default_batching: BatchingConfig,
    onnx_runners: OnnxRunners,
    admin_token: Option<String>,
    tls: Option<TlsIdentity>,
    limits: ConnectionLimits,
    max_user_states: usize,
}

impl Server {
    /// A builder of a server whose models are `registry`'s.
    pub fn builder(registry: Arc<Registry>) -> ServerBuilder {
        ServerBuilder {
            registry,
            store: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            repository: None,
            default_limits: ModelLimits::default(),
            default_batching: BatchingConfig::default(),
            onnx_runners: OnnxRunners::default(),
            admin_token: None,
            tls: None,
            limits: ConnectionLimits::default(),
            max_user_states: sluice_serving::selection::DEFAULT_MAX_USER_STATES,
        }
    }

    /// The applications and their selection state.
    pub fn applications(&self) -> &Arc<Applications> {
        &self.shared.applications
    }

    /// Loads again the models loaded through the API before the last stop (on top of the
    /// repository's). Records of sluice 0.1 before the lifecycle's own format (the
    /// `LoadModelRequest` as protobuf) are read too, and recorded anew.
    pub async fn restore(&self) -> Result<Restored, StoreError> {
        let legacy = |bytes: &[u8]| {
            let request = <proto::LoadModelRequest as prost::Message>::decode(bytes).ok()?;
            messages::models::load_spec(request).ok()
        };
        self.shared.lifecycle.restore(legacy).await
    }

    /// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` resolves; then reports
    /// itself not ready and goes on serving for the drain delay, stops accepting, lets the
    /// requests in flight on both ports finish for up to the drain timeout, closes what is
    /// still open, and returns.
    pub async fn serve(
        self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let connections = connections::Connections::new(self.limits);
        let stopping = CancellationToken::new();
        let served = CancellationToken::new();
        tokio::spawn(connections.clone().sweep_until(served.clone()));
        let (delay, drain) = (self.limits.drain_delay, self.limits.drain_timeout);
        tokio::spawn({
            let (stopping, served, connections) =
                (stopping.clone(), served.clone(), connections.clone());
            let draining = self.shared.draining.clone();
            async move {
                shutdown.await;
                draining.cancel();
                tokio::time::sleep(delay).await;
                stopping.cancel();
                tokio::select! {
                    _ = tokio::time::sleep(drain) => connections.close_all(),
                    _ = served.cancelled() => {}
                }
            }
        });
        let _served_on_return = served.drop_guard();
        let rest = tokio::spawn(http::serve(
            connections::listener::Admitting::new(http, connections.clone()),
            self.shared.clone(),
            self.tls.clone(),
            connections.clone(),
            stopping.clone().cancelled_owned(),
        ));
        grpc::serve(
            connections::listener::Admitting::new(grpc, connections.clone()),
            self.shared,
            self.tls,
            connections,
            stopping.cancelled_owned(),
        )
        .await?;
        rest.await
            .map_err(|e| std::io::Error::other(format!("the HTTP server task failed: {e}")))??;
        Ok(())
    }

    /// Binds both addresses (port 0 picks a free port) and serves in the background.
    pub async fn start(
        self,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Result<RunningServer, ServeError> {
        let grpc = TcpListener::bind(grpc_addr).await?;
        let http = TcpListener::bind(http_addr).await?;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(grpc, http, async {
            let _ = stopped.await;
        }));
        Ok(RunningServer {
            grpc_addr,
            http_addr,
            scheme,
            stop,
            task,
        })
    }
}

impl ServerBuilder {
    /// The durable store (applications, selection state, models loaded through the API);
    /// without one the server keeps them in memory (nothing survives it).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Memory for the prediction cache, in bytes (0: no caching; identical in-flight
    /// queries are still coalesced). Default 64 MiB.
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The model repository, for the repository extension's index, load and unload.
    pub fn repository(mut self, repository: Arc<Repository>) -> Self {
        self.repository = Some(repository);
        self
    }

    /// Limits and batching of models loaded without their own.
    pub fn defaults(mut self, limits: ModelLimits, batching: BatchingConfig) -> Self {
        self.default_limits = limits;
        self.default_batching = batching;
        self
    }

    /// The components that serve ONNX graphs (`LoadModel` with `onnx`): in the sandbox, and
    /// natively through `wasi:nn`; without them such loads are refused.
    pub fn onnx_runners(mut self, runners: OnnxRunners) -> Self {
        self.onnx_runners = runners;
        self
    }

    /// Accept admin calls from any peer that presents this token (default: loopback only).
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token;
        self
    }

    /// Serve both ports over TLS with this identity.
    pub fn tls(mut self, identity: Option<TlsIdentity>) -> Self {
        self.tls = identity;
        self
    }

    /// Per-user selection states each application keeps (default 100 000); past it the
    /// least recently updated are dropped.
    pub fn max_user_states(mut self, limit: usize) -> Self {
        self.max_user_states = limit;
        self
    }

    /// Bounds on connections, their idle time, the drain at shutdown and the memory of
    /// requests still arriving (see [`ConnectionLimits`]). The connection limit is lowered at
    /// [`build`](Self::build) to fit the process's open-file limit.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens the applications kept in the store, starts the registry's autoscaler, and assembles
    /// the server.
    pub async fn build(self) -> Result<Server, StoreError> {
        let store = self.store.unwrap_or_else(Store::in_memory);
        self.registry.start_autoscaler();
        let cache = Arc::new(PredictionCache::new(self.cache_bytes));
        let applications = Applications::open(
            self.registry.clone(),
            cache,
            store.clone(),
            self.max_user_states,
        )
        .await?;
        let lifecycle = Arc::new(Lifecycle::new(
            self.registry.clone(),
            store,
            (self.default_limits, self.default_batching),
            self.onnx_runners,
        ));
        lifecycle.follow_changes();
        Ok(Server {
            shared: Shared {
                registry: self.registry,
                applications,
                lifecycle,
                repository: self.repository,
                admin_token: self.admin_token,
                draining: CancellationToken::new(),
            },
            tls: self.tls,
            limits: fitted_to_open_files(self.limits),
        })
    }
}

/// `limits` with the connection limit lowered, if needed, under the open-file limit.
fn fitted_to_open_files(limits: ConnectionLimits) -> ConnectionLimits {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return limits;
    };
    let fitted = limits.fitted_to(soft);
    if fitted.max_connections < limits.max_connections {
        tracing::warn!(
            open_files = soft,
            max_connections = fitted.max_connections,
            "the connection limit is lowered to fit the open-file limit (ulimit -n)"
        );
    }
    fitted
}

/// A server running on a background task, for tests and embedding.
pub struct RunningServer {
    /// The gRPC address.
    pub grpc_addr: SocketAddr,
    /// The HTTP address.
    pub http_addr: SocketAddr,
    scheme: &'static str,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// The URL gRPC clients connect to (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr)
    }

    /// The base URL of the HTTP port (`https://` with TLS).
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// Stops accepting, waits for in-flight calls on both ports, and returns the server's
    /// result.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("the server task failed: {e}")))?
    }
}
