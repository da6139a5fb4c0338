//! Asking models for their answers: one task per model, each served by the prediction cache
//! or by the model's batching queue, collected until a deadline. A straggler's task runs on
//! past the deadline and fills the cache for the feedback to come.

use super::app::{ApplicationSpec, read_predictions, split_link};
use super::policy::Prediction;
use crate::batching::BatchError;
use crate::cache::{CacheKey, InputDigest, Lookup, PredictionCache};
use crate::metrics;
use crate::registry::{Registry, RegistryError};
use crate::telemetry;
use opentelemetry::KeyValue;
use sluice_runtime::CallError;
use sluice_types::Tensor;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why a model gave no answer.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// The model refused the request's inputs (the request's fault).
    BadRequest(String),
    /// The model failed, or its answer could not be read.
    Model(String),
}

impl Failure {
    pub(super) fn message(&self) -> &str {
        match self {
            Failure::BadRequest(m) | Failure::Model(m) => m,
        }
    }
}

/// A model's answer as predictions per row, or why there is none.
pub(super) type ModelAnswer = Result<Vec<Prediction>, Failure>;

/// One query on an application, as every linked model is asked it.
#[derive(Clone)]
pub(super) struct Query {
    /// The tensor each model's answer is read from.
    pub(super) output: String,
    /// How that tensor is read.
    pub(super) kind: super::app::LabelKind,
    /// Rows of the inputs.
    pub(super) rows: usize,
    /// The inputs' digest (the cache key).
    pub(super) digest: InputDigest,
    /// The inputs.
    pub(super) inputs: Arc<Vec<Tensor>>,
    /// Run the model even if the cache has its answer.
    pub(super) bypass_cache: bool,
}

impl Query {
    /// A query of `spec`'s output.
    pub(super) fn new(
        spec: &ApplicationSpec,
        rows: usize,
        digest: InputDigest,
        inputs: Vec<Tensor>,
        bypass_cache: bool,
    ) -> Query {
        Query {
            output: spec.output.clone(),
            kind: spec.kind,
            rows,
            digest,
            inputs: Arc::new(inputs),
            bypass_cache,
        }
    }
}

/// The future of one model's answer: resolve the link, then the cache or the model.
pub(super) fn answer_job(
    registry: &Registry,
    cache: &Arc<PredictionCache>,
    link: &str,
    query: Query,
) -> impl Future<Output = (ModelAnswer, Lookup)> + Send + 'static {
    let (name, version) = split_link(link);
    let model = registry.get(name, version);
    let cache = cache.clone();
    async move {
        let model = match model {
            Ok(model) => model,
            Err(e) => return (Err(Failure::Model(e.to_string())), Lookup::Miss),
        };
        let key = CacheKey {
            model: model.name.clone(),
            version: model.version.clone(),
            input: query.digest,
        };
        let span = telemetry::LayerSpan::start("cache", || {
            vec![KeyValue::new("sluice.model", model.name.clone())]
        });
        let computed = cache.get_or_compute(key, query.bypass_cache, || {
            model.predict(query.inputs.to_vec(), None)
        });
        let (result, lookup) = span.run(computed).await;
        span.set(|| vec![KeyValue::new("sluice.cache.lookup", lookup.label())]);
        if let Err(error) = &result {
            span.fail(&**error);
        }
        metrics::record_cache(&model.name, lookup.label());
        let answer = result
            .map_err(|e| match &*e {
                RegistryError::InvalidInput { .. }
                | RegistryError::Call {
                    error: BatchError::Call(CallError::RejectedInput(_)),
                    ..
                } => Failure::BadRequest(e.to_string()),
                _ => Failure::Model(e.to_string()),
            })
            .and_then(|outputs| {
                read_predictions(&outputs, &query.output, query.kind, query.rows)
                    .map_err(Failure::Model)
            });
        (answer, lookup)
    }
}

/// Asks each of `links` (a task each) and returns what arrived by `deadline`, in the order of
/// `links` (`None`: no answer in time).
pub(super) async fn ask_until(
    registry: &Registry,
    cache: &Arc<PredictionCache>,
    links: &[String],
    query: &Query,
    deadline: tokio::time::Instant,
) -> Vec<Option<(ModelAnswer, Lookup)>> {
    let (sender, mut receiver) = mpsc::channel(links.len().max(1));
    for (slot, link) in links.iter().enumerate() {
        let sender = sender.clone();
        let job = telemetry::in_current_context(answer_job(registry, cache, link, query.clone()));
        tokio::spawn(async move {
            let answer = job.await;
            let _ = sender.send((slot, answer)).await;
        });
    }
    drop(sender);
    let mut answers: Vec<Option<(ModelAnswer, Lookup)>> = vec![None; links.len()];
    let collect = async {
        while let Some((slot, answer)) = receiver.recv().await {
            answers[slot] = Some(answer);
        }
    };
    let _ = tokio::time::timeout_at(deadline, collect).await;
    answers
}
