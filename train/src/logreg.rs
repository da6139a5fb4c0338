//! Multinomial logistic regression trained by minibatch SGD with L2 regularisation.
//! Inputs are scaled to [0, 1] for training; the scale is folded into the saved weights so the
//! served model takes raw pixel counts.

use crate::digits::{CLASSES, FEATURES, Sample};
use crate::rng::SplitMix64;
use sluice_sdk::params::Param;

const EPOCHS: usize = 80;
const BATCH: usize = 32;
const LEARNING_RATE: f32 = 0.5;
const L2: f32 = 1e-4;
const PIXEL_SCALE: f32 = 1.0 / 16.0;

/// Trained weights `[64, 10]` (for raw pixel counts) and bias `[10]`.
pub struct LogRegParams {
    /// Row-major `[FEATURES, CLASSES]`.
    pub weights: Vec<f32>,
    /// `[CLASSES]`.
    pub bias: Vec<f32>,
}

impl LogRegParams {
    /// Class probabilities for one image of raw pixel counts.
    pub fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        let mut scores = self.bias.clone();
        for (x, row) in pixels.iter().zip(self.weights.chunks_exact(CLASSES)) {
            for (s, w) in scores.iter_mut().zip(row) {
                *s += x * w;
            }
        }
        crate::softmax(&mut scores);
        scores
    }

    /// The parameters in the format the `digits-logreg` component's `init` reads.
    pub fn to_params(&self) -> Vec<Param> {
        vec![
            Param {
                name: "weights".into(),
                shape: vec![FEATURES as u32, CLASSES as u32],
                values: self.weights.clone(),
            },
            Param {
                name: "bias".into(),
                shape: vec![CLASSES as u32],
                values: self.bias.clone(),
            },
        ]
    }
}

/// Trains on `train` with a fixed seed.
pub fn train(train: &[Sample]) -> LogRegParams {
    let mut rng = SplitMix64::new(0x5105_1ce0);
    let mut w = vec![0.0f32; FEATURES * CLASSES];
    let mut b = vec![0.0f32; CLASSES];
    let mut order: Vec<usize> = (0..train.len()).collect();
    for _ in 0..EPOCHS {
        rng.shuffle(&mut order);
        for batch in order.chunks(BATCH) {
            let mut grad_w = vec![0.0f32; FEATURES * CLASSES];
            let mut grad_b = vec![0.0f32; CLASSES];
            for &i in batch {
                let x: Vec<f32> = train[i].pixels.iter().map(|p| p * PIXEL_SCALE).collect();
                let mut p = b.clone();
                for (xi, row) in x.iter().zip(w.chunks_exact(CLASSES)) {
                    for (pj, wij) in p.iter_mut().zip(row) {
                        *pj += xi * wij;
                    }
                }
                crate::softmax(&mut p);
                p[train[i].label] -= 1.0; // d(cross-entropy)/d(score)
                for (xi, grow) in x.iter().zip(grad_w.chunks_exact_mut(CLASSES)) {
                    for (g, pj) in grow.iter_mut().zip(&p) {
                        *g += xi * pj;
                    }
                }
                for (g, pj) in grad_b.iter_mut().zip(&p) {
                    *g += pj;
                }
            }
            let step = LEARNING_RATE / batch.len() as f32;
            for (wi, g) in w.iter_mut().zip(&grad_w) {
                *wi -= step * g + LEARNING_RATE * L2 * *wi;
            }
            for (bi, g) in b.iter_mut().zip(&grad_b) {
                *bi -= step * g;
            }
        }
    }
    LogRegParams {
        weights: w.iter().map(|wi| wi * PIXEL_SCALE).collect(),
        bias: b,
    }
}
