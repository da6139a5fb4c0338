//! Checks tensors against a model's declared specs, on the way in (a client's request) and on
//! the way out (a model's answer), so that neither side sees data that breaks the contract.
//! Every message names the tensor and says what was expected.

use crate::{ModelInfo, Tensor, TensorSpec, bytes_elements};

/// Checks that `data` holds exactly `product(shape)` elements.
fn check_data(role: &str, t: &Tensor) -> Result<(), String> {
    let count = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .ok_or_else(|| format!("{role} `{}`: shape {:?} is too large", t.name, t.shape))?;
    match t.dtype.element_size() {
        Some(size) => {
            let expected = count.saturating_mul(size);
            if t.data.len() != expected {
                return Err(format!(
                    "{role} `{}`: shape {:?} of {} needs {expected} bytes of data, got {}",
                    t.name,
                    t.shape,
                    t.dtype.name(),
                    t.data.len()
                ));
            }
        }
        None => {
            let mut elements = bytes_elements(&t.data);
            for index in 0..count {
                match elements.next() {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        return Err(format!(
                            "{role} `{}`: BYTES element {index} claims more bytes than remain",
                            t.name
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{role} `{}`: BYTES element {index} is missing (shape {:?} needs \
                             {count})",
                            t.name, t.shape
                        ));
                    }
                }
            }
            let extra = elements.count();
            if extra > 0 {
                return Err(format!(
                    "{role} `{}`: {extra} BYTES elements past the {count} of shape {:?}",
                    t.name, t.shape
                ));
            }
        }
    }
    Ok(())
}

/// Checks `t` against `spec` (dtype, rank, fixed dimensions, data length).
fn check_against_spec(role: &str, spec: &TensorSpec, t: &Tensor) -> Result<(), String> {
    if t.dtype != spec.dtype {
        return Err(format!(
            "{role} `{}`: expected dtype {}, got {}",
            t.name,
            spec.dtype.name(),
            t.dtype.name()
        ));
    }
    let fits = t.shape.len() == spec.shape.len()
        && t.shape
            .iter()
            .zip(&spec.shape)
            .all(|(&d, &s)| s < 0 || d as i64 == s);
    if !fits {
        return Err(format!(
            "{role} `{}`: expected shape {:?} (-1 = any), got {:?}",
            t.name, spec.shape, t.shape
        ));
    }
    check_data(role, t)
}

/// Checks a request's inputs against `info` and returns them in declared order with the
/// batch size. Rejects unknown, missing and duplicate inputs, an empty batch, inputs whose
/// batch sizes differ, and batches larger than the model's `max_batch`.
pub fn check_inputs(
    info: &ModelInfo,
    mut inputs: Vec<Tensor>,
) -> Result<(Vec<Tensor>, usize), String> {
    if let Some(unknown) = inputs
        .iter()
        .find(|t| !info.inputs.iter().any(|s| s.name == t.name))
    {
        let declared: Vec<&str> = info.inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "unknown input `{}`; the model's inputs are {declared:?}",
            unknown.name
        ));
    }
    let mut ordered = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        let index = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| format!("missing input `{}`", spec.name))?;
        let tensor = inputs.swap_remove(index);
        if inputs.iter().any(|t| t.name == spec.name) {
            return Err(format!("input `{}` is given more than once", spec.name));
        }
        check_against_spec("input", spec, &tensor)?;
        ordered.push(tensor);
    }
    let batch = batch_size(&ordered)?;
    if batch == 0 {
        return Err("empty batch: shape[0] of every input must be at least 1".into());
    }
    if batch > info.max_batch as usize {
        return Err(format!(
            "batch of {batch} exceeds the model's max batch of {}",
            info.max_batch
        ));
    }
    Ok((ordered, batch))
}

/// The common `shape[0]` of `tensors` (0 when there are none); the error names the tensor
/// whose batch differs or that has no batch dimension.
pub fn batch_size(tensors: &[Tensor]) -> Result<usize, String> {
    let mut batch = None;
    for t in tensors {
        let b = *t
            .shape
            .first()
            .ok_or_else(|| format!("`{}` has no batch dimension (empty shape)", t.name))?
            as usize;
        match batch {
            None => batch = Some(b),
            Some(first) if first != b => {
                return Err(format!(
                    "`{}` has batch size {b}, but other tensors have {first}",
                    t.name
                ));
            }
            Some(_) => {}
        }
    }
    Ok(batch.unwrap_or(0))
}

/// Checks a model's outputs against `info` and the request's batch size.
pub fn check_outputs(info: &ModelInfo, outputs: &[Tensor], batch: usize) -> Result<(), String> {
    for spec in &info.outputs {
        let count = outputs.iter().filter(|t| t.name == spec.name).count();
        if count != 1 {
            return Err(format!(
                "declared output `{}` appears {count} times in the answer",
                spec.name
            ));
        }
    }
    for t in outputs {
        let spec = info
            .outputs
            .iter()
            .find(|s| s.name == t.name)
            .ok_or_else(|| format!("undeclared output `{}`", t.name))?;
        check_against_spec("output", spec, t)?;
        if t.shape[0] as usize != batch {
            return Err(format!(
                "output `{}` has batch size {}, but the request had {batch}",
                t.name, t.shape[0]
            ));
        }
    }
    Ok(())
}

/// Checks what a model says about itself at load.
pub fn check_info(info: &ModelInfo) -> Result<(), String> {
    if info.name.is_empty() {
        return Err("the model's name is empty".into());
    }
    if info.max_batch == 0 {
        return Err("max-batch is 0; it must be at least 1".into());
    }
    if info.inputs.is_empty() || info.outputs.is_empty() {
        return Err("a model needs at least one input and one output".into());
    }
    for (role, specs) in [("input", &info.inputs), ("output", &info.outputs)] {
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(format!("{role} `{}` is declared twice", spec.name));
            }
            if spec.shape.first() != Some(&-1) || spec.shape.iter().any(|&d| d < -1) {
                return Err(format!(
                    "{role} `{}` has shape {:?}: the first dimension is the batch and must be -1 \
                     (any number of rows), the others a size or -1 (any), e.g. [-1] or [-1, {}]; \
                     an ONNX graph needs a dynamic batch axis when it is exported",
                    spec.name,
                    spec.shape,
                    spec.shape.last().filter(|&&d| d > 0).unwrap_or(&4)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    fn info() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![
                TensorSpec {
                    name: "x".into(),
                    dtype: Dtype::Fp32,
                    shape: vec![-1, 2],
                },
                TensorSpec {
                    name: "s".into(),
                    dtype: Dtype::Bytes,
                    shape: vec![-1],
                },
            ],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: Dtype::Int64,
                shape: vec![-1],
            }],
            max_batch: 4,
        }
    }

    fn tensor(name: &str, dtype: Dtype, shape: &[u32], data: Vec<u8>) -> Tensor {
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    fn bytes_elements(items: &[&[u8]]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|i| {
                (i.len() as u32)
                    .to_le_bytes()
                    .into_iter()
                    .chain(i.iter().copied())
            })
            .collect()
    }

    fn good_inputs(batch: u32) -> Vec<Tensor> {
        let strings: Vec<&[u8]> = (0..batch).map(|_| b"ab".as_slice()).collect();
        vec![
            tensor("s", Dtype::Bytes, &[batch], bytes_elements(&strings)),
            tensor("x", Dtype::Fp32, &[batch, 2], vec![0; 8 * batch as usize]),
        ]
    }

    #[test]
    fn good_inputs_come_back_in_declared_order() {
        let (ordered, batch) = check_inputs(&info(), good_inputs(3)).unwrap();
        assert_eq!(batch, 3);
        assert_eq!(ordered[0].name, "x");
        assert_eq!(ordered[1].name, "s");
    }

    #[test]
    fn each_malformed_input_is_named() {
        type Breakage = Box<dyn Fn(&mut Vec<Tensor>)>;
        let cases: Vec<(Breakage, &str)> = vec![
            (
                Box::new(|i| i[1].dtype = Dtype::Int32),
                "`x`: expected dtype FP32, got INT32",
            ),
            (Box::new(|i| i[1].shape = vec![2, 3]), "`x`: expected shape"),
            (
                Box::new(|i| i[1].data.truncate(15)),
                "`x`: shape [2, 2] of FP32 needs 16 bytes",
            ),
            (
                Box::new(|i| {
                    i.remove(0);
                }),
                "missing input `s`",
            ),
            (
                Box::new(|i| i.push(tensor("z", Dtype::Fp32, &[2], vec![0; 8]))),
                "unknown input `z`",
            ),
            (Box::new(|i| i[0].data.truncate(7)), "BYTES element 1"),
            (Box::new(|i| i[0].shape = vec![3]), "BYTES element 2"),
        ];
        for (break_it, expected) in cases {
            let mut inputs = good_inputs(2);
            break_it(&mut inputs);
            let err = check_inputs(&info(), inputs).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn batch_must_be_consistent_non_empty_and_bounded() {
        let mut inputs = good_inputs(2);
        inputs[1] = tensor("x", Dtype::Fp32, &[3, 2], vec![0; 24]);
        assert!(
            check_inputs(&info(), inputs)
                .unwrap_err()
                .contains("batch size")
        );
        assert!(
            check_inputs(&info(), good_inputs(0))
                .unwrap_err()
                .contains("empty batch")
        );
        assert!(
            check_inputs(&info(), good_inputs(5))
                .unwrap_err()
                .contains("max batch of 4")
        );
    }

    #[test]
    fn outputs_must_match_declaration_and_batch() {
        let y = |batch: u32| tensor("y", Dtype::Int64, &[batch], vec![0; 8 * batch as usize]);
        assert!(check_outputs(&info(), &[y(2)], 2).is_ok());
        assert!(
            check_outputs(&info(), &[y(3)], 2)
                .unwrap_err()
                .contains("batch size 3")
        );
        assert!(
            check_outputs(&info(), &[], 2)
                .unwrap_err()
                .contains("appears 0 times")
        );
        let extra = tensor("w", Dtype::Int64, &[2], vec![0; 16]);
        assert!(
            check_outputs(&info(), &[y(2), extra], 2)
                .unwrap_err()
                .contains("undeclared")
        );
    }

    #[test]
    fn info_is_checked() {
        assert!(check_info(&info()).is_ok());
        let mut bad = info();
        bad.max_batch = 0;
        assert!(check_info(&bad).is_err());
        let mut bad = info();
        bad.outputs[0].shape.clear();
        assert!(check_info(&bad).is_err());
        let mut bad = info();
        bad.inputs.push(bad.inputs[0].clone());
        assert!(check_info(&bad).unwrap_err().contains("declared twice"));
        // A fixed first dimension is not a batch: refused at load, saying what is accepted.
        let mut bad = info();
        bad.inputs[0].shape = vec![4];
        let error = check_info(&bad).unwrap_err();
        assert!(
            error.contains("the first dimension is the batch and must be -1"),
            "{error}"
        );
        let mut variable = info();
        variable.inputs[0].shape = vec![-1, -1];
        assert!(check_info(&variable).is_ok(), "later dimensions may vary");
    }
}
