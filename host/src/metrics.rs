//! Prometheus metrics, served as text at `/metrics` on the HTTP port: requests, failures by
//! gRPC code, latency (total, queue, compute) and batch sizes per model, and replicas per
//! model version; prediction-cache hits and misses per model; default outputs per
//! application. One process-wide registry, as Prometheus exporters usually have.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::sync::LazyLock;
use std::time::Duration;

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Batch-size buckets in rows.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    failures: IntCounterVec,
    request_seconds: HistogramVec,
    queue_seconds: HistogramVec,
    compute_seconds: HistogramVec,
    batch_rows: HistogramVec,
    replicas: IntGaugeVec,
    cache_lookups: IntCounterVec,
    default_outputs: IntCounterVec,
    instances_replaced: IntCounterVec,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["model"],
    )
    .expect("valid histogram")
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        registry: Registry::new(),
        requests: IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Inference requests received, per model",
            ),
            &["model"],
        )
        .expect("valid counter"),
        failures: IntCounterVec::new(
            Opts::new(
                "sluice_request_failures_total",
                "Inference requests that failed, per model and gRPC code",
            ),
            &["model", "code"],
        )
        .expect("valid counter"),
        request_seconds: histogram(
            "sluice_request_duration_seconds",
            "Time from a checked request to its answer (queue + compute)",
            LATENCY_BUCKETS,
        ),
        queue_seconds: histogram(
            "sluice_queue_duration_seconds",
            "Time a request waited in its replica's queue",
            LATENCY_BUCKETS,
        ),
        compute_seconds: histogram(
            "sluice_compute_duration_seconds",
            "Time one batch took to run on a replica",
            LATENCY_BUCKETS,
        ),
        batch_rows: histogram("sluice_batch_rows", "Rows per batch run", BATCH_BUCKETS),
        replicas: IntGaugeVec::new(
            Opts::new(
                "sluice_model_replicas",
                "Replicas serving each loaded model version",
            ),
            &["model", "version"],
        )
        .expect("valid gauge"),
        cache_lookups: IntCounterVec::new(
            Opts::new(
                "sluice_cache_lookups_total",
                "Prediction-cache lookups per model, by result (hit, miss, coalesced)",
            ),
            &["model", "result"],
        )
        .expect("valid counter"),
        instances_replaced: IntCounterVec::new(
            Opts::new(
                "sluice_instances_replaced_total",
                "Instances replaced by a fresh one, per model, by reason (fault, max-calls)",
            ),
            &["model", "reason"],
        )
        .expect("valid counter"),
        default_outputs: IntCounterVec::new(
            Opts::new(
                "sluice_app_default_outputs_total",
                "Rows answered with an application's default output, by reason \
                 (no-answer, low-confidence)",
            ),
            &["app", "reason"],
        )
        .expect("valid counter"),
    };
    for collector in [
        Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.failures.clone()),
        Box::new(m.request_seconds.clone()),
        Box::new(m.queue_seconds.clone()),
        Box::new(m.compute_seconds.clone()),
        Box::new(m.batch_rows.clone()),
        Box::new(m.replicas.clone()),
        Box::new(m.cache_lookups.clone()),
        Box::new(m.default_outputs.clone()),
        Box::new(m.instances_replaced.clone()),
    ] {
        m.registry.register(collector).expect("unique metric names");
    }
    m
});

/// Records a request to `model` and its outcome (`None` when it succeeded, else the gRPC code).
pub fn record_request(model: &str, elapsed: Duration, failure: Option<tonic::Code>) {
    METRICS.requests.with_label_values(&[model]).inc();
    METRICS
        .request_seconds
        .with_label_values(&[model])
        .observe(elapsed.as_secs_f64());
    if let Some(code) = failure {
        METRICS
            .failures
            .with_label_values(&[model, &format!("{code:?}")])
            .inc();
    }
}

/// Runs a request on `model` and records it (every protocol and the selection layer go
/// through here).
pub async fn predict_recorded(
    model: &crate::registry::Model,
    inputs: Vec<crate::runtime::Tensor>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Vec<crate::runtime::Tensor>, crate::registry::RegistryError> {
    let started = std::time::Instant::now();
    let result = model.predict(inputs, deadline).await;
    let failure = result.as_ref().err().map(crate::frontend::status::code);
    record_request(&model.name, started.elapsed(), failure);
    result
}

/// Records a prediction-cache lookup for `model`.
pub fn record_cache(model: &str, lookup: crate::cache::Lookup) {
    let result = match lookup {
        crate::cache::Lookup::Hit => "hit",
        crate::cache::Lookup::Miss => "miss",
        crate::cache::Lookup::Coalesced => "coalesced",
    };
    METRICS
        .cache_lookups
        .with_label_values(&[model, result])
        .inc();
}

/// Records that an instance of `model` was replaced, and why.
pub fn record_instance_replaced(model: &str, reason: &str) {
    METRICS
        .instances_replaced
        .with_label_values(&[model, reason])
        .inc();
}

/// Records a row answered with `app`'s default output, and why.
pub fn record_default_output(app: &str, reason: &str) {
    METRICS
        .default_outputs
        .with_label_values(&[app, reason])
        .inc();
}

/// Records one batch: its rows, how long it ran, and how long each request in it waited.
pub fn record_batch(
    model: &str,
    rows: usize,
    compute: Duration,
    waits: impl Iterator<Item = Duration>,
) {
    METRICS
        .batch_rows
        .with_label_values(&[model])
        .observe(rows as f64);
    METRICS
        .compute_seconds
        .with_label_values(&[model])
        .observe(compute.as_secs_f64());
    let queue = METRICS.queue_seconds.with_label_values(&[model]);
    waits.for_each(|wait| queue.observe(wait.as_secs_f64()));
}

/// The text exposition of every metric, with the replica gauge set from `replicas`
/// (`(model, version, replicas)` of each loaded version).
pub fn render(replicas: impl Iterator<Item = (String, String, usize)>) -> String {
    METRICS.replicas.reset();
    for (model, version, count) in replicas {
        METRICS
            .replicas
            .with_label_values(&[&model, &version])
            .set(count as i64);
    }
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut text)
        .expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}
