//! Models and their settings as `sluice.v1` messages. A zero (or an unset message) in a
//! request means "the server's default", which is what `None` means in the serving layer's
//! requests.

use super::non_empty;
use crate::error::ApiError;
use sluice_api::convert::spec_to_proto;
use sluice_api::proto::{self, load_model_request::Component};
use sluice_serving::autoscale::{ReplicaRange, starting_replicas};
use sluice_serving::batching::{BatchMode, BatchingConfig};
use sluice_serving::lifecycle::{ComponentSource, LoadSpec};
use sluice_serving::onnx::OnnxRunner;
use sluice_serving::registry::{Model, ModelEntry, ModelState, Residence};
use sluice_serving::settings::{BatchingRequest, LimitsRequest, ModeRequest};
use std::path::PathBuf;
use std::time::Duration;

fn given<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

fn bytes(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The limits a request asks for (zero fields: the server's default).
pub fn limits_request(limits: Option<proto::ModelLimits>) -> LimitsRequest {
    let Some(l) = limits else {
        return LimitsRequest::default();
    };
    LimitsRequest {
        call_timeout: given(l.call_timeout_ms).map(Duration::from_millis),
        memory_bytes: given(l.memory_bytes).map(bytes),
        queue_capacity: given(l.queue_capacity).map(|n| n as usize),
        max_request_bytes: given(l.max_request_bytes).map(bytes),
        max_response_bytes: given(l.max_response_bytes).map(bytes),
        max_calls_per_instance: given(l.max_calls_per_instance),
    }
}

/// The message of a limits request (unset: zero).
pub fn limits_request_to_proto(limits: &LimitsRequest) -> proto::ModelLimits {
    proto::ModelLimits {
        call_timeout_ms: limits.call_timeout.map_or(0, |d| d.as_millis() as u64),
        memory_bytes: limits.memory_bytes.map_or(0, |n| n as u64),
        queue_capacity: limits.queue_capacity.map_or(0, |n| n as u32),
        max_request_bytes: limits.max_request_bytes.map_or(0, |n| n as u64),
        max_response_bytes: limits.max_response_bytes.map_or(0, |n| n as u64),
        max_calls_per_instance: limits.max_calls_per_instance.unwrap_or(0),
    }
}

/// The batching a request asks for (zero fields: the server's default).
pub fn batching_request(
    batching: Option<proto::BatchingConfig>,
) -> Result<BatchingRequest, String> {
    use proto::batching_config::Mode;
    let Some(b) = batching else {
        return Ok(BatchingRequest::default());
    };
    let mode = match Mode::try_from(b.mode) {
        Ok(Mode::Unspecified) => None,
        Ok(Mode::Adaptive) => Some(ModeRequest::Adaptive),
        Ok(Mode::Static) => Some(ModeRequest::Static(b.static_batch_size as usize)),
        Err(_) => return Err(format!("batching.mode: {} is not a valid mode", b.mode)),
    };
    Ok(BatchingRequest {
        mode,
        step: given(b.additive_step).map(|s| s as usize),
        backoff: given(b.backoff),
        slo: given(b.slo_ms).map(Duration::from_millis),
        max_delay: given(b.max_delay_us).map(Duration::from_micros),
    })
}

/// The message of a batching request (unset: zero).
pub fn batching_request_to_proto(batching: &BatchingRequest) -> proto::BatchingConfig {
    use proto::batching_config::Mode;
    let (mode, static_batch_size) = match batching.mode {
        None => (Mode::Unspecified, 0),
        Some(ModeRequest::Adaptive) => (Mode::Adaptive, 0),
        Some(ModeRequest::Static(size)) => (Mode::Static, size as u32),
    };
    proto::BatchingConfig {
        mode: mode as i32,
        static_batch_size,
        additive_step: batching.step.map_or(0, |s| s as u32),
        backoff: batching.backoff.unwrap_or(0.0),
        slo_ms: batching.slo.map_or(0, |d| d.as_millis() as u64),
        max_delay_us: batching.max_delay.map_or(0, |d| d.as_micros() as u64),
    }
}

/// The message of a batching config in force.
pub fn batching_to_proto(b: BatchingConfig) -> proto::BatchingConfig {
    use proto::batching_config::Mode;
    let (mode, static_batch_size, additive_step, backoff) = match b.mode {
        BatchMode::Adaptive { step, backoff } => (Mode::Adaptive, 0, step as u32, backoff),
        BatchMode::Static { size } => (Mode::Static, size as u32, 0, 0.0),
    };
    proto::BatchingConfig {
        mode: mode as i32,
        static_batch_size,
        additive_step,
        backoff,
        slo_ms: b.slo.as_millis() as u64,
        max_delay_us: b.max_delay.map_or(0, |d| d.as_micros() as u64),
    }
}

/// What a `LoadModelRequest` asks the lifecycle to load.
pub fn load_spec(request: proto::LoadModelRequest) -> Result<LoadSpec, ApiError> {
    let onnx_runner = match request.onnx_runner() {
        proto::load_model_request::OnnxRunner::Auto => OnnxRunner::Auto,
        proto::load_model_request::OnnxRunner::Native => OnnxRunner::Native,
        proto::load_model_request::OnnxRunner::Sandbox => OnnxRunner::Sandbox,
    };
    let source = match request.component {
        Some(Component::Wasm(bytes)) => ComponentSource::Wasm(bytes),
        Some(Component::Path(path)) => ComponentSource::Path(PathBuf::from(path)),
        Some(Component::Onnx(graph)) => ComponentSource::Onnx {
            graph,
            runner: onnx_runner,
        },
        None => {
            return Err(ApiError::invalid_argument(
                "component: give `path` (on the server), `wasm` (the bytes) or `onnx` (a graph)",
            ));
        }
    };
    let autoscale = ReplicaRange::new(request.min_replicas as usize, request.max_replicas as usize)
        .map_err(ApiError::invalid_argument)?;
    Ok(LoadSpec {
        source,
        config: request.config,
        name: non_empty(request.name),
        version: non_empty(request.version),
        replicas: starting_replicas(request.replicas as usize, autoscale),
        autoscale,
        limits: limits_request(request.limits),
        batching: batching_request(request.batching).map_err(ApiError::invalid_argument)?,
    })
}

/// Describes a ready model.
pub fn model_status(model: &Model, is_default_version: bool) -> proto::ModelStatus {
    let stats = model.stats();
    let range = model.replica_range();
    proto::ModelStatus {
        name: model.name.clone(),
        version: model.version.clone(),
        inputs: model.info.inputs.iter().map(spec_to_proto).collect(),
        outputs: model.info.outputs.iter().map(spec_to_proto).collect(),
        max_batch: model.info.max_batch,
        replicas: model.replicas() as u32,
        limits: Some(proto::ModelLimits {
            call_timeout_ms: model.limits.call_timeout.as_millis() as u64,
            memory_bytes: model.limits.memory_bytes as u64,
            queue_capacity: model.limits.queue_capacity as u32,
            max_request_bytes: model.limits.max_request_bytes as u64,
            max_response_bytes: model.limits.max_response_bytes as u64,
            max_calls_per_instance: model.limits.max_calls_per_instance,
        }),
        component_sha256: model.sha256.clone(),
        is_default_version,
        batching: Some(batching_to_proto(model.batching())),
        batch_sizes: model.batch_sizes().into_iter().map(|s| s as u32).collect(),
        batches_run: stats.batches,
        rows_run: stats.rows,
        state: proto::model_status::State::Ready as i32,
        reason: String::new(),
        graphs: model.graphs.clone(),
        min_replicas: range.map_or(0, |r| r.min as u32),
        max_replicas: range.map_or(0, |r| r.max as u32),
        residence: residence_to_proto(model.residence()) as i32,
    }
}

fn residence_to_proto(residence: Residence) -> proto::model_status::Residence {
    use proto::model_status::Residence as Wire;
    match residence {
        Residence::Running => Wire::Running,
        Residence::CodeOnly => Wire::CodeOnly,
        Residence::Registered => Wire::Registered,
    }
}

/// Describes one row of the registry's list, whatever its state.
pub fn entry_status(entry: &ModelEntry) -> proto::ModelStatus {
    use proto::model_status::State;
    let mut status = match &entry.model {
        Some(model) => model_status(model, entry.is_default),
        None => proto::ModelStatus {
            name: entry.name.clone(),
            version: entry.version.clone(),
            ..Default::default()
        },
    };
    let (state, reason) = match &entry.state {
        ModelState::Loading => (State::Loading, ""),
        ModelState::Ready => (State::Ready, ""),
        ModelState::Failed(reason) => (State::Failed, reason.as_str()),
        ModelState::Draining => (State::Draining, ""),
        ModelState::Unloaded => (State::Unloaded, ""),
    };
    status.state = state as i32;
    status.reason = reason.to_string();
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_and_limits_requests_round_trip_through_their_messages() {
        let batching = BatchingRequest {
            mode: Some(ModeRequest::Static(16)),
            slo: Some(Duration::from_millis(20)),
            max_delay: Some(Duration::from_micros(500)),
            ..BatchingRequest::default()
        };
        let message = batching_request_to_proto(&batching);
        assert_eq!(batching_request(Some(message)), Ok(batching));
        assert_eq!(batching_request(None), Ok(BatchingRequest::default()));
        let limits = LimitsRequest {
            call_timeout: Some(Duration::from_millis(250)),
            ..LimitsRequest::default()
        };
        assert_eq!(
            limits_request(Some(limits_request_to_proto(&limits))),
            limits
        );
        let bad_mode = proto::BatchingConfig {
            mode: 9,
            ..Default::default()
        };
        assert!(
            batching_request(Some(bad_mode))
                .unwrap_err()
                .starts_with("batching.mode")
        );
    }

    #[test]
    fn a_config_in_force_is_a_request_for_itself() {
        let defaults = BatchingConfig::default();
        let config = BatchingConfig {
            mode: BatchMode::Static { size: 8 },
            slo: Duration::from_millis(30),
            max_delay: None,
        };
        let request = batching_request(Some(batching_to_proto(config))).unwrap();
        assert_eq!(request.resolve(defaults), Ok(config));
    }
}
