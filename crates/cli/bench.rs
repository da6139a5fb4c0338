//! `sluice bench`: a load generator against a running server, over gRPC.
//!
//! Closed loop (`--concurrency N`: N clients, each sending its next request when the last is
//! answered) or open loop (`--rate R`: Poisson arrivals at R requests/s, each timed from its
//! scheduled send time, so a slow server cannot hide its queueing — no coordinated omission).
//! At the end: throughput, latency percentiles (HDR histogram), errors by status, and the
//! server's mean batch size over the run (from `ListModels` before and after).
//!
//! `--variants N` spreads the requests over N models named from a pattern (`m{}` → m1 … mN),
//! drawn from a Zipf distribution, as traffic over many per-customer variants is; the report
//! then adds latency by popularity rank (the most asked-for stay resident under a memory
//! budget, the tail mostly starts a replica).
//!
//! `--protocol kserve` speaks the Open Inference Protocol (`ModelInfer`, inputs described by
//! `ModelMetadata`) instead of sluice's own `Predict`, so the same generator drives sluice,
//! Triton or MLServer the same way (`benches/compare/run.sh`); batch sizes are then unknown.

use super::ServerArgs;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rand::Rng;
use rand::distr::weighted::WeightedIndex;
use sluice_api::client::{Channel, Status};
use sluice_api::convert::{dtype_from_proto, tensor_to_proto};
use sluice_api::inference::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use sluice_api::kserve_json;
use sluice_api::proto::{self, sluice_client::SluiceClient};
use sluice_types::{Dtype, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The digits data, for models that take 8x8 images (`pixels`, FP32 `[-1, 64]`).
const DIGITS_CSV: &str = include_str!("../../sample-models/data/digits.csv");

/// Flags of `sluice bench`.
#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// The model to load (with --variants, a pattern: `{}` is replaced by a variant's number).
    model: String,
    /// Spread requests over this many variants of MODEL, `{}` in it replaced by 1..=N, each
    /// request's variant drawn from a Zipf distribution over them (1 the most popular).
    #[arg(long)]
    variants: Option<usize>,
    /// The exponent of the Zipf distribution of --variants (0: all equally likely).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Closed loop: this many concurrent clients (the default, with 16).
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: this many requests per second, Poisson arrivals.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests instead (closed loop).
    #[arg(long, conflicts_with = "rate")]
    requests: Option<u64>,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Each request's deadline in milliseconds (0: the model's SLO).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u64,
    /// Inputs as JSON (like `predict --input-file`) instead of generated ones.
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// Connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Threads of the load generator. One adds the least latency (no hand-offs between
    /// threads: 185 against 210 µs per round trip on loopback here); more, to saturate a
    /// server on a machine with many cores.
    #[arg(long, default_value_t = 1)]
    pub(super) threads: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the latency distribution (latency by percentile) as SVG to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The API to speak.
    #[arg(long, value_enum, default_value = "sluice")]
    protocol: Protocol,
}

/// The APIs the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    /// sluice's own `Predict` (and `ListModels`, for the server's batch sizes).
    Sluice,
    /// The Open Inference Protocol's `ModelInfer` (KServe v2): sluice, Triton, MLServer.
    Kserve,
}

/// A prepared request and the connection it goes over; cloned per worker.
#[derive(Clone)]
enum Caller {
    Sluice(SluiceClient<Channel>, proto::PredictRequest),
    Kserve(
        GrpcInferenceServiceClient<Channel>,
        inference::ModelInferRequest,
    ),
}

impl Caller {
    /// Sends the request, to `model` instead of the one it was prepared for if given.
    async fn call(&mut self, model: Option<&str>) -> Result<(), Status> {
        match self {
            Caller::Sluice(client, request) => {
                let mut request = request.clone();
                if let Some(model) = model {
                    model.clone_into(&mut request.model);
                }
                client.predict(request).await.map(drop)
            }
            Caller::Kserve(client, request) => {
                let mut request = request.clone();
                if let Some(model) = model {
                    model.clone_into(&mut request.model_name);
                }
                client.model_infer(request).await.map(drop)
            }
        }
    }
}

/// Which model each request goes to under `--variants`: a rank drawn from a Zipf
/// distribution, and the variant's name.
struct Variants {
    names: Vec<String>,
    popularity: WeightedIndex<f64>,
}

impl Variants {
    fn new(pattern: &str, count: usize, exponent: f64) -> Result<Self> {
        if !pattern.contains("{}") {
            bail!(
                "with --variants, the model is a pattern with `{{}}` for the variant's number (e.g. `m{{}}`)"
            );
        }
        if count == 0 || !(exponent.is_finite() && exponent >= 0.0) {
            bail!("--variants must be at least 1 and --zipf a number >= 0");
        }
        let names = (1..=count)
            .map(|rank| pattern.replace("{}", &rank.to_string()))
            .collect();
        let popularity = WeightedIndex::new((1..=count).map(|rank| (rank as f64).powf(-exponent)))
            .context("the Zipf weights")?;
        Ok(Variants { names, popularity })
    }

    /// A variant's rank (from 1) and name.
    fn pick(&self) -> (usize, &str) {
        let index = rand::rng().sample(&self.popularity);
        (index + 1, &self.names[index])
    }
}

/// The latency bucket of a popularity rank: ranks 1-10, 11-100, 101-1000, ...
fn rank_decade(rank: usize) -> usize {
    match rank.saturating_sub(1) {
        0..10 => 0,
        r => r.ilog10() as usize,
    }
}

/// An input the model declares: what the generated rows must look like.
struct InputSpec {
    name: String,
    dtype: Dtype,
    /// `-1` for a variable dimension.
    shape: Vec<i64>,
}

/// What the workers record.
struct Recorder {
    latency_us: Mutex<Histogram<u64>>,
    /// Under `--variants`: latency by [`rank_decade`].
    by_rank: Mutex<BTreeMap<usize, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ok: AtomicU64,
    sent: AtomicU64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            latency_us: Mutex::new(latency_histogram()),
            by_rank: Mutex::default(),
            errors: Mutex::default(),
            ok: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// Records a request sent at `started` (to the variant of popularity `rank`, if any).
    fn record(&self, started: Instant, rank: Option<usize>, result: Result<(), Status>) {
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                self.latency_us.lock().unwrap().saturating_record(us);
                if let Some(rank) = rank {
                    self.by_rank
                        .lock()
                        .unwrap()
                        .entry(rank_decade(rank))
                        .or_insert_with(latency_histogram)
                        .saturating_record(us);
                }
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                let code = format!("{:?}", status.code());
                *self.errors.lock().unwrap().entry(code).or_default() += 1;
            }
        }
    }
}

/// Microseconds from 1 µs to a minute, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The inputs of one request: `--input-file`, or rows generated for `specs`.
fn request_inputs(args: &BenchArgs, specs: &[InputSpec]) -> Result<Vec<Tensor>> {
    match &args.input_file {
        Some(path) => kserve_json::parse_inputs(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .map_err(anyhow::Error::msg),
        None => generated_inputs(specs, args.rows),
    }
}

/// Digits rows for a `pixels [-1, 64]` FP32 input; zeros (empty strings for BYTES) otherwise.
fn generated_inputs(specs: &[InputSpec], rows: usize) -> Result<Vec<Tensor>> {
    if specs.is_empty() {
        bail!("the model declares no inputs; pass --input-file");
    }
    Ok(specs
        .iter()
        .map(|spec| {
            let mut shape: Vec<u32> = spec.shape.iter().map(|&d| d.max(1) as u32).collect();
            if let Some(first) = shape.first_mut() {
                *first = rows as u32;
            }
            let count: usize = shape.iter().map(|&d| d as usize).product();
            let data = if spec.shape == [-1, 64] && spec.dtype == Dtype::Fp32 {
                DIGITS_CSV
                    .lines()
                    .cycle()
                    .take(rows)
                    .flat_map(|line| line.split(',').take(64))
                    .flat_map(|v| v.parse::<f32>().unwrap_or(0.0).to_le_bytes())
                    .collect()
            } else {
                // BYTES: empty strings, a 4-byte length prefix each.
                vec![0; count * spec.dtype.element_size().unwrap_or(4)]
            };
            Tensor {
                name: spec.name.clone(),
                dtype: spec.dtype,
                shape,
                data,
            }
        })
        .collect())
}

/// The caller of one connection for `--protocol sluice`, and the model's status.
async fn sluice_caller(
    channel: Channel,
    args: &BenchArgs,
    model: &str,
) -> Result<(Caller, proto::ModelStatus)> {
    let mut client = SluiceClient::new(channel);
    let status = model_status(&mut client, model).await?;
    let specs = status
        .inputs
        .iter()
        .map(|spec| {
            Ok(InputSpec {
                name: spec.name.clone(),
                dtype: dtype_from_proto(spec.datatype)
                    .context("the model declares an unknown datatype")?,
                shape: spec.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let request = proto::PredictRequest {
        model: model.to_string(),
        version: String::new(),
        inputs: request_inputs(args, &specs)?
            .into_iter()
            .map(tensor_to_proto)
            .collect(),
        timeout_ms: args.timeout_ms,
    };
    Ok((Caller::Sluice(client, request), status))
}

/// The caller of one connection for `--protocol kserve`: inputs from `ModelMetadata`, sent
/// as raw tensors (as Triton's clients do).
async fn kserve_caller(channel: Channel, args: &BenchArgs, model: &str) -> Result<Caller> {
    let mut client = GrpcInferenceServiceClient::new(channel);
    let metadata = client
        .model_metadata(inference::ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        })
        .await
        .with_context(|| format!("ModelMetadata of `{model}`"))?
        .into_inner();
    let specs = metadata
        .inputs
        .iter()
        .map(|input| {
            Ok(InputSpec {
                name: input.name.clone(),
                dtype: Dtype::parse(&input.datatype).with_context(|| {
                    format!("input `{}` has datatype {}", input.name, input.datatype)
                })?,
                shape: input.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let inputs = request_inputs(args, &specs)?;
    let request = inference::ModelInferRequest {
        model_name: model.to_string(),
        inputs: inputs
            .iter()
            .map(|t| inference::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.dtype.name().to_string(),
                shape: t.shape.iter().map(|&d| i64::from(d)).collect(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs.into_iter().map(|t| t.data).collect(),
        ..Default::default()
    };
    Ok(Caller::Kserve(client, request))
}

async fn model_status(
    client: &mut SluiceClient<Channel>,
    model: &str,
) -> Result<proto::ModelStatus> {
    let models = client
        .list_models(proto::ListModelsRequest {})
        .await?
        .into_inner()
        .models;
    models
        .into_iter()
        .find(|m| m.name == model && m.is_default_version)
        .with_context(|| format!("model `{model}` is not loaded on the server"))
}

pub(super) async fn run(server: &ServerArgs, args: BenchArgs) -> Result<()> {
    if args.rows == 0 {
        bail!("--rows must be at least 1");
    }
    if args.protocol == Protocol::Kserve && args.timeout_ms != 0 {
        bail!("--timeout-ms needs --protocol sluice: a KServe request carries no deadline");
    }
    let variants = args
        .variants
        .map(|count| Variants::new(&args.model, count, args.zipf))
        .transpose()?
        .map(Arc::new);
    // Requests are prepared for one model (the most popular variant), whose inputs all share.
    let model = variants
        .as_ref()
        .map_or(args.model.as_str(), |v| v.names[0].as_str())
        .to_string();
    let mut callers = Vec::new();
    let mut before = None;
    for _ in 0..args.connections.max(1) {
        let channel = server.channel().await?;
        callers.push(match args.protocol {
            Protocol::Sluice => {
                let (caller, status) = sluice_caller(channel, &args, &model).await?;
                // One model's batches say nothing of a run over many.
                if variants.is_none() {
                    before.get_or_insert(status);
                }
                caller
            }
            Protocol::Kserve => kserve_caller(channel, &args, &model).await?,
        });
    }
    let recorder = Arc::new(Recorder::new());
    let duration = Duration::from_secs_f64(args.duration);
    let progress = indicatif::ProgressBar::new(duration.as_millis() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let ticker = {
        let (progress, recorder) = (progress.clone(), recorder.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let ok = recorder.ok.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                progress.set_position(started.elapsed().as_millis() as u64);
                progress.set_message(format!("{ok} ok, {:.0} req/s", ok as f64 / secs));
            }
        })
    };
    let mode = match args.rate {
        Some(rate) => {
            open_loop(&callers, &variants, rate, duration, &recorder).await;
            format!("open loop, {rate} req/s offered")
        }
        None => {
            let concurrency = args.concurrency.unwrap_or(16);
            let limit = args.requests;
            closed_loop(&callers, &variants, concurrency, duration, limit, &recorder).await;
            format!("closed loop, {concurrency} clients")
        }
    };
    let mode = match &variants {
        Some(v) => format!("{mode}, {} variants, Zipf {}", v.names.len(), args.zipf),
        None => mode,
    };
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    let batches = match (before, &callers[0]) {
        (Some(before), Caller::Sluice(client, _)) => {
            let after = model_status(&mut client.clone(), &args.model).await?;
            Some((before, after))
        }
        _ => None,
    };
    let report = Report::new(&args, mode, elapsed, &recorder, batches);
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.latency_svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sends one request of `caller` (to a variant drawn from `variants`, if given) and records it.
async fn send(
    caller: &mut Caller,
    variants: &Option<Arc<Variants>>,
    sent: Instant,
    recorder: &Recorder,
) {
    let variant = variants.as_ref().map(|v| v.pick());
    let result = caller.call(variant.map(|(_, name)| name)).await;
    recorder.record(sent, variant.map(|(rank, _)| rank), result);
}

async fn closed_loop(
    callers: &[Caller],
    variants: &Option<Arc<Variants>>,
    concurrency: usize,
    duration: Duration,
    limit: Option<u64>,
    recorder: &Arc<Recorder>,
) {
    let stop_at = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|i| {
            let mut caller = callers[i % callers.len()].clone();
            let (recorder, variants) = (recorder.clone(), variants.clone());
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let n = recorder.sent.fetch_add(1, Ordering::Relaxed);
                    if limit.is_some_and(|limit| n >= limit) {
                        break;
                    }
                    send(&mut caller, &variants, Instant::now(), &recorder).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

async fn open_loop(
    callers: &[Caller],
    variants: &Option<Arc<Variants>>,
    rate: f64,
    duration: Duration,
    recorder: &Arc<Recorder>,
) {
    let start = tokio::time::Instant::now();
    let mut next = start;
    let mut in_flight = Vec::new();
    let mut rng = rand::rng();
    let mut i = 0usize;
    while next < start + duration {
        tokio::time::sleep_until(next).await;
        let mut caller = callers[i % callers.len()].clone();
        let (recorder, variants) = (recorder.clone(), variants.clone());
        // Latency counts from the scheduled time, not from when the task got to run.
        let scheduled = Instant::now() - (tokio::time::Instant::now() - next);
        recorder.sent.fetch_add(1, Ordering::Relaxed);
        in_flight.push(tokio::spawn(async move {
            send(&mut caller, &variants, scheduled, &recorder).await;
        }));
        in_flight.retain(|t| !t.is_finished());
        // Exponential inter-arrival times give Poisson arrivals.
        let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
        next += Duration::from_secs_f64(gap);
        i += 1;
    }
    for task in in_flight {
        let _ = task.await;
    }
}

/// The results of one run.
struct Report {
    model: String,
    mode: String,
    rows: usize,
    elapsed: Duration,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
    /// Under `--variants`: latency by popularity, ranks 1-10, 11-100, ... (label, histogram).
    by_rank: Vec<(String, Histogram<u64>)>,
    /// Rows per batch on the server over the run (sluice's protocol only).
    mean_batch: Option<f64>,
    batch_sizes: Vec<u32>,
}

impl Report {
    fn new(
        args: &BenchArgs,
        mode: String,
        elapsed: Duration,
        recorder: &Recorder,
        batches: Option<(proto::ModelStatus, proto::ModelStatus)>,
    ) -> Self {
        let mean_batch = batches.as_ref().map(|(before, after)| {
            let batches = after.batches_run.saturating_sub(before.batches_run);
            let rows = after.rows_run.saturating_sub(before.rows_run);
            rows as f64 / batches.max(1) as f64
        });
        let batch_sizes = batches
            .map(|(_, after)| after.batch_sizes)
            .unwrap_or_default();
        Report {
            model: args.model.clone(),
            mode,
            rows: args.rows,
            elapsed,
            sent: recorder.sent.load(Ordering::Relaxed),
            ok: recorder.ok.load(Ordering::Relaxed),
            errors: recorder.errors.lock().unwrap().clone(),
            latency_us: recorder.latency_us.lock().unwrap().clone(),
            by_rank: recorder
                .by_rank
                .lock()
                .unwrap()
                .iter()
                .map(|(&decade, histogram)| {
                    let first = 10usize.pow(decade as u32);
                    let first = if decade == 0 { 1 } else { first + 1 };
                    let last = 10usize.pow(decade as u32 + 1);
                    (format!("ranks {first}-{last}"), histogram.clone())
                })
                .collect(),
            mean_batch,
            batch_sizes,
        }
    }

    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    fn print(&self) {
        println!(
            "model {} ({}, {} row(s) per request)",
            self.model, self.mode, self.rows
        );
        println!(
            "  {} ok of {} sent in {:.1}s: {:.0} req/s, {:.0} rows/s",
            self.ok,
            self.ok + self.errors.values().sum::<u64>(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.throughput() * self.rows as f64
        );
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.percentile_ms(0.5),
            self.percentile_ms(0.9),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.latency_us.max() as f64 / 1000.0
        );
        for (ranks, latency) in &self.by_rank {
            println!(
                "  {ranks:<16} {:>8} ok, latency ms: p50 {:.3}  p99 {:.3}",
                latency.len(),
                latency.value_at_quantile(0.5) as f64 / 1000.0,
                latency.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
        for (code, count) in &self.errors {
            println!("  errors {code}: {count}");
        }
        if let Some(mean_batch) = self.mean_batch {
            println!(
                "  server: mean batch {mean_batch:.2} rows, batch size now {:?}",
                self.batch_sizes
            );
        }
    }

    /// Latency against percentile on a "nines" axis (50, 90, 99, 99.9, 99.99), as SVG.
    fn latency_svg(&self) -> String {
        const QUANTILES: [(f64, &str); 9] = [
            (0.5, "p50"),
            (0.75, "p75"),
            (0.9, "p90"),
            (0.95, "p95"),
            (0.99, "p99"),
            (0.995, "p99.5"),
            (0.999, "p99.9"),
            (0.9995, "p99.95"),
            (0.9999, "p99.99"),
        ];
        let (width, height, pad) = (640.0, 360.0, 60.0);
        let nines = |q: f64| -(1.0 - q).log10(); // 0.5 -> 0.3, 0.9999 -> 4
        let max_ms = self.percentile_ms(0.9999).max(1e-3);
        let x = |q: f64| {
            pad + (nines(q) - nines(0.5)) / (nines(0.9999) - nines(0.5)) * (width - 2.0 * pad)
        };
        let y = |ms: f64| height - pad - ms / max_ms * (height - 2.0 * pad);
        let points: Vec<String> = QUANTILES
            .iter()
            .map(|&(q, _)| format!("{:.1},{:.1}", x(q), y(self.percentile_ms(q))))
            .collect();
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n\
             <text x=\"{pad}\" y=\"24\" font-size=\"13\">{} ({}): latency by percentile, \
             {:.0} req/s</text>\n\
             <polyline fill=\"none\" stroke=\"#3b78c2\" stroke-width=\"2\" points=\"{}\"/>\n",
            self.model,
            self.mode,
            self.throughput(),
            points.join(" ")
        );
        for &(q, label) in &QUANTILES {
            let ms = self.percentile_ms(q);
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#3b78c2\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{ms:.2} ms</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n",
                x(q),
                y(ms),
                x(q) + 4.0,
                y(ms) - 6.0,
                x(q) - 8.0,
                height - pad + 18.0,
            );
        }
        svg + "</svg>\n"
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "mode": self.mode,
            "rows_per_request": self.rows,
            "seconds": self.elapsed.as_secs_f64(),
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "throughput_rps": self.throughput(),
            "latency_ms": {
                "p50": self.percentile_ms(0.5),
                "p90": self.percentile_ms(0.9),
                "p99": self.percentile_ms(0.99),
                "p999": self.percentile_ms(0.999),
                "max": self.latency_us.max() as f64 / 1000.0,
                "mean": self.latency_us.mean() / 1000.0,
            },
            "by_rank": self.by_rank.iter().map(|(ranks, latency)| serde_json::json!({
                "ranks": ranks,
                "ok": latency.len(),
                "p50_ms": latency.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": latency.value_at_quantile(0.99) as f64 / 1000.0,
            })).collect::<Vec<_>>(),
            "server": {
                "mean_batch": self.mean_batch,
                "batch_sizes": self.batch_sizes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_fall_in_decades() {
        for (rank, decade) in [(1, 0), (10, 0), (11, 1), (100, 1), (101, 2), (1001, 3)] {
            assert_eq!(rank_decade(rank), decade, "rank {rank}");
        }
    }

    #[test]
    fn variants_are_named_from_the_pattern_and_drawn_by_popularity() {
        assert!(
            Variants::new("m", 10, 1.1).is_err(),
            "no `{{}}` in the pattern"
        );
        assert!(Variants::new("m{}", 0, 1.1).is_err());
        assert!(Variants::new("m{}", 10, -1.0).is_err());
        let variants = Variants::new("m{}-v", 1000, 1.1).unwrap();
        assert_eq!(
            (variants.names[0].as_str(), variants.names[999].as_str()),
            ("m1-v", "m1000-v")
        );
        // Zipf 1.1 over 1 000: rank 1 is drawn about 16% of the time, 2 about 7%, 10 about 1%.
        let mut counts = [0u32; 11];
        for _ in 0..20_000 {
            let (rank, name) = variants.pick();
            assert_eq!(name, format!("m{rank}-v"));
            if rank <= 10 {
                counts[rank] += 1;
            }
        }
        assert!(
            counts[1] > counts[2] && counts[2] > counts[10] && counts[10] > 0,
            "{counts:?}"
        );
    }
}
