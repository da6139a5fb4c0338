//! Training is deterministic and good enough: a fresh run reproduces the committed parameter
//! files byte for byte, and both models reach at least 95% on the held-out rows.

use sluice_train::{Digits, params_path, train_all};

#[test]
fn training_reproduces_committed_parameters_and_accuracy() {
    let digits = Digits::load_default().unwrap();
    assert_eq!((digits.train.len(), digits.holdout.len()), (1437, 360));
    for (model, params, accuracy) in train_all(&digits) {
        assert!(accuracy >= 0.95, "{model}: held-out accuracy {accuracy}");
        let committed = std::fs::read(params_path(model)).unwrap();
        assert!(
            committed == params,
            "{model}: sample-models/{model}/params.slpm is stale; run `cargo run -p sluice-train --release`"
        );
    }
}
