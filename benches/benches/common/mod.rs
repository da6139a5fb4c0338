//! What the criterion benches share: a runtime with an on-disk cache of compiled components,
//! instance recipes for the bundled models, and held-out digits as request tensors.

use sluice_compute::Backend;
use sluice_runtime::{InstanceLimits, InstanceRecipe, Replica, Runtime, RuntimeConfig};
use sluice_samples::SAMPLE_WASM_DIR;
use sluice_train::{Digits, params_path};
use sluice_types::{Dtype, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

/// A runtime whose compute imports run on `compute`, caching compiled components between
/// bench runs.
pub fn cached_runtime(compute: Arc<dyn Backend>) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-cache")),
        compute,
    })
    .unwrap()
}

/// The runtime the server uses by default (CPU compute).
#[allow(dead_code, reason = "not every bench uses the default runtime")]
pub fn default_runtime() -> Runtime {
    cached_runtime(RuntimeConfig::default().compute)
}

/// The bytes of a bundled sample component (`digits_mlp`, ...).
pub fn component_bytes(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(SAMPLE_WASM_DIR).join(format!("{name}.wasm"))).unwrap()
}

/// A recipe for `component` with `config`, on `runtime`'s compute backend.
pub fn recipe(runtime: &Runtime, component: &[u8], model: &str, config: Vec<u8>) -> InstanceRecipe {
    InstanceRecipe {
        component: runtime.load_component(component).unwrap(),
        model: model.into(),
        config: config.into(),
        limits: InstanceLimits::default(),
        compute: runtime.compute().clone(),
        graphs: Default::default(),
        on_replace: Arc::new(|_, _| {}),
    }
}

/// Runs `replica` on `inputs` as the batcher does: the inputs move in and come back, so a
/// bench measures the call and not a copy of its inputs.
pub fn call(replica: &mut Replica, inputs: &mut Vec<Tensor>) -> Vec<Tensor> {
    let (back, result) = replica.predict(std::mem::take(inputs));
    *inputs = back;
    result.unwrap()
}

/// A recipe for a bundled digits model with its committed parameters.
#[allow(dead_code, reason = "not every bench runs the bundled models")]
pub fn sample_recipe(runtime: &Runtime, component: &str, model: &str) -> InstanceRecipe {
    let config = std::fs::read(params_path(model)).unwrap();
    recipe(runtime, &component_bytes(component), model, config)
}

/// The first `rows` held-out images, flattened.
pub fn pixels(rows: usize) -> Vec<f32> {
    let digits = Digits::load_default().unwrap();
    digits.holdout[..rows]
        .iter()
        .flat_map(|s| s.pixels.iter().copied())
        .collect()
}

/// `values` as the `pixels` input, `[rows, 64]`.
pub fn pixels_tensor(values: &[f32]) -> Tensor {
    Tensor {
        name: "pixels".into(),
        dtype: Dtype::Fp32,
        shape: vec![(values.len() / 64) as u32, 64],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}
