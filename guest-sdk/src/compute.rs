//! Safe wrappers over the host's `compute` import: fp32 tensors that live on the host (CPU or
//! GPU), so a model's heavy math runs at native speed outside the sandbox.
//!
//! Upload weights once in [`crate::Model::init`] and keep the [`DeviceTensor`]s; in `predict`
//! upload the batch, chain operations, and [`DeviceTensor::read`] the result.
//!
//! ```no_run
//! use sluice_sdk::compute::DeviceTensor;
//! # fn demo() -> Result<(), sluice_sdk::compute::ComputeError> {
//! let w = DeviceTensor::upload(&[2, 2], &[1.0, 0.0, 0.0, 1.0])?; // once, at init
//! let x = DeviceTensor::upload(&[1, 2], &[3.0, -4.0])?;          // per batch
//! let y = x.matmul(&w)?.relu()?.read();
//! assert_eq!(y, vec![3.0, 0.0]);
//! # Ok(()) }
//! ```

use crate::ModelError;
use crate::bindings::sluice::model::compute as host;

/// An error from a host compute operation (e.g. mismatched shapes), with the host's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeError(pub String);

impl std::fmt::Display for ComputeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host compute: {}", self.0)
    }
}

impl std::error::Error for ComputeError {}

impl From<ComputeError> for ModelError {
    fn from(e: ComputeError) -> Self {
        ModelError::Internal(e.to_string())
    }
}

/// A dense fp32 tensor held by the host. Dropping it frees the host memory.
pub struct DeviceTensor(host::DeviceTensor);

impl DeviceTensor {
    /// Copies `values` (row-major, `product(shape)` of them) to the host.
    pub fn upload(shape: &[u32], values: &[f32]) -> Result<Self, ComputeError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::upload_bytes(shape, &bytes)
    }

    /// Copies already-encoded little-endian fp32 bytes to the host without decoding them, e.g.
    /// an `FP32` input tensor's `data`.
    pub fn upload_bytes(shape: &[u32], bytes: &[u8]) -> Result<Self, ComputeError> {
        host::DeviceTensor::upload(shape, bytes)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// Takes the parameter `name` out of `params` (see [`crate::params::take`], which checks
    /// its shape) and uploads it.
    pub fn upload_param(
        params: &mut Vec<crate::params::Param>,
        name: &str,
        shape: &[u32],
    ) -> Result<Self, ModelError> {
        let p = crate::params::take(params, name, shape)?;
        Ok(Self::upload(&p.shape, &p.values)?)
    }

    /// The tensor's shape.
    pub fn shape(&self) -> Vec<u32> {
        self.0.shape()
    }

    /// Copies the values back from the host.
    pub fn read(&self) -> Vec<f32> {
        self.read_bytes()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Copies the values back as little-endian fp32 bytes, ready to become an output tensor's
    /// `data`.
    pub fn read_bytes(&self) -> Vec<u8> {
        self.0.read()
    }

    /// Matrix product `self [m, k] × other [k, n] → [m, n]`.
    pub fn matmul(&self, other: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        host::matmul(&self.0, &other.0)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// Element-wise sum; `other` may be a row `[n]` broadcast over each row of `self`.
    pub fn add(&self, other: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        host::add(&self.0, &other.0)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// `max(x, 0)` element-wise.
    pub fn relu(&self) -> Result<DeviceTensor, ComputeError> {
        host::relu(&self.0).map(DeviceTensor).map_err(ComputeError)
    }

    /// Softmax over the last dimension.
    pub fn softmax(&self) -> Result<DeviceTensor, ComputeError> {
        host::softmax(&self.0)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// Stride-1 convolution: `self [n, c, h, w]` with `filters [f, c, kh, kw]` and `pad` zeros
    /// on every side → `[n, f, h + 2·pad − kh + 1, w + 2·pad − kw + 1]`.
    pub fn conv2d(&self, filters: &DeviceTensor, pad: u32) -> Result<DeviceTensor, ComputeError> {
        host::conv2d(&self.0, &filters.0, pad)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// Max over non-overlapping `size`×`size` windows of `self [n, c, h, w]`.
    pub fn max_pool(&self, size: u32) -> Result<DeviceTensor, ComputeError> {
        host::max_pool(&self.0, size)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }

    /// The same values under another shape with as many elements.
    pub fn reshape(&self, shape: &[u32]) -> Result<DeviceTensor, ComputeError> {
        host::reshape(&self.0, shape)
            .map(DeviceTensor)
            .map_err(ComputeError)
    }
}
