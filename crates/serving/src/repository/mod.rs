//! The model repository: a directory the server loads models from, and optionally watches.
//!
//! ```text
//! DIR/<model>/model.toml               optional: which versions to serve (the version policy)
//! DIR/<model>/<version>/model.wasm     the component
//! DIR/<model>/<version>/config.toml    optional: replicas (or a min/max range), init config file, [batching], [limits]
//! DIR/<model>/<version>/<name>.onnx    optional: graphs the model loads by name through wasi:nn
//!                                      (weights kept as external data sit beside them)
//! DIR/<model>/<version>/model.onnx     without a model.wasm: the graph is the model, served by
//!                                      a bundled runner (natively when the server has ONNX
//!                                      Runtime, else in the sandbox), as `sluice load --onnx`
//! ```
//!
//! `model.toml` holds one key, `versions`: `"all"` (the default), `{ latest = N }` (the N
//! highest) or `{ specific = ["1", "3"] }`.
//!
//! [`Repository::sync`] makes the registry match the directory: versions that appeared (or
//! whose files changed) are compiled and instantiated in the background and then switched in;
//! versions that disappeared are unloaded (they finish the requests they accepted). A version
//! that fails to load is reported (`Failed` in `ListModels`, and the log) and never replaces one
//! that works. Versions load in ascending order (numeric when the labels are numbers), so the
//! highest becomes the default unless an operator pinned another with `set-version`.
//! [`Repository::watch`] runs `sync` whenever the directory changes.

pub mod config;

use crate::batching::BatchingConfig;
use crate::onnx::{OnnxGraph, OnnxRunner, OnnxRunners};
use crate::registry::{GraphRequest, GraphSource, LoadRequest, Registry};
use crate::settings::ModelLimits;
use config::{ModelConfigFile, Overrides};
use notify::Watcher;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The component file of a version directory.
pub const COMPONENT_FILE: &str = "model.wasm";
/// The graph file of a version directory that has no component.
pub const GRAPH_FILE: &str = "model.onnx";
/// The optional config file of a version directory.
pub const CONFIG_FILE: &str = "config.toml";
/// How long the watcher waits for a burst of file events to settle before syncing.
const SETTLE: Duration = Duration::from_millis(300);

/// Why the repository could not be read or watched.
#[derive(Debug, Error)]
pub enum RepositoryError {
    /// The directory could not be listed.
    #[error("reading the model repository {path}: {source}")]
    Read {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The watcher could not be started.
    #[error("watching the model repository: {0}")]
    Watch(#[from] notify::Error),
}

/// The model-level file with the version policy.
pub const POLICY_FILE: &str = "model.toml";

/// Which of a model's versions to serve.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// Every version present.
    All,
    /// The `n` highest versions.
    Latest(usize),
    /// Only these versions.
    Specific(Vec<String>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    versions: VersionPolicy,
}

impl VersionPolicy {
    /// Reads `DIR/<model>/model.toml`; no file means [`VersionPolicy::All`].
    fn read(model_dir: &Path) -> Result<Self, String> {
        let path = model_dir.join(POLICY_FILE);
        if !path.exists() {
            return Ok(VersionPolicy::All);
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: PolicyFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file.versions)
    }

    /// Keeps the versions the policy selects from `versions` (sorted ascending).
    fn select<T>(&self, versions: Vec<(String, T)>) -> Vec<(String, T)> {
        match self {
            VersionPolicy::All => versions,
            VersionPolicy::Latest(n) => {
                let skip = versions.len().saturating_sub(*n);
                versions.into_iter().skip(skip).collect()
            }
            VersionPolicy::Specific(wanted) => versions
                .into_iter()
                .filter(|(v, _)| wanted.contains(v))
                .collect(),
        }
    }
}

/// A version directory as last seen: the name, size and modification time of each file.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

/// What one `sync` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// `(model, version)` loaded or reloaded.
    pub loaded: Vec<(String, String)>,
    /// `(model, version, reason)` that failed to load.
    pub failed: Vec<(String, String, String)>,
    /// `(model, version)` unloaded because their directory is gone.
    pub unloaded: Vec<(String, String)>,
}

/// A model repository bound to a registry.
pub struct Repository {
    dir: PathBuf,
    registry: Arc<Registry>,
    limits: ModelLimits,
    batching: BatchingConfig,
    onnx_runners: OnnxRunners,
    /// The fingerprint of every version last synced, loaded or failed.
    seen: tokio::sync::Mutex<BTreeMap<(String, String), Fingerprint>>,
    /// Syncs run so far (the watch's and the API's).
    syncs: AtomicU64,
}

/// Whether a file event under the repository may change what it serves. Opening and reading
/// (`Access` events, which inotify reports too) do not: the sync itself opens every directory,
/// and counting those would make each sync schedule the next, forever.
fn is_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(kind) => kind == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// Orders version labels numerically when both are numbers, else as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            meta.is_file()
                .then(|| (name, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// The graphs of a version directory: each `<name>.onnx`, loaded by `name`.
fn graphs_in(dir: &Path) -> Vec<GraphRequest> {
    let mut graphs: Vec<GraphRequest> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "onnx") && path.is_file())
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().into_owned();
            Some(GraphRequest {
                name,
                source: GraphSource::File(path),
            })
        })
        .collect();
    graphs.sort_by(|a, b| a.name.cmp(&b.name));
    graphs
}

fn subdirectories(dir: &Path) -> Result<Vec<(String, PathBuf)>, RepositoryError> {
    let read = |source| RepositoryError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

impl Repository {
    /// A repository at `dir`; models without their own settings get `limits` and `batching`.
    pub fn new(
        dir: PathBuf,
        registry: Arc<Registry>,
        limits: ModelLimits,
        batching: BatchingConfig,
    ) -> Self {
        Repository {
            dir,
            registry,
            limits,
            batching,
            onnx_runners: OnnxRunners::default(),
            seen: tokio::sync::Mutex::default(),
            syncs: AtomicU64::new(0),
        }
    }

    /// Serves version directories that hold a `model.onnx` and no component with these
    /// runners (without them, such a version fails to load and says why).
    pub fn with_onnx_runners(mut self, runners: OnnxRunners) -> Self {
        self.onnx_runners = runners;
        self
    }

    /// The version directories present now, in load order.
    fn scan(&self) -> Result<Vec<(String, String, PathBuf)>, RepositoryError> {
        let mut versions = Vec::new();
        for (model, model_dir) in subdirectories(&self.dir)? {
            let mut found: Vec<(String, PathBuf)> = subdirectories(&model_dir)?
                .into_iter()
                .filter(|(_, dir)| {
                    dir.join(COMPONENT_FILE).is_file() || dir.join(GRAPH_FILE).is_file()
                })
                .collect();
            found.sort_by(|a, b| version_order(&a.0, &b.0));
            let policy = VersionPolicy::read(&model_dir).unwrap_or_else(|e| {
                tracing::error!(%model, error = %format!("{e:#}"), "bad version policy; serving all versions");
                VersionPolicy::All
            });
            versions.extend(
                policy
                    .select(found)
                    .into_iter()
                    .map(|(version, dir)| (model.clone(), version, dir)),
            );
        }
        Ok(versions)
    }

    /// Reads a version directory into a load request: its component, or else its
    /// `model.onnx` with a runner.
    async fn request(&self, model: &str, version: &str, dir: &Path) -> Result<LoadRequest, String> {
        let config_path = dir.join(CONFIG_FILE);
        let file = if config_path.exists() {
            ModelConfigFile::read(&config_path).map_err(|e| e.to_string())?
        } else {
            ModelConfigFile::default()
        };
        let settings = file
            .resolve(Overrides::default())
            .map_err(|e| e.to_string())?;
        let component_path = dir.join(COMPONENT_FILE);
        let (component, config, graphs) = if component_path.is_file() {
            let component = std::fs::read(&component_path)
                .map_err(|e| format!("reading {}: {e}", component_path.display()))?;
            let config = match &settings.config {
                Some(path) => std::fs::read(path)
                    .map_err(|e| format!("reading the init config {}: {e}", path.display()))?,
                None => Vec::new(),
            };
            (component, config, graphs_in(dir))
        } else {
            if settings.config.is_some() {
                return Err(format!(
                    "{}: `config` must be unset beside {GRAPH_FILE} (the graph is the model)",
                    config_path.display()
                ));
            }
            let graph = OnnxGraph::File(dir.join(GRAPH_FILE));
            let engine = self.registry.graph_engine();
            let onnx = self
                .onnx_runners
                .model(engine, graph, OnnxRunner::Auto)
                .await
                .map_err(|e| e.to_string())?;
            (onnx.component, onnx.config, onnx.graphs)
        };
        Ok(LoadRequest {
            component,
            config,
            graphs,
            name: Some(model.to_string()),
            version: Some(version.to_string()),
            replicas: settings.replicas as usize,
            autoscale: settings.autoscale,
            limits: settings.limits.resolve(self.limits),
            batching: settings.batching.resolve(self.batching)?,
        })
    }

    /// Makes the registry match the directory. Only one sync runs at a time, and it finishes
    /// even if the caller stops waiting.
    pub async fn sync(self: &Arc<Self>) -> Result<SyncReport, RepositoryError> {
        let repository = self.clone();
        crate::to_completion(async move { repository.sync_now().await }).await
    }

    /// How many syncs have run (each scans every version directory).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    async fn sync_now(&self) -> Result<SyncReport, RepositoryError> {
        let mut seen = self.seen.lock().await;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let present = self.scan()?;
        let mut report = SyncReport::default();
        for (model, version, dir) in &present {
            let key = (model.clone(), version.clone());
            let print = fingerprint(dir);
            if seen.get(&key) == Some(&print) {
                continue;
            }
            seen.insert(key.clone(), print);
            let loaded = match self.request(model, version, dir).await {
                Ok(request) => self.registry.load(request).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match loaded {
                Ok(_) => report.loaded.push(key),
                Err(reason) => {
                    tracing::error!(%model, %version, %reason, "repository version failed to load");
                    report.failed.push((key.0, key.1, reason));
                }
            }
        }
        let present: HashSet<(&str, &str)> = present
            .iter()
            .map(|(model, version, _)| (model.as_str(), version.as_str()))
            .collect();
        let gone: Vec<(String, String)> = seen
            .keys()
            .filter(|(m, v)| !present.contains(&(m.as_str(), v.as_str())))
            .cloned()
            .collect();
        for key in gone {
            seen.remove(&key);
            if self.registry.unload(&key.0, Some(&key.1)).is_ok() {
                report.unloaded.push(key);
            }
        }
        if report != SyncReport::default() {
            tracing::info!(loaded = ?report.loaded, failed = report.failed.len(),
                unloaded = ?report.unloaded, "model repository synced");
        }
        Ok(report)
    }

    /// The model directories present (whether or not they are loaded).
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        Ok(subdirectories(&self.dir)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Loads `model` again from its directory even if its files did not change (e.g. after an
    /// unload through the API), then syncs the rest.
    pub async fn reload(self: &Arc<Self>, model: &str) -> Result<SyncReport, RepositoryError> {
        let (repository, model) = (self.clone(), model.to_string());
        crate::to_completion(async move {
            repository.seen.lock().await.retain(|(m, _), _| *m != model);
            repository.sync_now().await
        })
        .await
    }

    /// Syncs whenever files under the directory change, until the returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<RepositoryWatcher, RepositoryError> {
        let (changed, mut changes) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| is_change(&event)) {
                    let _ = changed.try_send(());
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        let repository = self.clone();
        let task = tokio::spawn(async move {
            while changes.recv().await.is_some() {
                // Let a burst of events (a file being copied in) settle first.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                if let Err(e) = repository.sync().await {
                    tracing::error!(error = %e, "model repository sync failed");
                }
            }
        });
        Ok(RepositoryWatcher {
            _watcher: watcher,
            task,
        })
    }
}

/// Keeps a repository watched; dropping it stops watching.
pub struct RepositoryWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RepositoryWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policies_select_versions() {
        let versions = || {
            vec![
                ("1".to_string(), ()),
                ("2".to_string(), ()),
                ("10".to_string(), ()),
            ]
        };
        let labels = |v: Vec<(String, ())>| v.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
        assert_eq!(
            labels(VersionPolicy::All.select(versions())),
            ["1", "2", "10"]
        );
        assert_eq!(
            labels(VersionPolicy::Latest(2).select(versions())),
            ["2", "10"]
        );
        let specific = VersionPolicy::Specific(vec!["1".into(), "10".into()]);
        assert_eq!(labels(specific.select(versions())), ["1", "10"]);
        let parsed: PolicyFile = toml::from_str("versions = { latest = 1 }").unwrap();
        assert_eq!(parsed.versions, VersionPolicy::Latest(1));
        let parsed: PolicyFile = toml::from_str("versions = \"all\"").unwrap();
        assert_eq!(parsed.versions, VersionPolicy::All);
    }

    #[test]
    fn numeric_versions_sort_as_numbers() {
        let mut versions = vec!["10", "2", "1", "beta"];
        versions.sort_by(|a, b| version_order(a, b));
        assert_eq!(versions, ["1", "2", "10", "beta"]);
    }
}
