//! The root span of a traced request: a tower layer on both ports' services.
//!
//! When tracing is on ([`sluice_serving::telemetry::enabled`]), a request that serves
//! inference or changes state (any gRPC call except health and reflection; any HTTP `POST`)
//! gets a server span under the caller's span, read from its W3C `traceparent` header (gRPC
//! metadata travels as HTTP/2 headers, so one extractor serves both protocols). The request's
//! handler then runs with that span current, so the serving layers' spans become its children,
//! and the handlers add what only they know (the model or application asked for). The span
//! ends when the response's headers are ready, with the HTTP status, or the gRPC status when
//! the call failed before any message (a failed unary call always does).
//!
//! Off, the layer passes each request through with one check of a `OnceLock`.

use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use sluice_serving::telemetry;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// The layer; `grpc` says which port it serves (their spans are named differently).
#[derive(Clone, Copy)]
pub(crate) struct Traced {
    grpc: bool,
}

impl Traced {
    pub(crate) fn grpc() -> Traced {
        Traced { grpc: true }
    }

    pub(crate) fn http() -> Traced {
        Traced { grpc: false }
    }
}

impl<S> tower::Layer<S> for Traced {
    type Service = TracedService<S>;

    fn layer(&self, inner: S) -> TracedService<S> {
        TracedService {
            inner,
            grpc: self.grpc,
        }
    }
}

/// The layer's service.
#[derive(Clone)]
pub(crate) struct TracedService<S> {
    inner: S,
    grpc: bool,
}

impl<S, B, R> tower::Service<http::Request<B>> for TracedService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TracedResponse<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = telemetry::enabled()
            .then(|| root_span(&request, self.grpc))
            .flatten();
        TracedResponse {
            response: self.inner.call(request),
            span,
            grpc: self.grpc,
        }
    }
}

/// Starts the root span of `request`, if it is one that is traced and the sampler keeps it.
fn root_span<B>(request: &http::Request<B>, grpc: bool) -> Option<Context> {
    let path = request.uri().path();
    let (name, attributes) = if grpc {
        let rpc = path.trim_start_matches('/');
        if rpc.starts_with("grpc.health.") || rpc.starts_with("grpc.reflection.") {
            return None;
        }
        let (service, method) = rpc.split_once('/').unwrap_or((rpc, ""));
        let attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_string()),
            KeyValue::new("rpc.method", method.to_string()),
        ];
        (rpc.to_string(), attributes)
    } else {
        if request.method() != http::Method::POST {
            return None;
        }
        let attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", path.to_string()),
        ];
        (format!("POST {path}"), attributes)
    };
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    telemetry::start_request(&parent, name, attributes)
}

/// Reads trace context from HTTP headers (and so from gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

pin_project_lite::pin_project! {
    /// The response of a request, polled with its span current; ends the span when ready.
    pub(crate) struct TracedResponse<F> {
        #[pin]
        response: F,
        span: Option<Context>,
        grpc: bool,
    }
}

impl<F, R, E> Future for TracedResponse<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(span) = this.span else {
            return this.response.poll(cx);
        };
        let entered = span.clone().attach();
        let ready = this.response.poll(cx);
        drop(entered);
        if let Poll::Ready(result) = &ready {
            if let Ok(response) = result {
                record_status(span, response, *this.grpc);
            }
            span.span().end();
        }
        ready
    }
}

/// gRPC codes that are the server's failure, not the caller's (OpenTelemetry's rule for
/// server spans): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_FAILURES: [i64; 6] = [2, 4, 12, 13, 14, 15];

fn record_status<R>(span: &Context, response: &http::Response<R>, grpc: bool) {
    let span = span.span();
    if !grpc {
        let code = response.status();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(code.as_u16()),
        ));
        if code.is_server_error() {
            span.set_status(Status::error(code.to_string()));
        }
        return;
    }
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
    if let Some(code) = code {
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
        if GRPC_SERVER_FAILURES.contains(&code) {
            let message = response
                .headers()
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            span.set_status(Status::error(message.to_string()));
        }
    }
}
