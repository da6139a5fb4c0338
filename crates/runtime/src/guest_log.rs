//! Where a guest's stdout and stderr go: each complete line to `tracing` (target
//! `sluice::guest`, with the model's name), and the last few lines kept so that a trap can be
//! reported with what the guest printed just before it (a Rust panic message, typically).

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines kept for error reports.
const RECENT_LINES: usize = 8;
/// A line longer than this is cut, so a guest cannot make the host buffer without bound.
const MAX_LINE: usize = 4096;

struct Buffer {
    /// The model's name, as logs show it.
    model: Arc<str>,
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl Buffer {
    /// Logs and keeps one finished line; blank lines are dropped.
    fn finish_line(&mut self) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial))
            .trim_end()
            .to_string();
        if line.is_empty() {
            return;
        }
        tracing::info!(target: "sluice::guest", model = %self.model, "{line}");
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

/// A guest output sink shared by the WASI context of one instance (its stdout and stderr) and
/// the replica that reads back the recent lines.
#[derive(Clone)]
pub(crate) struct GuestLog {
    buffer: Arc<Mutex<Buffer>>,
}

impl GuestLog {
    pub(crate) fn new(model: Arc<str>) -> Self {
        GuestLog {
            buffer: Arc::new(Mutex::new(Buffer {
                model,
                partial: Vec::new(),
                recent: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the name later lines are logged under.
    pub(crate) fn set_model(&self, model: Arc<str>) {
        self.lock().model = model;
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        for &b in bytes {
            if b == b'\n' {
                buffer.finish_line();
            } else if buffer.partial.len() < MAX_LINE {
                buffer.partial.push(b);
            }
        }
    }

    /// Takes the lines printed since the last call (including an unfinished one), oldest first.
    pub(crate) fn take_recent(&self) -> Vec<String> {
        let mut buffer = self.lock();
        buffer.finish_line();
        buffer.recent.drain(..).collect()
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_including_an_unfinished_one() {
        let log = GuestLog::new("m".into());
        for i in 0..20 {
            log.write_bytes(format!("line {i}\n").as_bytes());
        }
        log.write_bytes(b"\n\npartial");
        let recent = log.take_recent();
        assert_eq!(recent.len(), RECENT_LINES);
        assert_eq!(recent.last().unwrap(), "partial");
        assert_eq!(recent[0], format!("line {}", 20 - RECENT_LINES + 1));
        assert!(log.take_recent().is_empty(), "taking clears");
    }
}
