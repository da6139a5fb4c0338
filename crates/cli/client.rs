//! The client commands: they talk to a running server over the sluice gRPC API.

use super::ServerArgs;
use anyhow::{Context, Result, anyhow};
use sluice_api::client::{Channel, Request, Status};
use sluice_api::convert::{dtype_from_proto, tensor_from_proto, tensor_to_proto};
use sluice_api::kserve_json::{self, JsonTensor};
use sluice_api::proto::{self, load_model_request::Component, sluice_client::SluiceClient};
use sluice_frontend::MAX_MESSAGE_BYTES;
use sluice_frontend::messages::models::{batching_request_to_proto, limits_request_to_proto};
use sluice_serving::repository::config::{ModelConfigFile, Overrides};
use std::path::PathBuf;

pub(super) async fn connect(server: &ServerArgs) -> Result<SluiceClient<Channel>> {
    let client = SluiceClient::new(server.channel().await?);
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Wraps an admin call's message, adding the token if one was given.
pub(super) fn admin_request<T>(message: T, server: &ServerArgs) -> Result<Request<T>> {
    let mut request = Request::new(message);
    if let Some(token) = &server.token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the admin token contains characters not allowed in gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// JSON inputs (`{"inputs": [...]}`) as the API's tensors.
pub(super) fn proto_inputs(json: &str) -> Result<Vec<proto::Tensor>> {
    let tensors = kserve_json::parse_inputs(json).map_err(anyhow::Error::msg)?;
    Ok(tensors.into_iter().map(tensor_to_proto).collect())
}

/// The server's refusal, as an error with its code and message.
pub(super) fn refused(status: Status) -> anyhow::Error {
    anyhow!(
        "the server answered {:?}: {}",
        status.code(),
        status.message()
    )
}

/// Where `sluice load --onnx` runs the graph.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnnxRunnerArg {
    Auto,
    Native,
    Sandbox,
}

/// Arguments of `sluice load`. Settings not given here come from `--model-config`, then from
/// the server's defaults.
#[derive(Debug, clap::Args)]
pub(super) struct LoadArgs {
    /// The component file (.wasm).
    #[arg(required_unless_present = "onnx")]
    component: Option<PathBuf>,
    /// Serve an ONNX graph (weights inside) with a bundled runner instead (named after the
    /// file unless --name is given).
    #[arg(long, conflicts_with_all = ["component", "config", "server_path"])]
    onnx: Option<PathBuf>,
    /// Where an --onnx graph runs: `native` (ONNX Runtime on the server's host, through
    /// wasi:nn), `sandbox` (tract inside the sandbox: slower, and the host never parses the
    /// graph), or `auto` (native when the server has ONNX Runtime).
    #[arg(long, value_enum, default_value = "auto", requires = "onnx")]
    onnx_runner: OnnxRunnerArg,
    /// A model config file (TOML: replicas, init config, [batching], [limits]).
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// A file passed to the model's init (e.g. its trained parameters).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve under this name instead of the model's own.
    #[arg(long)]
    name: Option<String>,
    /// Serve as this version instead of the model's own.
    #[arg(long)]
    version: Option<String>,
    /// Instances to run in parallel (default 1; with --min-replicas/--max-replicas, the
    /// count to start with).
    #[arg(long)]
    replicas: Option<u32>,
    /// Size the replicas by load, from this many (needs --max-replicas; 0: an idle model
    /// scales to zero, and its next request starts a replica).
    #[arg(long, requires = "max_replicas")]
    min_replicas: Option<u32>,
    /// Size the replicas by load, up to this many (needs --min-replicas).
    #[arg(long, requires = "min_replicas")]
    max_replicas: Option<u32>,
    /// Batching: adaptive (AIMD), static (needs --batch-size) or none.
    #[arg(long, value_parser = ["adaptive", "static", "none"])]
    batching: Option<String>,
    /// Static batching: the batch size.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Adaptive batching: rows added after a full batch within the SLO.
    #[arg(long)]
    batch_step: Option<u32>,
    /// Adaptive batching: fraction cut after a batch over the SLO.
    #[arg(long)]
    backoff: Option<f64>,
    /// Latency objective in milliseconds.
    #[arg(long)]
    slo_ms: Option<u64>,
    /// Delayed batching: wait up to this many microseconds for a fuller batch.
    #[arg(long)]
    max_delay_us: Option<u64>,
    /// Requests each replica's queue may hold.
    #[arg(long)]
    queue: Option<u32>,
    /// Per-call time limit in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory limit per instance in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Largest request accepted, in bytes of input tensors.
    #[arg(long)]
    max_request_bytes: Option<u64>,
    /// Largest answer to one request, in bytes of output tensors.
    #[arg(long)]
    max_response_bytes: Option<u64>,
    /// Replace each instance with a fresh one after this many calls.
    #[arg(long)]
    max_calls_per_instance: Option<u64>,
    /// Send the path for the server to read instead of uploading the file.
    #[arg(long)]
    server_path: bool,
}

pub(super) async fn load(server: &ServerArgs, load: LoadArgs) -> Result<()> {
    let file = match &load.model_config {
        Some(path) => ModelConfigFile::read(path)?,
        None => ModelConfigFile::default(),
    };
    let settings = file.resolve(Overrides {
        replicas: load.replicas,
        min_replicas: load.min_replicas,
        max_replicas: load.max_replicas,
        config: load.config,
        mode: load.batching,
        slo_ms: load.slo_ms,
        step: load.batch_step,
        backoff: load.backoff,
        batch_size: load.batch_size,
        max_delay_us: load.max_delay_us,
        call_timeout_ms: load.timeout_ms,
        memory_mib: load.memory_mib,
        queue_capacity: load.queue,
        max_request_bytes: load.max_request_bytes,
        max_response_bytes: load.max_response_bytes,
        max_calls_per_instance: load.max_calls_per_instance,
    })?;
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (component, default_name) = match (&load.onnx, &load.component) {
        (Some(onnx), _) => (
            Component::Onnx(read(onnx)?),
            onnx.file_stem().map(|s| s.to_string_lossy().into_owned()),
        ),
        (None, Some(path)) if load.server_path => {
            let path = std::path::absolute(path)?;
            (Component::Path(path.to_string_lossy().into_owned()), None)
        }
        (None, Some(path)) => (Component::Wasm(read(path)?), None),
        (None, None) => unreachable!("clap requires a component or --onnx"),
    };
    let config = match &settings.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    let mut message = proto::LoadModelRequest {
        component: Some(component),
        config,
        name: load.name.or(default_name).unwrap_or_default(),
        version: load.version.unwrap_or_default(),
        replicas: settings.replicas,
        min_replicas: settings.autoscale.map_or(0, |r| r.min as u32),
        max_replicas: settings.autoscale.map_or(0, |r| r.max as u32),
        limits: Some(limits_request_to_proto(&settings.limits)),
        batching: Some(batching_request_to_proto(&settings.batching)),
        ..Default::default()
    };
    message.set_onnx_runner(match load.onnx_runner {
        OnnxRunnerArg::Auto => proto::load_model_request::OnnxRunner::Auto,
        OnnxRunnerArg::Native => proto::load_model_request::OnnxRunner::Native,
        OnnxRunnerArg::Sandbox => proto::load_model_request::OnnxRunner::Sandbox,
    });
    if let (Some(onnx), OnnxRunnerArg::Sandbox) = (&load.onnx, load.onnx_runner) {
        // The server compiles the sandboxed runner on its first such load: seconds.
        eprintln!(
            "loading {} with the sandboxed ONNX runner (a server compiles it on its first \
             such load, about 12 s on 2 cores, and reuses it after)",
            onnx.display()
        );
    }
    let response = connect(server)
        .await?
        .load_model(admin_request(message, server)?)
        .await
        .map_err(refused)?
        .into_inner();
    let model = response.model.context("the server sent no model status")?;
    let plural = if model.replicas == 1 { "" } else { "s" };
    println!(
        "loaded {} version {} ({} replica{plural}, batching {})",
        model.name,
        model.version,
        model.replicas,
        batching_summary(model.batching.as_ref())
    );
    Ok(())
}

pub(super) async fn scale(
    server: &ServerArgs,
    name: &str,
    version: Option<String>,
    replicas: u32,
) -> Result<()> {
    let message = proto::ScaleModelRequest {
        name: name.to_string(),
        version: version.unwrap_or_default(),
        replicas,
    };
    let model = connect(server)
        .await?
        .scale_model(admin_request(message, server)?)
        .await
        .map_err(refused)?
        .into_inner()
        .model
        .context("the server sent no model status")?;
    println!(
        "{} version {} now has {} replicas",
        model.name, model.version, model.replicas
    );
    Ok(())
}

pub(super) async fn set_version(
    server: &ServerArgs,
    name: &str,
    version: Option<String>,
) -> Result<()> {
    let message = proto::SetDefaultVersionRequest {
        name: name.to_string(),
        version: version.clone().unwrap_or_default(),
    };
    connect(server)
        .await?
        .set_default_version(admin_request(message, server)?)
        .await
        .map_err(refused)?;
    match version {
        Some(v) => println!("{name}: version {v} is now the default"),
        None => println!("{name}: the most recently loaded version is now the default"),
    }
    Ok(())
}

/// `ready`, `loading`, `failed: why`, `draining`.
fn state(m: &proto::ModelStatus) -> String {
    use proto::model_status::State;
    match State::try_from(m.state) {
        Ok(State::Ready) => "ready".into(),
        Ok(State::Loading) => "loading".into(),
        Ok(State::Failed) => format!("failed: {}", m.reason),
        Ok(State::Draining) => "draining".into(),
        Ok(State::Unloaded) => "unloaded".into(),
        _ => "?".into(),
    }
}

/// `adaptive(slo 20ms)`, `static 8`, `none`, with `+delay 500us` when delayed batching is on.
fn batching_summary(batching: Option<&proto::BatchingConfig>) -> String {
    use proto::batching_config::Mode;
    let Some(b) = batching else {
        return "?".into();
    };
    let mut summary = match Mode::try_from(b.mode) {
        Ok(Mode::Static) if b.static_batch_size == 1 => "none".to_string(),
        Ok(Mode::Static) => format!("static {}", b.static_batch_size),
        _ => format!("adaptive(slo {}ms)", b.slo_ms),
    };
    if b.max_delay_us > 0 {
        summary.push_str(&format!(" +delay {}us", b.max_delay_us));
    }
    summary
}

pub(super) async fn unload(server: &ServerArgs, name: &str, version: Option<String>) -> Result<()> {
    let message = proto::UnloadModelRequest {
        name: name.to_string(),
        version: version.unwrap_or_default(),
    };
    let response = connect(server)
        .await?
        .unload_model(admin_request(message, server)?)
        .await
        .map_err(refused)?
        .into_inner();
    println!("unloaded {name} versions {}", response.versions.join(", "));
    Ok(())
}

fn specs(specs: &[proto::TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| {
            let dtype = dtype_from_proto(s.datatype).map_or("?", |d| d.name());
            format!("{}:{dtype}{:?}", s.name, s.shape)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What of a ready version is in memory: `running`, `code-only` or `registered`.
fn residence(m: &proto::ModelStatus) -> &'static str {
    use proto::model_status::Residence;
    match Residence::try_from(m.residence) {
        Ok(Residence::Running) => "running",
        Ok(Residence::CodeOnly) => "code-only",
        Ok(Residence::Registered) => "registered",
        Ok(Residence::Unspecified) | Err(_) => "-",
    }
}

pub(super) async fn models(server: &ServerArgs, as_json: bool) -> Result<()> {
    let proto::ListModelsResponse { models, compute } = connect(server)
        .await?
        .list_models(proto::ListModelsRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if as_json {
        let rows: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "version": m.version, "default": m.is_default_version,
                    "state": state(m),
                    "replicas": m.replicas, "residence": residence(m),
                    "min_replicas": m.min_replicas, "max_replicas": m.max_replicas,
                    "max_batch": m.max_batch,
                    "batching": batching_summary(m.batching.as_ref()),
                    "batch_sizes": m.batch_sizes, "batches_run": m.batches_run,
                    "rows_run": m.rows_run,
                    "inputs": specs(&m.inputs), "outputs": specs(&m.outputs),
                    "sha256": m.component_sha256,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<9} {:>10} {:<10} {:>9}  {:<24} {:<12} {:<28} OUTPUTS",
        "NAME",
        "VERSION",
        "STATE",
        "REPLICAS",
        "RESIDENCE",
        "MAX_BATCH",
        "BATCHING",
        "BATCH_NOW",
        "INPUTS"
    );
    for m in &models {
        let version = if m.is_default_version {
            format!("{}*", m.version)
        } else {
            m.version.clone()
        };
        let live: Vec<String> = m.batch_sizes.iter().map(u32::to_string).collect();
        let state = state(m);
        if m.state != proto::model_status::State::Ready as i32 {
            println!("{:<20} {:<8} {state}", m.name, m.version);
            continue;
        }
        // An autoscaled count shows its range: `2 (1-4)`.
        let replicas = match m.max_replicas {
            0 => m.replicas.to_string(),
            max => format!("{} ({}-{max})", m.replicas, m.min_replicas),
        };
        println!(
            "{:<20} {:<8} {:<9} {:>10} {:<10} {:>9}  {:<24} {:<12} {:<28} {}",
            m.name,
            version,
            state,
            replicas,
            residence(m),
            m.max_batch,
            batching_summary(m.batching.as_ref()),
            live.join(","),
            specs(&m.inputs),
            specs(&m.outputs)
        );
    }
    println!("compute: {compute}");
    Ok(())
}

pub(super) async fn predict(
    server: &ServerArgs,
    model: &str,
    version: Option<String>,
    timeout_ms: u64,
    inputs_json: &str,
) -> Result<()> {
    let message = proto::PredictRequest {
        model: model.to_string(),
        version: version.unwrap_or_default(),
        inputs: proto_inputs(inputs_json)?,
        timeout_ms,
    };
    let response = connect(server)
        .await?
        .predict(message)
        .await
        .map_err(refused)?
        .into_inner();
    let outputs = response
        .outputs
        .into_iter()
        .map(|t| tensor_from_proto(t).map(|t| JsonTensor::from_tensor(&t)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let answer = serde_json::json!({
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
