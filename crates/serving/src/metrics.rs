//! Prometheus metrics (the frontend serves them as text at `/metrics`): requests, failures by
//! error kind, latency (total, queue, compute) and batch sizes per model; replicas, queued and
//! in-flight requests per model version (what an autoscaler scales on); prediction-cache hits
//! and misses per model; default outputs per application; cold starts of models scaled to
//! zero, and evictions and resident memory under the memory budget. One process-wide
//! registry, as Prometheus exporters usually have.
//!
//! A leaf: the layers call it with labels of their own (names, an [`ErrorKind`], a reason) and
//! it calls nothing of theirs.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};
use sluice_types::ErrorKind;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
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
    queued: IntGaugeVec,
    in_flight: IntGaugeVec,
    cache_lookups: IntCounterVec,
    default_outputs: IntCounterVec,
    instances_replaced: IntCounterVec,
    cold_start_seconds: HistogramVec,
    evictions: IntCounterVec,
    code_evictions: IntCounter,
    resident_bytes: IntGaugeVec,
    versions_by_residence: IntGaugeVec,
}

fn version_gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["model", "version"]).expect("valid gauge")
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
                "Inference requests that failed, per model and error kind (gRPC code name)",
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
        cold_start_seconds: histogram(
            "sluice_cold_start_seconds",
            "Time to start the first replica of a model scaled to zero, for the request that \
             woke it",
            LATENCY_BUCKETS,
        ),
        replicas: version_gauge(
            "sluice_model_replicas",
            "Replicas serving each loaded model version",
        ),
        queued: version_gauge(
            "sluice_queued_requests",
            "Requests waiting in the queues of each loaded model version, at the scrape",
        ),
        in_flight: version_gauge(
            "sluice_in_flight_requests",
            "Requests each loaded model version holds (queued or running), at the scrape",
        ),
        resident_bytes: version_gauge(
            "sluice_model_resident_bytes",
            "Memory each loaded model version's replicas hold, as the memory budget estimates \
             it (0: not resident), at the scrape",
        ),
        evictions: IntCounterVec::new(
            Opts::new(
                "sluice_evictions_total",
                "Models scaled to zero because the server held more than its memory budget",
            ),
            &["model"],
        )
        .expect("valid counter"),
        code_evictions: IntCounter::new(
            "sluice_code_evictions_total",
            "Components whose compiled code was dropped from memory under the memory budget \
             (read back from the precompiled cache when next asked for)",
        )
        .expect("valid counter"),
        versions_by_residence: IntGaugeVec::new(
            Opts::new(
                "sluice_model_versions",
                "Loaded model versions by what of them is in memory (running: with replicas; \
                 code-only: no replica, compiled code in memory; registered: neither), at the \
                 scrape",
            ),
            &["residence"],
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
                "Instances replaced by a fresh one, per model, by reason (fault, max-calls, worker-died)",
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
        Box::new(m.queued.clone()),
        Box::new(m.in_flight.clone()),
        Box::new(m.cache_lookups.clone()),
        Box::new(m.default_outputs.clone()),
        Box::new(m.instances_replaced.clone()),
        Box::new(m.cold_start_seconds.clone()),
        Box::new(m.evictions.clone()),
        Box::new(m.resident_bytes.clone()),
        Box::new(m.code_evictions.clone()),
        Box::new(m.versions_by_residence.clone()),
    ] {
        m.registry.register(collector).expect("unique metric names");
    }
    m
});

/// The metrics of one model, resolved once: looking a labelled metric up costs a hash and a
/// lock, which a request should not pay for each of its counters.
pub struct ModelMetrics {
    model: Arc<str>,
    requests: IntCounter,
    request_seconds: Histogram,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_rows: Histogram,
    cold_start_seconds: Histogram,
}

impl ModelMetrics {
    /// The metrics of the model served as `model`.
    pub fn new(model: Arc<str>) -> ModelMetrics {
        let label = [model.as_ref()];
        ModelMetrics {
            requests: METRICS.requests.with_label_values(&label),
            request_seconds: METRICS.request_seconds.with_label_values(&label),
            queue_seconds: METRICS.queue_seconds.with_label_values(&label),
            compute_seconds: METRICS.compute_seconds.with_label_values(&label),
            batch_rows: METRICS.batch_rows.with_label_values(&label),
            cold_start_seconds: METRICS.cold_start_seconds.with_label_values(&label),
            model,
        }
    }

    /// Records a request and its outcome (`None` when it succeeded, else the kind of its
    /// failure).
    pub fn record_request(&self, elapsed: Duration, failure: Option<ErrorKind>) {
        self.requests.inc();
        self.request_seconds.observe(elapsed.as_secs_f64());
        if let Some(kind) = failure {
            METRICS
                .failures
                .with_label_values(&[self.model.as_ref(), kind.label()])
                .inc();
        }
    }

    /// Its requests and latency histogram so far.
    pub fn traffic(&self) -> Traffic {
        use prometheus::core::Metric;
        let latency = self.request_seconds.metric();
        Traffic {
            requests: self.requests.get(),
            latency: latency
                .get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    }

    /// The model these metrics are of.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Records how long a model scaled to zero took to start a replica again.
    pub fn record_cold_start(&self, took: Duration) {
        self.cold_start_seconds.observe(took.as_secs_f64());
    }

    /// Records that the memory budget scaled the model to zero.
    pub fn record_eviction(&self) {
        METRICS
            .evictions
            .with_label_values(&[self.model.as_ref()])
            .inc();
    }

    /// Records that a replica's worker died (it is replaced).
    pub fn record_replica_died(&self) {
        record_instance_replaced(&self.model, "worker-died");
    }

    /// Records one batch: its rows, how long it ran, and how long each request in it waited.
    pub fn record_batch(
        &self,
        rows: usize,
        compute: Duration,
        waits: impl Iterator<Item = Duration>,
    ) {
        self.batch_rows.observe(rows as f64);
        self.compute_seconds.observe(compute.as_secs_f64());
        waits.for_each(|wait| self.queue_seconds.observe(wait.as_secs_f64()));
    }
}

/// What a model has answered since it was loaded (the live dashboard diffs two of these).
pub struct Traffic {
    /// Requests that reached it.
    pub requests: u64,
    /// The latency histogram: (upper bound in seconds, requests that took at most that).
    pub latency: Vec<(f64, u64)>,
}

/// The reasons an application answers with its default output.
const DEFAULT_REASONS: [&str; 2] = ["no-answer", "low-confidence"];

/// Rows `app` has answered with its default output, all reasons together.
pub fn default_outputs(app: &str) -> u64 {
    DEFAULT_REASONS
        .iter()
        .map(|reason| {
            METRICS
                .default_outputs
                .with_label_values(&[app, reason])
                .get()
        })
        .sum()
}

/// Records a prediction-cache lookup for `model`; `result` is `hit`, `miss` or `coalesced`.
pub fn record_cache(model: &str, result: &str) {
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

/// Records that the memory budget dropped a component's compiled code.
pub fn record_code_eviction() {
    METRICS.code_evictions.inc();
}

/// What a loaded model version holds at a scrape (the gauges are read from the models
/// themselves, so they cannot drift from what the batcher does).
pub struct VersionGauges {
    /// The model.
    pub model: String,
    /// The version.
    pub version: String,
    /// Replicas taking requests.
    pub replicas: usize,
    /// Requests waiting in its queues.
    pub queued: usize,
    /// Requests queued or running.
    pub in_flight: usize,
    /// Memory its replicas hold, by the memory budget's estimate.
    pub resident_bytes: u64,
    /// What of it is in memory: `running`, `code-only` or `registered`.
    pub residence: &'static str,
}

/// The text exposition of every metric, with the per-version gauges set from `versions`
/// (one entry per loaded version).
pub fn render(versions: impl Iterator<Item = VersionGauges>) -> String {
    for gauge in [
        &METRICS.replicas,
        &METRICS.queued,
        &METRICS.in_flight,
        &METRICS.resident_bytes,
    ] {
        gauge.reset();
    }
    let mut by_residence: BTreeMap<&str, i64> = ["running", "code-only", "registered"]
        .into_iter()
        .map(|residence| (residence, 0))
        .collect();
    for v in versions {
        *by_residence.entry(v.residence).or_default() += 1;
        let labels = [v.model.as_str(), v.version.as_str()];
        METRICS
            .replicas
            .with_label_values(&labels)
            .set(v.replicas as i64);
        METRICS
            .queued
            .with_label_values(&labels)
            .set(v.queued as i64);
        METRICS
            .in_flight
            .with_label_values(&labels)
            .set(v.in_flight as i64);
        METRICS
            .resident_bytes
            .with_label_values(&labels)
            .set(v.resident_bytes as i64);
    }
    for (residence, count) in by_residence {
        METRICS
            .versions_by_residence
            .with_label_values(&[residence])
            .set(count);
    }
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut text)
        .expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}
