//! An OTLP/gRPC trace receiver that only counts: the far end for measuring what tracing costs
//! `sluice serve` (`benches/traces/run.sh`). It prints `otlp on ADDR` once listening, then,
//! after every export it receives, rewrites the file named by its one argument with the
//! number of spans received so far, so that a script can check spans did arrive.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the spans of every export and records the running total in `count_file`.
struct CountingSink {
    spans: AtomicU64,
    count_file: PathBuf,
}

#[tonic::async_trait]
impl TraceService for CountingSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let received: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        let total = self.spans.fetch_add(received as u64, Ordering::Relaxed) + received as u64;
        std::fs::write(&self.count_file, format!("{total}\n"))
            .map_err(|e| tonic::Status::internal(format!("writing the span count: {e}")))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let count_file = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("usage: otlp-sink COUNT_FILE"))?;
    std::fs::write(&count_file, "0\n")?;
    let sink = CountingSink {
        spans: AtomicU64::new(0),
        count_file,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("otlp on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
