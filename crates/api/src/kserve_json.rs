//! JSON tensors, in KServe v2's shape (the REST API's, and the CLI's inputs and outputs):
//! `{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0, 1, ...]}`. `data` may
//! be flat or nested; `BYTES` elements are strings. Converted straight to and from
//! [`Tensor`]s, whose data is the raw little-endian bytes every layer below carries: `data`
//! stays raw JSON text until the datatype is known ([`decode_data`]), and outputs are written
//! from the tensor's bytes ([`Elements`]), so no JSON tree is built either way.

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use sluice_types::{Dtype, Tensor, bytes_elements};
use std::fmt;

/// One tensor as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonTensor {
    /// The tensor's name.
    pub name: String,
    /// A KServe v2 datatype name, e.g. `FP32`.
    pub datatype: String,
    /// The shape; `shape[0]` is the batch.
    pub shape: Vec<u64>,
    /// The elements, row-major (flat or nested), as JSON text.
    pub data: Box<RawValue>,
}

#[derive(Deserialize)]
struct Wrapped {
    inputs: Vec<JsonTensor>,
}

/// Parses `{"inputs": [...]}` (or a bare list of tensors) into tensors.
pub fn parse_inputs(text: &str) -> Result<Vec<Tensor>, String> {
    // Which form is told by the first character (an untagged enum cannot hold raw values).
    let inputs = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<JsonTensor>>(text)
    } else {
        serde_json::from_str::<Wrapped>(text).map(|w| w.inputs)
    }
    .map_err(|e| {
        format!(
            "inputs must be JSON: {{\"inputs\": [{{\"name\", \"datatype\", \"shape\", \
             \"data\"}}]}}: {e}"
        )
    })?;
    inputs.into_iter().map(JsonTensor::into_tensor).collect()
}

/// A tensor from its JSON parts; the error names the tensor and the element at fault.
pub fn decode(name: String, datatype: &str, shape: &[u64], data: &str) -> Result<Tensor, String> {
    let dtype = Dtype::parse(datatype)
        .ok_or_else(|| format!("tensor `{name}`: {}", Dtype::unsupported(datatype)))?;
    let dims = crate::convert::shape_to_u32(&name, shape)?;
    let data = decode_data(&name, dtype, &dims, data)?;
    Ok(Tensor {
        name,
        dtype,
        shape: dims,
        data,
    })
}

/// The little-endian bytes of `data` (JSON text: a flat or nested list) as elements of
/// `dtype`, checked to be exactly as many as `shape` holds.
pub fn decode_data(name: &str, dtype: Dtype, shape: &[u32], data: &str) -> Result<Vec<u8>, String> {
    let seed = DataSeed { name, dtype, shape };
    let mut parser = serde_json::Deserializer::from_str(data);
    let decoded = seed.deserialize(&mut parser).and_then(|decoded| {
        parser.end()?;
        Ok(decoded)
    });
    decoded.map_err(|e| format!("tensor `{name}`: data: {e}"))?
}

/// Decodes a tensor's `data` where it stands in a larger document (one pass: no raw text is
/// cut out first), once its name, datatype and shape are known. A malformed document is the
/// deserializer's error; an element that is not of the datatype, or a count that is not the
/// shape's, is the inner error, naming the tensor and the element.
pub struct DataSeed<'a> {
    name: &'a str,
    dtype: Dtype,
    shape: &'a [u32],
}

impl<'a> DataSeed<'a> {
    /// A seed for the tensor `name`; `None` when the datatype or shape is not one sluice takes
    /// (the caller keeps the raw text, and [`decode`] says what is wrong).
    pub fn new(name: &'a str, datatype: &str, shape: &'a [u32]) -> Option<DataSeed<'a>> {
        Some(DataSeed {
            name,
            dtype: Dtype::parse(datatype)?,
            shape,
        })
    }

    /// The datatype the elements are decoded as.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Result<Vec<u8>, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let DataSeed { name, dtype, shape } = self;
        let declared = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
        let capacity = declared
            .and_then(|n| usize::try_from(n).ok())
            .map_or(0, |n| n.saturating_mul(dtype.element_size().unwrap_or(0)))
            .min(1 << 20);
        let mut leaves = Leaves {
            dtype,
            out: Vec::with_capacity(capacity),
            count: 0,
            refused: None,
        };
        (&mut leaves).deserialize(deserializer)?;
        if let Some((index, refused)) = leaves.refused {
            return Ok(Err(format!(
                "tensor `{name}`: element {index} ({refused}) is not a valid {}",
                dtype.name()
            )));
        }
        if declared != Some(leaves.count) {
            return Ok(Err(match declared {
                Some(n) => format!(
                    "tensor `{name}`: shape {shape:?} holds {n} elements but data has {}",
                    leaves.count
                ),
                None => format!(
                    "tensor `{name}`: shape {shape:?} holds more elements than can be counted"
                ),
            }));
        }
        Ok(Ok(leaves.out))
    }
}

impl JsonTensor {
    /// The tensor (raw little-endian data); the error names the tensor and the element.
    pub fn into_tensor(self) -> Result<Tensor, String> {
        decode(self.name, &self.datatype, &self.shape, self.data.get())
    }

    /// `t` as JSON with a flat `data` list.
    pub fn from_tensor(t: &Tensor) -> JsonTensor {
        JsonTensor {
            name: t.name.clone(),
            datatype: t.dtype.name().to_string(),
            shape: t.shape.iter().map(|&d| u64::from(d)).collect(),
            data: serde_json::value::to_raw_value(&Elements(t)).expect("tensor elements serialize"),
        }
    }
}

/// The visitor of a `data` list: every leaf, however deeply nested, is appended as `dtype`'s
/// bytes; after the first leaf that is not one (`refused` says what it was) the rest is read
/// and dropped, so that the document around `data` is still parsed to its end.
struct Leaves {
    dtype: Dtype,
    out: Vec<u8>,
    count: u64,
    /// The first element that is not of the datatype: its index, and what it was.
    refused: Option<(u64, String)>,
}

impl Leaves {
    fn refuse<E>(&mut self, what: impl fmt::Display) -> Result<(), E> {
        if self.refused.is_none() {
            self.refused = Some((self.count, what.to_string()));
        }
        Ok(())
    }

    fn accept<E>(&mut self) -> Result<(), E> {
        self.count += 1;
        Ok(())
    }

    fn integer<E: serde::de::Error>(&mut self, v: i128) -> Result<(), E> {
        if self.refused.is_some() {
            return Ok(());
        }
        let fits = match self.dtype {
            Dtype::Fp32 | Dtype::Fp64 => return self.float(v as f64),
            Dtype::Int32 => push_le(&mut self.out, i32::try_from(v).ok().map(i32::to_le_bytes)),
            Dtype::Int64 => push_le(&mut self.out, i64::try_from(v).ok().map(i64::to_le_bytes)),
            Dtype::Uint8 => push_le(&mut self.out, u8::try_from(v).ok().map(|n| [n])),
            Dtype::Boolean => push_le(&mut self.out, (v == 0 || v == 1).then_some([v as u8])),
            Dtype::Bytes => false,
        };
        if fits { self.accept() } else { self.refuse(v) }
    }

    fn float<E: serde::de::Error>(&mut self, v: f64) -> Result<(), E> {
        if self.refused.is_some() {
            return Ok(());
        }
        match self.dtype {
            Dtype::Fp32 => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::Fp64 => self.out.extend_from_slice(&v.to_le_bytes()),
            _ => return self.refuse(v),
        }
        self.accept()
    }
}

/// Appends `bytes` if there are some; says whether there were.
fn push_le<const N: usize>(out: &mut Vec<u8>, bytes: Option<[u8; N]>) -> bool {
    bytes.map(|b| out.extend_from_slice(&b)).is_some()
}

impl<'de> DeserializeSeed<'de> for &mut Leaves {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Leaves {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of {} elements", self.dtype.name())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    // Integers become floats without going through i128 (which has no hardware conversion).
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        match self.dtype {
            Dtype::Fp32 | Dtype::Fp64 => self.float(v as f64),
            _ => self.integer(i128::from(v)),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        match self.dtype {
            Dtype::Fp32 | Dtype::Fp64 => self.float(v as f64),
            _ => self.integer(i128::from(v)),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.float(v)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        if self.dtype != Dtype::Boolean || self.refused.is_some() {
            return self.refuse(v);
        }
        self.out.push(u8::from(v));
        self.accept()
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if self.refused.is_some() {
            return Ok(());
        }
        let Some(len) = (self.dtype == Dtype::Bytes)
            .then(|| u32::try_from(v.len()).ok())
            .flatten()
        else {
            return self.refuse(format_args!("{v:?}"));
        };
        self.out.extend(len.to_le_bytes());
        self.out.extend(v.as_bytes());
        self.accept()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.refuse("null")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.refuse::<A::Error>("an object")?;
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(())
    }
}

/// Serializes a tensor's elements as a flat JSON list, straight from its bytes (`BYTES` as
/// strings, lossily decoded as UTF-8).
pub struct Elements<'a>(pub &'a Tensor);

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn fixed<S: SerializeSeq, const N: usize, T: Serialize>(
            seq: &mut S,
            data: &[u8],
            f: impl Fn([u8; N]) -> T,
        ) -> Result<(), S::Error> {
            data.chunks_exact(N)
                .try_for_each(|b| seq.serialize_element(&f(b.try_into().expect("N bytes"))))
        }
        let t = self.0;
        let mut seq = serializer.serialize_seq(None)?;
        match t.dtype {
            Dtype::Fp32 => fixed(&mut seq, &t.data, f32::from_le_bytes)?,
            Dtype::Fp64 => fixed(&mut seq, &t.data, f64::from_le_bytes)?,
            Dtype::Int32 => fixed(&mut seq, &t.data, i32::from_le_bytes)?,
            Dtype::Int64 => fixed(&mut seq, &t.data, i64::from_le_bytes)?,
            Dtype::Uint8 => fixed(&mut seq, &t.data, |[b]: [u8; 1]| b)?,
            Dtype::Boolean => fixed(&mut seq, &t.data, |[b]: [u8; 1]| b != 0)?,
            Dtype::Bytes => bytes_elements(&t.data)
                .map_while(Result::ok)
                .try_for_each(|item| seq.serialize_element(&String::from_utf8_lossy(item)))?,
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn data_of(t: &Tensor) -> Value {
        serde_json::from_str(JsonTensor::from_tensor(t).data.get()).unwrap()
    }

    #[test]
    fn nested_json_round_trips_through_bytes() {
        let text = r#"{"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1.5, -2], [0, 4]]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", ""]},
            {"name": "b", "datatype": "BOOL", "shape": [1], "data": [true]},
            {"name": "i", "datatype": "INT64", "shape": [2], "data": [-3, 9007199254740993]}
        ]}"#;
        let tensors = parse_inputs(text).unwrap();
        assert_eq!(tensors[0].data.len(), 16);
        assert_eq!(tensors[0].shape, vec![2, 2]);
        assert_eq!(tensors[1].data, vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(data_of(&tensors[0]), json!([1.5, -2.0, 0.0, 4.0]));
        assert_eq!(data_of(&tensors[1]), json!(["ab", ""]));
        assert_eq!(data_of(&tensors[2]), json!([true]));
        assert_eq!(data_of(&tensors[3]), json!([-3, 9007199254740993i64]));
    }

    #[test]
    fn errors_name_the_tensor_and_element() {
        let cases = [
            (
                r#"{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, "a"]}"#,
                "`x`: element 1 (\"a\") is not a valid INT32",
            ),
            (
                r#"{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 1.5]}"#,
                "`x`: element 1 (1.5)",
            ),
            (
                r#"{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}"#,
                "element 0 (300) is not a valid UINT8",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}"#,
                "holds 3 elements but data has 1",
            ),
            (
                r#"{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}"#,
                "datatype `FP16` is not supported",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [1], "data": [null]}"#,
                "element 0 (null)",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [1099511627776, 1099511627776], "data": [1]}"#,
                "is invalid (dimensions are 0..2^32)",
            ),
            (
                r#"{"name": "x", "datatype": "FP32", "shape": [4294967295, 4294967295, 4294967295], "data": [1]}"#,
                "more elements than can be counted",
            ),
        ];
        for (tensor, expected) in cases {
            let err = parse_inputs(&format!("[{tensor}]")).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
