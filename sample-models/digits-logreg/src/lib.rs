//! Multinomial logistic regression over the 64 pixel counts of an 8x8 digit, 10 classes.
//! All arithmetic runs inside the guest: this is the model that shows what sandboxed code costs
//! by itself. Its parameters (`weights` `[64, 10]`, `bias` `[10]`, already scaled for raw pixel
//! counts 0..16) come from the trainer (`cargo run -p sluice-train`) as the init config.

use sluice_sdk::{Model, ModelError, ModelInfo, Tensor, params};

/// Pixels per image.
pub const FEATURES: usize = 64;
/// Digit classes.
pub const CLASSES: usize = 10;

/// The trained model.
pub struct LogReg {
    /// `[FEATURES, CLASSES]`, row-major.
    weights: Vec<f32>,
    /// `[CLASSES]`.
    bias: Vec<f32>,
}

impl LogReg {
    /// Reads the `weights` and `bias` parameters written by the trainer.
    pub fn from_config(config: &[u8]) -> Result<Self, ModelError> {
        let mut params = params::decode(config)?;
        let weights = params::take(&mut params, "weights", &[FEATURES as u32, CLASSES as u32])?;
        let bias = params::take(&mut params, "bias", &[CLASSES as u32])?;
        Ok(LogReg {
            weights: weights.values,
            bias: bias.values,
        })
    }

    /// Writes the class probabilities of every row of `pixels` (`rows * 64` values) into
    /// `probabilities` (`rows * 10` values) and returns the most likely class of each row.
    pub fn predict_batch(&self, pixels: &[f32], probabilities: &mut [f32]) -> Vec<i64> {
        pixels
            .chunks_exact(FEATURES)
            .zip(probabilities.chunks_exact_mut(CLASSES))
            .map(|(x, p)| {
                p.copy_from_slice(&self.bias);
                for (xi, w_row) in x.iter().zip(self.weights.chunks_exact(CLASSES)) {
                    for (pj, wij) in p.iter_mut().zip(w_row) {
                        *pj += xi * wij;
                    }
                }
                softmax_in_place(p);
                argmax(p) as i64
            })
            .collect()
    }
}

fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

impl Model for LogReg {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        Self::from_config(config)
    }

    fn info(&self) -> ModelInfo {
        sluice_sdk::classifier_info("digits-logreg", "pixels", FEATURES as u32, CLASSES as u32)
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let pixels = sluice_sdk::input(&inputs, "pixels")?;
        let rows = pixels.batch();
        let mut probabilities = vec![0.0; rows * CLASSES];
        let labels = self.predict_batch(&pixels.to_f32()?, &mut probabilities);
        Ok(vec![
            Tensor::from_f32(
                "probabilities",
                &[rows as u32, CLASSES as u32],
                &probabilities,
            ),
            Tensor::from_i64("label", &[rows as u32], &labels),
        ])
    }
}

sluice_sdk::export_model!(LogReg);
