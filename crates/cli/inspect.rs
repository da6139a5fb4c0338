//! `sluice inspect`: what a component imports and exports, and, if it implements the model
//! world, the model's own description, all without a server; with `--input`, a self-check:
//! one prediction, with the answer checked against what `info()` declares, as a server would.

use anyhow::{Context, Result, anyhow};
use sluice_api::kserve_json::{self, JsonTensor};
use sluice_runtime::{GraphSet, InstanceLimits, InstanceRecipe, Replica, Runtime, RuntimeConfig};
use sluice_types::contract;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `sluice inspect`.
#[derive(Debug, clap::Args)]
pub(super) struct InspectArgs {
    /// The component file (.wasm).
    component: PathBuf,
    /// The config to pass to init (some models describe themselves only once initialised).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also run one prediction on these inputs (JSON, as for `sluice predict`) and check the
    /// answer against the declared outputs.
    #[arg(long)]
    input: Option<String>,
}

pub(super) async fn run(args: InspectArgs) -> Result<()> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let config = match &args.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    let input = args.input;
    tokio::task::spawn_blocking(move || inspect(&bytes, config, input.as_deref())).await?
}

fn inspect(bytes: &[u8], config: Vec<u8>, input: Option<&str>) -> Result<()> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let surface = runtime.inspect(bytes)?;
    println!("imports:");
    surface.imports.iter().for_each(|i| println!("  {i}"));
    println!("exports:");
    surface.exports.iter().for_each(|e| println!("  {e}"));
    let component = runtime.load_component(bytes)?;
    println!("sha256: {}", component.sha256);
    let recipe = InstanceRecipe {
        component,
        model: "inspect".into(),
        config: config.into(),
        limits: InstanceLimits::default(),
        compute: runtime.compute().clone(),
        // Without its graphs: a model that loads one in init cannot be inspected here.
        graphs: GraphSet::default(),
        on_replace: Arc::new(|_, _| {}),
    };
    let mut replica = Replica::new(recipe).context(
        "the component implements the model world, but its init failed (pass --config if it needs one)",
    )?;
    let info = replica
        .info()
        .context("the component implements the model world, but could not describe itself")?;
    println!("model: {} version {}", info.name, info.version);
    println!("max batch: {}", info.max_batch);
    for (role, specs) in [("input", &info.inputs), ("output", &info.outputs)] {
        for s in specs {
            println!("{role}: {} {} {:?}", s.name, s.dtype.name(), s.shape);
        }
    }
    contract::check_info(&info)
        .map_err(|e| anyhow!("a server would refuse to load this model: {e}"))?;
    let Some(input) = input else {
        return Ok(());
    };
    let tensors = kserve_json::parse_inputs(input).map_err(anyhow::Error::msg)?;
    let (inputs, batch) = contract::check_inputs(&info, tensors)
        .map_err(|e| anyhow!("the input does not fit the model's info(): {e}"))?;
    let (_, answer) = replica.predict(inputs);
    let outputs = answer.context("the prediction failed")?;
    contract::check_outputs(&info, &outputs, batch).map_err(|e| {
        anyhow!("the model's answer breaks its own info() (a server answers INTERNAL): {e}")
    })?;
    let outputs: Vec<JsonTensor> = outputs.iter().map(JsonTensor::from_tensor).collect();
    println!("self-check passed; outputs:");
    println!("{}", serde_json::to_string_pretty(&outputs)?);
    Ok(())
}
