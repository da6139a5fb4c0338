//! A model config file (TOML): the settings of one model version, used by `sluice load
//! --model-config` (with command-line flags on top) and as `config.toml` in a model
//! repository.
//!
//! ```toml
//! replicas = 2
//! min_replicas = 1            # with max_replicas: replicas sized by load in this range
//! max_replicas = 4            #   (replicas is then where it starts)
//! config = "params.slpm"      # passed to the model's init; relative to this file
//!
//! [batching]
//! mode = "adaptive"           # "adaptive" (AIMD), "static", or "none" (batch size 1)
//! slo_ms = 20                 # latency objective, and the default request deadline
//! step = 4                    # adaptive: rows added after a full batch within the SLO
//! backoff = 0.1               # adaptive: fraction cut after a batch over the SLO
//! batch_size = 16             # static: the batch size
//! max_delay_us = 0            # delayed batching: wait this long for a fuller batch (0: off)
//!
//! [limits]
//! call_timeout_ms = 1000
//! memory_mib = 256
//! queue_capacity = 1024       # per replica
//! max_request_bytes = 16777216
//! max_response_bytes = 16777216
//! max_calls_per_instance = 0  # replace an instance after this many calls (0: never)
//! ```
//! Every key is optional; what is missing takes the server's default.

use crate::autoscale::ReplicaRange;
use crate::settings::{BatchingRequest, LimitsRequest, ModeRequest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why a model config file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the model config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys.
    #[error("parsing the model config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A setting is not valid (the message names it).
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, ConfigError>;

/// A model config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfigFile {
    replicas: Option<u32>,
    min_replicas: Option<u32>,
    max_replicas: Option<u32>,
    config: Option<PathBuf>,
    #[serde(default)]
    batching: BatchingSection,
    #[serde(default)]
    limits: LimitsSection,
}

/// `[batching]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSection {
    mode: Option<String>,
    slo_ms: Option<u64>,
    step: Option<u32>,
    backoff: Option<f64>,
    batch_size: Option<u32>,
    max_delay_us: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    call_timeout_ms: Option<u64>,
    memory_mib: Option<u64>,
    queue_capacity: Option<u32>,
    max_request_bytes: Option<u64>,
    max_response_bytes: Option<u64>,
    max_calls_per_instance: Option<u64>,
}

/// Settings given on top of the file (the command line), each `None` when not given.
#[allow(missing_docs)]
#[derive(Debug, Default)]
pub struct Overrides {
    pub replicas: Option<u32>,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub config: Option<PathBuf>,
    pub mode: Option<String>,
    pub slo_ms: Option<u64>,
    pub step: Option<u32>,
    pub backoff: Option<f64>,
    pub batch_size: Option<u32>,
    pub max_delay_us: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub queue_capacity: Option<u32>,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_calls_per_instance: Option<u64>,
}

/// The settings of the file and the flags together; what neither gives is `None`, for the
/// server's default.
#[allow(missing_docs)]
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub replicas: u32,
    pub autoscale: Option<ReplicaRange>,
    pub config: Option<PathBuf>,
    pub batching: BatchingRequest,
    pub limits: LimitsRequest,
}

impl ModelConfigFile {
    /// Reads a file; its `config` path becomes relative to the file's directory.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: ModelConfigFile =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        if let (Some(config), Some(dir)) = (&file.config, path.parent()) {
            file.config = Some(dir.join(config));
        }
        Ok(file)
    }

    /// Applies `flags` on top of the file.
    pub fn resolve(self, flags: Overrides) -> Result<Resolved> {
        let b = self.batching;
        let mode_name = flags.mode.or(b.mode);
        let batch_size = flags.batch_size.or(b.batch_size);
        let mode = match mode_name.as_deref() {
            None => None,
            Some("adaptive") => Some(ModeRequest::Adaptive),
            Some("none") => Some(ModeRequest::Static(1)),
            Some("static") => match batch_size {
                Some(size) if size > 0 => Some(ModeRequest::Static(size as usize)),
                _ => {
                    return Err(ConfigError::Invalid(
                        "batching mode `static` needs a batch size (--batch-size or batch_size)"
                            .into(),
                    ));
                }
            },
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "unknown batching mode `{other}`: use adaptive, static or none"
                )));
            }
        };
        let limits = self.limits;
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let autoscale = ReplicaRange::new(
            flags.min_replicas.or(self.min_replicas).unwrap_or(0) as usize,
            flags.max_replicas.or(self.max_replicas).unwrap_or(0) as usize,
        )
        .map_err(ConfigError::Invalid)?;
        Ok(Resolved {
            replicas: flags.replicas.or(self.replicas).unwrap_or(1),
            autoscale,
            config: flags.config.or(self.config),
            batching: BatchingRequest {
                mode,
                step: flags.step.or(b.step).map(|s| s as usize),
                backoff: flags.backoff.or(b.backoff),
                slo: flags.slo_ms.or(b.slo_ms).map(Duration::from_millis),
                max_delay: flags
                    .max_delay_us
                    .or(b.max_delay_us)
                    .filter(|&us| us > 0)
                    .map(Duration::from_micros),
            },
            limits: LimitsRequest {
                call_timeout: flags
                    .call_timeout_ms
                    .or(limits.call_timeout_ms)
                    .map(Duration::from_millis),
                memory_bytes: flags
                    .memory_mib
                    .or(limits.memory_mib)
                    .map(|mib| bytes(mib.saturating_mul(1 << 20))),
                queue_capacity: flags
                    .queue_capacity
                    .or(limits.queue_capacity)
                    .map(|n| n as usize),
                max_request_bytes: flags
                    .max_request_bytes
                    .or(limits.max_request_bytes)
                    .map(bytes),
                max_response_bytes: flags
                    .max_response_bytes
                    .or(limits.max_response_bytes)
                    .map(bytes),
                max_calls_per_instance: flags
                    .max_calls_per_instance
                    .or(limits.max_calls_per_instance),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_paths_are_relative_to_it() {
        let dir = std::env::temp_dir().join(format!("sluice-model-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.toml");
        std::fs::write(
            &path,
            "replicas = 3\nmin_replicas = 1\nmax_replicas = 4\nconfig = \"params.bin\"\n[batching]\nmode = \"static\"\nbatch_size = 8\nslo_ms = 20\n[limits]\nmemory_mib = 64\n",
        )
        .unwrap();
        let resolved = ModelConfigFile::read(&path)
            .unwrap()
            .resolve(Overrides {
                replicas: Some(2),
                max_delay_us: Some(500),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(resolved.replicas, 2);
        assert_eq!(resolved.autoscale, Some(ReplicaRange { min: 1, max: 4 }));
        assert_eq!(resolved.config, Some(dir.join("params.bin")));
        assert_eq!(resolved.batching.mode, Some(ModeRequest::Static(8)));
        assert_eq!(resolved.batching.slo, Some(Duration::from_millis(20)));
        assert_eq!(
            resolved.batching.max_delay,
            Some(Duration::from_micros(500))
        );
        assert_eq!(resolved.limits.memory_bytes, Some(64 << 20));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_and_modes_are_explained() {
        let err = toml::from_str::<ModelConfigFile>("replica = 2").unwrap_err();
        assert!(err.to_string().contains("unknown field `replica`"), "{err}");
        let static_without_size = Overrides {
            mode: Some("static".into()),
            ..Overrides::default()
        };
        let err = ModelConfigFile::default()
            .resolve(static_without_size)
            .unwrap_err();
        assert!(err.to_string().contains("needs a batch size"), "{err}");
        let none = Overrides {
            mode: Some("none".into()),
            ..Overrides::default()
        };
        let resolved = ModelConfigFile::default().resolve(none).unwrap();
        assert_eq!(resolved.batching.mode, Some(ModeRequest::Static(1)));
    }
}
