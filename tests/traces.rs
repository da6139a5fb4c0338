//! Request traces exported over OTLP to a real receiver (built here on the OTLP protobufs),
//! from a `sluice serve` process: tracing is process-wide, so it is not turned on in this
//! test binary.

use crate::cli::{SLUICE, Server, fresh_dir, repo_file, stdout};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Starts receiving on a port of the system's choosing; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// The spans of trace `trace_id` (hex), once `enough` says they have all arrived.
    async fn trace(&self, trace_id: &str, enough: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let id = hex_decode(trace_id);
        for _ in 0..100 {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == id)
                .cloned()
                .collect();
            if enough(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<String> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        panic!("trace {trace_id} never arrived in full; the receiver has spans {names:?}")
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A string or integer attribute of `span`.
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::ArrayValue(array) => Some(
            array
                .values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(format!("{other:?}")),
    }
}

/// Asserts that `span` has the attribute `key` with the value `expected`.
fn has(span: &Span, key: &str, expected: &str) {
    assert_eq!(
        attribute(span, key).as_deref(),
        Some(expected),
        "`{}`'s `{key}`",
        span.name
    );
}

/// The one span named `name` among `spans`.
fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(found.len(), 1, "one `{name}` span expected among {names:?}");
    found[0]
}

/// Asserts that `child` is a child of `parent` and lies within it in time.
fn is_child(child: &Span, parent: &Span) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "`{}` should be a child of `{}`",
        child.name, parent.name
    );
    assert!(
        child.start_time_unix_nano >= parent.start_time_unix_nano
            && child.end_time_unix_nano <= parent.end_time_unix_nano,
        "`{}` should lie within `{}` in time",
        child.name,
        parent.name
    );
}

/// POSTs JSON `body` to `url` under the caller's span `traceparent`.
async fn post_traced(
    http: &reqwest::Client,
    url: &str,
    traceparent: &str,
    body: &[u8],
) -> reqwest::Response {
    http.post(url)
        .header("traceparent", traceparent)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// A caller's span: W3C `traceparent`, sampled or not.
fn traceparent(trace_id: &str, span_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{span_id}-{}",
        if sampled { "01" } else { "00" }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_traces_with_a_span_per_layer_under_the_callers_span() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let server = tokio::task::spawn_blocking(move || {
        let state = fresh_dir("tracing-state");
        let mut command = Command::new(SLUICE);
        // Export every 100 ms instead of every 5 s.
        command.env("OTEL_BSP_SCHEDULE_DELAY", "100");
        let server = Server::spawn(command, &state, &["--otlp-endpoint", &endpoint]);
        // digits-mlp does its matrix products through the host's `compute` interface.
        stdout(&server.run(&[
            "apps",
            "create",
            "traced",
            "--models",
            "digits-mlp",
            "--policy",
            "exp3",
            "--slo-ms",
            "2000",
        ]));
        server
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let body = std::fs::read(repo_file("docs/examples/digit-0.json")).unwrap();
    let predict = format!("{}/sluice/v1/apps/traced/predict", server.http_url);

    // An application request over HTTP, under a caller's sampled span.
    let (trace_id, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let answer = post_traced(&http, &predict, &traceparent(trace_id, caller, true), &body).await;
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
    let spans = receiver
        .trace(trace_id, |spans| {
            spans.iter().any(|s| s.name.starts_with("POST "))
                && spans.iter().any(|s| s.name.starts_with("compute."))
        })
        .await;
    let root = named(&spans, "POST /sluice/v1/apps/traced/predict");
    assert_eq!(
        root.parent_span_id,
        hex_decode(caller),
        "the root joins the caller's span"
    );
    has(root, "sluice.application", "traced");
    has(root, "http.response.status_code", "200");
    let selection = named(&spans, "selection");
    is_child(selection, root);
    has(selection, "sluice.policy", "exp3");
    has(selection, "sluice.models", "digits-mlp");
    let cache = named(&spans, "cache");
    is_child(cache, selection);
    has(cache, "sluice.cache.lookup", "miss");
    let model = named(&spans, "model");
    is_child(model, cache);
    has(model, "sluice.model", "digits-mlp");
    let queue = named(&spans, "queue");
    is_child(queue, model);
    let batch = named(&spans, "batch");
    is_child(batch, model);
    has(batch, "sluice.batch.rows", "1");
    assert!(attribute(batch, "sluice.replica").is_some());
    let guest = named(&spans, "guest predict");
    is_child(guest, batch);
    let host_calls: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("compute."))
        .collect();
    assert!(
        host_calls.iter().any(|s| s.name == "compute.matmul"),
        "{host_calls:?}"
    );
    host_calls.iter().for_each(|call| is_child(call, guest));

    // The same query again: the cache answers, and the trace says so.
    let again = "5bf92f3577b34da6a3ce929d0e0e4737";
    post_traced(&http, &predict, &traceparent(again, caller, true), &body).await;
    let spans = receiver
        .trace(again, |spans| {
            spans.iter().any(|s| s.name.starts_with("POST "))
        })
        .await;
    assert_eq!(
        attribute(named(&spans, "cache"), "sluice.cache.lookup").as_deref(),
        Some("hit")
    );
    assert!(
        spans.iter().all(|s| s.name != "batch"),
        "a cache hit runs no batch"
    );

    // A model over gRPC, with the caller's span in the metadata.
    let grpc_trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let mut client = sluice_api::proto::sluice_client::SluiceClient::connect(server.url.clone())
        .await
        .unwrap();
    let digits = sluice_train::Digits::load_default().expect("the digits data");
    let mut request = tonic::Request::new(crate::support::digits_request(
        "digits-mlp",
        &digits.holdout[..2],
    ));
    request.metadata_mut().insert(
        "traceparent",
        traceparent(grpc_trace, caller, true).parse().unwrap(),
    );
    client.predict(request).await.unwrap();
    let spans = receiver
        .trace(grpc_trace, |spans| {
            spans.iter().any(|s| s.name.ends_with("/Predict"))
        })
        .await;
    let root = named(&spans, "sluice.v1.Sluice/Predict");
    assert_eq!(root.parent_span_id, hex_decode(caller));
    has(root, "rpc.system", "grpc");
    has(root, "sluice.model", "digits-mlp");
    let batch = named(&spans, "batch");
    is_child(batch, named(&spans, "model"));
    has(batch, "sluice.batch.rows", "2");

    // A caller that did not sample its trace: nothing of it is exported.
    let unsampled = "7bf92f3577b34da6a3ce929d0e0e4739";
    post_traced(
        &http,
        &format!("{}/v2/models/digits-mlp/infer", server.http_url),
        &traceparent(unsampled, caller, false),
        &body,
    )
    .await;
    // One more sampled request after it: once its spans are in, the earlier ones would be.
    let last = "8bf92f3577b34da6a3ce929d0e0e473a";
    post_traced(&http, &predict, &traceparent(last, caller, true), &body).await;
    receiver
        .trace(last, |spans| {
            spans.iter().any(|s| s.name.starts_with("POST "))
        })
        .await;
    let id = hex_decode(unsampled);
    assert!(
        receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.trace_id != id),
        "an unsampled caller's request was traced"
    );
    let mut server = server;
    assert!(server.stop().success());
}

#[test]
fn tracing_flags_are_checked() {
    let state = fresh_dir("tracing-flags");
    let refused = |flags: &[&str], expected: &str| {
        let output = Command::new(SLUICE)
            .args([
                "serve",
                "--no-samples",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(&state)
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{flags:?}: {stderr}"
        );
    };
    refused(
        &[
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--trace-sampling",
            "1.5",
        ],
        "expected a fraction from 0 to 1",
    );
    refused(
        &["--otlp-endpoint", "collector:4317"],
        "expected http://HOST:PORT",
    );
}
