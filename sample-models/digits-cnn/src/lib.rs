//! A small convolutional network on 8x8 digits: conv 3×3 (4 filters, padding 1) → ReLU →
//! 2×2 max-pool → dense 64 → 10 → softmax. Every layer runs on the host through the `compute`
//! import (`conv2d`, `max-pool`, `reshape`, `matmul`); the guest uploads the batch, chains the
//! operations and reads the probabilities back. Trained by `train/src/cnn.rs`.

use sluice_sdk::compute::DeviceTensor;
use sluice_sdk::{Model, ModelError, ModelInfo, Tensor, params};

const SIDE: u32 = 8;
const FEATURES: u32 = SIDE * SIDE;
const FILTERS: u32 = 4;
const CLASSES: u32 = 10;

/// The trained network, held on the host.
pub struct Cnn {
    filters: DeviceTensor,
    weights: DeviceTensor,
    bias: DeviceTensor,
}

impl Model for Cnn {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let mut params = params::decode(config)?;
        let pooled = FILTERS * (SIDE / 2) * (SIDE / 2);
        Ok(Cnn {
            filters: DeviceTensor::upload_param(&mut params, "filters", &[FILTERS, 1, 3, 3])?,
            weights: DeviceTensor::upload_param(&mut params, "weights", &[pooled, CLASSES])?,
            bias: DeviceTensor::upload_param(&mut params, "bias", &[CLASSES])?,
        })
    }

    fn info(&self) -> ModelInfo {
        sluice_sdk::classifier_info("digits-cnn", "pixels", FEATURES, CLASSES)
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let pixels = sluice_sdk::input(&inputs, "pixels")?;
        let rows = pixels.batch() as u32;
        // The input's bytes, as images [n, 1, 8, 8]: no decoding in the guest.
        let images = DeviceTensor::upload_bytes(&[rows, 1, SIDE, SIDE], &pixels.data)?;
        let features = images
            .conv2d(&self.filters, 1)?
            .relu()?
            .max_pool(2)?
            .reshape(&[rows, FILTERS * (SIDE / 2) * (SIDE / 2)])?;
        let probabilities = features
            .matmul(&self.weights)?
            .add(&self.bias)?
            .softmax()?
            .read();
        Ok(sluice_sdk::classifier_outputs(rows, &probabilities))
    }
}

sluice_sdk::export_model!(Cnn);
