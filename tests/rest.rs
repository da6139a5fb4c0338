//! KServe v2 over HTTP/REST against a real server on loopback: health, metadata, JSON and
//! binary-extension inference, the protocol's error bodies, and the repository endpoints.

use crate::support::TestServer;
use serde_json::{Value, json};
use sluice_train::Digits;

fn first_rows(rows: usize) -> Vec<Vec<f32>> {
    let digits = Digits::load_default().unwrap();
    digits.holdout[..rows]
        .iter()
        .map(|s| s.pixels.clone())
        .collect()
}

#[tokio::test]
async fn health_metadata_and_json_inference() {
    let server = TestServer::with_samples().await;
    let url = server.http_url();
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{url}{path}")).send();
    assert_eq!(get("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 200);
    let meta: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(meta["name"], "sluice");
    let model: Value = get("/v2/models/digits-mlp")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        model["inputs"][0],
        json!({"name": "pixels", "datatype": "FP32", "shape": [-1, 64]})
    );
    assert_eq!(model["versions"], json!(["1"]));
    assert_eq!(
        get("/v2/models/digits-mlp/versions/1/ready")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/v2/models/digits-mlp/versions/2/ready")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(get("/v2/models/nope/ready").await.unwrap().status(), 404);

    let rows = first_rows(2);
    let request = json!({
        "id": "r1",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": rows}],
        "outputs": [{"name": "label"}],
    });
    let answer: Value = client
        .post(format!("{url}/v2/models/digits-mlp/infer"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["model_version"], "1");
    assert_eq!(
        answer["outputs"].as_array().unwrap().len(),
        1,
        "only the requested output"
    );
    let labels = answer["outputs"][0]["data"].clone();
    // The same request through gRPC gives the same labels.
    let mut grpc = server.client.clone();
    let digits = Digits::load_default().unwrap();
    let direct = grpc
        .predict(crate::support::digits_request(
            "digits-mlp",
            &digits.holdout[..2],
        ))
        .await
        .unwrap()
        .into_inner();
    let expected = crate::support::i64_values(crate::support::output(&direct, "label"));
    assert_eq!(labels, json!(expected));

    // The metrics saw these requests, in Prometheus text format.
    let response = get("/metrics").await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for needle in [
        "sluice_requests_total{model=\"digits-mlp\"}",
        "sluice_request_duration_seconds_bucket{model=\"digits-mlp\",le=",
        "sluice_batch_rows_count{model=\"digits-mlp\"}",
        "sluice_model_replicas{model=\"digits-mlp\",version=\"1\"} 2",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn binary_tensor_data_extension() {
    let server = TestServer::with_samples().await;
    let url = server.http_url();
    let rows = first_rows(1);
    let raw: Vec<u8> = rows[0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let response = reqwest::Client::new()
        .post(format!("{url}/v2/models/digits-logreg/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 40);
    let probabilities: Vec<f32> = bytes[json_length..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(probabilities.len(), 10);
    assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    server.shutdown().await;
}

#[tokio::test]
async fn errors_are_the_protocol_json_body() {
    let server = TestServer::start(|server| server.admin_token(Some("t".into())))
        .await
        .load_samples()
        .await;
    let url = server.http_url();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| client.post(format!("{url}{path}")).json(&body).send();
    let cases = [
        (
            "/v2/models/nope/infer",
            json!({"inputs": []}),
            404,
            "model `nope` is not loaded",
        ),
        (
            "/v2/models/digits-mlp/infer",
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}),
            400,
            "input `pixels`: expected shape [-1, 64]",
        ),
        (
            "/v2/models/digits-mlp/infer",
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 2], "data": ["a", 2]}]}),
            400,
            "tensor `pixels`: element 0",
        ),
        (
            "/v2/models/digits-mlp/infer",
            json!({"no": "inputs"}),
            400,
            "not a valid inference request",
        ),
        (
            // 2^40 x 2^40 elements: refused for what it is, not counted past 2^64.
            "/v2/models/digits-mlp/infer",
            json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1099511627776u64, 1099511627776u64], "data": [1, 2]}]}),
            400,
            "is invalid (dimensions are 0..2^32)",
        ),
        (
            "/v2/repository/models/digits-mlp/unload",
            json!({}),
            401,
            "admin token",
        ),
    ];
    for (path, body, status, message) in cases {
        let response = post(path, body).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let error: Value = response.json().await.unwrap();
        let text = error["error"].as_str().unwrap();
        assert!(
            text.contains(message),
            "{text:?} should contain {message:?}"
        );
    }
    server.shutdown().await;
}

/// Bodies up to 64 MiB are read (the 16 MiB of tensors a model takes, as JSON); a larger one is
/// refused with the protocol's JSON error, not plain text.
#[tokio::test]
async fn large_bodies_are_read_and_too_large_ones_refused_in_json() {
    let server = TestServer::with_samples().await;
    let client = reqwest::Client::new();
    let infer = format!("{}/v2/models/digits-logreg/infer", server.http_url());
    // Over 3 MiB of JSON (axum refuses more than 2 MiB by default): read, then judged.
    let rows = 16 * 1024;
    let data = vec![0.0f32; rows * 64];
    let body = json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [rows, 64], "data": data}]});
    assert!(serde_json::to_vec(&body).unwrap().len() > 3 << 20);
    let response = client.post(&infer).json(&body).send().await.unwrap();
    assert_ne!(response.status(), 413);
    let too_large = vec![b' '; (64 << 20) + 1];
    let response = client
        .post(&infer)
        .header("content-type", "application/json")
        .body(too_large)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 67108864 bytes"),
        "{error}"
    );
    server.shutdown().await;
}
