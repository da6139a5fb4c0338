//! Loads `sample-models/data/digits.csv` and splits it into training and held-out rows.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Pixels per image (8x8).
pub const FEATURES: usize = 64;
/// Digit classes.
pub const CLASSES: usize = 10;

/// One labelled image: 64 pixel counts in 0..=16 and the digit it shows.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Row-major 8x8 pixel counts, as `f32` (the models take raw counts).
    pub pixels: Vec<f32>,
    /// The digit, 0..=9.
    pub label: usize,
}

/// The data set, split by row index: row `i` is held out when `i % 5 == 0`.
pub struct Digits {
    /// 1437 rows to train on.
    pub train: Vec<Sample>,
    /// 360 rows never seen in training, for accuracy figures.
    pub holdout: Vec<Sample>,
}

/// The committed data file, found from this crate's source directory.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-models/data/digits.csv")
}

impl Digits {
    /// Reads and splits the data file at `path`.
    pub fn load(path: &Path) -> Result<Digits> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the digits data at {}", path.display()))?;
        let mut digits = Digits {
            train: Vec::new(),
            holdout: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<f32> = line
                .split(',')
                .map(|f| f.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("line {}: not a list of numbers", i + 1))?;
            if fields.len() != FEATURES + 1 {
                bail!(
                    "line {}: expected {} fields, found {}",
                    i + 1,
                    FEATURES + 1,
                    fields.len()
                );
            }
            let sample = Sample {
                pixels: fields[..FEATURES].to_vec(),
                label: fields[FEATURES] as usize,
            };
            if i % 5 == 0 {
                digits.holdout.push(sample);
            } else {
                digits.train.push(sample);
            }
        }
        Ok(digits)
    }

    /// Reads the committed data file.
    pub fn load_default() -> Result<Digits> {
        Self::load(&default_path())
    }
}
