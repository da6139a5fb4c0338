//! Request traces: one span per layer a request crosses, in OpenTelemetry's model.
//!
//! The serving layers use only the OpenTelemetry API; the binary installs the SDK with its
//! exporter and then calls [`enable`]. Until then every function here returns after one check
//! of a `OnceLock`, so a server that does not trace makes no span, reads no context and
//! allocates nothing for tracing.
//!
//! Once enabled, the frontend starts a request's root span (the sampler decides there, or the
//! caller's `traceparent` did) and runs the request with it as the current [`Context`]; each
//! layer below makes its span under the current one with [`LayerSpan::start`] and runs its
//! work inside it with [`LayerSpan::run`]. A request that is not sampled has no recording span,
//! and the layers below make none for it. Work that crosses tasks takes the context along
//! ([`in_current_context`]), and the batcher, whose worker serves many requests at once, keeps
//! each queued request's context and records its queue wait, the batch it ran in, the guest
//! call and the host calls under it, afterwards, with the times they had ([`record`]).

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use sluice_types::HasKind;
use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Instant, SystemTime};

/// The tracer of the serving layers, set once tracing is on.
static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Turns tracing on, with the tracer provider installed globally by then (`global::
/// set_tracer_provider`). It cannot be turned off again.
pub fn enable() {
    let _ = TRACER.get_or_init(|| global::tracer("sluice"));
}

/// Whether requests may be traced.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The context of the traced request this task serves, if tracing is on and the request is
/// being recorded.
pub fn current() -> Option<Context> {
    TRACER.get()?;
    let context = Context::current();
    context.span().is_recording().then_some(context)
}

/// Starts the root span of a request that reached the frontend, under `parent` (the caller's
/// span, from its `traceparent`, or an empty context). `None` when tracing is off or the
/// sampler leaves the request out.
pub fn start_request(
    parent: &Context,
    name: impl Into<Cow<'static, str>>,
    attributes: Vec<KeyValue>,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    span.is_recording().then(|| parent.with_span(span))
}

/// Adds attributes to the current request's span (the frontend's, or the layer's running
/// now); `attributes` is called only for a traced request.
pub fn annotate(attributes: impl FnOnce() -> Vec<KeyValue>) {
    if let Some(context) = current() {
        context.span().set_attributes(attributes());
    }
}

/// Marks a span failed, with the error's kind and message.
fn set_failed(context: &Context, error: &(impl HasKind + Display)) {
    let span = context.span();
    span.set_attribute(KeyValue::new("sluice.error.kind", error.kind().label()));
    span.set_status(Status::error(error.to_string()));
}

/// The span of one layer of a traced request; nothing at all for a request that is not
/// traced. It ends when dropped.
#[must_use = "the span ends when dropped"]
pub struct LayerSpan(Option<Context>);

impl LayerSpan {
    /// Starts `name` under the current span; `attributes` is called only when the request is
    /// traced.
    pub fn start(name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) -> LayerSpan {
        LayerSpan::start_under(current().as_ref(), name, attributes)
    }

    /// Starts `name` under `parent` (`None`: the request is not traced).
    pub fn start_under(
        parent: Option<&Context>,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> LayerSpan {
        let (Some(parent), Some(tracer)) = (parent, TRACER.get()) else {
            return LayerSpan(None);
        };
        let span = tracer
            .span_builder(name)
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        LayerSpan(Some(parent.with_span(span)))
    }

    /// The span's context (for the layers below), if the request is traced.
    pub fn context(&self) -> Option<&Context> {
        self.0.as_ref()
    }

    /// Adds attributes (`attributes` is called only when the request is traced).
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(context) = &self.0 {
            context.span().set_attributes(attributes());
        }
    }

    /// Marks the span failed with `error`'s kind and message.
    pub fn fail(&self, error: &(impl HasKind + Display)) {
        if let Some(context) = &self.0 {
            set_failed(context, error);
        }
    }

    /// [`LayerSpan::run`] for work that can fail: a failure marks the span failed.
    pub async fn run_or_fail<T, E: HasKind + Display>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let result = self.run(work).await;
        if let Err(error) = &result {
            self.fail(error);
        }
        result
    }

    /// Runs `work` with this span as the current one, so that the spans it makes are its
    /// children.
    pub fn run<F: Future>(&self, work: F) -> InContext<F> {
        InContext {
            work,
            context: self.0.clone(),
        }
    }
}

impl Drop for LayerSpan {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}

/// Runs `work`, wherever it is polled (a spawned task, say), in the context of the traced
/// request this task serves now.
pub fn in_current_context<F: Future>(work: F) -> InContext<F> {
    InContext {
        work,
        context: current(),
    }
}

pin_project_lite::pin_project! {
    /// A future that runs in a traced request's context (see [`LayerSpan::run`]).
    pub struct InContext<F> {
        #[pin]
        work: F,
        context: Option<Context>,
    }
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this
            .context
            .as_ref()
            .map(|context| context.clone().attach());
        this.work.poll(cx)
    }
}

/// Records a span that has already happened, from `start` to `end`, under `parent`; returns
/// its context, for the spans recorded under it.
pub fn record(
    parent: &Context,
    name: &'static str,
    start: Instant,
    end: Instant,
    attributes: Vec<KeyValue>,
) -> Context {
    let Some(tracer) = TRACER.get() else {
        return parent.clone();
    };
    let clock = Clock::now();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(clock.wall(start))
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    span.end_with_timestamp(clock.wall(end));
    parent.with_span(span)
}

/// Marks a recorded span (from [`record`]) failed.
pub fn record_failure(context: &Context, error: &(impl HasKind + Display)) {
    set_failed(context, error);
}

/// Maps the monotonic clock onto the wall clock, which spans are timed in.
struct Clock {
    monotonic: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.monotonic) {
            Some(later) => self.wall + later,
            None => self.wall - self.monotonic.duration_since(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_enabled_and_then_only_under_a_recording_span() {
        // No provider is installed in unit tests, so even once enabled the global tracer makes
        // spans that do not record: the layers below make none.
        assert!(current().is_none());
        let span = LayerSpan::start("layer", || panic!("attributes made while off"));
        assert!(span.context().is_none());
        enable();
        assert!(enabled());
        assert!(start_request(&Context::new(), "request", Vec::new()).is_none());
        assert!(current().is_none());
    }

    #[test]
    fn the_clock_maps_past_and_future_instants() {
        let clock = Clock::now();
        let second = std::time::Duration::from_secs(1);
        assert_eq!(clock.wall(clock.monotonic - second), clock.wall - second);
        assert_eq!(clock.wall(clock.monotonic + second), clock.wall + second);
    }
}
