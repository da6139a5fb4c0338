//! What an application is (its linked models, latency objective, default output and policy),
//! the checks made when one is registered or changed, and how a model's output tensor is read
//! as one prediction per row.

use super::policy::{PolicyConfig, Prediction};
use serde::{Deserialize, Serialize};
use sluice_types::{Dtype, ModelInfo, Tensor};

/// What the application predicts, which sets the label type and the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelKind {
    /// A class label (int64); 0/1 loss. Models answer with a label per row or a score per
    /// class per row (the arg-max is taken).
    Class,
    /// A number; absolute-error loss. Models answer with one number per row.
    Number,
}

impl LabelKind {
    /// `class` or `number`.
    pub fn name(self) -> &'static str {
        match self {
            LabelKind::Class => "class",
            LabelKind::Number => "number",
        }
    }
}

/// An application, as registered and as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplicationSpec {
    /// Its name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Linked models: `name` (whatever version is the default) or `name@version`.
    pub models: Vec<String>,
    /// The latency objective in milliseconds: an ensemble combines what has arrived by then.
    pub slo_ms: u64,
    /// The output tensor read from each model.
    pub output: String,
    /// Class labels or numbers.
    pub kind: LabelKind,
    /// Returned (marked as a default) when no model answers in time or confidence is too low.
    pub default_output: Prediction,
    /// How models are chosen and combined.
    pub policy: PolicyConfig,
    /// Below this confidence (0 to 1) the default output is returned instead.
    pub confidence_threshold: f64,
    /// Seed of the policy's random draws.
    pub seed: u64,
}

/// Splits a link `name@version` into its parts (`name` alone: the default version).
pub fn split_link(link: &str) -> (&str, Option<&str>) {
    match link.rsplit_once('@') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => (name, Some(version)),
        _ => (link, None),
    }
}

/// Checks a name for an application (see [`sluice_types::names`]).
pub fn check_name(name: &str) -> Result<(), String> {
    sluice_types::names::check_name("name", name)
}

impl ApplicationSpec {
    /// Checks everything that does not depend on which models are loaded; the error starts
    /// with the offending field.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.slo_ms == 0 {
            return Err("slo_ms: the latency objective must be at least 1 ms".into());
        }
        if self.output.is_empty() {
            return Err("output: name the output tensor to read from each model".into());
        }
        if !(0.0..=1.0).contains(&self.confidence_threshold) {
            return Err(format!(
                "confidence_threshold: must be between 0 and 1, not {}",
                self.confidence_threshold
            ));
        }
        check_label(self.kind, self.default_output).map_err(|e| format!("default_output: {e}"))?;
        self.policy
            .validate(&self.models)
            .map_err(|e| format!("policy: {e}"))?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = self.models.iter().find(|m| !seen.insert(m.as_str())) {
            return Err(format!("models: `{twice}` is linked twice"));
        }
        Ok(())
    }

    /// Checks that a model can serve this application: it has the output, of a usable dtype.
    pub fn check_model(&self, info: &ModelInfo) -> Result<(), String> {
        let Some(spec) = info.outputs.iter().find(|o| o.name == self.output) else {
            let names: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(format!(
                "model `{}` has no output `{}` (its outputs: {names:?})",
                info.name, self.output
            ));
        };
        if numeric(spec.dtype) {
            Ok(())
        } else {
            Err(format!(
                "output `{}` of model `{}` is {:?}; applications read numeric outputs",
                self.output, info.name, spec.dtype
            ))
        }
    }
}

/// Checks that a label has the application's kind.
pub fn check_label(kind: LabelKind, label: Prediction) -> Result<(), String> {
    match (kind, label) {
        (LabelKind::Class, Prediction::Class(_)) | (LabelKind::Number, Prediction::Number(_)) => {
            Ok(())
        }
        (LabelKind::Class, Prediction::Number(_)) => {
            Err("the application predicts class labels; give a class label, not a number".into())
        }
        (LabelKind::Number, Prediction::Class(_)) => {
            Err("the application predicts numbers; give a number, not a class label".into())
        }
    }
}

fn numeric(dtype: Dtype) -> bool {
    !matches!(dtype, Dtype::Bytes)
}

/// Reads one element of a numeric tensor as f64.
fn element(tensor: &Tensor, index: usize) -> f64 {
    let size = tensor.dtype.element_size().expect("numeric dtype");
    let bytes = &tensor.data[index * size..(index + 1) * size];
    match tensor.dtype {
        Dtype::Fp32 => f64::from(f32::from_le_bytes(bytes.try_into().expect("4 bytes"))),
        Dtype::Fp64 => f64::from_le_bytes(bytes.try_into().expect("8 bytes")),
        Dtype::Int32 => f64::from(i32::from_le_bytes(bytes.try_into().expect("4 bytes"))),
        Dtype::Int64 => i64::from_le_bytes(bytes.try_into().expect("8 bytes")) as f64,
        Dtype::Uint8 | Dtype::Boolean => f64::from(bytes[0]),
        Dtype::Bytes => unreachable!("checked numeric"),
    }
}

/// Reads `output` of a model's answer as one prediction per row: for classes, a single value
/// per row is the label and several are scores (arg-max); for numbers, one value per row.
pub fn read_predictions(
    outputs: &[Tensor],
    output: &str,
    kind: LabelKind,
    rows: usize,
) -> Result<Vec<Prediction>, String> {
    let tensor = outputs
        .iter()
        .find(|t| t.name == output)
        .ok_or_else(|| format!("the answer has no output `{output}`"))?;
    if !numeric(tensor.dtype) {
        return Err(format!("output `{output}` is not numeric"));
    }
    let elements = tensor.shape.iter().map(|&d| d as usize).product::<usize>();
    if rows == 0 || tensor.shape.first().copied() != Some(rows as u32) || elements % rows != 0 {
        return Err(format!(
            "output `{output}` has shape {:?}, not {rows} rows",
            tensor.shape
        ));
    }
    let per_row = elements / rows;
    (0..rows)
        .map(|row| {
            let values = (row * per_row..(row + 1) * per_row).map(|i| element(tensor, i));
            match (kind, per_row) {
                (LabelKind::Class, 1) => Ok(Prediction::Class(element(tensor, row) as i64)),
                (LabelKind::Class, _) => {
                    let best = values
                        .enumerate()
                        .fold((0, f64::MIN), |b, (i, v)| if v > b.1 { (i, v) } else { b });
                    Ok(Prediction::Class(best.0 as i64))
                }
                (LabelKind::Number, 1) => Ok(Prediction::Number(element(tensor, row))),
                (LabelKind::Number, n) => Err(format!(
                    "output `{output}` has {n} values per row; a number application needs 1"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: Dtype, shape: &[u32], data: Vec<u8>) -> Tensor {
        Tensor {
            name: "y".into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    #[test]
    fn labels_scores_and_numbers_are_read_per_row() {
        let labels = tensor(
            Dtype::Int64,
            &[2],
            [7i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        assert_eq!(
            read_predictions(&[labels], "y", LabelKind::Class, 2).unwrap(),
            vec![Prediction::Class(7), Prediction::Class(3)]
        );
        let scores = tensor(
            Dtype::Fp32,
            &[2, 3],
            [0.1f32, 0.7, 0.2, 0.5, 0.2, 0.3]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        assert_eq!(
            read_predictions(std::slice::from_ref(&scores), "y", LabelKind::Class, 2).unwrap(),
            vec![Prediction::Class(1), Prediction::Class(0)]
        );
        assert!(
            read_predictions(&[scores], "y", LabelKind::Number, 2)
                .unwrap_err()
                .contains("3 values per row")
        );
        let wrong_rows = tensor(Dtype::Fp64, &[3], vec![0; 24]);
        assert!(read_predictions(&[wrong_rows], "y", LabelKind::Number, 2).is_err());
    }

    #[test]
    fn links_and_names_are_checked() {
        assert_eq!(split_link("digits-mlp@2"), ("digits-mlp", Some("2")));
        assert_eq!(split_link("digits-mlp"), ("digits-mlp", None));
        assert!(check_name("digits").is_ok());
        assert!(check_name("a b").unwrap_err().contains("' '"));
        assert!(check_name("").is_err());
    }
}
