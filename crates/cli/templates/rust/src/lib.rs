//! A sluice model: y = a·x + b for every element; `a` and `b` come from the config ("a,b").

use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};

pub struct Affine {
    a: f32,
    b: f32,
}

impl Model for Affine {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(config)
            .map_err(|_| ModelError::Internal("config is not UTF-8".into()))?;
        let (a, b) = text
            .trim()
            .split_once(',')
            .ok_or_else(|| ModelError::Internal(format!("config must be `a,b`, got `{text}`")))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<f32>()
                .map_err(|e| ModelError::Internal(format!("config `{s}`: {e}")))
        };
        Ok(Affine {
            a: parse(a)?,
            b: parse(b)?,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "NAME".into(),
            version: "1".into(),
            // The first dimension is the batch: -1, any number of rows.
            inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 3])],
            outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, 3])],
            max_batch: 128,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let x = sluice_sdk::input(&inputs, "x")?;
        let y: Vec<f32> = x.to_f32()?.iter().map(|v| self.a * v + self.b).collect();
        Ok(vec![Tensor::from_f32("y", &x.shape, &y)])
    }
}

sluice_sdk::export_model!(Affine);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs natively: `cargo test`.
    #[test]
    fn y_is_a_x_plus_b() {
        let mut model = Affine::init(b"2,1").unwrap();
        let x = Tensor::from_f32("x", &[1, 3], &[1.0, 2.0, 3.0]);
        let y = model.predict(vec![x]).unwrap();
        assert_eq!(y[0].to_f32().unwrap(), [3.0, 5.0, 7.0]);
    }
}
