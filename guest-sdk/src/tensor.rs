//! Helpers for building and reading [`Tensor`]s, so model code works with `f32`/`i64` slices
//! instead of the little-endian byte layout the WIT contract carries.

use crate::{Dtype, ModelError, ModelInfo, Tensor, TensorSpec};

/// Finds the input called `name`, or fails with [`ModelError::InvalidInput`] naming it.
pub fn input<'a>(inputs: &'a [Tensor], name: &str) -> Result<&'a Tensor, ModelError> {
    inputs.iter().find(|t| t.name == name).ok_or_else(|| {
        // The host passes exactly the inputs `info()` declares, checked: one that is not there
        // was never declared, which is the model's mistake, not the client's.
        let given: Vec<String> = inputs.iter().map(|t| format!("`{}`", t.name)).collect();
        ModelError::Internal(format!(
            "the model reads input `{name}`, which its info() does not declare (it is given \
             exactly the declared inputs: {}); add `{name}` to info().inputs",
            given.join(", ")
        ))
    })
}

impl Tensor {
    /// Builds an `FP32` tensor from values in row-major order.
    pub fn from_f32(name: &str, shape: &[u32], values: &[f32]) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: Dtype::Fp32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Builds an `INT64` tensor from values in row-major order.
    pub fn from_i64(name: &str, shape: &[u32], values: &[i64]) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: Dtype::Int64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The batch size, `shape[0]` (0 for a scalar).
    pub fn batch(&self) -> usize {
        self.shape.first().map_or(0, |&b| b as usize)
    }

    /// The number of elements in one batch row: the product of `shape[1..]`.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).map(|&d| d as usize).product()
    }

    /// Decodes an `FP32` tensor's values.
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        self.expect_dtype(Dtype::Fp32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Decodes an `INT64` tensor's values.
    pub fn to_i64(&self) -> Result<Vec<i64>, ModelError> {
        self.expect_dtype(Dtype::Int64)?;
        Ok(self
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
            .collect())
    }

    /// The elements of a `BYTES` tensor (each a 4-byte little-endian length and the bytes),
    /// row-major: for text inputs, one string per element.
    pub fn to_bytes_elements(&self) -> Result<Vec<&[u8]>, ModelError> {
        self.expect_dtype(Dtype::Bytes)?;
        let mut elements = Vec::new();
        let mut rest = self.data.as_slice();
        while !rest.is_empty() {
            let cut = || {
                ModelError::InvalidInput(format!("tensor `{}`: an element is cut short", self.name))
            };
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
            let len = u32::from_le_bytes(*len) as usize;
            let (element, tail) = tail.split_at_checked(len).ok_or_else(cut)?;
            elements.push(element);
            rest = tail;
        }
        Ok(elements)
    }

    fn expect_dtype(&self, dtype: Dtype) -> Result<(), ModelError> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(ModelError::InvalidInput(format!(
                "tensor `{}` has dtype {:?}, expected {dtype:?}",
                self.name, self.dtype
            )))
        }
    }
}

/// The description of a classifier over one FP32 input `input` `[-1, features]`: outputs
/// `probabilities` FP32 `[-1, classes]` and `label` INT64 `[-1]`, what [`classifier_outputs`]
/// makes.
pub fn classifier_info(name: &str, input: &str, features: u32, classes: u32) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        version: "1".into(),
        inputs: vec![TensorSpec::new(
            input,
            Dtype::Fp32,
            &[-1, i64::from(features)],
        )],
        outputs: vec![
            TensorSpec::new("probabilities", Dtype::Fp32, &[-1, i64::from(classes)]),
            TensorSpec::new("label", Dtype::Int64, &[-1]),
        ],
        max_batch: 256,
    }
}

/// The two outputs of a classifier: `probabilities` `[rows, classes]` as given, and `label`
/// `[rows]`, the most probable class of each row (the first one on a tie).
pub fn classifier_outputs(rows: u32, probabilities: &[f32]) -> Vec<Tensor> {
    let classes = probabilities.len() / rows.max(1) as usize;
    let labels: Vec<i64> = probabilities
        .chunks_exact(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                    if p > best.1 { (i, p) } else { best }
                })
                .0 as i64
        })
        .collect();
    vec![
        Tensor::from_f32("probabilities", &[rows, classes as u32], probabilities),
        Tensor::from_i64("label", &[rows], &labels),
    ]
}

impl TensorSpec {
    /// A spec with the given name, dtype and shape (`-1` for a variable dimension; the first
    /// dimension is the batch and should be `-1`).
    pub fn new(name: &str, dtype: Dtype, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_keeps_values_and_shape() {
        let t = Tensor::from_f32("x", &[2, 2], &[1.0, -2.5, 3.25, 0.0]);
        assert_eq!(t.batch(), 2);
        assert_eq!(t.row_len(), 2);
        assert_eq!(t.to_f32().unwrap(), vec![1.0, -2.5, 3.25, 0.0]);
    }

    #[test]
    fn reading_the_wrong_dtype_names_the_tensor() {
        let t = Tensor::from_i64("label", &[1], &[7]);
        assert_eq!(t.to_i64().unwrap(), vec![7]);
        match t.to_f32() {
            Err(ModelError::InvalidInput(msg)) => assert!(msg.contains("`label`"), "{msg}"),
            other => panic!("expected an invalid-input error, got {other:?}"),
        }
    }

    #[test]
    fn an_undeclared_input_is_named_as_the_models_mistake() {
        let inputs = vec![Tensor::from_f32("a", &[1], &[1.0])];
        assert!(input(&inputs, "a").is_ok());
        match input(&inputs, "b") {
            Err(ModelError::Internal(msg)) => {
                assert!(msg.contains("reads input `b`"), "{msg}");
                assert!(msg.contains("declared inputs: `a`"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
