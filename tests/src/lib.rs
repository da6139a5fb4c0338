//! Helpers shared by the integration tests: a real server on `127.0.0.1:0` with real
//! components (built from `sample-models/` by the host's build script), a gRPC client, and
//! the held-out digits as request tensors.

use sluice::batching::BatchingConfig;
use sluice::bundled::{SAMPLE_MODELS, SAMPLE_WASM_DIR};
use sluice::compute::Backend;
use sluice::frontend::{FrontendOptions, RunningServer};
use sluice::proto::{self, sluice_client::SluiceClient};
use sluice::registry::{LoadRequest, Registry};
use sluice::runtime::{ModelLimits, Runtime, RuntimeConfig};
use sluice::selection::Applications;
use sluice_train::Sample;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;

/// A running server and a client connected to it.
pub struct TestServer {
    /// The server (shut down with [`TestServer::shutdown`]).
    pub server: RunningServer,
    /// Its registry, for loading models without going through gRPC.
    pub registry: Arc<Registry>,
    /// Its applications, to share with a REST server.
    pub applications: Arc<Applications>,
    /// A connected client.
    pub client: SluiceClient<Channel>,
}

impl TestServer {
    /// Starts a server with no models. `cache_dir` keeps precompiled components between test
    /// runs (pass `env!("CARGO_TARGET_TMPDIR")`).
    pub async fn start(cache_dir: &str, options: FrontendOptions) -> TestServer {
        let compute = RuntimeConfig::default().compute;
        Self::start_with(cache_dir, options, compute, None).await
    }

    /// Starts a server with no models whose compute imports run on `compute`.
    pub async fn start_on(cache_dir: &str, compute: Arc<dyn Backend>) -> TestServer {
        Self::start_with(cache_dir, FrontendOptions::default(), compute, None).await
    }

    /// Starts a TLS server (`options.tls` set) with no models; the client trusts `ca_pem`
    /// and expects the name `localhost`.
    pub async fn start_tls(cache_dir: &str, options: FrontendOptions, ca_pem: &[u8]) -> TestServer {
        let compute = RuntimeConfig::default().compute;
        Self::start_with(cache_dir, options, compute, Some(ca_pem)).await
    }

    async fn start_with(
        cache_dir: &str,
        options: FrontendOptions,
        compute: Arc<dyn Backend>,
        ca_pem: Option<&[u8]>,
    ) -> TestServer {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(PathBuf::from(cache_dir).join("components")),
            compute,
        })
        .expect("runtime");
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        let options = options.with_applications(&registry);
        let applications = options.applications.clone().expect("set just above");
        let server =
            RunningServer::start("127.0.0.1:0".parse().unwrap(), registry.clone(), options)
                .await
                .expect("bind 127.0.0.1:0");
        let mut endpoint = tonic::transport::Endpoint::from_shared(server.url()).expect("a URL");
        if let Some(ca) = ca_pem {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost");
            endpoint = endpoint.tls_config(tls).expect("a TLS config");
        }
        let client = SluiceClient::new(endpoint.connect().await.expect("connect"));
        TestServer {
            server,
            registry,
            applications,
            client,
        }
    }

    /// Starts a server with the bundled digits models loaded (2 replicas each).
    pub async fn with_samples(cache_dir: &str) -> TestServer {
        Self::start(cache_dir, FrontendOptions::default())
            .await
            .load_samples()
            .await
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
                    name: Some(sample.name.to_string()),
                    version: None,
                    replicas: 2,
                    limits: ModelLimits::default(),
                    batching: BatchingConfig::default(),
                })
                .await
                .expect("load a bundled model");
        }
        server
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

    /// A new connection to the server, for other gRPC clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.server.url())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect")
    }

    /// Serves HTTP (REST) for this server's registry on an ephemeral port, until the returned
    /// sender is dropped. Pass `options` with `applications: Some(self.applications.clone())`
    /// to share the gRPC server's applications.
    pub async fn serve_http(
        &self,
        options: FrontendOptions,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sluice::frontend::rest::serve(
            listener,
            self.registry.clone(),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, stop)
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
