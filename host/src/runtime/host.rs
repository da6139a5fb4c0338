//! The state of one instance's `Store`, and the host side of the imports a model sees: the
//! `compute` interface (mapped onto a [`Backend`]), WASI (with nothing granted), and the
//! resource limiter that enforces the instance's memory cap.

use super::bindings::sluice::model::compute::{Host, HostDeviceTensor};
use super::bindings::sluice::model::types;
use super::guest_log::GuestLog;
use crate::compute::{Backend, ComputeError, DeviceTensor, decode_le_f32};
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything a running instance owns on the host side.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    compute: Arc<dyn Backend>,
    /// Bytes of device tensors this instance holds; capped by `limiter.memory_bytes`.
    device_bytes: usize,
    pub(crate) log: GuestLog,
}

impl StoreState {
    pub(crate) fn new(model: Arc<str>, memory_bytes: usize, compute: Arc<dyn Backend>) -> Self {
        let log = GuestLog::new(model);
        // No filesystem, network, environment, arguments or stdin: std's needs only (clocks,
        // random), with stdout and stderr going to the log.
        let wasi = WasiCtx::builder()
            .stdout(log.clone())
            .stderr(log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        StoreState {
            wasi,
            table: ResourceTable::new(),
            limiter: InstanceLimiter::new(memory_bytes),
            compute,
            device_bytes: 0,
            log,
        }
    }

    /// Stores a new device tensor if the instance's budget allows it.
    fn keep(
        &mut self,
        result: Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let tensor = match result {
            Ok(tensor) => tensor,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let after = self.device_bytes + tensor.byte_size();
        if after > self.limiter.memory_bytes {
            return Ok(Err(format!(
                "device memory budget exceeded: {after} bytes of tensors requested, limit {}",
                self.limiter.memory_bytes
            )));
        }
        self.device_bytes = after;
        Ok(Ok(self.table.push(tensor)?))
    }

    fn tensor(&self, handle: &Resource<DeviceTensor>) -> wasmtime::Result<&DeviceTensor> {
        Ok(self.table.get(handle)?)
    }

    fn binary(
        &mut self,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
        op: impl FnOnce(
            &dyn Backend,
            &DeviceTensor,
            &DeviceTensor,
        ) -> Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let result = op(self.compute.as_ref(), self.tensor(&a)?, self.tensor(&b)?);
        self.keep(result)
    }

    fn unary(
        &mut self,
        x: Resource<DeviceTensor>,
        op: impl FnOnce(&dyn Backend, &DeviceTensor) -> Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let result = op(self.compute.as_ref(), self.tensor(&x)?);
        self.keep(result)
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostDeviceTensor for StoreState {
    fn upload(
        &mut self,
        shape: Vec<u32>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let tensor = decode_le_f32(&shape, &data)
            .and_then(|(shape, values)| self.compute.upload(shape, values));
        self.keep(tensor)
    }

    fn shape(&mut self, handle: Resource<DeviceTensor>) -> wasmtime::Result<Vec<u32>> {
        let shape = self.tensor(&handle)?.shape();
        Ok(shape.iter().map(|&d| d as u32).collect())
    }

    fn read(&mut self, handle: Resource<DeviceTensor>) -> wasmtime::Result<Vec<u8>> {
        // `read` has no error in the interface: a device that cannot give the values back
        // (lost, out of memory) fails the call, and the instance is replaced.
        let values = self
            .compute
            .read(self.tensor(&handle)?)
            .map_err(wasmtime::Error::msg)?;
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn drop(&mut self, handle: Resource<DeviceTensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(handle)?;
        self.device_bytes -= tensor.byte_size();
        Ok(())
    }
}

impl Host for StoreState {
    fn matmul(
        &mut self,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.binary(a, b, |backend, a, b| backend.matmul(a, b))
    }

    fn add(
        &mut self,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.binary(a, b, |backend, a, b| backend.add(a, b))
    }

    fn relu(
        &mut self,
        x: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.unary(x, |backend, x| backend.relu(x))
    }

    fn softmax(
        &mut self,
        x: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.unary(x, |backend, x| backend.softmax(x))
    }

    fn conv2d(
        &mut self,
        x: Resource<DeviceTensor>,
        filters: Resource<DeviceTensor>,
        pad: u32,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.binary(x, filters, |backend, x, f| {
            backend.conv2d(x, f, pad as usize)
        })
    }

    fn max_pool(
        &mut self,
        x: Resource<DeviceTensor>,
        size: u32,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.unary(x, |backend, x| backend.max_pool(x, size as usize))
    }

    fn reshape(
        &mut self,
        x: Resource<DeviceTensor>,
        shape: Vec<u32>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        self.unary(x, |backend, x| backend.reshape(x, &shape))
    }
}

/// `types` has no functions; the world imports it only for the type definitions.
impl types::Host for StoreState {}

/// Wasm resources one instance may create. A Rust component has a handful of core instances,
/// tables and memories; these bounds are far above that and far below harm.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Enforces an instance's memory cap and records when it was hit, so the failed call can be
/// reported as memory exhaustion rather than as a generic trap.
pub(crate) struct InstanceLimiter {
    pub(crate) memory_bytes: usize,
    /// Set when a growth was refused; taken by the replica after the call.
    pub(crate) exceeded: Option<String>,
}

impl InstanceLimiter {
    fn new(memory_bytes: usize) -> Self {
        InstanceLimiter {
            memory_bytes,
            exceeded: None,
        }
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            let message = format!(
                "linear memory would grow from {current} to {desired} bytes, limit {}",
                self.memory_bytes
            );
            self.exceeded = Some(message.clone());
            // An error (rather than `false`) traps at once instead of letting the guest's
            // allocator abort with a less helpful message.
            wasmtime::bail!(message);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
