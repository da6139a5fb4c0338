//! `sluice serve`: build the runtime, load the bundled sample models (unless told not to),
//! serve gRPC until Ctrl-C or SIGTERM, then drain in-flight calls.

use crate::batching::BatchingConfig;
use crate::bundled::SAMPLE_MODELS;
use crate::frontend::{self, FrontendOptions};
use crate::registry::{LoadRequest, Registry};
use crate::runtime::{ModelLimits, Runtime, RuntimeConfig};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Address for gRPC.
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// Do not load the bundled sample models.
    #[arg(long)]
    no_samples: bool,
    /// Replicas of each bundled sample model.
    #[arg(long, default_value_t = 2)]
    sample_replicas: usize,
    /// Directory for precompiled components (default: $XDG_CACHE_HOME/sluice or ~/.cache/sluice).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile components on every load instead of caching them.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Default per-call time limit in milliseconds.
    #[arg(long, default_value_t = 1000)]
    call_timeout_ms: u64,
    /// Default memory limit per instance, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: usize,
    /// Default latency objective in milliseconds (adaptive batching keeps batches under it).
    #[arg(long, default_value_t = 100)]
    slo_ms: u64,
    /// Allow admin calls from any peer that presents this token (default: loopback only).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

pub(super) async fn run(args: ServeArgs) -> Result<()> {
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.or_else(RuntimeConfig::default_cache_dir)
    };
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    })
    .context("starting the wasm runtime")?;
    tracing::info!(compute = runtime.compute().name(), "compute backend");
    let registry = Arc::new(Registry::new(Arc::new(runtime)));
    let default_limits = ModelLimits {
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        memory_bytes: args.memory_mib << 20,
        ..ModelLimits::default()
    };
    let default_batching = BatchingConfig {
        slo: Duration::from_millis(args.slo_ms),
        ..BatchingConfig::default()
    };
    if !args.no_samples {
        for sample in SAMPLE_MODELS {
            registry
                .load(LoadRequest {
                    component: sample.component.to_vec(),
                    config: sample.config.to_vec(),
                    name: Some(sample.name.to_string()),
                    replicas: args.sample_replicas,
                    limits: default_limits,
                    batching: default_batching,
                })
                .await
                .with_context(|| format!("loading the bundled model {}", sample.name))?;
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving gRPC (sluice.v1, health, reflection)");
    // One plain line on stdout, so scripts (and the CLI tests) learn the port chosen for :0.
    println!("listening on {addr}");
    let options = FrontendOptions {
        admin_token: args.admin_token,
        default_limits,
        default_batching,
    };
    frontend::serve(listener, registry, options, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}
