//! Conversions between the protobuf messages of the sluice API and `sluice-types`. Tensor data
//! moves (no copy): both sides hold little-endian bytes.

use crate::proto;
use sluice_types::names::quoted;
use sluice_types::{Dtype, Tensor, TensorSpec};

/// Converts a request's shape (KServe's int64, the sluice API's uint64) to the contract's
/// u32 dimensions; the error names the input.
pub fn shape_to_u32<D: Copy + TryInto<u32> + std::fmt::Debug>(
    input: &str,
    shape: &[D],
) -> Result<Vec<u32>, String> {
    shape
        .iter()
        .map(|&d| d.try_into().ok())
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| {
            format!(
                "input `{}`: shape {} is invalid (dimensions are 0..2^32)",
                quoted(input),
                quoted(&format!("{shape:?}"))
            )
        })
}

/// Maps a protobuf dtype to ours; `None` for `UNSPECIFIED` or an unknown number.
pub fn dtype_from_proto(value: i32) -> Option<Dtype> {
    use proto::DataType as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Fp32 => Dtype::Fp32,
        P::Fp64 => Dtype::Fp64,
        P::Int32 => Dtype::Int32,
        P::Int64 => Dtype::Int64,
        P::Uint8 => Dtype::Uint8,
        P::Bool => Dtype::Boolean,
        P::Bytes => Dtype::Bytes,
    })
}

/// Maps a dtype to the protobuf one.
pub fn dtype_to_proto(dtype: Dtype) -> proto::DataType {
    use proto::DataType as P;
    match dtype {
        Dtype::Fp32 => P::Fp32,
        Dtype::Fp64 => P::Fp64,
        Dtype::Int32 => P::Int32,
        Dtype::Int64 => P::Int64,
        Dtype::Uint8 => P::Uint8,
        Dtype::Boolean => P::Bool,
        Dtype::Bytes => P::Bytes,
    }
}

/// Converts a request tensor; the error names the tensor and the field.
pub fn tensor_from_proto(t: proto::Tensor) -> Result<Tensor, String> {
    let dtype = dtype_from_proto(t.datatype).ok_or_else(|| {
        format!(
            "inputs[`{}`].datatype: {}",
            t.name,
            Dtype::unsupported(&t.datatype.to_string())
        )
    })?;
    let shape = shape_to_u32(&t.name, &t.shape)?;
    Ok(Tensor {
        name: t.name,
        dtype,
        shape,
        data: t.data,
    })
}

/// Converts an output tensor.
pub fn tensor_to_proto(t: Tensor) -> proto::Tensor {
    proto::Tensor {
        name: t.name,
        datatype: dtype_to_proto(t.dtype) as i32,
        shape: t.shape.into_iter().map(u64::from).collect(),
        data: t.data,
    }
}

/// Converts a declared tensor spec.
pub fn spec_to_proto(spec: &TensorSpec) -> proto::TensorSpec {
    proto::TensorSpec {
        name: spec.name.clone(),
        datatype: dtype_to_proto(spec.dtype) as i32,
        shape: spec.shape.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_maps_both_ways() {
        for d in Dtype::ALL {
            assert_eq!(dtype_from_proto(dtype_to_proto(d) as i32), Some(d));
        }
        assert_eq!(dtype_from_proto(0), None);
        assert_eq!(dtype_from_proto(99), None);
    }
}
