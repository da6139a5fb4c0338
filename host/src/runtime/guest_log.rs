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

#[derive(Default)]
struct Buffer {
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

/// A guest output sink shared by the WASI context of one instance and the replica that reads
/// back the recent lines.
#[derive(Clone)]
pub(crate) struct GuestLog {
    model: Arc<str>,
    buffer: Arc<Mutex<Buffer>>,
}

impl GuestLog {
    pub(crate) fn new(model: Arc<str>) -> Self {
        GuestLog {
            model,
            buffer: Arc::default(),
        }
    }

    fn push_line(&self, buffer: &mut Buffer, line: &[u8]) {
        let line = String::from_utf8_lossy(line).trim_end().to_string();
        tracing::info!(target: "sluice::guest", model = %self.model, "{line}");
        if buffer.recent.len() == RECENT_LINES {
            buffer.recent.pop_front();
        }
        buffer.recent.push_back(line);
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut buffer.partial);
                self.push_line(&mut buffer, &line);
            } else if buffer.partial.len() < MAX_LINE {
                buffer.partial.push(b);
            }
        }
    }

    /// Takes the lines printed since the last call (including an unfinished one), oldest first.
    pub(crate) fn take_recent(&self) -> Vec<String> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if !buffer.partial.is_empty() {
            let line = std::mem::take(&mut buffer.partial);
            self.push_line(&mut buffer, &line);
        }
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
        log.write_bytes(b"partial");
        let recent = log.take_recent();
        assert_eq!(recent.len(), RECENT_LINES);
        assert_eq!(recent.last().unwrap(), "partial");
        assert_eq!(recent[0], format!("line {}", 20 - RECENT_LINES + 1));
        assert!(log.take_recent().is_empty(), "taking clears");
    }
}
