//! Guests that run graphs natively through the standard `wasi:nn` interfaces: the MiniLM
//! sentence embedder (`sample-models/minilm`: tokenizer in the sandbox, encoder on ONNX
//! Runtime) served from a model repository, against sentence-transformers' own embeddings;
//! a graph run stopped at the call's time limit.

use crate::support::{
    TestServer, assets, link_or_copy, registry_with_graph_budget, registry_with_graphs,
};
use serde_json::{Value, json};
use sluice_api::proto::{self, load_model_request::Component};
use sluice_samples::SAMPLE_WASM_DIR;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

/// The least cosine similarity each embedding must have with sentence-transformers' own.
const MIN_COSINE: f64 = 0.999;

fn minilm_component() -> Vec<u8> {
    std::fs::read(PathBuf::from(SAMPLE_WASM_DIR).join("minilm.wasm")).expect("minilm.wasm")
}

/// A model repository holding MiniLM: the fetched weights and tokenizer, the committed
/// graph, and the component built from `sample-models/minilm`. Its deadlines are far longer
/// than the sample's own `config.toml`: this test is about the answers, on a machine busy
/// with the other tests.
fn minilm_repository() -> PathBuf {
    let root = PathBuf::from(crate::support::CACHE).join("minilm-repository");
    let version = root.join("minilm/1");
    std::fs::create_dir_all(&version).unwrap();
    for file in ["model.safetensors", "tokenizer.json", "encoder.onnx"] {
        link_or_copy(&assets().join("minilm/1").join(file), &version.join(file));
    }
    std::fs::write(version.join("model.wasm"), minilm_component()).unwrap();
    std::fs::write(
        version.join("config.toml"),
        "config = \"tokenizer.json\"\n[batching]\nslo_ms = 60000\n\
         [limits]\ncall_timeout_ms = 60000\nmemory_mib = 512\n",
    )
    .unwrap();
    root
}

/// A JSON array of numbers.
fn numbers(array: &Value) -> Vec<f64> {
    let values = array.as_array().expect("an array");
    values
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_embeds_as_sentence_transformers_does() {
    let mut server =
        TestServer::serving_repository(registry_with_graphs(), minilm_repository()).await;
    let status = server.model("minilm").await;
    assert_eq!(status.graphs, ["encoder"]);
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-models/minilm/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let rows = reference["embeddings"].as_array().unwrap();
    assert!(rows.len() >= 100, "{} reference sentences", rows.len());
    // Requests of a few sentences each, sent at once, so that the batcher runs sentences of
    // different lengths (and from different requests) padded together.
    let url = format!("{}/v2/models/minilm/infer", server.http_url());
    let client = reqwest::Client::new();
    let requests: Vec<_> = rows
        .chunks(7)
        .map(|chunk| {
            let texts: Vec<&str> = chunk.iter().map(|r| r["text"].as_str().unwrap()).collect();
            let body = json!({"inputs": [{"name": "text", "datatype": "BYTES",
                "shape": [texts.len()], "data": texts}]});
            let request = client.post(&url).json(&body).send();
            tokio::spawn(async move {
                let response = request.await.expect("infer");
                assert!(
                    response.status().is_success(),
                    "{:?}",
                    response.text().await
                );
                response.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("a request task"));
    }
    let mut compared = 0;
    for (chunk, answer) in rows.chunks(7).zip(answers) {
        let output = &answer["outputs"][0];
        assert_eq!(output["name"], "embedding");
        assert_eq!(output["shape"], json!([chunk.len(), 384]));
        let values = numbers(&output["data"]);
        for (row, ours) in chunk.iter().zip(values.chunks(384)) {
            let similarity = cosine(ours, &numbers(&row["embedding"]));
            assert!(
                similarity >= MIN_COSINE,
                "cosine {similarity} for {:?}",
                row["text"]
            );
            compared += 1;
        }
    }
    assert_eq!(compared, rows.len());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asking_for_a_graph_its_model_lacks_fails_to_load_saying_which() {
    let mut server = TestServer::start_with(registry_with_graphs(), |server| server, None).await;
    let tokenizer = std::fs::read(assets().join("minilm/1/tokenizer.json")).unwrap();
    let request = proto::LoadModelRequest {
        component: Some(Component::Wasm(minilm_component())),
        config: tokenizer,
        ..Default::default()
    };
    let status = server.client.load_model(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("no graph `encoder`: this model was loaded with no graphs"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_past_the_host_budget_are_refused_and_unloading_gives_it_back() {
    let graph = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample-models/onnx/digits-cnn.onnx"),
    )
    .unwrap();
    // Room for one copy of the graph, not two.
    let budget = graph.len() as u64 * 3 / 2;
    let mut server =
        TestServer::start_with(registry_with_graph_budget(budget), |server| server, None).await;
    let load = |name: &str| {
        let mut request = proto::LoadModelRequest {
            component: Some(Component::Onnx(graph.clone())),
            name: name.into(),
            ..Default::default()
        };
        request.set_onnx_runner(proto::load_model_request::OnnxRunner::Native);
        request
    };
    server
        .client
        .load_model(load("first"))
        .await
        .expect("one fits");
    let status = server.client.load_model(load("second")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("graph memory budget")
            && status.message().contains("--graph-memory-mib"),
        "{}",
        status.message()
    );
    server
        .client
        .unload_model(proto::UnloadModelRequest {
            name: "first".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The budget comes back once the unloaded version has drained (at once: it is idle).
    let mut loaded = false;
    for _ in 0..100 {
        if server.client.load_model(load("second")).await.is_ok() {
            loaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        loaded,
        "the unloaded model's graph memory was not given back"
    );
    server.shutdown().await;
}

/// MiniLM's encoder as an ONNX file, token ids `[rows, tokens]` of a word piece each.
fn token_ids(rows: usize, tokens: usize) -> Vec<proto::Tensor> {
    let int64 = |name: &str, value: i64| proto::Tensor {
        name: name.into(),
        datatype: proto::DataType::Int64 as i32,
        shape: vec![rows as u64, tokens as u64],
        data: std::iter::repeat_n(value.to_le_bytes(), rows * tokens)
            .flatten()
            .collect(),
    };
    vec![int64("input_ids", 2023), int64("attention_mask", 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_run_is_stopped_at_the_call_time_limit() {
    // A graph run is a host call, which the sandbox's epoch cannot interrupt.
    let root = PathBuf::from(crate::support::CACHE).join("encoder-repository");
    let version = root.join("minilm-encoder/1");
    std::fs::create_dir_all(&version).unwrap();
    for (from, to) in [
        ("encoder.onnx", "model.onnx"),
        ("model.safetensors", "model.safetensors"),
    ] {
        link_or_copy(&assets().join("minilm/1").join(from), &version.join(to));
    }
    std::fs::write(
        version.join("config.toml"),
        "replicas = 1\n[batching]\nslo_ms = 60000\n[limits]\ncall_timeout_ms = 200\n\
         memory_mib = 512\n",
    )
    .unwrap();
    let mut server = TestServer::serving_repository(registry_with_graphs(), root).await;
    let predict = |inputs| proto::PredictRequest {
        model: "minilm-encoder".into(),
        inputs,
        ..Default::default()
    };
    // 64 rows of 512 word pieces: about 6 s of encoder on two cores. Without the watchdog
    // the call would end only then (a timeout too: the guest's next epoch check traps), so
    // what tells the two apart is when it ends; the bound is far from both.
    let status = tokio::time::timeout(
        Duration::from_secs(3),
        server.client.predict(predict(token_ids(64, 512))),
    )
    .await
    .expect("the graph run was not stopped at the time limit: it ran to its end")
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("time limit"),
        "{}",
        status.message()
    );
    // The replica is replaced, the shared graph is intact: a short run answers.
    let answer = server
        .client
        .predict(predict(token_ids(1, 8)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outputs[0].shape, [1, 8, 384]);
    server.shutdown().await;
}
