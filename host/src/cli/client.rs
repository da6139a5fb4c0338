//! The client commands: they talk to a running server over the sluice gRPC API.

use super::ServerArgs;
use super::json;
use crate::frontend::MAX_MESSAGE_BYTES;
use crate::proto::{self, load_model_request::Component, sluice_client::SluiceClient};
use crate::tensor::dtype_name;
use anyhow::{Context, Result, anyhow};
use std::path::PathBuf;
use tonic::transport::Channel;

async fn connect(server: &ServerArgs) -> Result<SluiceClient<Channel>> {
    let client = SluiceClient::connect(server.server.clone())
        .await
        .with_context(|| format!("cannot reach the sluice server at {}", server.server))?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Wraps an admin call's message, adding the token if one was given.
fn admin_request<T>(message: T, server: &ServerArgs) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &server.token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the admin token contains characters not allowed in gRPC metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// The server's refusal, as an error with its code and message.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow!(
        "the server answered {:?}: {}",
        status.code(),
        status.message()
    )
}

/// Arguments of `sluice load`.
#[derive(Debug, clap::Args)]
pub(super) struct LoadArgs {
    /// The component file (.wasm).
    component: PathBuf,
    /// A file passed to the model's init (e.g. its trained parameters).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve under this name instead of the model's own.
    #[arg(long)]
    name: Option<String>,
    /// Instances to run in parallel.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Per-call time limit in milliseconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u64,
    /// Memory limit per instance in MiB (0: the server's default).
    #[arg(long, default_value_t = 0)]
    memory_mib: u64,
    /// Send the path for the server to read instead of uploading the file.
    #[arg(long)]
    server_path: bool,
}

pub(super) async fn load(server: &ServerArgs, load: LoadArgs) -> Result<()> {
    let component = if load.server_path {
        let path = std::path::absolute(&load.component)?;
        Component::Path(path.to_string_lossy().into_owned())
    } else {
        Component::Wasm(
            std::fs::read(&load.component)
                .with_context(|| format!("reading {}", load.component.display()))?,
        )
    };
    let config = match &load.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    let message = proto::LoadModelRequest {
        component: Some(component),
        config,
        name: load.name.unwrap_or_default(),
        replicas: load.replicas,
        limits: Some(proto::ModelLimits {
            call_timeout_ms: load.timeout_ms,
            memory_bytes: load.memory_mib << 20,
            queue_capacity: 0,
        }),
    };
    let response = connect(server)
        .await?
        .load_model(admin_request(message, server)?)
        .await
        .map_err(refused)?
        .into_inner();
    let model = response.model.context("the server sent no model status")?;
    let plural = if model.replicas == 1 { "" } else { "s" };
    println!(
        "loaded {} version {} ({} replica{plural})",
        model.name, model.version, model.replicas
    );
    Ok(())
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
            let dtype =
                crate::frontend::convert::dtype_from_proto(s.datatype).map_or("?", dtype_name);
            format!("{}:{dtype}{:?}", s.name, s.shape)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn models(server: &ServerArgs, as_json: bool) -> Result<()> {
    let models = connect(server)
        .await?
        .list_models(proto::ListModelsRequest {})
        .await
        .map_err(refused)?
        .into_inner()
        .models;
    if as_json {
        let rows: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "version": m.version, "default": m.is_default_version,
                    "replicas": m.replicas, "max_batch": m.max_batch,
                    "inputs": specs(&m.inputs), "outputs": specs(&m.outputs),
                    "sha256": m.component_sha256,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>8} {:>9}  {:<28} OUTPUTS",
        "NAME", "VERSION", "REPLICAS", "MAX_BATCH", "INPUTS"
    );
    for m in &models {
        let version = if m.is_default_version {
            format!("{}*", m.version)
        } else {
            m.version.clone()
        };
        println!(
            "{:<20} {:<8} {:>8} {:>9}  {:<28} {}",
            m.name,
            version,
            m.replicas,
            m.max_batch,
            specs(&m.inputs),
            specs(&m.outputs)
        );
    }
    Ok(())
}

pub(super) async fn predict(
    server: &ServerArgs,
    model: &str,
    version: Option<String>,
    inputs_json: &str,
) -> Result<()> {
    let message = proto::PredictRequest {
        model: model.to_string(),
        version: version.unwrap_or_default(),
        inputs: json::parse_inputs(inputs_json)?,
    };
    let response = connect(server)
        .await?
        .predict(message)
        .await
        .map_err(refused)?
        .into_inner();
    let outputs = response
        .outputs
        .iter()
        .map(json::decode)
        .collect::<Result<Vec<_>>>()?;
    let answer = serde_json::json!({
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
