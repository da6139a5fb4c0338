//! The `sluice.v1.Sluice` service: predict, list, load and unload.

use super::convert::{
    batching_from_proto, entry_status, limits_from_proto, model_status, tensor_from_proto,
    tensor_to_proto,
};
use super::status::to_status;
use super::{FrontendOptions, authorize_admin};
use crate::proto::{self, load_model_request::Component, sluice_server::Sluice};
use crate::registry::{LoadRequest, Registry};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(super) struct SluiceApi {
    registry: Arc<Registry>,
    options: FrontendOptions,
}

impl SluiceApi {
    pub(super) fn new(registry: Arc<Registry>, options: FrontendOptions) -> Self {
        SluiceApi { registry, options }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Sluice for SluiceApi {
    async fn predict(
        &self,
        request: Request<proto::PredictRequest>,
    ) -> Result<Response<proto::PredictResponse>, Status> {
        let request = request.into_inner();
        if request.model.is_empty() {
            return Err(Status::invalid_argument("model: a model name is required"));
        }
        let model = self
            .registry
            .get(
                &request.model,
                Some(request.version.as_str()).filter(|v| !v.is_empty()),
            )
            .map_err(to_status)?;
        let inputs = request
            .inputs
            .into_iter()
            .map(tensor_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let deadline = (request.timeout_ms > 0).then(|| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(request.timeout_ms)
        });
        let outputs = super::predict(&model, inputs, deadline).await?;
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
        let models = self.registry.list().iter().map(entry_status).collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn load_model(
        &self,
        request: Request<proto::LoadModelRequest>,
    ) -> Result<Response<proto::LoadModelResponse>, Status> {
        authorize_admin(&self.options, &request)?;
        let request = request.into_inner();
        let component = match request.component {
            Some(Component::Wasm(bytes)) => bytes,
            Some(Component::Path(path)) => tokio::fs::read(&path).await.map_err(|e| {
                Status::invalid_argument(format!("path: cannot read `{path}` on the server: {e}"))
            })?,
            None => {
                return Err(Status::invalid_argument(
                    "component: give either `path` (on the server) or `wasm` (the bytes)",
                ));
            }
        };
        let batching = batching_from_proto(request.batching, self.options.default_batching)
            .map_err(Status::invalid_argument)?;
        let model = self
            .registry
            .load(LoadRequest {
                component,
                config: request.config,
                name: non_empty(request.name),
                version: non_empty(request.version),
                replicas: request.replicas.max(1) as usize,
                limits: limits_from_proto(request.limits, self.options.default_limits),
                batching,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::LoadModelResponse {
            model: Some(model_status(&model, true)),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<proto::UnloadModelRequest>,
    ) -> Result<Response<proto::UnloadModelResponse>, Status> {
        authorize_admin(&self.options, &request)?;
        let request = request.into_inner();
        let versions = self
            .registry
            .unload(&request.name, non_empty(request.version).as_deref())
            .map_err(to_status)?;
        Ok(Response::new(proto::UnloadModelResponse { versions }))
    }

    async fn scale_model(
        &self,
        request: Request<proto::ScaleModelRequest>,
    ) -> Result<Response<proto::ScaleModelResponse>, Status> {
        authorize_admin(&self.options, &request)?;
        let request = request.into_inner();
        if request.replicas == 0 {
            return Err(Status::invalid_argument(
                "replicas: a model needs at least 1 replica",
            ));
        }
        let version = non_empty(request.version);
        let model = self
            .registry
            .get(&request.name, version.as_deref())
            .map_err(to_status)?;
        model
            .scale(request.replicas as usize)
            .await
            .map_err(to_status)?;
        let is_default = version.is_none()
            || self
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
        authorize_admin(&self.options, &request)?;
        let request = request.into_inner();
        let version = non_empty(request.version);
        self.registry
            .set_default_version(&request.name, version.as_deref())
            .map_err(to_status)?;
        Ok(Response::new(proto::SetDefaultVersionResponse {}))
    }
}
