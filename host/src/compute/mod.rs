//! Host compute: the tensor operations a model imports through `sluice:model/compute`, so that
//! its heavy math runs natively instead of inside the sandbox.
//!
//! This module knows nothing of wasmtime. [`Backend`] is the seam between the WIT import layer
//! (`runtime::host`) and an implementation; today that is [`cpu::CpuBackend`] (a tuned SGEMM);
//! a GPU backend slots in behind the same trait.

pub mod cpu;

use thiserror::Error;

/// A failed compute operation. Its message goes back to the guest as the WIT error string.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ComputeError {
    /// Operand shapes do not fit the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The data length does not match the declared shape.
    #[error("data has {actual} bytes but shape {shape:?} needs {expected}")]
    DataLength {
        /// The shape that was declared.
        shape: Vec<u32>,
        /// `product(shape) * 4`.
        expected: usize,
        /// What was given.
        actual: usize,
    },
}

/// A dense, row-major fp32 tensor owned by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl DeviceTensor {
    /// Decodes little-endian fp32 `bytes` into a tensor of `shape`.
    pub fn from_le_bytes(shape: &[u32], bytes: &[u8]) -> Result<Self, ComputeError> {
        let expected = shape
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d as usize))
            .unwrap_or(usize::MAX);
        if expected != bytes.len() {
            return Err(ComputeError::DataLength {
                shape: shape.to_vec(),
                expected,
                actual: bytes.len(),
            });
        }
        let data = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(DeviceTensor {
            shape: shape.iter().map(|&d| d as usize).collect(),
            data,
        })
    }

    /// Builds a tensor from values; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ComputeError> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(ComputeError::Shape(format!(
                "{} values cannot have shape {shape:?}",
                data.len()
            )));
        }
        Ok(DeviceTensor { shape, data })
    }

    /// The shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Bytes of host memory this tensor holds (counted against an instance's budget).
    pub fn byte_size(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

/// An implementation of the compute operations. All tensors are fp32.
pub trait Backend: Send + Sync {
    /// A short name for logs and `ListModels`, e.g. `cpu`.
    fn name(&self) -> &str;
    /// `a [m, k] × b [k, n] → [m, n]`.
    fn matmul(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError>;
    /// Element-wise `a + b`, where `b` has `a`'s shape or is a row broadcast over `a`'s rows.
    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError>;
    /// `max(x, 0)` element-wise.
    fn relu(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError>;
    /// Softmax over the last dimension.
    fn softmax(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError>;
    /// Stride-1 convolution of `x [n, c, h, w]` with `filters [f, c, kh, kw]`, `pad` zeros on
    /// every side → `[n, f, h + 2·pad − kh + 1, w + 2·pad − kw + 1]`.
    fn conv2d(
        &self,
        x: &DeviceTensor,
        filters: &DeviceTensor,
        pad: usize,
    ) -> Result<DeviceTensor, ComputeError>;
    /// Max over non-overlapping `size`×`size` windows of `x [n, c, h, w]` →
    /// `[n, c, h / size, w / size]`.
    fn max_pool(&self, x: &DeviceTensor, size: usize) -> Result<DeviceTensor, ComputeError>;
    /// The same values under `shape` (same element count).
    fn reshape(&self, x: &DeviceTensor, shape: &[usize]) -> Result<DeviceTensor, ComputeError>;
}
