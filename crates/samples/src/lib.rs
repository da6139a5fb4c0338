//! # sluice-samples: the sample components, built and embedded
//!
//! The sample models compiled into the `sluice` binary, so that `sluice serve` with no flags
//! serves something real: the digits classifiers (logistic regression, MLP, CNN) built from
//! `sample-models/` by the build script, with the parameters the trainer wrote; the ONNX
//! runners; and, for the tests, the misbehaving and refused components.

/// A component and its init config, embedded at build time.
pub struct BundledModel {
    /// The name it serves under.
    pub name: &'static str,
    /// The component bytes.
    pub component: &'static [u8],
    /// The config passed to `init` (the trained parameters).
    pub config: &'static [u8],
}

/// The models `sluice serve` loads by default.
pub const SAMPLE_MODELS: &[BundledModel] = &[
    BundledModel {
        name: "digits-logreg",
        component: include_bytes!(concat!(env!("OUT_DIR"), "/digits_logreg.wasm")),
        config: include_bytes!("../../../sample-models/digits-logreg/params.slpm"),
    },
    BundledModel {
        name: "digits-mlp",
        component: include_bytes!(concat!(env!("OUT_DIR"), "/digits_mlp.wasm")),
        config: include_bytes!("../../../sample-models/digits-mlp/params.slpm"),
    },
    BundledModel {
        name: "digits-cnn",
        component: include_bytes!(concat!(env!("OUT_DIR"), "/digits_cnn.wasm")),
        config: include_bytes!("../../../sample-models/digits-cnn/params.slpm"),
    },
];

/// The onnx-runner component (`sample-models/onnx-runner`): give it an ONNX graph as its init
/// config and it serves that graph. `LoadModel` with `onnx` bytes uses it.
pub const ONNX_RUNNER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/onnx_runner.wasm"));

/// The graph-runner component (`sample-models/graph-runner`): serves the graph `model` that
/// the host runs natively (wasi:nn), with the signature its init config gives. `LoadModel`
/// with `onnx` bytes uses it when the server has ONNX Runtime.
pub const GRAPH_RUNNER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/graph_runner.wasm"));

/// The directory where the build script left every sample component, including the
/// misbehaving `faulty.wasm` used by the tests. Valid on the machine that built this crate.
pub const SAMPLE_WASM_DIR: &str = env!("SLUICE_SAMPLE_WASM_DIR");
