//! What a KServe request's model name refers to, for both KServe protocols (gRPC and REST):
//! a loaded model, or else an application, whose answer then comes through selection (policy,
//! cache, deadline). Resolution, readiness, metadata, requested-output checks and the
//! inference itself live here so that the two protocols cannot drift apart.

use super::app_outputs;
use crate::error::ApiError;
use opentelemetry::KeyValue;
use sluice_serving::registry::{Model, Registry, RegistryError};
use sluice_serving::selection::Applications;
use sluice_serving::selection::app::{ApplicationSpec, split_link};
use sluice_serving::telemetry;
use sluice_types::names::quoted;
use sluice_types::{Tensor, TensorSpec};
use std::sync::Arc;

/// What a KServe request's model name refers to: a loaded model, or else (when no version is
/// named) an application, whose answer comes through selection.
pub(crate) enum InferTarget {
    /// A model.
    Model(Arc<Model>),
    /// An application.
    App(ApplicationSpec),
}

/// What a KServe inference produced.
pub(crate) struct Inferred {
    /// The model or application that answered.
    pub name: String,
    /// The model's version (empty for an application).
    pub version: String,
    /// The output tensors.
    pub outputs: Vec<Tensor>,
    /// Response parameters (for applications: which models answered, which were missing).
    pub parameters: Vec<(&'static str, String)>,
}

/// KServe model metadata of an [`InferTarget`].
pub(crate) struct TargetMetadata {
    /// The model's or application's name.
    pub name: String,
    /// Ready versions (empty for an application).
    pub versions: Vec<String>,
    /// Its inputs.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<TensorSpec>,
}

/// Options of an inference on an application, from the request's parameters.
#[derive(Default)]
pub(crate) struct AppParameters {
    /// The `user_id` parameter.
    pub user_id: String,
    /// The `bypass_cache` parameter.
    pub bypass_cache: bool,
}

impl InferTarget {
    /// Finds `name`: a model first, then an application.
    pub(crate) fn resolve(
        registry: &Registry,
        applications: &Applications,
        name: &str,
        version: Option<&str>,
    ) -> Result<InferTarget, ApiError> {
        match registry.get(name, version) {
            Ok(model) => Ok(InferTarget::Model(model)),
            Err(RegistryError::ModelNotFound(_)) if version.is_none() => {
                applications.get(name).map(InferTarget::App).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "model `{}` is not loaded, and no application has that name",
                        quoted(name)
                    ))
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether it can answer: a model is ready once resolved; an application needs at
    /// least one linked model loaded.
    pub(crate) fn ready(&self, registry: &Registry) -> bool {
        match self {
            InferTarget::Model(model) => model.unavailable().is_none(),
            InferTarget::App(spec) => spec.models.iter().any(|link| {
                let (name, version) = split_link(link);
                registry.get(name, version).is_ok()
            }),
        }
    }

    /// What KServe's model metadata reports: the name, the ready versions (none for an
    /// application), the inputs (an application's are those of its first loaded model) and
    /// the outputs.
    pub(crate) fn metadata(&self, registry: &Registry) -> TargetMetadata {
        match self {
            InferTarget::Model(model) => TargetMetadata {
                name: model.name.clone(),
                versions: registry.ready_versions(&model.name),
                inputs: model.info.inputs.clone(),
                outputs: model.info.outputs.clone(),
            },
            InferTarget::App(spec) => TargetMetadata {
                name: spec.name.clone(),
                versions: Vec::new(),
                inputs: spec
                    .models
                    .iter()
                    .find_map(|link| {
                        let (name, version) = split_link(link);
                        registry.get(name, version).ok()
                    })
                    .map(|model| model.info.inputs.clone())
                    .unwrap_or_default(),
                outputs: app_outputs::output_specs(spec),
            },
        }
    }

    /// Refuses requested outputs (KServe's `outputs`) that the target does not produce.
    pub(crate) fn check_requested_outputs<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        let (declared, what, name): (Vec<&str>, _, _) = match self {
            InferTarget::Model(model) => (
                model.info.outputs.iter().map(|s| s.name.as_str()).collect(),
                "model",
                &model.name,
            ),
            InferTarget::App(spec) => (
                app_outputs::output_names(spec).to_vec(),
                "application",
                &spec.name,
            ),
        };
        match names.into_iter().find(|name| !declared.contains(name)) {
            Some(unknown) => Err(ApiError::invalid_argument(format!(
                "requested output `{unknown}` is not an output of {what} `{name}`"
            ))),
            None => Ok(()),
        }
    }

    /// Runs the inference.
    pub(crate) async fn infer(
        self,
        applications: &Applications,
        inputs: Vec<Tensor>,
        parameters: AppParameters,
    ) -> Result<Inferred, ApiError> {
        telemetry::annotate(|| match &self {
            InferTarget::Model(model) => vec![KeyValue::new("sluice.model", model.name.clone())],
            InferTarget::App(spec) => {
                vec![KeyValue::new("sluice.application", spec.name.clone())]
            }
        });
        match self {
            InferTarget::Model(model) => Ok(Inferred {
                outputs: model.predict(inputs, None).await?,
                name: model.name.clone(),
                version: model.version.clone(),
                parameters: Vec::new(),
            }),
            InferTarget::App(spec) => {
                let answer = applications
                    .predict(
                        &spec.name,
                        &parameters.user_id,
                        inputs,
                        parameters.bypass_cache,
                    )
                    .await?;
                Ok(Inferred {
                    parameters: app_outputs::answer_parameters(&answer),
                    outputs: app_outputs::answer_tensors(&spec, &answer),
                    name: spec.name,
                    version: String::new(),
                })
            }
        }
    }
}
