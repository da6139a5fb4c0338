//! Moves between `sluice-types` and the types `bindgen!` generated for the WIT contract. The
//! fields move (no tensor data is copied), and a `Vec` of tensors is collected in place, so a
//! conversion costs a few word copies per tensor.

use crate::bindings::sluice::model::types as wit;
use sluice_types::{Dtype, ModelInfo, Tensor, TensorSpec};

fn dtype_to_wit(dtype: Dtype) -> wit::Dtype {
    match dtype {
        Dtype::Fp32 => wit::Dtype::Fp32,
        Dtype::Fp64 => wit::Dtype::Fp64,
        Dtype::Int32 => wit::Dtype::Int32,
        Dtype::Int64 => wit::Dtype::Int64,
        Dtype::Uint8 => wit::Dtype::Uint8,
        Dtype::Boolean => wit::Dtype::Boolean,
        Dtype::Bytes => wit::Dtype::Bytes,
    }
}

fn dtype_from_wit(dtype: wit::Dtype) -> Dtype {
    match dtype {
        wit::Dtype::Fp32 => Dtype::Fp32,
        wit::Dtype::Fp64 => Dtype::Fp64,
        wit::Dtype::Int32 => Dtype::Int32,
        wit::Dtype::Int64 => Dtype::Int64,
        wit::Dtype::Uint8 => Dtype::Uint8,
        wit::Dtype::Boolean => Dtype::Boolean,
        wit::Dtype::Bytes => Dtype::Bytes,
    }
}

/// Tensors as the guest receives them.
pub(crate) fn tensors_to_wit(tensors: Vec<Tensor>) -> Vec<wit::Tensor> {
    tensors
        .into_iter()
        .map(|t| wit::Tensor {
            name: t.name,
            dtype: dtype_to_wit(t.dtype),
            shape: t.shape,
            data: t.data,
        })
        .collect()
}

/// Tensors as the host's layers see them.
pub(crate) fn tensors_from_wit(tensors: Vec<wit::Tensor>) -> Vec<Tensor> {
    tensors
        .into_iter()
        .map(|t| Tensor {
            name: t.name,
            dtype: dtype_from_wit(t.dtype),
            shape: t.shape,
            data: t.data,
        })
        .collect()
}

fn specs_from_wit(specs: Vec<wit::TensorSpec>) -> Vec<TensorSpec> {
    specs
        .into_iter()
        .map(|s| TensorSpec {
            name: s.name,
            dtype: dtype_from_wit(s.dtype),
            shape: s.shape,
        })
        .collect()
}

/// What the model declared.
pub(crate) fn info_from_wit(info: wit::ModelInfo) -> ModelInfo {
    ModelInfo {
        name: info.name,
        version: info.version,
        inputs: specs_from_wit(info.inputs),
        outputs: specs_from_wit(info.outputs),
        max_batch: info.max_batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_move_both_ways_unchanged() {
        let tensors: Vec<Tensor> = Dtype::ALL
            .into_iter()
            .map(|dtype| Tensor {
                name: dtype.name().into(),
                dtype,
                shape: vec![1, 2],
                data: vec![7; 3],
            })
            .collect();
        let back = tensors_from_wit(tensors_to_wit(tensors.clone()));
        assert_eq!(back, tensors);
        // The data buffers move: the same allocation comes out as went in.
        let data = back[0].data.as_ptr();
        let moved = tensors_from_wit(tensors_to_wit(back));
        assert_eq!(moved[0].data.as_ptr(), data);
    }
}
