//! A model that implements `predictor` but also imports `test:unknown/secrets`, an interface
//! the host does not provide. Loading it must fail, naming the missing import: a component
//! cannot reach anything the host did not link.

use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};

mod secrets {
    wit_bindgen::generate!({
        inline: "
            package test:unknown;
            interface secrets { read: func() -> string; }
            world wants-secrets { import secrets; }
        ",
        world: "wants-secrets",
    });
}

/// Echoes its input, after asking the host for something it does not offer.
pub struct WantsSecrets;

impl Model for WantsSecrets {
    fn init(_config: &[u8]) -> Result<Self, ModelError> {
        Ok(WantsSecrets)
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "wants-secrets".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 1])],
            outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, 1])],
            max_batch: 1,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let _ = secrets::test::unknown::secrets::read();
        Ok(inputs)
    }
}

sluice_sdk::export_model!(WantsSecrets);
