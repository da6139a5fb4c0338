//! GPU buffers are expensive to create (an allocation in the driver, often a page-table
//! update) and a model's forward pass makes and drops the same few sizes on every call. The
//! pool keeps dropped buffers by usage and power-of-two size class and hands them out again,
//! up to a byte cap, so that a warm pass allocates nothing.
//!
//! Reuse is safe without fences: every command goes to the one queue, in submission order, so
//! work recorded after a buffer comes back runs after all earlier work that used it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Smallest buffer handed out, in bytes; tiny tensors share this class.
const MIN_CLASS: u64 = 256;

/// Dropped buffers kept for reuse, by `(usage, size class)`.
#[derive(Debug)]
pub(super) struct BufferPool {
    device: wgpu::Device,
    free: Mutex<FreeLists>,
    /// Bytes of idle buffers kept at most; beyond it, dropped buffers are freed.
    cap_bytes: u64,
}

#[derive(Debug, Default)]
struct FreeLists {
    by_class: HashMap<(wgpu::BufferUsages, u64), Vec<wgpu::Buffer>>,
    idle_bytes: u64,
}

/// A buffer from the pool; it goes back when the last tensor using it is dropped.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    pool: Arc<BufferPool>,
}

impl GpuBuffer {
    /// The wgpu buffer (at least as large as the tensor's bytes).
    pub(super) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give_back(buffer);
        }
    }
}

impl BufferPool {
    pub(super) fn new(device: wgpu::Device, cap_bytes: u64) -> Arc<Self> {
        Arc::new(BufferPool {
            device,
            free: Mutex::new(FreeLists::default()),
            cap_bytes,
        })
    }

    /// A buffer of at least `bytes` bytes with `usage`, reused if one is idle.
    pub(super) fn take(self: &Arc<Self>, bytes: u64, usage: wgpu::BufferUsages) -> GpuBuffer {
        let class = bytes.max(MIN_CLASS).next_power_of_two();
        let reused = {
            let mut free = self.free.lock().expect("pool lock");
            let buffer = free
                .by_class
                .get_mut(&(usage, class))
                .and_then(|list| list.pop());
            if buffer.is_some() {
                free.idle_bytes -= class;
            }
            buffer
        };
        let buffer = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("sluice tensor"),
                size: class,
                usage,
                mapped_at_creation: false,
            })
        });
        GpuBuffer {
            buffer: Some(buffer),
            pool: self.clone(),
        }
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        let mut free = self.free.lock().expect("pool lock");
        if free.idle_bytes + class > self.cap_bytes {
            return; // dropped here: wgpu frees it once the queue is done with it
        }
        free.idle_bytes += class;
        free.by_class
            .entry((buffer.usage(), class))
            .or_default()
            .push(buffer);
    }

    /// Bytes of idle buffers held for reuse.
    #[cfg(test)]
    pub(super) fn idle_bytes(&self) -> u64 {
        self.free.lock().expect("pool lock").idle_bytes
    }
}
