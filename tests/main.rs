//! The integration tests of sluice, as one binary (a module per area, helpers in `support`):
//! real components, a real server on loopback, the `sluice` binary itself. One binary links
//! wasmtime, wgpu, tonic and axum once instead of once per file.

mod support;

/// Adaptive batching over gRPC: batch sizes, AIMD, delayed batching, replicas.
mod batching;
/// Faults injected while load runs: traps, timeouts and replacements under concurrency.
mod chaos;
/// The `sluice` binary end to end.
mod cli;
/// The live dashboard in headless Chromium, while load runs.
mod dashboard;
/// Misbehaving models fail only their own requests.
mod faults;
/// The GPU compute backend (lavapipe in CI) against the CPU backend.
mod gpu;
/// Guests that run graphs natively through wasi:nn: MiniLM sentence embeddings.
mod graphs;
/// KServe v2 over gRPC, with Triton's repository extension.
mod kserve;
/// The crate graph: dependencies point down, wasmtime and the wire stay in their crates.
mod layers;
/// The bounds on what a client can make the server hold: connections, idle time, unfinished
/// messages, the drain at shutdown.
mod limits;
/// Loading, unloading, versions and admin authorization through the API.
mod loading;
/// Many models under a memory budget: starting at zero, eviction, least recently used first.
mod memory_budget;
/// ONNX graphs served by the ONNX runner.
mod onnx;
/// Overload: bounded queues and recovery.
mod overload;
/// Predictions of the bundled models against their native counterparts.
mod predict;
/// The model repository: sync, watch, version policies, restarts.
mod repository;
/// Malformed and oversized requests.
mod requests;
/// KServe v2 over HTTP/REST and the JSON application API.
mod rest;
/// Applications: policies, feedback, per-user state, deadlines.
mod selection;
/// Servers sharing applications and learned state through a real Redis.
mod shared_state;
/// `sluice new`'s templates, from a new project to a served model.
mod templates;
/// TLS on both ports.
mod tls;
/// Request traces exported over OTLP, one span per layer.
mod traces;
