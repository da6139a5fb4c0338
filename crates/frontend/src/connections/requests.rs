//! The tower layer both ports' services run under: a request keeps its connection busy until
//! its response ends, and the bytes of its message still arriving are charged to the budget
//! every connection shares, with a deadline on silence.

use super::Connections;
use super::listener::Peer;
use crate::error::ApiError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of messages still being received, over every connection and stream.
pub(crate) struct RequestBudget {
    limit: usize,
    used: AtomicUsize,
}

impl RequestBudget {
    pub(crate) fn new(limit: usize) -> RequestBudget {
        RequestBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    fn try_take(&self, bytes: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .map(drop)
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// How a protocol's bodies are split into messages, and how it answers a refused request.
pub(crate) trait Protocol: Clone + Send + Sync + 'static {
    /// The body type of its requests and responses.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static;
    /// Whether a body is a stream of length-prefixed gRPC messages (else it is one message).
    const GRPC_FRAMING: bool;
    /// Boxes a body.
    fn wrap(body: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> Self::Body;
    /// The answer to a request refused for `error`.
    fn refusal(error: ApiError) -> http::Response<Self::Body>;
    /// The answer as it leaves (a protocol may correct what the stack below said).
    fn finish(response: http::Response<Self::Body>) -> http::Response<Self::Body> {
        response
    }
    /// The request's connection.
    fn peer<B>(request: &http::Request<B>) -> Option<&Peer>;
}

/// The layer.
#[derive(Clone)]
pub(crate) struct Limited<P> {
    connections: Arc<Connections>,
    protocol: std::marker::PhantomData<P>,
}

impl<P> Limited<P> {
    pub(crate) fn new(connections: Arc<Connections>) -> Self {
        Limited {
            connections,
            protocol: std::marker::PhantomData,
        }
    }
}

impl<S, P> tower::Layer<S> for Limited<P>
where
    P: Protocol,
{
    type Service = LimitedService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitedService {
            inner,
            connections: self.connections.clone(),
            protocol: std::marker::PhantomData,
        }
    }
}

/// The layer's service.
#[derive(Clone)]
pub(crate) struct LimitedService<S, P> {
    inner: S,
    connections: Arc<Connections>,
    protocol: std::marker::PhantomData<P>,
}

impl<S, P> tower::Service<http::Request<P::Body>> for LimitedService<S, P>
where
    P: Protocol,
    S: tower::Service<http::Request<P::Body>, Response = http::Response<P::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<P::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<P::Body>) -> Self::Future {
        let in_flight = P::peer(&request).map(|peer| peer.0.start_request());
        let refused = Arc::new(OnceLock::new());
        let connections = self.connections.clone();
        let request = request.map(|body| {
            P::wrap(Metered {
                inner: Some(body),
                connections,
                held: 0,
                framing: if P::GRPC_FRAMING {
                    Framing::Grpc(GrpcFraming::default())
                } else {
                    Framing::Whole
                },
                silence: None,
                refused: refused.clone(),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(error) = refused.get() {
                return Ok(P::refusal(error.clone()));
            }
            let response = response.map(|body| {
                P::wrap(InFlightBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            });
            Ok(P::finish(response))
        })
    }
}

/// Where a body's messages end.
enum Framing {
    /// gRPC: messages with a 1-byte flag and a 4-byte big-endian length.
    Grpc(GrpcFraming),
    /// The whole body is one message.
    Whole,
}

/// A gRPC message stream's position.
#[derive(Default)]
struct GrpcFraming {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message's payload still to come.
    payload_left: usize,
    /// Bytes of the current message received so far, prefix included.
    unfinished: usize,
}

impl GrpcFraming {
    /// Reads `data`; returns the bytes of the message still unfinished after it.
    fn advance(&mut self, mut data: &[u8]) -> usize {
        while !data.is_empty() {
            let taken = if self.payload_left == 0 {
                let taken = (5 - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + taken]
                    .copy_from_slice(&data[..taken]);
                self.prefix_len += taken;
                self.unfinished += taken;
                if self.prefix_len == 5 {
                    self.prefix_len = 0;
                    let length = u32::from_be_bytes(self.prefix[1..5].try_into().expect("4 bytes"));
                    self.payload_left = length as usize;
                    if length == 0 {
                        self.unfinished = 0;
                    }
                }
                taken
            } else {
                let taken = self.payload_left.min(data.len());
                self.payload_left -= taken;
                self.unfinished += taken;
                if self.payload_left == 0 {
                    self.unfinished = 0;
                }
                taken
            };
            data = &data[taken..];
        }
        self.unfinished
    }
}

/// A request body whose unfinished message is charged to the shared budget.
struct Metered<B> {
    inner: Option<B>,
    connections: Arc<Connections>,
    /// Bytes charged to the budget now.
    held: usize,
    framing: Framing,
    /// Armed while the reader waits on an unfinished message.
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    refused: Arc<OnceLock<ApiError>>,
}

impl<B> Metered<B> {
    fn budget(&self) -> &RequestBudget {
        &self.connections.budget
    }

    /// Charges or returns the difference when `unfinished` bytes are held.
    fn hold(&mut self, unfinished: usize) -> Result<(), ApiError> {
        if unfinished > self.held {
            self.budget()
                .try_take(unfinished - self.held)
                .map_err(|used| {
                    let limit = self.connections.limits().request_memory;
                    ApiError::resource_exhausted(format!(
                        "the server holds {used} bytes of requests still arriving, and this one \
                     would take it past the limit of {limit} bytes for all connections \
                     together; retry later"
                    ))
                })?;
        } else {
            self.budget().give_back(self.held - unfinished);
        }
        self.held = unfinished;
        Ok(())
    }

    fn refuse(&mut self, error: ApiError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let message = error.message.clone();
        let _ = self.refused.set(error);
        self.hold(0).expect("returning bytes cannot fail");
        self.inner = None;
        Poll::Ready(Some(Err(message.into())))
    }

    fn waiting_on_a_message(&self) -> bool {
        match &self.framing {
            Framing::Grpc(grpc) => grpc.unfinished > 0,
            Framing::Whole => true,
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                if !this.waiting_on_a_message() {
                    this.silence = None;
                    return Poll::Pending;
                }
                let timeout = this.connections.limits().body_timeout;
                let silence = this
                    .silence
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(silence.as_mut().poll(cx));
                this.refuse(ApiError::deadline_exceeded(format!(
                    "the request sent nothing for {timeout:?} in the middle of a message; \
                     the server stopped waiting for the rest"
                )))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.silence = None;
                if let Some(data) = frame.data_ref() {
                    let unfinished = match &mut this.framing {
                        Framing::Grpc(grpc) => grpc.advance(data),
                        Framing::Whole => this.held + data.len(),
                    };
                    if let Err(error) = this.hold(unfinished) {
                        return this.refuse(error);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.hold(0).expect("returning bytes cannot fail");
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.budget().give_back(self.held);
    }
}

/// A response body that keeps its request counted in flight until it ends.
struct InFlightBody<B> {
    inner: B,
    _in_flight: Option<super::InFlight>,
}

impl<B> Body for InFlightBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend((payload as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, payload));
        bytes
    }

    #[test]
    fn grpc_framing_counts_only_the_unfinished_message() {
        let mut framing = GrpcFraming::default();
        let two = [message(10), message(4)].concat();
        assert_eq!(framing.advance(&two[..3]), 3, "inside the first prefix");
        assert_eq!(framing.advance(&two[3..12]), 12);
        assert_eq!(
            framing.advance(&two[12..17]),
            2,
            "the first ended, the second began"
        );
        assert_eq!(framing.advance(&two[17..]), 0, "both complete");
        assert_eq!(
            framing.advance(&message(0)),
            0,
            "an empty message is complete"
        );
    }

    #[test]
    fn the_budget_refuses_what_would_pass_the_limit_and_takes_returns() {
        let budget = RequestBudget::new(100);
        budget.try_take(60).unwrap();
        assert_eq!(budget.try_take(41), Err(60));
        budget.give_back(60);
        budget.try_take(100).unwrap();
    }
}
