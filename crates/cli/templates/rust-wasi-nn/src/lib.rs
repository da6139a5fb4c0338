//! A sluice model around a graph the host runs natively through `wasi:nn`: the graph
//! `classifier` (an ONNX file in the model's repository directory) classifies 8x8 digits;
//! this code checks the pixels before it and adds each row's confidence after it. Your own
//! pre- and post-processing goes here, sandboxed; the graph's math runs at native speed.

use sluice_sdk::nn::Graph;
use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};

/// Pixels per image (8x8) and the classes the graph scores.
const PIXELS: usize = 64;
const CLASSES: usize = 10;

pub struct Classifier {
    graph: Graph,
}

/// Refuses a pixel outside the 0..=16 the graph was trained on, naming where it is.
pub fn check_pixels(pixels: &[f32]) -> Result<(), ModelError> {
    match pixels.iter().position(|p| !(0.0..=16.0).contains(p)) {
        None => Ok(()),
        Some(at) => Err(ModelError::InvalidInput(format!(
            "pixels[{}][{}] is {}: pixels are 0 to 16",
            at / PIXELS,
            at % PIXELS,
            pixels[at]
        ))),
    }
}

/// Each row's highest probability.
pub fn confidence(probabilities: &[f32]) -> Vec<f32> {
    probabilities
        .chunks(CLASSES)
        .map(|row| row.iter().copied().fold(0.0, f32::max))
        .collect()
}

impl Model for Classifier {
    fn init(_config: &[u8]) -> Result<Self, ModelError> {
        // Loaded once here; the host parsed the file once for every replica.
        Ok(Classifier {
            graph: Graph::load("classifier")?,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "NAME".into(),
            version: "1".into(),
            // The first dimension is the batch: -1, any number of rows.
            inputs: vec![TensorSpec::new("pixels", Dtype::Fp32, &[-1, PIXELS as i64])],
            outputs: vec![
                TensorSpec::new("label", Dtype::Int64, &[-1]),
                TensorSpec::new("probabilities", Dtype::Fp32, &[-1, CLASSES as i64]),
                TensorSpec::new("confidence", Dtype::Fp32, &[-1]),
            ],
            max_batch: 256,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let pixels = sluice_sdk::input(&inputs, "pixels")?;
        check_pixels(&pixels.to_f32()?)?;
        // The graph's inputs by name; every output comes back, named as in the graph.
        let mut outputs = self.graph.compute(std::slice::from_ref(pixels))?;
        let probabilities = sluice_sdk::input(&outputs, "probabilities")?;
        let rows = probabilities.batch() as u32;
        let confidence = confidence(&probabilities.to_f32()?);
        outputs.retain(|t| t.name == "label" || t.name == "probabilities");
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        outputs.push(Tensor::from_f32("confidence", &[rows], &confidence));
        Ok(outputs)
    }
}

sluice_sdk::export_model!(Classifier);

#[cfg(test)]
mod tests {
    use super::*;

    /// The code around the graph runs natively: `cargo test`. (The graph needs the host:
    /// serve the model to try it whole.)
    #[test]
    fn pixels_out_of_range_are_named_and_confidence_is_the_top_probability() {
        let mut pixels = vec![0.0; 2 * PIXELS];
        assert!(check_pixels(&pixels).is_ok());
        pixels[PIXELS + 3] = 17.0;
        let Err(ModelError::InvalidInput(message)) = check_pixels(&pixels) else {
            panic!("17 accepted");
        };
        assert_eq!(message, "pixels[1][3] is 17: pixels are 0 to 16");
        let mut probabilities = vec![0.05; 2 * CLASSES];
        probabilities[4] = 0.55;
        probabilities[CLASSES + 9] = 0.9;
        assert_eq!(confidence(&probabilities), [0.55, 0.9]);
    }
}
