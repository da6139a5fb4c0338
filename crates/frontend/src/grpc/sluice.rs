//! The `sluice.v1.Sluice` service: models (predict, list, load, unload, scale, versions) and
//! applications (register, link, predict through selection, feedback, state).

use super::{authorize, invalid_argument};
use crate::Shared;
use crate::error::ApiError;
use crate::messages::apps::{
    answer_to_proto, application_from_proto, application_to_proto, state_to_proto, value_from_proto,
};
use crate::messages::models::{entry_status, load_spec, model_status};
use crate::messages::non_empty;
use opentelemetry::KeyValue;
use sluice_api::convert::{tensor_from_proto, tensor_to_proto};
use sluice_api::proto::{self, sluice_server::Sluice};
use sluice_serving::telemetry;
use sluice_types::Tensor;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(super) struct SluiceApi {
    shared: Shared,
}

impl SluiceApi {
    pub(super) fn new(shared: Shared) -> Self {
        SluiceApi { shared }
    }
}

/// A layer's error as the call's status.
fn status(error: impl Into<ApiError>) -> Status {
    Status::from(error.into())
}

fn tensors_from_proto(tensors: Vec<proto::Tensor>) -> Result<Vec<Tensor>, Status> {
    tensors
        .into_iter()
        .map(tensor_from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid_argument)
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(invalid_argument(format!("{field}: required")))
    } else {
        Ok(value)
    }
}

#[tonic::async_trait]
impl Sluice for SluiceApi {
    async fn predict(
        &self,
        request: Request<proto::PredictRequest>,
    ) -> Result<Response<proto::PredictResponse>, Status> {
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(invalid_argument("model: a model name is required"));
        }
        let model = self
            .shared
            .registry
            .get(&request.model, non_empty(request.version.as_str()))
            .map_err(status)?;
        telemetry::annotate(|| vec![KeyValue::new("sluice.model", model.name.clone())]);
        let inputs = tensors_from_proto(request.inputs)?;
        let deadline = (request.timeout_ms > 0).then(|| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(request.timeout_ms)
        });
        let outputs = model.predict(inputs, deadline).await.map_err(status)?;
        Ok(Response::new(proto::PredictResponse {
            model: model.name.clone(),
            version: model.version.clone(),
            outputs: outputs.into_iter().map(tensor_to_proto).collect(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self
            .shared
            .registry
            .list()
            .iter()
            .map(entry_status)
            .collect();
        Ok(Response::new(proto::ListModelsResponse {
            models,
            compute: self.shared.registry.runtime().compute().name().to_string(),
        }))
    }

    async fn load_model(
        &self,
        request: Request<proto::LoadModelRequest>,
    ) -> Result<Response<proto::LoadModelResponse>, Status> {
        authorize(&self.shared, &request)?;
        let spec = load_spec(request.into_inner()).map_err(Status::from)?;
        let model = self.shared.lifecycle.load(spec).await.map_err(status)?;
        Ok(Response::new(proto::LoadModelResponse {
            model: Some(model_status(&model, true)),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<proto::UnloadModelRequest>,
    ) -> Result<Response<proto::UnloadModelResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        let version = non_empty(request.version);
        let versions = self
            .shared
            .lifecycle
            .unload(&request.name, version.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(proto::UnloadModelResponse { versions }))
    }

    async fn scale_model(
        &self,
        request: Request<proto::ScaleModelRequest>,
    ) -> Result<Response<proto::ScaleModelResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        if request.replicas == 0 {
            return Err(invalid_argument(
                "replicas: a model needs at least 1 replica",
            ));
        }
        let version = non_empty(request.version);
        let model = self
            .shared
            .registry
            .get(&request.name, version.as_deref())
            .map_err(status)?;
        self.shared
            .lifecycle
            .scale(model.clone(), request.replicas as usize)
            .await
            .map_err(status)?;
        let is_default = version.is_none()
            || self
                .shared
                .registry
                .get(&request.name, None)
                .is_ok_and(|default| Arc::ptr_eq(&default, &model));
        Ok(Response::new(proto::ScaleModelResponse {
            model: Some(model_status(&model, is_default)),
        }))
    }

    async fn set_default_version(
        &self,
        request: Request<proto::SetDefaultVersionRequest>,
    ) -> Result<Response<proto::SetDefaultVersionResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        let version = non_empty(request.version);
        self.shared
            .lifecycle
            .set_default_version(&request.name, version.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(proto::SetDefaultVersionResponse {}))
    }

    async fn register_application(
        &self,
        request: Request<proto::RegisterApplicationRequest>,
    ) -> Result<Response<proto::RegisterApplicationResponse>, Status> {
        authorize(&self.shared, &request)?;
        let spec =
            application_from_proto(request.into_inner().application).map_err(invalid_argument)?;
        let application = application_to_proto(&spec);
        self.shared
            .applications
            .register(spec)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RegisterApplicationResponse {
            application: Some(application),
        }))
    }

    async fn link_model(
        &self,
        request: Request<proto::LinkModelRequest>,
    ) -> Result<Response<proto::LinkModelResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        let spec = self
            .shared
            .applications
            .link(
                required(&request.app, "app")?,
                required(&request.model, "model")?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(proto::LinkModelResponse {
            application: Some(application_to_proto(&spec)),
        }))
    }

    async fn unlink_model(
        &self,
        request: Request<proto::UnlinkModelRequest>,
    ) -> Result<Response<proto::UnlinkModelResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        let spec = self
            .shared
            .applications
            .unlink(
                required(&request.app, "app")?,
                required(&request.model, "model")?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(proto::UnlinkModelResponse {
            application: Some(application_to_proto(&spec)),
        }))
    }

    async fn list_applications(
        &self,
        _request: Request<proto::ListApplicationsRequest>,
    ) -> Result<Response<proto::ListApplicationsResponse>, Status> {
        let applications = self
            .shared
            .applications
            .list()
            .iter()
            .map(application_to_proto)
            .collect();
        Ok(Response::new(proto::ListApplicationsResponse {
            applications,
        }))
    }

    async fn delete_application(
        &self,
        request: Request<proto::DeleteApplicationRequest>,
    ) -> Result<Response<proto::DeleteApplicationResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        self.shared
            .applications
            .delete(required(&request.app, "app")?)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteApplicationResponse {}))
    }

    async fn predict_app(
        &self,
        request: Request<proto::PredictAppRequest>,
    ) -> Result<Response<proto::PredictAppResponse>, Status> {
        let request = request.into_inner();
        let app = required(&request.app, "app")?;
        telemetry::annotate(|| vec![KeyValue::new("sluice.application", app.to_string())]);
        let inputs = tensors_from_proto(request.inputs)?;
        let answer = self
            .shared
            .applications
            .predict(app, &request.user_id, inputs, request.bypass_cache)
            .await
            .map_err(status)?;
        Ok(Response::new(answer_to_proto(answer)))
    }

    async fn feedback(
        &self,
        request: Request<proto::FeedbackRequest>,
    ) -> Result<Response<proto::FeedbackResponse>, Status> {
        let request = request.into_inner();
        let app = required(&request.app, "app")?;
        let inputs = tensors_from_proto(request.inputs)?;
        let labels = request
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, label)| value_from_proto(Some(label), &format!("labels[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid_argument)?;
        let outcome = self
            .shared
            .applications
            .feedback(app, &request.user_id, inputs, labels)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::FeedbackResponse {
            losses: outcome
                .losses
                .into_iter()
                .map(|(model, loss)| proto::ModelLoss { model, loss })
                .collect(),
            chosen: outcome.chosen,
            state: Some(state_to_proto(
                &outcome.spec,
                &request.user_id,
                &outcome.state,
            )),
        }))
    }

    async fn get_selection_state(
        &self,
        request: Request<proto::GetSelectionStateRequest>,
    ) -> Result<Response<proto::GetSelectionStateResponse>, Status> {
        let request = request.into_inner();
        let app = required(&request.app, "app")?;
        let (spec, state) = self
            .shared
            .applications
            .selection_state(app, &request.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::GetSelectionStateResponse {
            state: Some(state_to_proto(&spec, &request.user_id, &state)),
        }))
    }

    async fn reset_selection_state(
        &self,
        request: Request<proto::ResetSelectionStateRequest>,
    ) -> Result<Response<proto::ResetSelectionStateResponse>, Status> {
        authorize(&self.shared, &request)?;
        let request = request.into_inner();
        let user = (!request.all_users).then_some(request.user_id.as_str());
        self.shared
            .applications
            .reset(required(&request.app, "app")?, user)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::ResetSelectionStateResponse {}))
    }
}
