//! `sluice inspect`: what a component imports and exports, and, if it implements the model
//! world, the model's own description, all without a server.

use anyhow::{Context, Result};
use sluice_runtime::{GraphSet, InstanceLimits, InstanceRecipe, Replica, Runtime, RuntimeConfig};
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
}

pub(super) async fn run(args: InspectArgs) -> Result<()> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let config = match &args.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    tokio::task::spawn_blocking(move || inspect(&bytes, config)).await?
}

fn inspect(bytes: &[u8], config: Vec<u8>) -> Result<()> {
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
    let info = Replica::new(recipe)
        .and_then(|mut replica| replica.info())
        .context("the component implements the model world, but could not describe itself (pass --config if its init needs one)")?;
    println!("model: {} version {}", info.name, info.version);
    println!("max batch: {}", info.max_batch);
    for (role, specs) in [("input", &info.inputs), ("output", &info.outputs)] {
        for s in specs {
            println!("{role}: {} {} {:?}", s.name, s.dtype.name(), s.shape);
        }
    }
    Ok(())
}
