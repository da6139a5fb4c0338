//! Conversions between the protobuf messages of the sluice API and the runtime's types. Tensor
//! data moves (no copy): both sides hold little-endian bytes.

use crate::batching::{BatchMode, BatchingConfig};
use crate::proto;
use crate::registry::{Model, ModelEntry, ModelState};
use crate::runtime::{Dtype, ModelLimits, Tensor, TensorSpec};
use crate::tensor::shape_to_u32;
use std::time::Duration;

/// Maps a protobuf dtype to the WIT one; `None` for `UNSPECIFIED` or an unknown number.
pub fn dtype_from_proto(value: i32) -> Option<Dtype> {
    use proto::DataType as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Fp32 => Dtype::Fp32,
        P::Fp64 => Dtype::Fp64,
        P::Int32 => Dtype::Int32,
        P::Int64 => Dtype::Int64,
        P::Uint8 => Dtype::Uint8,
        P::Bool => Dtype::Boolean,
        P::Bytes => Dtype::Bytes,
    })
}

/// Maps a WIT dtype to the protobuf one.
pub fn dtype_to_proto(dtype: Dtype) -> proto::DataType {
    use proto::DataType as P;
    match dtype {
        Dtype::Fp32 => P::Fp32,
        Dtype::Fp64 => P::Fp64,
        Dtype::Int32 => P::Int32,
        Dtype::Int64 => P::Int64,
        Dtype::Uint8 => P::Uint8,
        Dtype::Boolean => P::Bool,
        Dtype::Bytes => P::Bytes,
    }
}

/// Converts a request tensor; the error names the tensor and the field.
pub fn tensor_from_proto(t: proto::Tensor) -> Result<Tensor, String> {
    let dtype = dtype_from_proto(t.datatype).ok_or_else(|| {
        format!(
            "inputs[`{}`].datatype: {} is not a valid data type",
            t.name, t.datatype
        )
    })?;
    let shape = shape_to_u32(&t.name, &t.shape)?;
    Ok(Tensor {
        name: t.name,
        dtype,
        shape,
        data: t.data,
    })
}

/// Converts an output tensor.
pub fn tensor_to_proto(t: Tensor) -> proto::Tensor {
    proto::Tensor {
        name: t.name,
        datatype: dtype_to_proto(t.dtype) as i32,
        shape: t.shape.into_iter().map(u64::from).collect(),
        data: t.data,
    }
}

fn spec_to_proto(spec: &TensorSpec) -> proto::TensorSpec {
    proto::TensorSpec {
        name: spec.name.clone(),
        datatype: dtype_to_proto(spec.dtype) as i32,
        shape: spec.shape.clone(),
    }
}

/// Fills unset (zero) fields of `limits` from `defaults`.
pub fn limits_from_proto(limits: Option<proto::ModelLimits>, defaults: ModelLimits) -> ModelLimits {
    let Some(l) = limits else { return defaults };
    ModelLimits {
        call_timeout: match l.call_timeout_ms {
            0 => defaults.call_timeout,
            ms => Duration::from_millis(ms),
        },
        memory_bytes: match l.memory_bytes {
            0 => defaults.memory_bytes,
            bytes => usize::try_from(bytes).unwrap_or(usize::MAX),
        },
        queue_capacity: match l.queue_capacity {
            0 => defaults.queue_capacity,
            n => n as usize,
        },
        max_request_bytes: match l.max_request_bytes {
            0 => defaults.max_request_bytes,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        max_response_bytes: match l.max_response_bytes {
            0 => defaults.max_response_bytes,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        max_calls_per_instance: match l.max_calls_per_instance {
            0 => defaults.max_calls_per_instance,
            n => n,
        },
    }
}

/// Fills unset (zero) fields of a requested batching config from `defaults`.
pub fn batching_from_proto(
    batching: Option<proto::BatchingConfig>,
    defaults: BatchingConfig,
) -> Result<BatchingConfig, String> {
    use proto::batching_config::Mode;
    let Some(b) = batching else {
        return Ok(defaults);
    };
    let default_step_backoff = match defaults.mode {
        BatchMode::Adaptive { step, backoff } => (step, backoff),
        BatchMode::Static { .. } => (4, 0.1),
    };
    let mode = match Mode::try_from(b.mode) {
        Ok(Mode::Static) if b.static_batch_size == 0 => {
            return Err(
                "batching.static_batch_size: static mode needs a batch size of at least 1".into(),
            );
        }
        Ok(Mode::Static) => BatchMode::Static {
            size: b.static_batch_size as usize,
        },
        Ok(Mode::Adaptive | Mode::Unspecified) => {
            if !(0.0..1.0).contains(&b.backoff) {
                return Err(format!("batching.backoff: {} is not in [0, 1)", b.backoff));
            }
            BatchMode::Adaptive {
                step: match b.additive_step {
                    0 => default_step_backoff.0,
                    step => step as usize,
                },
                backoff: if b.backoff == 0.0 {
                    default_step_backoff.1
                } else {
                    b.backoff
                },
            }
        }
        Err(_) => return Err(format!("batching.mode: {} is not a valid mode", b.mode)),
    };
    Ok(BatchingConfig {
        mode,
        slo: match b.slo_ms {
            0 => defaults.slo,
            ms => Duration::from_millis(ms),
        },
        max_delay: match b.max_delay_us {
            0 => defaults.max_delay,
            us => Some(Duration::from_micros(us)),
        },
    })
}

/// The protobuf form of a batching config.
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

/// Describes a ready model.
pub fn model_status(model: &Model, is_default_version: bool) -> proto::ModelStatus {
    let stats = model.stats();
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
    fn every_dtype_maps_both_ways() {
        for d in crate::tensor::ALL_DTYPES {
            assert_eq!(dtype_from_proto(dtype_to_proto(d) as i32), Some(d));
        }
        assert_eq!(dtype_from_proto(0), None);
        assert_eq!(dtype_from_proto(99), None);
    }

    #[test]
    fn unset_limits_take_the_defaults() {
        let defaults = ModelLimits::default();
        assert_eq!(limits_from_proto(None, defaults), defaults);
        let partial = proto::ModelLimits {
            call_timeout_ms: 250,
            memory_bytes: 0,
            ..Default::default()
        };
        let limits = limits_from_proto(Some(partial), defaults);
        assert_eq!(limits.call_timeout, Duration::from_millis(250));
        assert_eq!(limits.memory_bytes, defaults.memory_bytes);
    }

    #[test]
    fn batching_configs_round_trip_and_bad_ones_name_the_field() {
        let defaults = BatchingConfig::default();
        assert_eq!(batching_from_proto(None, defaults), Ok(defaults));
        for config in [
            defaults,
            BatchingConfig {
                mode: BatchMode::Static { size: 16 },
                slo: Duration::from_millis(20),
                max_delay: Some(Duration::from_micros(500)),
            },
        ] {
            assert_eq!(
                batching_from_proto(Some(batching_to_proto(config)), defaults),
                Ok(config)
            );
        }
        let static_zero = proto::BatchingConfig {
            mode: proto::batching_config::Mode::Static as i32,
            ..Default::default()
        };
        let err = batching_from_proto(Some(static_zero), defaults).unwrap_err();
        assert!(err.starts_with("batching.static_batch_size"), "{err}");
        let bad_backoff = proto::BatchingConfig {
            backoff: 1.5,
            ..Default::default()
        };
        assert!(
            batching_from_proto(Some(bad_backoff), defaults)
                .unwrap_err()
                .starts_with("batching.backoff")
        );
    }
}
