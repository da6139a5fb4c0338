//! `serve --otlp-endpoint`: request traces exported over OTLP/gRPC.
//!
//! The serving layers make spans through the OpenTelemetry API only once
//! [`sluice_serving::telemetry::enable`] is called, which happens here, after the SDK's tracer
//! provider (batching exporter, sampler, resource) and the W3C trace-context propagator are
//! installed. The standard `OTEL_*` variables are honoured: `OTEL_EXPORTER_OTLP_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turn tracing on like the flag, `OTEL_SDK_DISABLED=true`
//! and `OTEL_TRACES_EXPORTER=none` keep it off, `OTEL_TRACES_SAMPLER`/`_ARG` choose the
//! sampler when `--trace-sampling` is not given, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service, and `OTEL_BSP_*` size the export batches.

use anyhow::{Context, Result, bail};
use opentelemetry::global;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The tracing flags of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(super) struct TraceArgs {
    /// Export request traces over OTLP/gRPC to this collector, `http://HOST:PORT` (4317 is
    /// OTLP's port). Also on when OTEL_EXPORTER_OTLP_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The fraction of requests traced, 0 to 1, unless the caller's `traceparent` already
    /// decided (default: OTEL_TRACES_SAMPLER, else every request).
    #[arg(long, value_name = "RATIO")]
    trace_sampling: Option<f64>,
}

/// Traces being exported; flushes what is left when the server stops.
pub(super) struct Exporting(SdkTracerProvider);

impl Exporting {
    pub(super) fn stop(self) {
        if let Err(error) = self.0.shutdown() {
            tracing::warn!(%error, "the last request traces could not be exported");
        }
    }
}

/// The collector to export to, if tracing is on.
fn endpoint(args: &TraceArgs) -> Option<String> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    args.otlp_endpoint
        .clone()
        .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Starts exporting traces, if asked to; must be called within the tokio runtime (the
/// exporter's gRPC channel runs on it).
pub(super) fn start(args: &TraceArgs) -> Result<Option<Exporting>> {
    if let Some(ratio) = args.trace_sampling
        && !(0.0..=1.0).contains(&ratio)
    {
        bail!("--trace-sampling {ratio}: expected a fraction from 0 to 1");
    }
    let Some(url) = endpoint(args) else {
        return Ok(None);
    };
    if !url.starts_with("http://") {
        bail!(
            "--otlp-endpoint {url}: expected http://HOST:PORT (OTLP over gRPC without TLS; \
             run a collector beside the server for TLS to a remote one)"
        );
    }
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("--otlp-endpoint {url}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("sluice");
    }
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(ratio) = args.trace_sampling {
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(ratio),
        )));
    }
    let provider = provider.build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    sluice_serving::telemetry::enable();
    tracing::info!(endpoint = %url, "exporting request traces over OTLP");
    Ok(Some(Exporting(provider)))
}
