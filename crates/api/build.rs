//! Build script of the API crate: compiles `proto/` to Rust with protox (pure Rust, no system
//! `protoc`) and tonic, and keeps the encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let proto_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let files = ["sluice/v1/sluice.proto", "inference/grpc_service.proto"];
    let descriptors = protox::compile(files, [&proto_dir]).expect("compiling .proto files");
    std::fs::write(
        out_dir.join("sluice_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )
    .expect("writing the descriptor set");
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .expect("generating gRPC code");
}
