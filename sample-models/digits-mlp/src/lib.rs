//! A multi-layer perceptron (64 → hidden, ReLU → 10, softmax) on 8x8 digits. Its weights live
//! on the host as device tensors, uploaded once in `init`; each batch is one upload, six host
//! operations and one read, so the guest itself does almost no arithmetic.

use sluice_sdk::compute::DeviceTensor;
use sluice_sdk::{Model, ModelError, ModelInfo, Tensor, params};

const FEATURES: u32 = 64;
const CLASSES: u32 = 10;

/// The trained model, held on the host.
pub struct Mlp {
    w1: DeviceTensor,
    b1: DeviceTensor,
    w2: DeviceTensor,
    b2: DeviceTensor,
}

/// Uploads a parameter tensor that the trainer wrote with exactly `shape`.
impl Model for Mlp {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let mut params = params::decode(config)?;
        let hidden = params
            .iter()
            .find(|p| p.name == "b1")
            .and_then(|p| p.shape.first().copied())
            .ok_or_else(|| ModelError::Internal("invalid parameters: `b1` is missing".into()))?;
        Ok(Mlp {
            w1: DeviceTensor::upload_param(&mut params, "w1", &[FEATURES, hidden])?,
            b1: DeviceTensor::upload_param(&mut params, "b1", &[hidden])?,
            w2: DeviceTensor::upload_param(&mut params, "w2", &[hidden, CLASSES])?,
            b2: DeviceTensor::upload_param(&mut params, "b2", &[CLASSES])?,
        })
    }

    fn info(&self) -> ModelInfo {
        sluice_sdk::classifier_info("digits-mlp", "pixels", FEATURES, CLASSES)
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let pixels = sluice_sdk::input(&inputs, "pixels")?;
        let rows = pixels.batch() as u32;
        let x = DeviceTensor::upload_bytes(&[rows, FEATURES], &pixels.data)?;
        let hidden = x.matmul(&self.w1)?.add(&self.b1)?.relu()?;
        let probabilities = hidden.matmul(&self.w2)?.add(&self.b2)?.softmax()?.read();
        Ok(sluice_sdk::classifier_outputs(rows, &probabilities))
    }
}

sluice_sdk::export_model!(Mlp);
