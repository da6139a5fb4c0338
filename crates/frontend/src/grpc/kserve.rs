//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2) over gRPC, with
//! Triton's model-repository extension, on the same port as the sluice API.
//!
//! Inputs may come as typed `contents` or as `raw_input_contents` (what Triton's client
//! sends); outputs always go back as `raw_output_contents` (what Triton's client reads).
//! Raw contents are exactly the bytes a model receives, so they cross without conversion.
//!
//! A ModelInfer whose model name is not a model but an application runs through selection
//! (policy, cache, deadline); the `user_id` request parameter picks the user's state.

use super::{authorize, invalid_argument};
use crate::Shared;
use crate::kserve::{
    self, AppParameters, InferTarget, PLATFORM, SERVER_NAME, is_requested, repository_index,
};
use crate::messages::non_empty;
use sluice_api::convert::shape_to_u32;
use sluice_api::inference::{
    self, grpc_inference_service_server::GrpcInferenceService,
    model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
    model_metadata_response::TensorMetadata, repository_index_response::ModelIndex,
};
use sluice_types::{Dtype, Tensor, TensorSpec};
use tonic::{Request, Response, Status};

pub(super) struct KserveApi {
    shared: Shared,
}

impl KserveApi {
    pub(super) fn new(shared: Shared) -> Self {
        KserveApi { shared }
    }
}

/// The application options among a request's parameters.
fn app_parameters(
    parameters: &std::collections::HashMap<String, inference::InferParameter>,
) -> AppParameters {
    use inference::infer_parameter::ParameterChoice;
    let choice = |key: &str| parameters.get(key).and_then(|p| p.parameter_choice.clone());
    AppParameters {
        user_id: match choice("user_id") {
            Some(ParameterChoice::StringParam(user)) => user,
            _ => String::new(),
        },
        bypass_cache: matches!(
            choice("bypass_cache"),
            Some(ParameterChoice::BoolParam(true))
        ),
    }
}

/// Encodes typed `contents` as the little-endian bytes the model takes.
fn typed_to_raw(
    name: &str,
    dtype: Dtype,
    c: inference::InferTensorContents,
) -> Result<Vec<u8>, String> {
    let le = |bytes: Vec<[u8; 8]>| bytes.concat();
    Ok(match dtype {
        Dtype::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Dtype::Fp64 => le(c.fp64_contents.iter().map(|v| v.to_le_bytes()).collect()),
        Dtype::Int32 => c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Dtype::Int64 => le(c.int64_contents.iter().map(|v| v.to_le_bytes()).collect()),
        Dtype::Boolean => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        Dtype::Uint8 => c
            .uint_contents
            .iter()
            .map(|&v| {
                u8::try_from(v).map_err(|_| format!("input `{name}`: {v} does not fit UINT8"))
            })
            .collect::<Result<_, _>>()?,
        Dtype::Bytes => c
            .bytes_contents
            .iter()
            .flat_map(|b| {
                (b.len() as u32)
                    .to_le_bytes()
                    .into_iter()
                    .chain(b.iter().copied())
            })
            .collect(),
    })
}

/// Converts one request input; `raw` is its `raw_input_contents` entry, if the request used
/// raw contents.
fn input_tensor(t: InferInputTensor, raw: Option<Vec<u8>>) -> Result<Tensor, Status> {
    let dtype = Dtype::parse(&t.datatype).ok_or_else(|| {
        invalid_argument(format!(
            "input `{}`: {}",
            t.name,
            Dtype::unsupported(&t.datatype)
        ))
    })?;
    let shape = shape_to_u32(&t.name, &t.shape).map_err(invalid_argument)?;
    let data = match (raw, t.contents) {
        (Some(_), Some(_)) => {
            return Err(invalid_argument(format!(
                "input `{}`: give either contents or raw_input_contents, not both",
                t.name
            )));
        }
        (Some(raw), None) => raw,
        (None, Some(contents)) => {
            typed_to_raw(&t.name, dtype, contents).map_err(invalid_argument)?
        }
        (None, None) => Vec::new(),
    };
    Ok(Tensor {
        name: t.name,
        dtype,
        shape,
        data,
    })
}

fn metadata(spec: &TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.dtype.name().to_string(),
        shape: spec.shape.clone(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for KserveApi {
    async fn server_live(
        &self,
        _request: Request<inference::ServerLiveRequest>,
    ) -> Result<Response<inference::ServerLiveResponse>, Status> {
        Ok(Response::new(inference::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<inference::ServerReadyRequest>,
    ) -> Result<Response<inference::ServerReadyResponse>, Status> {
        // The server starts answering only after its repository's first sync, and stops
        // being ready when it begins to drain.
        Ok(Response::new(inference::ServerReadyResponse {
            ready: self.shared.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<inference::ModelReadyRequest>,
    ) -> Result<Response<inference::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = InferTarget::resolve(
            &self.shared.registry,
            &self.shared.applications,
            &request.name,
            non_empty(&request.version),
        )
        .is_ok_and(|target| target.ready(&self.shared.registry));
        Ok(Response::new(inference::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<inference::ServerMetadataRequest>,
    ) -> Result<Response<inference::ServerMetadataResponse>, Status> {
        Ok(Response::new(inference::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<inference::ModelMetadataRequest>,
    ) -> Result<Response<inference::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let target = InferTarget::resolve(
            &self.shared.registry,
            &self.shared.applications,
            &request.name,
            non_empty(&request.version),
        )
        .map_err(Status::from)?;
        let meta = target.metadata(&self.shared.registry);
        Ok(Response::new(inference::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: PLATFORM.into(),
            inputs: meta.inputs.iter().map(metadata).collect(),
            outputs: meta.outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<inference::ModelInferRequest>,
    ) -> Result<Response<inference::ModelInferResponse>, Status> {
        let request = request.into_inner();
        let target = InferTarget::resolve(
            &self.shared.registry,
            &self.shared.applications,
            &request.model_name,
            non_empty(&request.model_version),
        )
        .map_err(Status::from)?;
        let raw = request.raw_input_contents;
        if !raw.is_empty() && raw.len() != request.inputs.len() {
            return Err(invalid_argument(format!(
                "raw_input_contents has {} entries for {} inputs",
                raw.len(),
                request.inputs.len()
            )));
        }
        let mut raw = raw.into_iter();
        let inputs = request
            .inputs
            .into_iter()
            .map(|t| input_tensor(t, raw.next()))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted: Vec<String> = request.outputs.into_iter().map(|o| o.name).collect();
        target.check_requested_outputs(wanted.iter().map(String::as_str))?;
        let parameters = app_parameters(&request.parameters);
        let inferred = target
            .infer(&self.shared.applications, inputs, parameters)
            .await?;
        let mut response = inference::ModelInferResponse {
            model_name: inferred.name,
            model_version: inferred.version,
            id: request.id,
            parameters: inferred
                .parameters
                .into_iter()
                .map(|(key, value)| {
                    let choice = inference::infer_parameter::ParameterChoice::StringParam(value);
                    let parameter = inference::InferParameter {
                        parameter_choice: Some(choice),
                    };
                    (key.to_string(), parameter)
                })
                .collect(),
            ..Default::default()
        };
        for t in inferred.outputs {
            if !is_requested(
                wanted.iter().map(String::as_str),
                &t.name,
                wanted.is_empty(),
            ) {
                continue;
            }
            response.outputs.push(InferOutputTensor {
                name: t.name,
                datatype: t.dtype.name().into(),
                shape: t.shape.iter().map(|&d| i64::from(d)).collect(),
                ..Default::default()
            });
            response.raw_output_contents.push(t.data);
        }
        Ok(Response::new(response))
    }

    async fn repository_index(
        &self,
        request: Request<inference::RepositoryIndexRequest>,
    ) -> Result<Response<inference::RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = repository_index(&self.shared, ready_only)?
            .into_iter()
            .map(|m| ModelIndex {
                name: m.name,
                version: m.version,
                state: m.state.into(),
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(inference::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<inference::RepositoryModelLoadRequest>,
    ) -> Result<Response<inference::RepositoryModelLoadResponse>, Status> {
        authorize(&self.shared, &request)?;
        let name = request.into_inner().model_name;
        kserve::repository_load(&self.shared, &name).await?;
        Ok(Response::new(inference::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<inference::RepositoryModelUnloadRequest>,
    ) -> Result<Response<inference::RepositoryModelUnloadResponse>, Status> {
        authorize(&self.shared, &request)?;
        let name = request.into_inner().model_name;
        kserve::repository_unload(&self.shared, &name).await?;
        Ok(Response::new(inference::RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::InferTensorContents;

    fn input(datatype: &str, shape: &[i64], contents: InferTensorContents) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            contents: Some(contents),
            ..Default::default()
        }
    }

    #[test]
    fn typed_contents_become_the_raw_layout() {
        let fp32 = input(
            "FP32",
            &[1, 2],
            InferTensorContents {
                fp32_contents: vec![1.5, -2.0],
                ..Default::default()
            },
        );
        let t = input_tensor(fp32, None).unwrap();
        assert_eq!(
            t.data,
            [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );
        let bytes = input(
            "BYTES",
            &[2],
            InferTensorContents {
                bytes_contents: vec![b"ab".to_vec(), Vec::new()],
                ..Default::default()
            },
        );
        assert_eq!(
            input_tensor(bytes, None).unwrap().data,
            [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
        );
        let boolean = input(
            "BOOL",
            &[2],
            InferTensorContents {
                bool_contents: vec![true, false],
                ..Default::default()
            },
        );
        assert_eq!(input_tensor(boolean, None).unwrap().data, [1, 0]);
        let int64 = input(
            "INT64",
            &[1],
            InferTensorContents {
                int64_contents: vec![-3],
                ..Default::default()
            },
        );
        assert_eq!(
            input_tensor(int64, None).unwrap().data,
            (-3i64).to_le_bytes()
        );
    }

    #[test]
    fn bad_inputs_name_the_tensor() {
        let fp16 = input("FP16", &[1], InferTensorContents::default());
        assert!(
            input_tensor(fp16, None)
                .unwrap_err()
                .message()
                .contains("`FP16` is not supported")
        );
        let big = input(
            "UINT8",
            &[1],
            InferTensorContents {
                uint_contents: vec![300],
                ..Default::default()
            },
        );
        assert!(
            input_tensor(big, None)
                .unwrap_err()
                .message()
                .contains("300 does not fit UINT8")
        );
        let negative = input("FP32", &[-1], InferTensorContents::default());
        assert!(
            input_tensor(negative, None)
                .unwrap_err()
                .message()
                .contains("shape [-1] is invalid")
        );
        let both = input(
            "FP32",
            &[1],
            InferTensorContents {
                fp32_contents: vec![1.0],
                ..Default::default()
            },
        );
        let err = input_tensor(both, Some(vec![0; 4])).unwrap_err();
        assert!(err.message().contains("not both"));
    }
}
