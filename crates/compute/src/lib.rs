//! # sluice-compute: host compute for models
//!
//! The tensor operations a model imports through `sluice:model/compute`, so that its heavy
//! math runs natively instead of inside the sandbox.
//!
//! This crate knows nothing of wasmtime, protocols or the command line. [`Backend`] is the seam between the WIT import layer
//! (`sluice-runtime`'s `host` module) and an implementation: [`cpu::CpuBackend`] (a tuned SGEMM) or
//! [`gpu::GpuBackend`] (wgpu compute shaders). A [`DeviceTensor`] lives where its backend keeps
//! it: host memory for the CPU, a GPU buffer for the GPU, so that a chain of operations never
//! leaves the device; only [`Backend::read`] brings values back. [`select`] opens the
//! backend a [`ComputeChoice`] asks for.

pub mod cpu;
pub mod gpu;

use std::sync::Arc;
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
    /// A tensor was handed to a backend other than the one that made it.
    #[error("tensor lives on the {held_by} backend, not on {asked}")]
    WrongBackend {
        /// Where the tensor is.
        held_by: &'static str,
        /// The backend it was given to.
        asked: &'static str,
    },
    /// The GPU refused the work (a wgpu validation or out-of-memory error, a lost device).
    #[error("gpu: {0}")]
    Gpu(String),
    /// No usable GPU adapter (for `--compute gpu`), or the device could not be opened.
    #[error("no gpu: {0}")]
    NoGpu(String),
    /// The result would take the instance past its budget of device memory; nothing ran.
    #[error("device memory budget exceeded: {requested} bytes of tensors requested, limit {limit}")]
    Budget {
        /// Bytes the instance would hold with the result.
        requested: usize,
        /// The instance's budget.
        limit: usize,
    },
}

/// Where a tensor's values are.
#[derive(Debug, Clone)]
enum Storage {
    /// Host memory, row-major (the CPU backend).
    Host(Vec<f32>),
    /// A GPU buffer (the GPU backend); shared so that `reshape` copies nothing.
    Gpu(Arc<gpu::GpuBuffer>),
}

/// A dense, row-major fp32 tensor held by a backend.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl DeviceTensor {
    /// A tensor in host memory; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ComputeError> {
        check_len(&shape, data.len())?;
        Ok(DeviceTensor {
            shape,
            storage: Storage::Host(data),
        })
    }

    /// The shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// How many values the tensor holds.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of device memory this tensor holds (counted against an instance's budget).
    pub fn byte_size(&self) -> usize {
        self.len() * std::mem::size_of::<f32>()
    }

    /// The values of a host tensor; an error for one on the GPU.
    pub fn host_data(&self) -> Result<&[f32], ComputeError> {
        match &self.storage {
            Storage::Host(data) => Ok(data),
            Storage::Gpu(_) => Err(ComputeError::WrongBackend {
                held_by: "gpu",
                asked: "cpu",
            }),
        }
    }

    fn on_gpu(shape: Vec<usize>, buffer: Arc<gpu::GpuBuffer>) -> Self {
        DeviceTensor {
            shape,
            storage: Storage::Gpu(buffer),
        }
    }

    fn gpu_buffer(&self) -> Result<&Arc<gpu::GpuBuffer>, ComputeError> {
        match &self.storage {
            Storage::Gpu(buffer) => Ok(buffer),
            Storage::Host(_) => Err(ComputeError::WrongBackend {
                held_by: "cpu",
                asked: "gpu",
            }),
        }
    }
}

/// Checks that `len` values fill `shape`.
fn check_len(shape: &[usize], len: usize) -> Result<(), ComputeError> {
    if shape.iter().product::<usize>() != len {
        return Err(ComputeError::Shape(format!(
            "{len} values cannot have shape {shape:?}"
        )));
    }
    Ok(())
}

/// Bytes of an fp32 tensor with dimensions `dims`; `usize::MAX` where that overflows.
fn fp32_bytes(dims: impl IntoIterator<Item = usize>) -> usize {
    dims.into_iter()
        .try_fold(4usize, |acc, d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Decodes little-endian fp32 `bytes` of a tensor of `shape` (the WIT upload format).
pub fn decode_le_f32(shape: &[u32], bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), ComputeError> {
    let expected = fp32_bytes(shape.iter().map(|&d| d as usize));
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
    Ok((shape.iter().map(|&d| d as usize).collect(), data))
}

/// An implementation of the compute operations. All tensors are fp32, and every tensor given
/// to a backend was made by that backend (`upload` or an operation).
pub trait Backend: Send + Sync {
    /// What runs the operations, for logs and `ListModels`: `cpu`, or `gpu: <adapter>`.
    fn name(&self) -> &str;
    /// Puts `data` (row-major, `product(shape)` values) on the device.
    fn upload(&self, shape: Vec<usize>, data: Vec<f32>) -> Result<DeviceTensor, ComputeError>;
    /// Brings a tensor's values back, row-major.
    fn read(&self, x: &DeviceTensor) -> Result<Vec<f32>, ComputeError>;
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

/// The shapes an operation works on, checked once for both backends: each function returns
/// the dimensions the kernels need or the error the guest sees, and [`output_bytes`] says
/// how large a result will be before anything runs (so that an instance's memory budget is
/// checked first: a `[65536, 1] × [1, 65536]` product would need 16 GiB).
pub mod shapes {
    use super::ComputeError;

    /// An operation of the compute interface with its operands' shapes.
    #[derive(Debug, Clone, Copy)]
    pub enum Op<'a> {
        /// `matmul(a, b)`.
        Matmul(&'a [usize], &'a [usize]),
        /// `add(a, b)`.
        Add(&'a [usize], &'a [usize]),
        /// `relu(x)` or `softmax(x)`: the shape of `x`.
        Elementwise(&'a [usize]),
        /// `conv2d(x, filters, pad)`.
        Conv2d(&'a [usize], &'a [usize], usize),
        /// `max_pool(x, size)`.
        MaxPool(&'a [usize], usize),
        /// `reshape(x, shape)`.
        Reshape(&'a [usize], &'a [usize]),
    }

    /// Bytes of `op`'s result, or why the operands do not fit it.
    pub fn output_bytes(op: Op<'_>) -> Result<usize, ComputeError> {
        let bytes = |dims: &[usize]| super::fp32_bytes(dims.iter().copied());
        Ok(match op {
            Op::Matmul(a, b) => {
                let (m, _, n) = matmul(a, b)?;
                bytes(&[m, n])
            }
            Op::Add(a, b) => {
                add(a, b)?;
                bytes(a)
            }
            Op::Elementwise(x) => bytes(x),
            Op::Conv2d(x, filters, pad) => {
                let conv = conv2d(x, filters, pad)?;
                bytes(&[conv.n, conv.f, conv.oh, conv.ow])
            }
            Op::MaxPool(x, size) => {
                let [n, c, h, w] = max_pool(x, size)?;
                bytes(&[n, c, h / size, w / size])
            }
            Op::Reshape(x, shape) => {
                reshape(x, shape)?;
                bytes(shape)
            }
        })
    }

    /// Splits a shape into `(rows, row_len)`: everything but the last dimension is rows.
    pub(crate) fn rows_and_width(shape: &[usize]) -> (usize, usize) {
        match shape.split_last() {
            Some((&last, rest)) => (rest.iter().product(), last),
            None => (1, 1),
        }
    }

    /// `(m, k, n)` of `a [m, k] × b [k, n]`.
    pub(crate) fn matmul(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize), ComputeError> {
        let (&[m, k], &[k2, n]) = (a, b) else {
            return Err(ComputeError::Shape(format!(
                "matmul needs two matrices, got {a:?} and {b:?}"
            )));
        };
        if k != k2 {
            return Err(ComputeError::Shape(format!(
                "matmul of [{m}, {k}] by [{k2}, {n}]: inner dimensions differ"
            )));
        }
        Ok((m, k, n))
    }

    /// How many values of `b` repeat over `a` in `a + b`: all of them (same shape) or a row.
    pub(crate) fn add(a: &[usize], b: &[usize]) -> Result<usize, ComputeError> {
        if a == b {
            return Ok(a.iter().product());
        }
        let (_, width) = rows_and_width(a);
        let is_row = matches!(b, [n] | [1, n] if *n == width);
        if !is_row || a.is_empty() {
            return Err(ComputeError::Shape(format!(
                "cannot add {b:?} to {a:?}: need the same shape or a row of {width}"
            )));
        }
        Ok(width)
    }

    /// The dimensions of a convolution, checked.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Conv {
        pub n: usize,
        pub c: usize,
        pub h: usize,
        pub w: usize,
        pub f: usize,
        pub kh: usize,
        pub kw: usize,
        pub pad: usize,
        pub oh: usize,
        pub ow: usize,
    }

    pub(crate) fn conv2d(x: &[usize], filters: &[usize], pad: usize) -> Result<Conv, ComputeError> {
        let (&[n, c, h, w], &[f, c2, kh, kw]) = (x, filters) else {
            return Err(ComputeError::Shape(format!(
                "conv2d needs x [n, c, h, w] and filters [f, c, kh, kw], got {x:?} and {filters:?}"
            )));
        };
        if c != c2 || kh > h + 2 * pad || kw > w + 2 * pad {
            return Err(ComputeError::Shape(format!(
                "conv2d of {x:?} with filters {filters:?} and padding {pad}: channels differ or \
                 the filter is larger than the padded image"
            )));
        }
        let (oh, ow) = (h + 2 * pad - kh + 1, w + 2 * pad - kw + 1);
        Ok(Conv {
            n,
            c,
            h,
            w,
            f,
            kh,
            kw,
            pad,
            oh,
            ow,
        })
    }

    /// `[n, c, h, w]` of a pooling input whose window fits.
    pub(crate) fn max_pool(x: &[usize], size: usize) -> Result<[usize; 4], ComputeError> {
        let &[n, c, h, w] = x else {
            return Err(ComputeError::Shape(format!(
                "max_pool needs x [n, c, h, w], got {x:?}"
            )));
        };
        if size == 0 || size > h || size > w {
            return Err(ComputeError::Shape(format!(
                "max_pool window {size} does not fit {x:?}"
            )));
        }
        Ok([n, c, h, w])
    }

    pub(crate) fn reshape(x: &[usize], shape: &[usize]) -> Result<(), ComputeError> {
        let (from, to) = (x.iter().product::<usize>(), shape.iter().product::<usize>());
        if from != to {
            return Err(ComputeError::Shape(format!(
                "cannot reshape {x:?} ({from} values) to {shape:?} ({to} values)"
            )));
        }
        Ok(())
    }
}

/// Which backend to open (`sluice serve --compute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeChoice {
    /// A hardware GPU if there is one, else the CPU (a software rasterizer counts as a CPU:
    /// lavapipe is far slower than the CPU backend's SGEMM).
    #[default]
    Auto,
    /// A GPU adapter, software ones included; an error if there is none.
    Gpu,
    /// The CPU backend.
    Cpu,
}

/// Opens the backend `choice` asks for. Only `Gpu` fails, when no adapter can be opened; `Auto`
/// falls back to the CPU and logs why.
pub fn select(choice: ComputeChoice) -> Result<Arc<dyn Backend>, ComputeError> {
    match choice {
        ComputeChoice::Cpu => Ok(Arc::new(cpu::CpuBackend)),
        ComputeChoice::Gpu => Ok(Arc::new(gpu::GpuBackend::open(gpu::Adapters::AnyKind)?)),
        ComputeChoice::Auto => match gpu::GpuBackend::open(gpu::Adapters::HardwareOnly) {
            Ok(backend) => Ok(Arc::new(backend)),
            Err(reason) => {
                tracing::info!(%reason, "no hardware gpu; host compute runs on the cpu");
                Ok(Arc::new(cpu::CpuBackend))
            }
        },
    }
}

#[cfg(test)]
mod tests;
