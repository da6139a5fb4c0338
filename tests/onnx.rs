//! ONNX models served by both ONNX runners (`LoadModel` with `onnx` bytes, what `sluice load
//! --onnx` sends, and a repository's `model.onnx`): natively by ONNX Runtime through wasi:nn,
//! and by tract inside the sandbox.
//! A scikit-learn pipeline exported by skl2onnx and a small CNN, both from
//! `sample-models/onnx/export.py`: their answers on the held-out digits must equal what
//! onnxruntime (and scikit-learn) computed in Python, recorded in `expected.json`.

use crate::support::{
    CACHE, TestServer, digits_request, f32_values, i64_values, output, registry_on,
    registry_with_graphs,
};
use serde_json::Value;
use sluice_api::proto::load_model_request::OnnxRunner;
use sluice_api::proto::{self, load_model_request::Component};
use sluice_runtime::RuntimeConfig;
use sluice_train::Digits;
use std::path::PathBuf;
use tonic::Code;

/// The two exported models.
const MODELS: [&str; 2] = ["digits-sklearn", "digits-cnn"];

/// Largest difference allowed between a probability from tract in the sandbox and from
/// onnxruntime natively (expected.json keeps 7 decimals).
const TOLERANCE: f32 = 1e-5;

fn onnx_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-models/onnx")
}

/// The runner's `init` parses and optimizes the graph inside the sandbox, which takes about
/// half a second in a debug build; these tests are about answers, so a machine busy with the
/// other tests must not push it past the call limit.
fn patient() -> Option<proto::ModelLimits> {
    Some(proto::ModelLimits {
        call_timeout_ms: 20_000,
        ..Default::default()
    })
}

fn load_request(file: &str) -> proto::LoadModelRequest {
    proto::LoadModelRequest {
        component: Some(Component::Onnx(
            std::fs::read(onnx_dir().join(file)).unwrap(),
        )),
        name: file.trim_end_matches(".onnx").into(),
        replicas: 1,
        limits: patient(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_models_answer_as_onnxruntime_does_in_the_sandbox() {
    // No graph engine: `auto` runs the graphs in the sandbox.
    let server = TestServer::start(|server| server).await;
    answers_as_onnxruntime(server, OnnxRunner::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_models_answer_as_onnxruntime_does_natively() {
    let server = TestServer::start_with(registry_with_graphs(), |server| server, None).await;
    answers_as_onnxruntime(server, OnnxRunner::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_runner_needs_onnx_runtime_on_the_server() {
    let mut server = TestServer::start(|server| server).await;
    let mut request = load_request("digits-cnn.onnx");
    request.set_onnx_runner(OnnxRunner::Native);
    let status = server.client.load_model(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("ONNX Runtime is not available")
            && status.message().contains("--onnxruntime"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

async fn answers_as_onnxruntime(mut server: TestServer, runner: OnnxRunner) {
    for name in MODELS {
        let mut request = load_request(&format!("{name}.onnx"));
        request.set_onnx_runner(runner);
        server
            .client
            .load_model(request)
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    answers_as_expected(server, runner == OnnxRunner::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_serves_onnx_files_natively_or_in_the_sandbox() {
    for native in [true, false] {
        // With ONNX Runtime the graphs run natively; without it, in the sandbox.
        let registry = if native {
            registry_with_graphs()
        } else {
            registry_on(RuntimeConfig::default().compute)
        };
        let dir = PathBuf::from(CACHE).join(format!("onnx-repository-{native}"));
        let _ = std::fs::remove_dir_all(&dir);
        for name in MODELS {
            let version = dir.join(name).join("1");
            std::fs::create_dir_all(&version).unwrap();
            std::fs::copy(
                onnx_dir().join(format!("{name}.onnx")),
                version.join("model.onnx"),
            )
            .unwrap();
            std::fs::write(
                version.join("config.toml"),
                "replicas = 1\n[limits]\ncall_timeout_ms = 20000\n",
            )
            .unwrap();
        }
        let server = TestServer::serving_repository(registry, dir).await;
        answers_as_expected(server, native).await;
    }
}

/// Checks what the two loaded models declare and answer against onnxruntime's and
/// scikit-learn's answers.
async fn answers_as_expected(mut server: TestServer, native: bool) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(onnx_dir().join("expected.json")).unwrap())
            .unwrap();
    let digits = Digits::load_default().unwrap();
    for name in MODELS {
        let status = server.model(name).await;
        assert_eq!(
            status.graphs,
            if native {
                vec!["model".to_string()]
            } else {
                vec![]
            }
        );
        let pixels = &status.inputs[0];
        assert_eq!(
            (pixels.name.as_str(), pixels.shape.as_slice()),
            ("pixels", &[-1, 64][..])
        );
        let names: Vec<&str> = status.outputs.iter().map(|o| o.name.as_str()).collect();
        assert!(
            names.contains(&"label") && names.contains(&"probabilities"),
            "{names:?}"
        );
        let want = &expected["models"][name];
        let mut row = 0;
        // Batches of different sizes: the graph's batch dimension is symbolic.
        for batch in digits.holdout.chunks(47) {
            let answer = server
                .client
                .predict(digits_request(name, batch))
                .await
                .unwrap()
                .into_inner();
            let labels = i64_values(output(&answer, "label"));
            let probabilities = f32_values(output(&answer, "probabilities"));
            for (i, label) in labels.iter().enumerate() {
                assert_eq!(
                    *label,
                    want["labels"][row + i].as_i64().unwrap(),
                    "{name} row {}",
                    row + i
                );
                for class in 0..10 {
                    let theirs = want["probabilities"][row + i][class].as_f64().unwrap() as f32;
                    let ours = probabilities[i * 10 + class];
                    assert!(
                        (ours - theirs).abs() <= TOLERANCE,
                        "{name} row {} class {class}: {ours} vs onnxruntime's {theirs}",
                        row + i
                    );
                }
            }
            row += batch.len();
        }
        assert_eq!(row, expected["held_out_rows"].as_u64().unwrap() as usize);
    }
    // The pipeline's labels are scikit-learn's own, too.
    let answer = server
        .client
        .predict(digits_request("digits-sklearn", &digits.holdout))
        .await
        .unwrap()
        .into_inner();
    let sklearn: Vec<i64> = expected["sklearn_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(i64_values(output(&answer, "label")), sklearn);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_onnx_is_refused_with_the_reason() {
    let mut server = TestServer::start(|server| server).await;
    let garbage = proto::LoadModelRequest {
        component: Some(Component::Onnx(b"not a graph".to_vec())),
        name: "garbage".into(),
        limits: patient(),
        ..Default::default()
    };
    let status = server.client.load_model(garbage).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not a readable ONNX graph"),
        "{}",
        status.message()
    );
    let mut with_config = load_request("digits-cnn.onnx");
    with_config.config = b"extra".to_vec();
    let status = server.client.load_model(with_config).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("config:"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

/// The two operators skl2onnx emits unless told not to (ZipMap for a classifier's
/// probabilities, Scaler for a StandardScaler) are not in the sandboxed runner: the load says
/// which export option avoids each, and that the native runner has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_the_sandbox_lacks_is_refused_with_the_export_option_that_avoids_it() {
    let mut server = TestServer::start(|server| server).await;
    for (file, option) in [
        ("zipmap.onnx", r#"{"zipmap": False}"#),
        ("scaler.onnx", r#"{"div": "div"}"#),
    ] {
        let mut request = load_request(file);
        request.set_onnx_runner(OnnxRunner::Sandbox);
        let status = server.client.load_model(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        for said in [option, "--onnx-runner native"] {
            assert!(
                status.message().contains(said),
                "{file}: {}",
                status.message()
            );
        }
    }
    server.shutdown().await;
}
