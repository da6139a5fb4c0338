//! JSON tensors, in KServe v2's shape (the CLI's inputs and outputs, and the REST API's):
//! `{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0, 1, ...]}`. `data` may
//! be flat or nested; `BYTES` elements are strings. Converted to and from the raw
//! little-endian bytes the API carries.

use crate::proto;
use crate::runtime::Dtype;
use crate::tensor::{dtype_name, parse_dtype};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tensor as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonTensor {
    /// The tensor's name.
    pub name: String,
    /// A KServe v2 datatype name, e.g. `FP32`.
    pub datatype: String,
    /// The shape; `shape[0]` is the batch.
    pub shape: Vec<u64>,
    /// The elements, row-major (flat or nested).
    pub data: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    Wrapped { inputs: Vec<JsonTensor> },
    Bare(Vec<JsonTensor>),
}

/// Parses `{"inputs": [...]}` (or a bare list of tensors) into API tensors.
pub fn parse_inputs(text: &str) -> Result<Vec<proto::Tensor>> {
    let inputs: Inputs = serde_json::from_str(text).context(
        "inputs must be JSON: {\"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}]}",
    )?;
    let (Inputs::Wrapped { inputs } | Inputs::Bare(inputs)) = inputs;
    inputs.into_iter().map(encode).collect()
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Encodes one JSON tensor as an API tensor (raw little-endian bytes).
pub fn encode(t: JsonTensor) -> Result<proto::Tensor> {
    let dtype = parse_dtype(&t.datatype)
        .ok_or_else(|| anyhow!("tensor `{}`: unknown datatype `{}`", t.name, t.datatype))?;
    let mut values = Vec::new();
    flatten(&t.data, &mut values);
    let mut data = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let bad = || {
            anyhow!(
                "tensor `{}`: element {i} ({v}) is not a valid {}",
                t.name,
                t.datatype
            )
        };
        match dtype {
            Dtype::Fp32 => data.extend((v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
            Dtype::Fp64 => data.extend(v.as_f64().ok_or_else(bad)?.to_le_bytes()),
            Dtype::Int32 => {
                let n = i32::try_from(v.as_i64().ok_or_else(bad)?).map_err(|_| bad())?;
                data.extend(n.to_le_bytes());
            }
            Dtype::Int64 => data.extend(v.as_i64().ok_or_else(bad)?.to_le_bytes()),
            Dtype::Uint8 => {
                data.push(u8::try_from(v.as_u64().ok_or_else(bad)?).map_err(|_| bad())?);
            }
            Dtype::Boolean => data.push(match v {
                Value::Bool(b) => u8::from(*b),
                Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                    n.as_u64().unwrap() as u8
                }
                _ => return Err(bad()),
            }),
            Dtype::Bytes => {
                let s = v.as_str().ok_or_else(bad)?;
                data.extend((s.len() as u32).to_le_bytes());
                data.extend(s.as_bytes());
            }
        }
    }
    let count: u64 = t.shape.iter().product();
    if count != values.len() as u64 {
        bail!(
            "tensor `{}`: shape {:?} holds {count} elements but data has {}",
            t.name,
            t.shape,
            values.len()
        );
    }
    Ok(proto::Tensor {
        name: t.name,
        datatype: crate::frontend::convert::dtype_to_proto(dtype) as i32,
        shape: t.shape,
        data,
    })
}

/// Turns an API tensor back into JSON with a flat `data` list.
pub fn decode(t: &proto::Tensor) -> Result<JsonTensor> {
    let dtype = crate::frontend::convert::dtype_from_proto(t.datatype)
        .ok_or_else(|| anyhow!("tensor `{}`: unknown datatype {}", t.name, t.datatype))?;
    let fixed = |size: usize, f: &dyn Fn(&[u8]) -> Value| -> Vec<Value> {
        t.data.chunks_exact(size).map(f).collect()
    };
    let values: Vec<Value> = match dtype {
        Dtype::Fp32 => fixed(4, &|b| f32::from_le_bytes(b.try_into().unwrap()).into()),
        Dtype::Fp64 => fixed(8, &|b| f64::from_le_bytes(b.try_into().unwrap()).into()),
        Dtype::Int32 => fixed(4, &|b| i32::from_le_bytes(b.try_into().unwrap()).into()),
        Dtype::Int64 => fixed(8, &|b| i64::from_le_bytes(b.try_into().unwrap()).into()),
        Dtype::Uint8 => fixed(1, &|b| b[0].into()),
        Dtype::Boolean => fixed(1, &|b| (b[0] != 0).into()),
        Dtype::Bytes => {
            let mut rest = t.data.as_slice();
            let mut out = Vec::new();
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes(*len) as usize;
                let (item, tail) = tail.split_at(len.min(tail.len()));
                out.push(String::from_utf8_lossy(item).into_owned().into());
                rest = tail;
            }
            out
        }
    };
    Ok(JsonTensor {
        name: t.name.clone(),
        datatype: dtype_name(dtype).to_string(),
        shape: t.shape.clone(),
        data: Value::Array(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_json_round_trips_through_bytes() {
        let text = r#"{"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1.5, -2], [0, 4]]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", ""]},
            {"name": "b", "datatype": "BOOL", "shape": [1], "data": [true]}
        ]}"#;
        let tensors = parse_inputs(text).unwrap();
        assert_eq!(tensors[0].data.len(), 16);
        assert_eq!(tensors[1].data, vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        let back = decode(&tensors[0]).unwrap();
        assert_eq!(back.data, serde_json::json!([1.5, -2.0, 0.0, 4.0]));
        assert_eq!(
            decode(&tensors[1]).unwrap().data,
            serde_json::json!(["ab", ""])
        );
        assert_eq!(decode(&tensors[2]).unwrap().data, serde_json::json!([true]));
    }

    #[test]
    fn errors_name_the_tensor_and_element() {
        let err =
            parse_inputs(r#"[{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, "a"]}]"#)
                .unwrap_err();
        assert!(err.to_string().contains("`x`: element 1"), "{err}");
        let err = parse_inputs(r#"[{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]"#)
            .unwrap_err();
        assert!(err.to_string().contains("holds 3 elements"), "{err}");
        let err = parse_inputs(r#"[{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}]"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown datatype"), "{err}");
    }
}
