//! The GPU backend: every operation is a WGSL compute shader run through wgpu (Vulkan on Linux,
//! Metal, DX12), on tensors that stay in GPU buffers between operations.
//!
//! - Pipelines are built once, when the backend opens, and share one bind group layout (two
//!   inputs, one output, a small uniform block of parameters).
//! - Buffers come from a [`pool::BufferPool`], so a warm forward pass allocates nothing.
//! - Each operation is one command buffer inside wgpu error scopes: a validation or
//!   out-of-memory error becomes an error of that call; an uncaptured one is logged (wgpu's
//!   default handler would panic the host).
//! - `read` copies into a mappable staging buffer and waits for it: the only synchronisation.

mod pool;

pub use pool::GpuBuffer;

use super::{Backend, ComputeError, DeviceTensor, shapes};
use pool::BufferPool;
use std::sync::Arc;
use std::time::Duration;
use wgpu::util::DeviceExt;

/// Which adapters [`GpuBackend::open`] may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapters {
    /// Discrete, integrated or virtual GPUs only; never a software rasterizer.
    HardwareOnly,
    /// Any adapter, software ones (Mesa's lavapipe, llvmpipe) included: for tests and CI.
    AnyKind,
}

/// Idle buffers the pool keeps for reuse, at most.
const POOL_CAP_BYTES: u64 = 512 << 20;
/// How long `read` waits for the GPU before failing the call.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Invocations per workgroup of the element-wise kernels (`GROUP` in common.wgsl).
const GROUP: u32 = 256;
/// Output tile of one matmul workgroup (`TILE` in matmul.wgsl).
const MATMUL_TILE: u32 = 64;
/// Bytes of the parameter block every kernel gets (16 u32).
const PARAMS_BYTES: usize = 64;

/// The compiled kernels, one pipeline each.
struct Kernels {
    matmul: wgpu::ComputePipeline,
    add: wgpu::ComputePipeline,
    relu: wgpu::ComputePipeline,
    softmax: wgpu::ComputePipeline,
    conv2d: wgpu::ComputePipeline,
    max_pool: wgpu::ComputePipeline,
}

/// Runs compute operations on a GPU through wgpu.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// `gpu: <adapter name> (<backend>, <device type>)`.
    name: String,
    layout: wgpu::BindGroupLayout,
    kernels: Kernels,
    pool: Arc<BufferPool>,
}

/// How much an adapter kind is preferred (lower first).
fn preference(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Workgroups for `invocations` element-wise invocations, as a 2-D grid within the
/// 65 535-per-dimension limit.
fn grid(invocations: usize) -> (u32, u32) {
    let groups = invocations.div_ceil(GROUP as usize) as u32;
    let width = groups.min(65_535);
    (width, groups.div_ceil(width.max(1)))
}

impl GpuBackend {
    /// Opens the most capable adapter `adapters` allows (discrete before integrated before
    /// virtual before software) and builds the kernels. `WGPU_BACKEND` and the other wgpu
    /// environment variables apply.
    pub fn open(adapters: Adapters) -> Result<Self, ComputeError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut found = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let seen: Vec<String> = found.iter().map(|a| a.get_info().name).collect();
        if adapters == Adapters::HardwareOnly {
            found.retain(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
        }
        found.sort_by_key(|a| preference(a.get_info().device_type));
        let adapter = found.into_iter().next().ok_or_else(|| {
            ComputeError::NoGpu(if seen.is_empty() {
                "no wgpu adapter found (for Vulkan: a driver and its ICD file)".into()
            } else {
                format!("only software adapters found: {}", seen.join(", "))
            })
        })?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sluice compute"),
            // The adapter's own limits: the largest buffers it can hold, not WebGPU's defaults.
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| ComputeError::NoGpu(format!("opening {}: {e}", info.name)))?;
        device.on_uncaptured_error(Arc::new(|error: wgpu::Error| {
            tracing::error!(%error, "gpu error outside any operation");
        }));
        device.set_device_lost_callback(|reason, message| {
            tracing::error!(?reason, %message, "gpu device lost");
        });
        // A kernel that does not compile on this adapter fails the open, with naga's message.
        let scopes = ErrorScopes::push(&device);
        let layout = bind_group_layout(&device);
        let kernels = Kernels::build(&device, &layout);
        scopes.pop().map_err(|e| {
            ComputeError::NoGpu(format!("building the kernels on {}: {e}", info.name))
        })?;
        let name = format!(
            "gpu: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        Ok(GpuBackend {
            pool: BufferPool::new(device.clone(), POOL_CAP_BYTES),
            device,
            queue,
            name,
            layout,
            kernels,
        })
    }

    /// A pooled storage buffer for `len` values.
    fn storage(&self, len: usize) -> GpuBuffer {
        self.pool.take(
            (len * 4) as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// Runs `pipeline` over `inputs` (one or two) into a new tensor of `out_shape`, with
    /// `params` as its parameter block and `groups` workgroups, inside error scopes.
    fn run(
        &self,
        pipeline: &wgpu::ComputePipeline,
        inputs: &[&DeviceTensor],
        params: &[u32],
        out_shape: Vec<usize>,
        groups: (u32, u32),
    ) -> Result<DeviceTensor, ComputeError> {
        let (first, second) = match inputs {
            [a] => (a.gpu_buffer()?, a.gpu_buffer()?),
            [a, b] => (a.gpu_buffer()?, b.gpu_buffer()?),
            _ => unreachable!("kernels take one or two inputs"),
        };
        let scopes = ErrorScopes::push(&self.device);
        let output = self.storage(out_shape.iter().product());
        if out_shape.iter().product::<usize>() == 0 {
            scopes.pop()?;
            return Ok(DeviceTensor::on_gpu(out_shape, Arc::new(output)));
        }
        let mut block = [0u32; PARAMS_BYTES / 4];
        block[..params.len()].copy_from_slice(params);
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("sluice kernel params"),
                contents: bytemuck::cast_slice(&block),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[
                entry(0, first.raw()),
                entry(1, second.raw()),
                entry(2, output.raw()),
                entry(3, &params),
            ],
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        }
        self.queue.submit([encoder.finish()]);
        scopes.pop()?;
        Ok(DeviceTensor::on_gpu(out_shape, Arc::new(output)))
    }

    /// Runs an element-wise kernel: one invocation per value of `out_shape`.
    fn elementwise(
        &self,
        pipeline: &wgpu::ComputePipeline,
        inputs: &[&DeviceTensor],
        params: &[u32],
        out_shape: Vec<usize>,
        invocations: usize,
    ) -> Result<DeviceTensor, ComputeError> {
        self.run(pipeline, inputs, params, out_shape, grid(invocations))
    }

    /// Waits until all submitted work has run: what a benchmark of one operation times, since
    /// operations only queue work.
    pub fn wait_idle(&self) -> Result<(), ComputeError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(READ_TIMEOUT),
            })
            .map(drop)
            .map_err(|e| ComputeError::Gpu(format!("waiting for the queue: {e}")))
    }

    /// The pool, for tests of reuse.
    #[cfg(test)]
    pub(super) fn idle_pool_bytes(&self) -> u64 {
        self.pool.idle_bytes()
    }
}

/// Binding `binding` of the shared layout, bound to all of `buffer`.
fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// Validation and out-of-memory error scopes around one operation.
struct ErrorScopes {
    validation: wgpu::ErrorScopeGuard,
    memory: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    fn push(device: &wgpu::Device) -> Self {
        ErrorScopes {
            validation: device.push_error_scope(wgpu::ErrorFilter::Validation),
            memory: device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
        }
    }

    /// Pops both (innermost first) and turns the first error caught into the call's error.
    fn pop(self) -> Result<(), ComputeError> {
        let memory = pollster::block_on(self.memory.pop());
        let validation = pollster::block_on(self.validation.pop());
        match memory.or(validation) {
            Some(error) => Err(ComputeError::Gpu(error.to_string())),
            None => Ok(()),
        }
    }
}

fn bind_group_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("sluice kernels"),
        entries: &[
            storage(0, true),
            storage(1, true),
            storage(2, false),
            wgpu::BindGroupLayoutEntry {
                binding: 3,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
        ],
    })
}

impl Kernels {
    fn build(device: &wgpu::Device, layout: &wgpu::BindGroupLayout) -> Self {
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("sluice kernels"),
            bind_group_layouts: &[Some(layout)],
            immediate_size: 0,
        });
        let build = |name: &str, source: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(
                    format!("{}\n{source}", include_str!("kernels/common.wgsl")).into(),
                ),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        Kernels {
            matmul: build("matmul", include_str!("kernels/matmul.wgsl")),
            add: build("add", include_str!("kernels/add.wgsl")),
            relu: build("relu", include_str!("kernels/relu.wgsl")),
            softmax: build("softmax", include_str!("kernels/softmax.wgsl")),
            conv2d: build("conv2d", include_str!("kernels/conv2d.wgsl")),
            max_pool: build("max_pool", include_str!("kernels/max_pool.wgsl")),
        }
    }
}

/// A dimension as the u32 the kernels take; tensors this large do not fit a GPU buffer anyway.
fn dim(value: usize) -> Result<u32, ComputeError> {
    u32::try_from(value)
        .map_err(|_| ComputeError::Shape(format!("{value} is too large for the gpu backend")))
}

impl Backend for GpuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn upload(&self, shape: Vec<usize>, data: Vec<f32>) -> Result<DeviceTensor, ComputeError> {
        super::check_len(&shape, data.len())?;
        let scopes = ErrorScopes::push(&self.device);
        let buffer = self.storage(data.len());
        if !data.is_empty() {
            self.queue
                .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(&data));
        }
        scopes.pop()?;
        Ok(DeviceTensor::on_gpu(shape, Arc::new(buffer)))
    }

    fn read(&self, x: &DeviceTensor) -> Result<Vec<f32>, ComputeError> {
        let bytes = x.byte_size() as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.pool.take(
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(x.gpu_buffer()?.raw(), 0, staging.raw(), 0, bytes);
        let submission = self.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging
            .raw()
            .map_async(wgpu::MapMode::Read, ..bytes, move |result| {
                let _ = sender.send(result);
            });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: Some(READ_TIMEOUT),
            })
            .map_err(|e| ComputeError::Gpu(format!("waiting for the result: {e}")))?;
        receiver
            .recv_timeout(READ_TIMEOUT)
            .map_err(|_| ComputeError::Gpu("the result never became readable".into()))?
            .map_err(|e| ComputeError::Gpu(format!("mapping the result: {e}")))?;
        let values = {
            let view = staging
                .raw()
                .get_mapped_range(..bytes)
                .map_err(|e| ComputeError::Gpu(format!("reading the result: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.raw().unmap();
        Ok(values)
    }

    fn matmul(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (m, k, n) = shapes::matmul(a.shape(), b.shape())?;
        let groups = (
            dim(n.div_ceil(MATMUL_TILE as usize))?,
            dim(m.div_ceil(MATMUL_TILE as usize))?,
        );
        let params = [dim(m)?, dim(k)?, dim(n)?];
        self.run(&self.kernels.matmul, &[a, b], &params, vec![m, n], groups)
    }

    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let repeat = shapes::add(a.shape(), b.shape())?;
        let len = a.len();
        let params = [dim(len)?, dim(repeat)?];
        self.elementwise(&self.kernels.add, &[a, b], &params, a.shape().to_vec(), len)
    }

    fn relu(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let len = x.len();
        self.elementwise(
            &self.kernels.relu,
            &[x],
            &[dim(len)?],
            x.shape().to_vec(),
            len,
        )
    }

    fn softmax(&self, x: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
        let (rows, width) = shapes::rows_and_width(x.shape());
        let params = [dim(rows)?, dim(width)?];
        self.elementwise(
            &self.kernels.softmax,
            &[x],
            &params,
            x.shape().to_vec(),
            rows,
        )
    }

    fn conv2d(
        &self,
        x: &DeviceTensor,
        filters: &DeviceTensor,
        pad: usize,
    ) -> Result<DeviceTensor, ComputeError> {
        let conv = shapes::conv2d(x.shape(), filters.shape(), pad)?;
        let out_shape = vec![conv.n, conv.f, conv.oh, conv.ow];
        let len = out_shape.iter().product();
        let params = [
            dim(len)?,
            dim(conv.c)?,
            dim(conv.h)?,
            dim(conv.w)?,
            dim(conv.f)?,
            dim(conv.kh)?,
            dim(conv.kw)?,
            dim(conv.pad)?,
            dim(conv.oh)?,
            dim(conv.ow)?,
        ];
        self.elementwise(&self.kernels.conv2d, &[x, filters], &params, out_shape, len)
    }

    fn max_pool(&self, x: &DeviceTensor, size: usize) -> Result<DeviceTensor, ComputeError> {
        let [n, c, h, w] = shapes::max_pool(x.shape(), size)?;
        let (oh, ow) = (h / size, w / size);
        let len = n * c * oh * ow;
        let params = [dim(len)?, dim(h)?, dim(w)?, dim(oh)?, dim(ow)?, dim(size)?];
        self.elementwise(
            &self.kernels.max_pool,
            &[x],
            &params,
            vec![n, c, oh, ow],
            len,
        )
    }

    fn reshape(&self, x: &DeviceTensor, shape: &[usize]) -> Result<DeviceTensor, ComputeError> {
        shapes::reshape(x.shape(), shape)?;
        // The same buffer under a new shape: nothing moves.
        Ok(DeviceTensor::on_gpu(
            shape.to_vec(),
            x.gpu_buffer()?.clone(),
        ))
    }
}
