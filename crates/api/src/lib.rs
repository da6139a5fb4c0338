//! # sluice-api: the wire formats of sluice
//!
//! The protobuf messages and gRPC stubs of both APIs (`sluice.v1` and KServe v2's
//! `inference`), generated at build time with no system `protoc`; their conversions to and
//! from `sluice-types` ([`convert`]); KServe v2's JSON tensors ([`kserve_json`]) and the
//! one-pass reader of a plain JSON inference request ([`plain_json`]); and a
//! client connection for the command line ([`client`]). Knows no server: the frontend serves
//! these messages, the CLI sends them.

pub mod client;
pub mod convert;
pub mod kserve_json;
pub mod plain_json;

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
