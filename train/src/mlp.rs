//! A two-layer perceptron (64 → HIDDEN with ReLU → 10 with softmax) trained by minibatch SGD
//! with momentum. As for the logistic regression, the input scale is folded into `w1`.

use crate::digits::{CLASSES, FEATURES, Sample};
use crate::rng::SplitMix64;
use sluice_sdk::params::Param;

/// Hidden units.
pub const HIDDEN: usize = 64;
const EPOCHS: usize = 60;
const BATCH: usize = 32;
const LEARNING_RATE: f32 = 0.05;
const MOMENTUM: f32 = 0.9;
const L2: f32 = 1e-4;
const PIXEL_SCALE: f32 = 1.0 / 16.0;

/// Trained layers, row-major: `w1 [64, HIDDEN]`, `b1 [HIDDEN]`, `w2 [HIDDEN, 10]`, `b2 [10]`.
#[derive(Clone)]
pub struct MlpParams {
    /// First layer weights, scaled for raw pixel counts.
    pub w1: Vec<f32>,
    /// First layer bias.
    pub b1: Vec<f32>,
    /// Second layer weights.
    pub w2: Vec<f32>,
    /// Second layer bias.
    pub b2: Vec<f32>,
}

fn dense(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = b.to_vec();
    for (xi, row) in x.iter().zip(w.chunks_exact(b.len())) {
        for (o, wij) in out.iter_mut().zip(row) {
            *o += xi * wij;
        }
    }
    out
}

impl MlpParams {
    /// Hidden activations and class probabilities for one (already scaled) input.
    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hidden: Vec<f32> = dense(x, &self.w1, &self.b1)
            .into_iter()
            .map(|h| h.max(0.0))
            .collect();
        let mut out = dense(&hidden, &self.w2, &self.b2);
        crate::softmax(&mut out);
        (hidden, out)
    }

    /// Class probabilities for one image of raw pixel counts (weights already folded).
    pub fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        self.forward(pixels).1
    }

    /// The parameters in the format the `digits-mlp` component's `init` reads.
    pub fn to_params(&self) -> Vec<Param> {
        let param = |name: &str, shape: &[usize], values: &[f32]| Param {
            name: name.into(),
            shape: shape.iter().map(|&d| d as u32).collect(),
            values: values.to_vec(),
        };
        vec![
            param("w1", &[FEATURES, HIDDEN], &self.w1),
            param("b1", &[HIDDEN], &self.b1),
            param("w2", &[HIDDEN, CLASSES], &self.w2),
            param("b2", &[CLASSES], &self.b2),
        ]
    }
}

/// Trains on `train` with a fixed seed.
pub fn train(train: &[Sample]) -> MlpParams {
    let mut rng = SplitMix64::new(0x0d16_1715);
    let mut he = |fan_in: usize, n: usize| -> Vec<f32> {
        let scale = (2.0 / fan_in as f64).sqrt();
        (0..n).map(|_| (rng.next_normal() * scale) as f32).collect()
    };
    let mut p = MlpParams {
        w1: he(FEATURES, FEATURES * HIDDEN),
        b1: vec![0.0; HIDDEN],
        w2: he(HIDDEN, HIDDEN * CLASSES),
        b2: vec![0.0; CLASSES],
    };
    let mut velocity = MlpParams {
        w1: vec![0.0; p.w1.len()],
        b1: vec![0.0; HIDDEN],
        w2: vec![0.0; p.w2.len()],
        b2: vec![0.0; CLASSES],
    };
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut shuffle_rng = SplitMix64::new(0x00ba_7c4e);
    for _ in 0..EPOCHS {
        shuffle_rng.shuffle(&mut order);
        for batch in order.chunks(BATCH) {
            let mut grad = MlpParams {
                w1: vec![0.0; p.w1.len()],
                b1: vec![0.0; HIDDEN],
                w2: vec![0.0; p.w2.len()],
                b2: vec![0.0; CLASSES],
            };
            for &i in batch {
                let x: Vec<f32> = train[i].pixels.iter().map(|v| v * PIXEL_SCALE).collect();
                let (hidden, mut d_out) = p.forward(&x);
                d_out[train[i].label] -= 1.0;
                let mut d_hidden = vec![0.0f32; HIDDEN];
                for (j, (&h, grow)) in hidden
                    .iter()
                    .zip(grad.w2.chunks_exact_mut(CLASSES))
                    .enumerate()
                {
                    let wrow = &p.w2[j * CLASSES..(j + 1) * CLASSES];
                    for ((g, w), d) in grow.iter_mut().zip(wrow).zip(&d_out) {
                        *g += h * d;
                        d_hidden[j] += w * d;
                    }
                }
                for (g, d) in grad.b2.iter_mut().zip(&d_out) {
                    *g += d;
                }
                for (dh, h) in d_hidden.iter_mut().zip(&hidden) {
                    if *h <= 0.0 {
                        *dh = 0.0;
                    }
                }
                for (xi, grow) in x.iter().zip(grad.w1.chunks_exact_mut(HIDDEN)) {
                    for (g, dh) in grow.iter_mut().zip(&d_hidden) {
                        *g += xi * dh;
                    }
                }
                for (g, dh) in grad.b1.iter_mut().zip(&d_hidden) {
                    *g += dh;
                }
            }
            let scale = 1.0 / batch.len() as f32;
            let update = |w: &mut [f32], v: &mut [f32], g: &[f32], decay: bool| {
                for ((wi, vi), gi) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                    let reg = if decay { L2 * *wi } else { 0.0 };
                    *vi = MOMENTUM * *vi - LEARNING_RATE * (gi * scale + reg);
                    *wi += *vi;
                }
            };
            update(&mut p.w1, &mut velocity.w1, &grad.w1, true);
            update(&mut p.b1, &mut velocity.b1, &grad.b1, false);
            update(&mut p.w2, &mut velocity.w2, &grad.w2, true);
            update(&mut p.b2, &mut velocity.b2, &grad.b2, false);
        }
    }
    p.w1.iter_mut().for_each(|w| *w *= PIXEL_SCALE);
    p
}
