//! The state of one instance's `Store`, and the host side of the imports a model sees: the
//! `compute` interface (mapped onto a [`Backend`]), WASI (with nothing granted), and the
//! resource limiter that enforces the instance's memory cap (`wasi:nn` is in `nn.rs`).

use super::GraphSet;
use super::bindings::sluice::model::compute::{Host, HostDeviceTensor};
use super::bindings::sluice::model::types;
use super::guest_log::GuestLog;
use sluice_compute::shapes::{Op, output_bytes};
use sluice_compute::{Backend, ComputeError, DeviceTensor, decode_le_f32};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything a running instance owns on the host side.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    compute: Arc<dyn Backend>,
    /// The graphs `wasi:nn` may load by name.
    pub(crate) graphs: GraphSet,
    /// Bytes of tensors this instance holds on the host (compute's device tensors and
    /// `wasi:nn` tensors); capped by `limiter.memory_bytes`, beside its linear memory.
    held_bytes: usize,
    pub(crate) log: GuestLog,
    /// When the call running now reaches its time limit (graph runs stop there).
    pub(crate) call_deadline: Option<Instant>,
    /// The host calls of the call running now, while its replica records them (for the spans
    /// of a traced request); `None` otherwise, and then nothing is timed.
    pub(crate) host_calls: Option<Vec<HostCall>>,
}

/// One call a model made into the host during a predict: a `compute` operation or a `wasi:nn`
/// graph run, with when it started and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCall {
    /// What ran: `compute.matmul`, `compute.conv2d`, ..., or `wasi-nn.compute`.
    pub operation: &'static str,
    /// When it started.
    pub started: Instant,
    /// How long it took.
    pub took: Duration,
}

/// The most host calls one predict records; a model that makes more (a loop of small
/// operations) has only its first ones in its trace.
pub const MAX_HOST_CALLS_RECORDED: usize = 128;

impl StoreState {
    pub(crate) fn new(
        model: Arc<str>,
        memory_bytes: usize,
        compute: Arc<dyn Backend>,
        graphs: GraphSet,
    ) -> Self {
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
            graphs,
            held_bytes: 0,
            log,
            call_deadline: None,
            host_calls: None,
        }
    }

    /// Runs a host call, timing it when the replica records host calls.
    pub(crate) fn timed<T>(
        &mut self,
        operation: &'static str,
        call: impl FnOnce(&mut Self) -> T,
    ) -> T {
        if self.host_calls.is_none() {
            return call(self);
        }
        let started = Instant::now();
        let result = call(self);
        if let Some(calls) = &mut self.host_calls
            && calls.len() < MAX_HOST_CALLS_RECORDED
        {
            calls.push(HostCall {
                operation,
                started,
                took: started.elapsed(),
            });
        }
        result
    }

    /// The memory the instance holds: its linear memory and its tensors on the host.
    pub(crate) fn resident_bytes(&self) -> usize {
        self.limiter.linear_bytes.saturating_add(self.held_bytes)
    }

    /// Whether `bytes` more of host-side tensors fit the instance's budget.
    pub(crate) fn fits(&self, bytes: usize) -> Result<(), ComputeError> {
        let requested = self.held_bytes.saturating_add(bytes);
        if requested > self.limiter.memory_bytes {
            return Err(ComputeError::Budget {
                requested,
                limit: self.limiter.memory_bytes,
            });
        }
        Ok(())
    }

    /// Checks that an operation's result (of `bytes`) fits the budget before anything runs:
    /// an output can be far larger than its operands (a `[65536, 1] × [1, 65536]` product is
    /// 16 GiB).
    fn fits_output(&self, bytes: Result<usize, ComputeError>) -> Result<(), ComputeError> {
        self.fits(bytes?)
    }

    /// Stores a new device tensor if the instance's budget allows it.
    fn keep(
        &mut self,
        result: Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let tensor = match result.and_then(|t| self.fits(t.byte_size()).map(|()| t)) {
            Ok(tensor) => tensor,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.held_bytes += tensor.byte_size();
        Ok(Ok(self.table.push(tensor)?))
    }

    /// Counts `bytes` more as held (after [`StoreState::fits`] said they fit).
    pub(crate) fn hold(&mut self, bytes: usize) {
        self.held_bytes += bytes;
    }

    /// Counts `bytes` as no longer held.
    pub(crate) fn release(&mut self, bytes: usize) {
        self.held_bytes -= bytes;
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn tensor(&self, handle: &Resource<DeviceTensor>) -> wasmtime::Result<&DeviceTensor> {
        Ok(self.table.get(handle)?)
    }

    /// Runs a two-operand operation (`output` sizes its result for the budget check).
    fn binary(
        &mut self,
        operation: &'static str,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
        output: impl FnOnce(&[usize], &[usize]) -> Result<usize, ComputeError>,
        op: impl FnOnce(
            &dyn Backend,
            &DeviceTensor,
            &DeviceTensor,
        ) -> Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.timed(operation, |state| {
            let (a, b) = (state.tensor(&a)?, state.tensor(&b)?);
            let result = state
                .fits_output(output(a.shape(), b.shape()))
                .and_then(|()| op(state.compute.as_ref(), a, b));
            state.keep(result)
        })
    }

    /// Runs a one-operand operation (`output` sizes its result for the budget check).
    fn unary(
        &mut self,
        operation: &'static str,
        x: Resource<DeviceTensor>,
        output: impl FnOnce(&[usize]) -> Result<usize, ComputeError>,
        op: impl FnOnce(&dyn Backend, &DeviceTensor) -> Result<DeviceTensor, ComputeError>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.timed(operation, |state| {
            let x = state.tensor(&x)?;
            let result = state
                .fits_output(output(x.shape()))
                .and_then(|()| op(state.compute.as_ref(), x));
            state.keep(result)
        })
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
        self.held_bytes -= tensor.byte_size();
        Ok(())
    }
}

impl Host for StoreState {
    fn matmul(
        &mut self,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.binary(
            "compute.matmul",
            a,
            b,
            |a, b| output_bytes(Op::Matmul(a, b)),
            |backend, a, b| backend.matmul(a, b),
        )
    }

    fn add(
        &mut self,
        a: Resource<DeviceTensor>,
        b: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.binary(
            "compute.add",
            a,
            b,
            |a, b| output_bytes(Op::Add(a, b)),
            |backend, a, b| backend.add(a, b),
        )
    }

    fn relu(
        &mut self,
        x: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.unary(
            "compute.relu",
            x,
            |x| output_bytes(Op::Elementwise(x)),
            |backend, x| backend.relu(x),
        )
    }

    fn softmax(
        &mut self,
        x: Resource<DeviceTensor>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        self.unary(
            "compute.softmax",
            x,
            |x| output_bytes(Op::Elementwise(x)),
            |backend, x| backend.softmax(x),
        )
    }

    fn conv2d(
        &mut self,
        x: Resource<DeviceTensor>,
        filters: Resource<DeviceTensor>,
        pad: u32,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let pad = pad as usize;
        self.binary(
            "compute.conv2d",
            x,
            filters,
            |x, f| output_bytes(Op::Conv2d(x, f, pad)),
            |backend, x, f| backend.conv2d(x, f, pad),
        )
    }

    fn max_pool(
        &mut self,
        x: Resource<DeviceTensor>,
        size: u32,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let size = size as usize;
        self.unary(
            "compute.max_pool",
            x,
            |x| output_bytes(Op::MaxPool(x, size)),
            |backend, x| backend.max_pool(x, size),
        )
    }

    fn reshape(
        &mut self,
        x: Resource<DeviceTensor>,
        shape: Vec<u32>,
    ) -> wasmtime::Result<Result<Resource<DeviceTensor>, String>> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        self.unary(
            "compute.reshape",
            x,
            |x| output_bytes(Op::Reshape(x, &shape)),
            |backend, x| backend.reshape(x, &shape),
        )
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
    /// Bytes of linear memory the instance has now, over all its memories (each memory's
    /// creation is a growth from 0).
    pub(crate) linear_bytes: usize,
}

impl InstanceLimiter {
    fn new(memory_bytes: usize) -> Self {
        InstanceLimiter {
            memory_bytes,
            exceeded: None,
            linear_bytes: 0,
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
        self.linear_bytes = self.linear_bytes.saturating_add(desired - current);
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_compute::cpu::CpuBackend;

    /// Stores tensors like the CPU backend but fails the test if asked to compute anything.
    struct ComputesNothing;

    impl Backend for ComputesNothing {
        fn name(&self) -> &str {
            "computes-nothing"
        }
        fn upload(&self, shape: Vec<usize>, data: Vec<f32>) -> Result<DeviceTensor, ComputeError> {
            CpuBackend.upload(shape, data)
        }
        fn read(&self, x: &DeviceTensor) -> Result<Vec<f32>, ComputeError> {
            CpuBackend.read(x)
        }
        fn matmul(&self, _: &DeviceTensor, _: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
            panic!("matmul ran although its result is over the budget")
        }
        fn add(&self, _: &DeviceTensor, _: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
            panic!("add ran although its result is over the budget")
        }
        fn relu(&self, _: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
            panic!("relu ran although its result is over the budget")
        }
        fn softmax(&self, _: &DeviceTensor) -> Result<DeviceTensor, ComputeError> {
            panic!("softmax ran although its result is over the budget")
        }
        fn conv2d(
            &self,
            _: &DeviceTensor,
            _: &DeviceTensor,
            _: usize,
        ) -> Result<DeviceTensor, ComputeError> {
            panic!("conv2d ran although its result is over the budget")
        }
        fn max_pool(&self, _: &DeviceTensor, _: usize) -> Result<DeviceTensor, ComputeError> {
            panic!("max_pool ran although its result is over the budget")
        }
        fn reshape(&self, _: &DeviceTensor, _: &[usize]) -> Result<DeviceTensor, ComputeError> {
            panic!("reshape ran although its result is over the budget")
        }
    }

    fn upload(state: &mut StoreState, shape: &[u32]) -> Resource<DeviceTensor> {
        let bytes = vec![0u8; shape.iter().product::<u32>() as usize * 4];
        HostDeviceTensor::upload(state, shape.to_vec(), bytes)
            .unwrap()
            .unwrap()
    }

    fn borrow(handle: &Resource<DeviceTensor>) -> Resource<DeviceTensor> {
        Resource::new_borrow(handle.rep())
    }

    #[test]
    fn an_operation_whose_result_is_over_the_budget_is_refused_before_it_runs() {
        let mut state = StoreState::new(
            "m".into(),
            1 << 20,
            Arc::new(ComputesNothing),
            GraphSet::default(),
        );
        let column = upload(&mut state, &[65536, 1]);
        let row = upload(&mut state, &[1, 65536]);
        // 512 KiB of operands, 16 GiB of product.
        let refused = Host::matmul(&mut state, borrow(&column), borrow(&row)).unwrap();
        assert_eq!(
            refused.unwrap_err(),
            "device memory budget exceeded: 17180393472 bytes of tensors requested, limit 1048576"
        );
        // A convolution that multiplies its input by many filters is checked the same way.
        let image = upload(&mut state, &[1, 1, 64, 64]);
        let filters = upload(&mut state, &[4096, 1, 1, 1]);
        let refused = Host::conv2d(&mut state, borrow(&image), borrow(&filters), 0).unwrap();
        assert!(
            refused
                .unwrap_err()
                .starts_with("device memory budget exceeded")
        );
        // Shape errors still come first, as the guest's error.
        let refused = Host::matmul(&mut state, borrow(&column), borrow(&column)).unwrap();
        assert!(refused.unwrap_err().contains("inner dimensions differ"));
    }
}
