//! Reproducible training of the sample models on the UCI digits data.
//!
//! Everything is deterministic: the split is by row index (see `sample-models/data/README.md`),
//! the only randomness (initial weights, minibatch order) comes from a fixed-seed SplitMix64,
//! and the arithmetic is plain `f32`/`f64` loops. Running `cargo run -p sluice-train --release`
//! rewrites the committed parameter files byte for byte; a test checks that.

pub mod cnn;
pub mod digits;
pub mod logreg;
pub mod mlp;
mod rng;

pub use digits::{Digits, Sample};

/// Fraction of `samples` whose label equals `predict`'s answer.
pub fn accuracy(samples: &[Sample], mut predict: impl FnMut(&[f32]) -> usize) -> f64 {
    let correct = samples
        .iter()
        .filter(|s| predict(&s.pixels) == s.label)
        .count();
    correct as f64 / samples.len() as f64
}

/// Index of the largest value.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Softmax in place, numerically stable.
pub(crate) fn softmax(scores: &mut [f32]) {
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

/// Where the trained parameters of sample model `model` (e.g. `digits-mlp`) are committed.
pub fn params_path(model: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-models")
        .join(model)
        .join("params.slpm")
}

/// Trains the sample models and returns `(model name, encoded parameters, held-out accuracy)`.
pub fn train_all(digits: &Digits) -> Vec<(&'static str, Vec<u8>, f64)> {
    let logreg = logreg::train(&digits.train);
    let logreg_acc = accuracy(&digits.holdout, |x| argmax(&logreg.probabilities(x)));
    let mlp = mlp::train(&digits.train);
    let mlp_acc = accuracy(&digits.holdout, |x| argmax(&mlp.probabilities(x)));
    let cnn = cnn::train(&digits.train);
    let cnn_acc = accuracy(&digits.holdout, |x| argmax(&cnn.probabilities(x)));
    vec![
        (
            "digits-logreg",
            sluice_sdk::params::encode(&logreg.to_params()),
            logreg_acc,
        ),
        (
            "digits-mlp",
            sluice_sdk::params::encode(&mlp.to_params()),
            mlp_acc,
        ),
        (
            "digits-cnn",
            sluice_sdk::params::encode(&cnn.to_params()),
            cnn_acc,
        ),
    ]
}
