//! `sluice serve`: build the runtime, load the bundled sample models (unless told not to),
//! serve gRPC until Ctrl-C or SIGTERM, then drain in-flight calls.

use crate::batching::BatchingConfig;
use crate::bundled::write_sample_repository;
use crate::frontend::{self, FrontendOptions};
use crate::registry::Registry;
use crate::repository::Repository;
use crate::runtime::{ModelLimits, Runtime, RuntimeConfig};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Address for gRPC (the sluice API and KServe v2).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// Address for HTTP (KServe v2 REST).
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_listen: SocketAddr,
    /// Serve the models in this repository: DIR/<model>/<version>/model.wasm (+ config.toml).
    #[arg(long)]
    repository: Option<PathBuf>,
    /// With --repository: load at start only, do not watch for changes (explicit mode).
    #[arg(long, requires = "repository")]
    no_watch: bool,
    /// Do not load the bundled sample models (when no --repository is given).
    #[arg(long, conflicts_with = "repository")]
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
        cache_dir: cache_dir.clone(),
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
    let repository_dir = match (&args.repository, args.no_samples) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => None,
        (None, false) => {
            // The bundled samples, written out as a repository (the same files
            // `--repository` would read).
            let dir = cache_dir
                .clone()
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("sluice-{}", std::process::id()))
                })
                .join("sample-repo");
            write_sample_repository(&dir, args.sample_replicas)
                .with_context(|| format!("writing the sample repository to {}", dir.display()))?;
            Some(dir)
        }
    };
    let mut _watcher = None;
    let mut repository = None;
    if let Some(dir) = repository_dir {
        let repo = Arc::new(Repository::new(
            dir.clone(),
            registry.clone(),
            default_limits,
            default_batching,
        ));
        let report = repo.sync().await?;
        tracing::info!(repository = %dir.display(), loaded = report.loaded.len(),
            failed = report.failed.len(), "model repository loaded");
        if args.repository.is_some() && !args.no_watch {
            _watcher = Some(repo.watch()?);
        }
        repository = Some(repo);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let http_listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    let addr = listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    tracing::info!(%addr, %http_addr, "serving gRPC (sluice.v1, inference (KServe v2), health, \
        reflection) and HTTP (KServe v2 REST)");
    // Plain lines on stdout, so scripts (and the CLI tests) learn the ports chosen for :0. A
    // closed stdout must not stop the server, so write errors are ignored.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {addr}\nhttp on {http_addr}");
        let _ = stdout.flush();
    }
    let options = FrontendOptions {
        admin_token: args.admin_token,
        default_limits,
        default_batching,
        repository,
    };
    // One signal stops both servers; each finishes its in-flight requests.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|&s| s).await;
    };
    let http = tokio::spawn(frontend::rest::serve(
        http_listener,
        registry.clone(),
        options.clone(),
        until_stopped(stopped.clone()),
    ));
    frontend::serve(listener, registry, options, until_stopped(stopped)).await?;
    http.await.context("the HTTP server task failed")??;
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
