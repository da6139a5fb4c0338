//! # sluice: a model-serving host where every model is a WebAssembly component
//!
//! A request flows `frontend` (gRPC) → `registry` (which model, checked inputs) → `batching`
//! (the queue of the replica that will serve it soonest, joined into a batch) → `runtime` (a
//! sandboxed wasmtime instance) → the guest, which may call back into `compute` for heavy
//! math. See `docs/architecture.md` for one request traced end to end.

pub mod batching;
pub mod bundled;
pub mod cache;
pub mod cli;
pub mod compute;
pub mod frontend;
pub mod metrics;
pub mod registry;
pub mod repository;
pub mod runtime;
pub mod selection;
pub mod store;
pub mod tensor;

/// Code generated from `proto/sluice/v1/sluice.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("sluice.v1");

    /// The encoded descriptor set of both APIs (`sluice.v1` and `inference`), served through
    /// gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));
}

/// Code generated from `proto/inference/grpc_service.proto`: the Open Inference Protocol
/// (KServe v2) with Triton's model-repository extension.
#[allow(missing_docs, clippy::all)]
pub mod inference {
    tonic::include_proto!("inference");
}
