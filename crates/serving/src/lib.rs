//! # sluice-serving: from a checked request to a model's answer, and the state around it
//!
//! - [`registry`]: the loaded models by name and version, and the one place a request is
//!   checked against a model's contract and queued;
//! - [`batching`]: adaptive batching per replica (AIMD), deadline-ordered bounded queues;
//! - [`autoscale`]: replicas sized by load, within a model's range;
//! - [`cache`]: the prediction cache, with coalescing of identical queries in flight;
//! - [`selection`]: applications, their policies and what they learn from feedback;
//! - [`store`]: the durable state of applications, selection and loaded models (redb, or
//!   Redis shared by several servers);
//! - [`repository`]: a model directory, loaded and watched;
//! - [`lifecycle`]: models loaded through the API, recorded so that they survive restarts;
//! - [`onnx`]: ONNX graphs served with no guest code, by a bundled runner component;
//! - [`settings`]: a model's limits and batching, and requests for them;
//! - [`metrics`]: Prometheus counters and histograms, a leaf every module above calls;
//! - [`telemetry`]: request traces (OpenTelemetry spans), another leaf, off unless enabled.
//!
//! Nothing here knows a protocol: errors say their [`sluice_types::ErrorKind`], and the
//! frontend maps it to a status.

pub mod autoscale;
pub mod batching;
pub mod cache;
pub mod lifecycle;
pub mod metrics;
pub mod onnx;
pub mod registry;
pub mod repository;
pub mod selection;
pub mod settings;
pub mod store;
pub mod telemetry;

pub use settings::ModelLimits;

/// Runs a control-plane operation (a load, a scale, a sync) to completion on its own task, so
/// that a caller that goes away, such as a client whose deadline passed, cannot leave it half
/// done: a version shown as loading forever, or a change made but not recorded.
pub(crate) async fn to_completion<T: Send + 'static>(
    operation: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(operation).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the runtime shut down during a control-plane operation"),
    }
}
