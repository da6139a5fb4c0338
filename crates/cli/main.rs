//! The `sluice` command line: `serve` runs a server; `load`, `unload`, `models`, `predict`,
//! `apps`, `feedback` and `bench` talk to one over gRPC; `inspect` looks inside a component
//! file locally; `new` and `build` start and build a model project. The top of the crate
//! graph: it depends on every layer, and nothing depends on it.
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 bad usage.

mod apps;
mod author;
mod bench;
mod client;
mod inspect;
mod samples;
mod serve;
mod traces;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A request allocates and frees some dozens of small blocks (buffers, tensors, futures)
/// across threads: mimalloc's per-thread free lists do that in fewer instructions than
/// glibc's malloc, whose `malloc_consolidate` also walks its fast bins whenever a batch asks
/// for a larger block (docs/benchmarks.md, "KServe REST").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serve machine-learning models as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where client commands find the server.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:8001",
        global = true
    )]
    server: String,
    /// Admin token, sent as `authorization: Bearer <token>` (needed when the server has one).
    #[arg(
        long,
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate, for `https://` servers.
    #[arg(long, env = "SLUICE_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
}

impl ServerArgs {
    /// A connection to the server: plain for `http://`, TLS for `https://` (which needs
    /// `--ca-cert`).
    async fn channel(&self) -> anyhow::Result<sluice_api::client::Channel> {
        use anyhow::Context;
        let ca_pem = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the CA certificate {}", path.display()))?,
            ),
            None => None,
        };
        let options = sluice_api::client::ConnectOptions {
            ca_pem,
            tls_domain: None,
        };
        Ok(sluice_api::client::connect(&self.server, options).await?)
    }
}

/// Where a command's JSON inputs come from: {"inputs": [{"name", "datatype", "shape", "data"}]}.
#[derive(Debug, clap::Args)]
struct InputArgs {
    /// The inputs as a JSON string.
    #[arg(
        long,
        conflicts_with = "input_file",
        required_unless_present = "input_file"
    )]
    input: Option<String>,
    /// A file holding the inputs as JSON (`-` for stdin).
    #[arg(long)]
    input_file: Option<PathBuf>,
}

impl InputArgs {
    /// The JSON text.
    fn read(self) -> anyhow::Result<String> {
        match (self.input, self.input_file) {
            (Some(text), _) => Ok(text),
            (None, Some(path)) if path.as_os_str() == "-" => {
                Ok(std::io::read_to_string(std::io::stdin())?)
            }
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading inputs from {}: {e}", path.display())),
            (None, None) => unreachable!("clap requires --input or --input-file"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no flags it serves the bundled sample models on 127.0.0.1:8001.
    Serve(serve::ServeArgs),
    /// Load a component as a model on a running server.
    Load {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        load: client::LoadArgs,
    },
    /// Unload a model (all versions unless --version is given).
    Unload {
        #[command(flatten)]
        server: ServerArgs,
        /// The model's name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// List the loaded models, or change one (`sluice models scale NAME N`).
    Models {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
    /// Run a prediction. Inputs are JSON: {"inputs": [{"name", "datatype", "shape", "data"}]}.
    Predict {
        #[command(flatten)]
        server: ServerArgs,
        /// The model's name.
        model: String,
        #[command(flatten)]
        input: InputArgs,
        /// A version of the model (default: its default version).
        #[arg(long)]
        version: Option<String>,
        /// The request's deadline in milliseconds (default: the model's SLO).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
    },
    /// List applications, or register, change, query or inspect one.
    Apps {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: Option<apps::AppsAction>,
    },
    /// Give the true labels of a query on an application, so its policy learns.
    Feedback {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        feedback: apps::FeedbackArgs,
    },
    /// Show a component's imports, exports and model info without serving it.
    Inspect(inspect::InspectArgs),
    /// Start a model project (Rust, with a native unit test) that `sluice build` builds.
    New(author::NewArgs),
    /// Build a model project into a component (wasm32-wasip2, release), and check it is a model.
    Build(author::BuildArgs),
    /// Write the bundled sample models as a model repository (what `serve` with no flags serves).
    InitRepo {
        /// The directory to create or fill.
        dir: PathBuf,
        /// Replicas each sample asks for in its config.toml.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
    },
    /// Drive load against a running server and report throughput and latency.
    Bench {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        bench: bench::BenchArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// Change the number of replicas of a model while it serves.
    Scale {
        /// The model's name.
        name: String,
        /// The new number of replicas.
        replicas: u32,
        /// A version (default: the default version).
        #[arg(long)]
        version: Option<String>,
    },
    /// Make a loaded version the default (roll back or forward); without a version, return to
    /// "the most recently loaded".
    SetVersion {
        /// The model's name.
        name: String,
        /// The version.
        version: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match async_runtime(&cli.command) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The server runs on all cores. A client command runs on this thread only: it sends a few
/// calls, and a request that crosses no threads comes back sooner. `bench --threads N` asks
/// for more.
fn async_runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match command {
        Command::Serve(_) => None,
        Command::Bench { bench, .. } if bench.threads > 1 => Some(bench.threads),
        _ => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Load { server, load } => client::load(&server, load).await,
        Command::Unload {
            server,
            name,
            version,
        } => client::unload(&server, &name, version).await,
        Command::Models {
            server,
            json,
            action,
        } => match action {
            None => client::models(&server, json).await,
            Some(ModelsAction::Scale {
                name,
                replicas,
                version,
            }) => client::scale(&server, &name, version, replicas).await,
            Some(ModelsAction::SetVersion { name, version }) => {
                client::set_version(&server, &name, version).await
            }
        },
        Command::Predict {
            server,
            model,
            input,
            version,
            timeout_ms,
        } => client::predict(&server, &model, version, timeout_ms, &input.read()?).await,
        Command::Apps { server, action } => apps::run(&server, action).await,
        Command::Feedback { server, feedback } => apps::feedback(&server, feedback).await,
        Command::Inspect(args) => inspect::run(args).await,
        Command::New(args) => author::new(args),
        Command::Build(args) => author::build(args),
        Command::InitRepo { dir, replicas } => {
            samples::write_sample_repository(&dir, replicas)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", dir.display()))?;
            println!(
                "wrote the sample repository to {}; serve it with `sluice serve --repository {}`",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Bench { server, bench } => bench::run(&server, bench).await,
    }
}
