//! `sluice serve`: build the runtime, load the bundled sample models (unless told not to),
//! open the applications and their learned state, serve gRPC and HTTP until Ctrl-C or SIGTERM,
//! then drain in-flight calls.

use crate::samples::write_sample_repository;
use anyhow::{Context, Result};
use sluice_frontend::tls::TlsIdentity;
use sluice_frontend::{ConnectionLimits, Server};
use sluice_graphs::OnnxRuntime;
use sluice_runtime::{Runtime, RuntimeConfig};
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::onnx::OnnxRunners;
use sluice_serving::registry::{GraphEngine, Registry};
use sluice_serving::repository::Repository;
use sluice_serving::store::Store;
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
    /// Directory of the durable store of applications and what they learned
    /// (default: $XDG_DATA_HOME/sluice or ~/.local/share/sluice).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep applications and selection state in memory only (lost when the server stops).
    #[arg(long, conflicts_with_all = ["state_dir", "state"])]
    no_state: bool,
    /// Share applications, what they learned and the models loaded through the API with other
    /// servers, in Redis: `redis://[:PASSWORD@]HOST:PORT/DB` or `redis+unix:///PATH`
    /// (see docs/deploy.md for the Redis settings it needs).
    #[arg(long, value_name = "URL", conflicts_with = "state_dir")]
    state: Option<String>,
    /// Memory for the prediction cache, in MiB (0: no caching, identical in-flight queries
    /// are still coalesced).
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Serve both ports over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where models' compute imports (matmul, conv2d, ...) run.
    #[arg(long, value_enum, default_value_t = Compute::Auto, env = "SLUICE_COMPUTE")]
    compute: Compute,
    /// ONNX Runtime's shared library (libonnxruntime.so of release 1.22, e.g. from the
    /// `onnxruntime` wheel on PyPI), which runs models' graphs natively. Without it (and
    /// without ORT_DYLIB_PATH) the loader's search path is tried; if that fails too, models
    /// with graphs cannot load and `--onnx` graphs run in the sandbox.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    onnxruntime: Option<PathBuf>,
    /// Threads each native graph run uses (0: one per core).
    #[arg(long, default_value_t = 0)]
    graph_threads: usize,
    /// MiB of graphs (files and weights) resident at once, over all models; a load past it
    /// is refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = sluice_serving::registry::DEFAULT_GRAPH_MEMORY_BYTES >> 20)]
    graph_memory_mib: u64,
    /// Model instances this host runs at most, over all models and replicas; loads and
    /// scales beyond it are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = sluice_serving::registry::DEFAULT_MAX_INSTANCES)]
    max_instances: usize,
    /// Memory the models' instances and compiled code may hold, e.g. `8GiB` or `512MiB`;
    /// past it, idle models that may scale to zero (min_replicas = 0) lose their replicas,
    /// least recently used first, and start one again on their next request. `none`: no
    /// budget. Default: half the memory of the host (or of its cgroup, if less).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_budget)]
    memory_budget: Option<MemoryBudget>,
    /// A model loaded with a replica range (--min-replicas/--max-replicas, or min_replicas and
    /// max_replicas in its config.toml) loses a replica once one has been spare this long.
    #[arg(long, default_value_t = sluice_serving::autoscale::DEFAULT_SCALE_DOWN_AFTER.as_secs())]
    scale_down_after_s: u64,
    /// Per-user selection states each application keeps; past it the least recently
    /// updated are dropped (those users start again from the application's own state).
    #[arg(long, default_value_t = sluice_serving::selection::DEFAULT_MAX_USER_STATES)]
    max_user_states: usize,
    /// Open connections, both ports together (lowered to fit `ulimit -n`). At the limit a
    /// new connection closes the one idle the longest, or is refused if none is idle.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a new connection has to send its first request (TLS handshake included).
    #[arg(long, default_value_t = ConnectionLimits::default().header_timeout.as_secs())]
    header_timeout_s: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = ConnectionLimits::default().idle_timeout.as_secs())]
    idle_timeout_s: u64,
    /// Seconds the ports keep serving after SIGTERM or Ctrl-C while readiness already says
    /// false (so a load balancer stops sending first); then they stop accepting and drain.
    #[arg(long, default_value_t = ConnectionLimits::default().drain_delay.as_secs())]
    drain_delay_s: u64,
    /// Seconds in-flight requests get to finish at shutdown, once the ports stop accepting,
    /// before the connections still open are closed.
    #[arg(long, default_value_t = ConnectionLimits::default().drain_timeout.as_secs())]
    drain_timeout_s: u64,
    /// MiB of requests still being received, all connections together; past it a request
    /// gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = ConnectionLimits::default().request_memory >> 20)]
    request_memory_mib: usize,
    /// Seconds a request may send nothing in the middle of a message before it fails.
    #[arg(long, default_value_t = ConnectionLimits::default().body_timeout.as_secs())]
    body_timeout_s: u64,
    /// Allow admin calls from any peer that presents this token (default: loopback only).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    traces: crate::traces::TraceArgs,
}

/// The bundled components that serve ONNX graphs (for `load --onnx` and the repository).
fn onnx_runners() -> OnnxRunners {
    OnnxRunners {
        sandboxed: Some(sluice_samples::ONNX_RUNNER.into()),
        native: Some(sluice_samples::GRAPH_RUNNER.into()),
    }
}

/// Opens ONNX Runtime for models' graphs: a library named with --onnxruntime (or
/// ORT_DYLIB_PATH) must open; without one, its absence only disables native graphs.
/// `serve --memory-budget`.
#[derive(Debug, Clone, Copy)]
enum MemoryBudget {
    None,
    Bytes(u64),
}

fn parse_memory_budget(text: &str) -> Result<MemoryBudget, String> {
    if text == "none" {
        return Ok(MemoryBudget::None);
    }
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("{e}: give a size such as 8GiB or 512MiB, or `none`"))?;
    Ok(MemoryBudget::Bytes(size.as_u64()))
}

/// Half the memory of the host, or of the cgroup the server runs in when that is less (a
/// container's limit); no budget when neither can be read.
fn default_memory_budget() -> MemoryBudget {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match host.into_iter().chain(cgroup).min() {
        Some(bytes) => MemoryBudget::Bytes(bytes / 2),
        None => MemoryBudget::None,
    }
}

fn graph_engine(
    library: Option<&std::path::Path>,
    threads: usize,
    memory_mib: u64,
) -> anyhow::Result<GraphEngine> {
    let budget = memory_mib << 20;
    match OnnxRuntime::open(library, threads) {
        Ok(onnx) => {
            tracing::info!(library = %onnx.library().display(), "graphs run natively on ONNX Runtime");
            Ok(GraphEngine::new(Ok(onnx), budget))
        }
        Err(e) if library.is_some() => Err(e).context("opening --onnxruntime"),
        Err(e) => {
            tracing::info!("no native graphs: {e}");
            Ok(GraphEngine::new(Err(e.to_string()), budget))
        }
    }
}

/// `--compute`: where host compute runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Compute {
    /// A hardware GPU if there is one, else the CPU (a software rasterizer counts as a CPU:
    /// lavapipe is far slower than the CPU backend's SGEMM).
    Auto,
    /// A GPU adapter, software ones included; an error if there is none.
    Gpu,
    /// The CPU backend.
    Cpu,
}

impl From<Compute> for sluice_compute::ComputeChoice {
    fn from(choice: Compute) -> Self {
        match choice {
            Compute::Auto => sluice_compute::ComputeChoice::Auto,
            Compute::Gpu => sluice_compute::ComputeChoice::Gpu,
            Compute::Cpu => sluice_compute::ComputeChoice::Cpu,
        }
    }
}

pub(super) async fn run(args: ServeArgs) -> Result<()> {
    let exporting = crate::traces::start(&args.traces)?;
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.or_else(RuntimeConfig::default_cache_dir)
    };
    let compute = sluice_compute::select(args.compute.into()).context("opening --compute")?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: cache_dir.clone(),
        compute,
    })
    .context("starting the wasm runtime")?;
    tracing::info!(compute = runtime.compute().name(), "compute backend");
    let graphs = graph_engine(
        args.onnxruntime.as_deref(),
        args.graph_threads,
        args.graph_memory_mib,
    )?;
    let mut registry = Registry::new(Arc::new(runtime))
        .with_max_instances(args.max_instances)
        .with_scale_down_after(Duration::from_secs(args.scale_down_after_s))
        .with_graph_engine(graphs);
    match args.memory_budget.unwrap_or_else(default_memory_budget) {
        MemoryBudget::Bytes(bytes) => {
            tracing::info!(bytes, "memory budget");
            registry = registry.with_memory_budget(bytes);
        }
        MemoryBudget::None => tracing::info!("no memory budget"),
    }
    let registry = Arc::new(registry);
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
    let mut server = Server::builder(registry.clone())
        .defaults(default_limits, default_batching)
        .cache_bytes(args.cache_mib << 20)
        .onnx_runners(onnx_runners())
        .admin_token(args.admin_token);
    if let Some(dir) = repository_dir {
        let repo = Arc::new(
            Repository::new(
                dir.clone(),
                registry.clone(),
                default_limits,
                default_batching,
            )
            .with_onnx_runners(onnx_runners()),
        );
        let report = repo.sync().await?;
        tracing::info!(repository = %dir.display(), loaded = report.loaded.len(),
            failed = report.failed.len(), "model repository loaded");
        if args.repository.is_some() && !args.no_watch {
            _watcher = Some(repo.watch()?);
        }
        server = server.repository(repo);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        server = server.tls(Some(
            TlsIdentity::read(cert, key).context("--tls-cert/--tls-key")?,
        ));
    }
    let store = if args.no_state {
        Store::in_memory()
    } else if let Some(url) = &args.state {
        if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
            anyhow::bail!(
                "--state {url}: expected a Redis URL, redis://HOST:PORT/DB or redis+unix:///PATH"
            );
        }
        Store::connect(url)
            .await
            .context("--state: cannot reach Redis; is it running, and is the URL right?")?
    } else {
        let dir = args.state_dir.or_else(default_state_dir).context(
            "no --state-dir given and no home directory; pass --state-dir or --no-state",
        )?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        Store::open(&dir.join(STATE_FILE))?
    };
    // The connection limit is kept under the open-file limit: raise that to what the system
    // allows first (as Go's runtime does), so the default limit holds on a default `ulimit -n`.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
    let server = server
        .store(store)
        .max_user_states(args.max_user_states)
        .connection_limits(ConnectionLimits {
            max_connections: args.max_connections,
            header_timeout: Duration::from_secs(args.header_timeout_s),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            drain_delay: Duration::from_secs(args.drain_delay_s),
            drain_timeout: Duration::from_secs(args.drain_timeout_s),
            request_memory: args.request_memory_mib << 20,
            body_timeout: Duration::from_secs(args.body_timeout_s),
        })
        .build()
        .await?;
    tracing::info!(
        applications = server.applications().list().len(),
        "applications restored"
    );
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
    // Models loaded through the API before the last stop (on top of the repository's).
    let restored = server.restore().await?;
    for (model, reason) in &restored.failed {
        tracing::warn!(
            model,
            reason,
            "a model loaded through the API could not be restored"
        );
    }
    if !restored.loaded.is_empty() {
        tracing::info!(models = ?restored.loaded, "models loaded through the API restored");
    }
    // One signal stops both ports; each finishes its in-flight requests.
    server
        .serve(listener, http_listener, shutdown_signal())
        .await?;
    if let Some(exporting) = exporting {
        // The exporter's last batch goes out over a channel that runs on this runtime.
        tokio::task::spawn_blocking(|| exporting.stop()).await?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The store's file name inside the state directory.
const STATE_FILE: &str = "state.redb";

/// `$XDG_DATA_HOME/sluice`, else `~/.local/share/sluice`.
fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|dir| dir.join("sluice"))
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
    tracing::info!(
        "shutting down: not ready; serving for --drain-delay-s, then finishing in-flight \
         requests (up to --drain-timeout-s)"
    );
}
