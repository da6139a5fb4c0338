//! # sluice-types: the vocabulary every layer of sluice shares
//!
//! The tensors that cross the host–model boundary, what a model declares about itself, the
//! checks of that contract ([`contract`]), and the kind of an error ([`ErrorKind`]), which each
//! protocol maps to its own status code once, at the top.
//!
//! These are plain Rust types with no dependencies: the sandbox (`sluice-runtime`) converts
//! them to and from its generated bindings by moving their fields (no copy of tensor data),
//! and the wire formats (`sluice-api`) convert them to and from protobuf and JSON.

pub mod contract;
mod error;
pub mod names;

pub use error::{ErrorKind, HasKind};

/// The element type of a tensor. The names are KServe v2's (`FP32`, ..., `BYTES`), which are
/// also the names in the WIT contract, so every message and every protocol spells them alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit IEEE 754 float, 4 bytes per element.
    Fp32,
    /// 64-bit IEEE 754 float, 8 bytes per element.
    Fp64,
    /// Signed 32-bit integer, 4 bytes per element.
    Int32,
    /// Signed 64-bit integer, 8 bytes per element.
    Int64,
    /// Unsigned 8-bit integer, 1 byte per element.
    Uint8,
    /// Boolean, 1 byte per element: 0 is false, 1 is true.
    Boolean,
    /// Variable-length byte strings: each element is a 4-byte little-endian length followed by
    /// that many bytes.
    Bytes,
}

impl Dtype {
    /// Every dtype of the contract.
    pub const ALL: [Dtype; 7] = [
        Dtype::Fp32,
        Dtype::Fp64,
        Dtype::Int32,
        Dtype::Int64,
        Dtype::Uint8,
        Dtype::Boolean,
        Dtype::Bytes,
    ];

    /// The dtype's name (`FP32`, `INT64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "FP32",
            Dtype::Fp64 => "FP64",
            Dtype::Int32 => "INT32",
            Dtype::Int64 => "INT64",
            Dtype::Uint8 => "UINT8",
            Dtype::Boolean => "BOOL",
            Dtype::Bytes => "BYTES",
        }
    }

    /// Parses a dtype name (`FP32`, ...).
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element, or `None` for variable-length `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Dtype::Fp64 | Dtype::Int64 => Some(8),
            Dtype::Fp32 | Dtype::Int32 => Some(4),
            Dtype::Uint8 | Dtype::Boolean => Some(1),
            Dtype::Bytes => None,
        }
    }

    /// The message for a dtype name that is not one of ours, listing those that are; every
    /// protocol answers an unknown `datatype` with it.
    pub fn unsupported(name: &str) -> String {
        let supported: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
        format!(
            "datatype `{}` is not supported; use one of {}",
            names::quoted(name),
            supported.join(", ")
        )
    }
}

/// A named, dense, row-major tensor; `shape[0]` is the batch dimension. `data` holds the
/// elements little-endian with no padding (`BYTES`: length-prefixed elements).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The input or output name this tensor fills.
    pub name: String,
    /// The element type.
    pub dtype: Dtype,
    /// The size of every dimension, outermost first.
    pub shape: Vec<u32>,
    /// The elements.
    pub data: Vec<u8>,
}

/// What a model declares about one of its inputs or outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// The element type.
    pub dtype: Dtype,
    /// The shape including the batch dimension; `-1` marks a dimension that may vary.
    pub shape: Vec<i64>,
}

/// What a model says about itself (read once per load).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The name it is served under unless the operator chooses another.
    pub name: String,
    /// A free-form version label.
    pub version: String,
    /// The inputs `predict` expects, in order.
    pub inputs: Vec<TensorSpec>,
    /// The outputs `predict` returns, in order.
    pub outputs: Vec<TensorSpec>,
    /// The largest batch one `predict` call may hold.
    pub max_batch: u32,
}

/// The elements of a `BYTES` tensor's data: each a 4-byte little-endian length and that many
/// bytes. Yields `Err(index)` for the first element that is cut short, then stops.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], usize>> {
    let mut rest = Some(data);
    let mut index = 0;
    std::iter::from_fn(move || {
        let current = rest?;
        if current.is_empty() {
            rest = None;
            return None;
        }
        let element = current.split_first_chunk::<4>().and_then(|(len, tail)| {
            let len = u32::from_le_bytes(*len) as usize;
            tail.get(..len).map(|item| (item, &tail[len..]))
        });
        index += 1;
        match element {
            Some((item, tail)) => {
                rest = Some(tail);
                Some(Ok(item))
            }
            None => {
                rest = None;
                Some(Err(index - 1))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::parse(d.name()), Some(d));
        }
        assert_eq!(Dtype::parse("FP16"), None);
        assert!(Dtype::unsupported("FP16").contains("FP32, FP64"));
    }

    #[test]
    fn bytes_elements_split_and_stop_at_a_cut() {
        let data = [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0, 9, 0, 0, 0, b'x'];
        let items: Vec<_> = bytes_elements(&data).collect();
        assert_eq!(items, vec![Ok(&b"ab"[..]), Ok(&b""[..]), Err(2)]);
    }
}
