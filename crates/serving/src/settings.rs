//! The settings of one model: its limits (those of each instance, enforced by the sandbox, and
//! those of its queues and answers, enforced by the batcher and the registry), and the partial
//! settings a load request, a config file or command-line flags give, which the server
//! completes with its defaults ([`LimitsRequest::resolve`], [`BatchingRequest::resolve`]).

use crate::batching::{BatchMode, BatchingConfig};
use serde::{Deserialize, Serialize};
use sluice_runtime::InstanceLimits;
use std::time::Duration;

/// Limits of one model's instances and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Wall-clock limit of one `predict` call inside the sandbox.
    pub call_timeout: Duration,
    /// Cap on each linear memory of an instance, and on the bytes of host compute tensors it
    /// may hold.
    pub memory_bytes: usize,
    /// Requests that may wait in each replica's queue before new ones are refused.
    pub queue_capacity: usize,
    /// Largest request accepted (the bytes of all its input tensors).
    pub max_request_bytes: usize,
    /// Largest answer returned to one request (the bytes of its output tensors).
    pub max_response_bytes: usize,
    /// Replace an instance with a fresh one after this many calls (0: never). Bounds what a
    /// guest that leaks memory per call can accumulate.
    pub max_calls_per_instance: u64,
}

impl Default for ModelLimits {
    fn default() -> Self {
        let instance = InstanceLimits::default();
        ModelLimits {
            call_timeout: instance.call_timeout,
            memory_bytes: instance.memory_bytes,
            queue_capacity: 1024,
            max_request_bytes: 16 << 20,
            max_response_bytes: 16 << 20,
            max_calls_per_instance: instance.max_calls_per_instance,
        }
    }
}

impl ModelLimits {
    /// The part the sandbox enforces on each instance.
    pub fn instance(&self) -> InstanceLimits {
        InstanceLimits {
            call_timeout: self.call_timeout,
            memory_bytes: self.memory_bytes,
            max_calls_per_instance: self.max_calls_per_instance,
        }
    }
}

/// Limits as a request gives them: `None` takes the server's default.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsRequest {
    pub call_timeout: Option<Duration>,
    pub memory_bytes: Option<usize>,
    pub queue_capacity: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub max_calls_per_instance: Option<u64>,
}

impl LimitsRequest {
    /// The limits, with what is not given taken from `defaults`.
    pub fn resolve(&self, defaults: ModelLimits) -> ModelLimits {
        ModelLimits {
            call_timeout: self.call_timeout.unwrap_or(defaults.call_timeout),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            queue_capacity: self.queue_capacity.unwrap_or(defaults.queue_capacity),
            max_request_bytes: self.max_request_bytes.unwrap_or(defaults.max_request_bytes),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            max_calls_per_instance: self
                .max_calls_per_instance
                .unwrap_or(defaults.max_calls_per_instance),
        }
    }
}

/// The batching mode a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeRequest {
    /// AIMD (with the request's or the default step and backoff).
    Adaptive,
    /// A fixed batch size (1: no batching).
    Static(usize),
}

/// Batching as a request gives it: `None` takes the server's default.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchingRequest {
    pub mode: Option<ModeRequest>,
    pub step: Option<usize>,
    pub backoff: Option<f64>,
    pub slo: Option<Duration>,
    pub max_delay: Option<Duration>,
}

impl BatchingRequest {
    /// The batching config, with what is not given taken from `defaults`; an error names the
    /// field (`batching.backoff`, ...).
    pub fn resolve(&self, defaults: BatchingConfig) -> Result<BatchingConfig, String> {
        let (default_step, default_backoff) = match defaults.mode {
            BatchMode::Adaptive { step, backoff } => (step, backoff),
            BatchMode::Static { .. } => (4, 0.1),
        };
        let mode = match self.mode {
            Some(ModeRequest::Static(0)) => {
                return Err(
                    "batching.static_batch_size: static mode needs a batch size of at least 1"
                        .into(),
                );
            }
            Some(ModeRequest::Static(size)) => BatchMode::Static { size },
            Some(ModeRequest::Adaptive) | None => {
                let backoff = self.backoff.unwrap_or(default_backoff);
                if !(0.0..1.0).contains(&backoff) {
                    return Err(format!("batching.backoff: {backoff} is not in [0, 1)"));
                }
                BatchMode::Adaptive {
                    step: self.step.unwrap_or(default_step),
                    backoff,
                }
            }
        };
        Ok(BatchingConfig {
            mode,
            slo: self.slo.unwrap_or(defaults.slo),
            max_delay: self.max_delay.or(defaults.max_delay),
        })
    }

    /// The request that gives exactly `config`.
    pub fn exactly(config: BatchingConfig) -> BatchingRequest {
        let (mode, step, backoff) = match config.mode {
            BatchMode::Adaptive { step, backoff } => {
                (ModeRequest::Adaptive, Some(step), Some(backoff))
            }
            BatchMode::Static { size } => (ModeRequest::Static(size), None, None),
        };
        BatchingRequest {
            mode: Some(mode),
            step,
            backoff,
            slo: Some(config.slo),
            max_delay: config.max_delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_take_the_defaults() {
        let defaults = ModelLimits::default();
        assert_eq!(LimitsRequest::default().resolve(defaults), defaults);
        let partial = LimitsRequest {
            call_timeout: Some(Duration::from_millis(250)),
            ..LimitsRequest::default()
        };
        let limits = partial.resolve(defaults);
        assert_eq!(limits.call_timeout, Duration::from_millis(250));
        assert_eq!(limits.memory_bytes, defaults.memory_bytes);
    }

    #[test]
    fn batching_requests_resolve_and_bad_ones_name_the_field() {
        let defaults = BatchingConfig::default();
        assert_eq!(BatchingRequest::default().resolve(defaults), Ok(defaults));
        for config in [
            defaults,
            BatchingConfig {
                mode: BatchMode::Static { size: 16 },
                slo: Duration::from_millis(20),
                max_delay: Some(Duration::from_micros(500)),
            },
        ] {
            assert_eq!(
                BatchingRequest::exactly(config).resolve(defaults),
                Ok(config)
            );
        }
        let static_zero = BatchingRequest {
            mode: Some(ModeRequest::Static(0)),
            ..BatchingRequest::default()
        };
        let err = static_zero.resolve(defaults).unwrap_err();
        assert!(err.starts_with("batching.static_batch_size"), "{err}");
        let bad_backoff = BatchingRequest {
            backoff: Some(1.5),
            ..BatchingRequest::default()
        };
        assert!(
            bad_backoff
                .resolve(defaults)
                .unwrap_err()
                .starts_with("batching.backoff")
        );
    }
}
