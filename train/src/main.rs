//! `sluice-train`: trains the sample models and writes `sample-models/<model>/params.slpm`.
//! With `--check` it writes nothing and fails if the committed files differ from a fresh run.

use anyhow::{Result, bail};
use sluice_train::{Digits, params_path, train_all};

fn main() -> Result<()> {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    let digits = Digits::load_default()?;
    println!(
        "digits: {} training rows, {} held out",
        digits.train.len(),
        digits.holdout.len()
    );
    let mut stale = Vec::new();
    for (model, params, accuracy) in train_all(&digits) {
        let path = params_path(model);
        println!(
            "{model}: held-out accuracy {:.2}% -> {}",
            accuracy * 100.0,
            path.display()
        );
        if check {
            if std::fs::read(&path).ok().as_deref() != Some(params.as_slice()) {
                stale.push(model);
            }
        } else {
            std::fs::write(&path, params)?;
        }
    }
    if !stale.is_empty() {
        bail!("committed parameters differ from a fresh training run: {stale:?}");
    }
    Ok(())
}
