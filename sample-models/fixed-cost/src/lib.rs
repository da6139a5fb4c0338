//! A synthetic model whose every `predict` call spends a fixed amount of compute before it
//! looks at the batch, and almost nothing per row: it stands in for models dominated by
//! per-invocation overhead (a GPU kernel launch, a framework's per-call setup), which is where
//! batching pays off most. Its config is the number of setup iterations (UTF-8 decimal); each
//! is one step of a 64-bit linear congruential generator, about a nanosecond. It serves as
//! `fixed-cost`, input `x` and output `y` FP32 `[-1, 1]`, with `y = x`.

use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};
use std::hint::black_box;

/// The configured model.
pub struct FixedCost {
    iterations: u64,
}

impl Model for FixedCost {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(config).unwrap_or("").trim();
        let iterations = text.parse().map_err(|_| {
            ModelError::Internal(format!(
                "config must be a number of iterations, got `{text}`"
            ))
        })?;
        Ok(FixedCost { iterations })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "fixed-cost".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 1])],
            outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, 1])],
            max_batch: 1024,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let mut state = black_box(0x2545_f491_4f6c_dd1du64);
        for _ in 0..self.iterations {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
        }
        black_box(state);
        let x = sluice_sdk::input(&inputs, "x")?;
        Ok(vec![Tensor::from_f32("y", &x.shape, &x.to_f32()?)])
    }
}

sluice_sdk::export_model!(FixedCost);
