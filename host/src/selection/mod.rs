//! Model selection (Clipper's top layer): applications that link several models behind one
//! name, a latency objective and a default output; a policy that picks the model(s) for each
//! query and learns from feedback; state per application or per user, persisted.
//!
//! A query on an application goes: policy chooses models → each chosen model's answer comes
//! from the prediction cache or from its batching queue (run as a task of its own) → at the
//! application's deadline whatever has arrived is combined; missing models are named; if
//! nothing arrived, or the combined confidence is below the threshold, the default output is
//! returned, marked as such. A straggler's late answer still lands in the cache, so feedback
//! (which joins the label with what every linked model said) finds it there.

pub mod app;
pub mod policy;

use crate::cache::{CacheKey, InputDigest, Lookup, PredictionCache, digest_inputs};
use crate::registry::{Registry, RegistryError};
use crate::runtime::Tensor;
use crate::store::blocking;
pub use crate::store::{Store, StoreError};
use app::{ApplicationSpec, check_label, read_predictions, split_link};
pub use policy::{ArmState, Policy, PolicyConfig, Prediction, SelectionState};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// Recent queries remembered for joining feedback with the model(s) that answered.
const RECENT_QUERIES: usize = 100_000;

/// Selection states kept in memory by default; beyond it the least recently used ones that no
/// call is using are dropped (every state is in the store, and comes back from it when needed).
const STATES_IN_MEMORY: usize = 100_000;

/// Why a selection call failed.
#[derive(Debug, Error)]
pub enum SelectionError {
    /// No application has this name.
    #[error("application `{0}` is not registered")]
    AppNotFound(String),
    /// Registering a name that exists.
    #[error("application `{0}` is already registered")]
    AppExists(String),
    /// Linking a model that is linked already.
    #[error("model `{model}` is already linked to application `{app}`")]
    AlreadyLinked {
        /// The application.
        app: String,
        /// The link.
        model: String,
    },
    /// Unlinking a model that is not linked.
    #[error("model `{model}` is not linked to application `{app}` (linked: {linked:?})")]
    NotLinked {
        /// The application.
        app: String,
        /// The link.
        model: String,
        /// What is linked.
        linked: Vec<String>,
    },
    /// The request is malformed; the message starts with the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The application cannot answer yet.
    #[error("application `{0}` has no linked models; link one with `sluice apps link {0} MODEL`")]
    NoModels(String),
    /// A linked model is missing or failed in a way that concerns the request as a whole.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The durable store failed; the change was not made.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row of an application's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct RowAnswer {
    /// The prediction (the default output when `default_reason` is set).
    pub prediction: Prediction,
    /// The weight share of the answering models that agrees (1 for single-model policies;
    /// 0 for a default).
    pub confidence: f64,
    /// Why the default output was returned, if it was.
    pub default_reason: Option<String>,
}

/// A linked model that did not contribute to an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingModel {
    /// The link (`name` or `name@version`).
    pub model: String,
    /// A straggler past the deadline, or the failure.
    pub reason: String,
}

/// An application's answer to a query.
#[derive(Clone, Debug)]
pub struct AppAnswer {
    /// One per input row.
    pub rows: Vec<RowAnswer>,
    /// The models asked.
    pub queried: Vec<String>,
    /// Those that answered in time.
    pub answered: Vec<String>,
    /// Those that did not.
    pub missing: Vec<MissingModel>,
    /// Answers served from the cache (hits or coalesced).
    pub cache_hits: usize,
}

/// What feedback did.
#[derive(Clone, Debug)]
pub struct FeedbackOutcome {
    /// The application as it was when the feedback was applied.
    pub spec: ApplicationSpec,
    /// Each linked model's mean loss over the rows (`None` where it failed).
    pub losses: Vec<(String, Option<f64>)>,
    /// The models that had answered the judged query (the ones a bandit learns about).
    pub chosen: Vec<String>,
    /// The state after the update (already durable).
    pub state: SelectionState,
}

struct App {
    spec: ApplicationSpec,
    rng: Arc<Mutex<StdRng>>,
}

type StateKey = (String, String);
type SharedState = Arc<tokio::sync::Mutex<SelectionState>>;

/// The applications of a server and their selection state.
pub struct Applications {
    registry: Arc<Registry>,
    cache: Arc<PredictionCache>,
    store: Store,
    apps: RwLock<BTreeMap<String, Arc<App>>>,
    states: Mutex<lru::LruCache<StateKey, SharedState>>,
    states_in_memory: usize,
    recent: Mutex<lru::LruCache<(String, String, InputDigest), Vec<String>>>,
}

/// Why a model gave no answer.
#[derive(Clone, Debug)]
enum Failure {
    /// The model refused the request's inputs (the request's fault).
    BadRequest(String),
    /// The model failed, or its answer could not be read.
    Model(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::BadRequest(m) | Failure::Model(m) => m,
        }
    }
}

/// A model's answer as predictions per row, or why there is none.
type ModelAnswer = Result<Vec<Prediction>, Failure>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The batch size of a request: the first dimension of its tensors, which must agree.
fn rows_of(inputs: &[Tensor]) -> Result<usize, SelectionError> {
    let first = inputs
        .first()
        .ok_or_else(|| SelectionError::InvalidArgument("inputs: at least one tensor".into()))?;
    let rows = *first.shape.first().ok_or_else(|| {
        SelectionError::InvalidArgument(format!(
            "inputs: tensor `{}` has no batch dimension",
            first.name
        ))
    })? as usize;
    if rows == 0 {
        return Err(SelectionError::InvalidArgument(format!(
            "inputs: tensor `{}` has 0 rows",
            first.name
        )));
    }
    Ok(rows)
}

impl Applications {
    /// Opens the applications kept in `store`, answering with the models of `registry`.
    pub fn open(
        registry: Arc<Registry>,
        cache: Arc<PredictionCache>,
        store: Store,
    ) -> Result<Applications, StoreError> {
        let apps = store
            .applications()?
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(App::new(spec))))
            .collect();
        Ok(Applications {
            registry,
            cache,
            store,
            apps: RwLock::new(apps),
            states: Mutex::new(lru::LruCache::unbounded()),
            states_in_memory: STATES_IN_MEMORY,
            recent: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(RECENT_QUERIES).expect("non-zero"),
            )),
        })
    }

    /// Keeps at most `states` (application, user) states in memory (default 100 000); the
    /// others stay in the store only.
    pub fn with_states_in_memory(mut self, states: usize) -> Applications {
        self.states_in_memory = states.max(1);
        self
    }

    /// Drops the states of `app` (or of one of its users) from memory.
    fn forget_states(&self, app: &str, user: Option<&str>) {
        let mut states = lock(&self.states);
        let doomed: Vec<StateKey> = states
            .iter()
            .map(|(key, _)| key)
            .filter(|(a, u)| a == app && user.is_none_or(|user| user == u))
            .cloned()
            .collect();
        for key in doomed {
            states.pop(&key);
        }
    }

    fn app(&self, name: &str) -> Result<Arc<App>, SelectionError> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| SelectionError::AppNotFound(name.to_string()))
    }

    /// The spec of `name`, if registered.
    pub fn get(&self, name: &str) -> Option<ApplicationSpec> {
        self.app(name).ok().map(|app| app.spec.clone())
    }

    /// Every application, by name.
    pub fn list(&self) -> Vec<ApplicationSpec> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        apps.values().map(|app| app.spec.clone()).collect()
    }

    fn check_links(&self, spec: &ApplicationSpec) -> Result<(), SelectionError> {
        for link in &spec.models {
            let (name, version) = split_link(link);
            let model = self.registry.get(name, version)?;
            spec.check_model(&model.info)
                .map_err(|e| SelectionError::InvalidArgument(format!("models: {e}")))?;
        }
        Ok(())
    }

    /// Stores a changed spec durably, then makes it live (keeping the app's RNG).
    async fn commit(
        &self,
        spec: ApplicationSpec,
        rng: Option<Arc<Mutex<StdRng>>>,
    ) -> Result<(), SelectionError> {
        let store = self.store.clone();
        let stored = spec.clone();
        blocking(move || store.put_application(&stored)).await?;
        let app = match rng {
            Some(rng) => App { spec, rng },
            None => App::new(spec),
        };
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        apps.insert(app.spec.name.clone(), Arc::new(app));
        Ok(())
    }

    /// Registers an application. Its linked models must be loaded and have its output.
    pub async fn register(&self, spec: ApplicationSpec) -> Result<(), SelectionError> {
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        if self.app(&spec.name).is_ok() {
            return Err(SelectionError::AppExists(spec.name));
        }
        self.check_links(&spec)?;
        self.commit(spec, None).await
    }

    /// Links a model (`name` or `name@version`) to an application; its weight starts at the
    /// mean of the others'.
    pub async fn link(&self, app: &str, model: &str) -> Result<ApplicationSpec, SelectionError> {
        let current = self.app(app)?;
        if current.spec.models.iter().any(|m| m == model) {
            return Err(SelectionError::AlreadyLinked {
                app: app.to_string(),
                model: model.to_string(),
            });
        }
        let mut spec = current.spec.clone();
        spec.models.push(model.to_string());
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        self.check_links(&ApplicationSpec {
            models: vec![model.to_string()],
            ..spec.clone()
        })?;
        self.commit(spec.clone(), Some(current.rng.clone())).await?;
        Ok(spec)
    }

    /// Unlinks a model from an application; its learned weight is dropped.
    pub async fn unlink(&self, app: &str, model: &str) -> Result<ApplicationSpec, SelectionError> {
        let current = self.app(app)?;
        let mut spec = current.spec.clone();
        let before = spec.models.len();
        spec.models.retain(|m| m != model);
        if spec.models.len() == before {
            return Err(SelectionError::NotLinked {
                app: app.to_string(),
                model: model.to_string(),
                linked: current.spec.models.clone(),
            });
        }
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        self.commit(spec.clone(), Some(current.rng.clone())).await?;
        Ok(spec)
    }

    /// Deletes an application and all its selection state.
    pub async fn delete(&self, app: &str) -> Result<(), SelectionError> {
        self.app(app)?;
        let store = self.store.clone();
        let name = app.to_string();
        blocking(move || store.delete_application(&name)).await?;
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
        self.forget_states(app, None);
        Ok(())
    }

    /// The live state of `(app, user)`, loaded from the store on first use.
    async fn state(&self, app: &str, user: &str) -> Result<SharedState, SelectionError> {
        let key = (app.to_string(), user.to_string());
        if let Some(state) = lock(&self.states).get(&key) {
            return Ok(state.clone());
        }
        let store = self.store.clone();
        let (a, u) = key.clone();
        let stored = blocking(move || store.state(&a, &u)).await?;
        let mut states = lock(&self.states);
        // Another caller may have loaded it meanwhile: keep theirs.
        let state = states
            .get_or_insert(key, || {
                Arc::new(tokio::sync::Mutex::new(stored.unwrap_or_default()))
            })
            .clone();
        // Over the bound: drop the least recently used states that no call holds. One in use
        // stays, so two copies of a state are never live at once.
        let excess = states.len().saturating_sub(self.states_in_memory);
        let idle: Vec<StateKey> = states
            .iter()
            .rev()
            .filter(|(_, s)| Arc::strong_count(s) == 1)
            .take(excess)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            states.pop(&key);
        }
        Ok(state)
    }

    /// The application and the selection state of `(app, user)` (user empty: the
    /// application-wide state), with every linked model present.
    pub async fn selection_state(
        &self,
        app: &str,
        user: &str,
    ) -> Result<(ApplicationSpec, SelectionState), SelectionError> {
        let spec = self.app(app)?.spec.clone();
        let shared = self.state(app, user).await?;
        let mut state = shared.lock().await.clone();
        state.sync(&spec.models);
        Ok((spec, state))
    }

    /// Forgets what was learned for one user of `app`, or for all of them (`None`).
    pub async fn reset(&self, app: &str, user: Option<&str>) -> Result<(), SelectionError> {
        self.app(app)?;
        let store = self.store.clone();
        let (name, who) = (app.to_string(), user.map(str::to_string));
        blocking(move || store.delete_states(&name, who.as_deref())).await?;
        self.forget_states(app, user);
        Ok(())
    }

    /// Answers a query on `app` for `user` (empty: no user).
    pub async fn predict(
        &self,
        app_name: &str,
        user: &str,
        inputs: Vec<Tensor>,
        bypass_cache: bool,
    ) -> Result<AppAnswer, SelectionError> {
        let app = self.app(app_name)?;
        let spec = &app.spec;
        if spec.models.is_empty() {
            return Err(SelectionError::NoModels(spec.name.clone()));
        }
        let rows = rows_of(&inputs)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.slo_ms);
        let shared = self.state(app_name, user).await?;
        let (state, chosen) = {
            let mut state = shared.lock().await;
            state.sync(&spec.models);
            let mut rng = lock(&app.rng);
            let chosen = spec.policy.select(&state, &spec.models, &mut *rng);
            (state.clone(), chosen)
        };
        let digest = digest_inputs(&inputs);
        let chosen_links: Vec<String> = chosen.iter().map(|&i| spec.models[i].clone()).collect();
        lock(&self.recent).put(
            (app_name.to_string(), user.to_string(), digest),
            chosen_links.clone(),
        );
        let inputs = Arc::new(inputs);
        let (sender, mut receiver) = mpsc::channel(chosen.len());
        for (slot, link) in chosen_links.iter().enumerate() {
            let sender = sender.clone();
            let job = self.answer_job(link, spec, rows, digest, inputs.clone(), bypass_cache);
            // A task of its own: a straggler keeps running past the deadline and fills the
            // cache for the feedback to come.
            tokio::spawn(async move {
                let answer = job.await;
                let _ = sender.send((slot, answer)).await;
            });
        }
        drop(sender);
        let mut answers: Vec<Option<(ModelAnswer, Lookup)>> = vec![None; chosen.len()];
        let collect = async {
            while let Some((slot, answer)) = receiver.recv().await {
                answers[slot] = Some(answer);
            }
        };
        let _ = tokio::time::timeout_at(deadline, collect).await;
        // Every model refused the inputs: the request is malformed, not the models.
        let refusals: Vec<&str> = answers
            .iter()
            .filter_map(|a| match a {
                Some((Err(Failure::BadRequest(m)), _)) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        if refusals.len() == answers.len() {
            return Err(SelectionError::InvalidArgument(format!(
                "inputs: {}",
                refusals.join("; ")
            )));
        }
        Ok(self.combine(spec, &state, &chosen_links, answers, rows))
    }

    /// The future of one model's answer: resolve the link, then the cache or the model.
    fn answer_job(
        &self,
        link: &str,
        spec: &ApplicationSpec,
        rows: usize,
        digest: InputDigest,
        inputs: Arc<Vec<Tensor>>,
        bypass_cache: bool,
    ) -> impl Future<Output = (ModelAnswer, Lookup)> + Send + 'static {
        let (name, version) = split_link(link);
        let model = self.registry.get(name, version);
        let cache = self.cache.clone();
        let (output, kind) = (spec.output.clone(), spec.kind);
        async move {
            let model = match model {
                Ok(model) => model,
                Err(e) => return (Err(Failure::Model(e.to_string())), Lookup::Miss),
            };
            let key = CacheKey {
                model: model.name.clone(),
                version: model.version.clone(),
                input: digest,
            };
            let (result, lookup) = cache
                .get_or_compute(key, bypass_cache, || {
                    crate::metrics::predict_recorded(&model, inputs.to_vec(), None)
                })
                .await;
            crate::metrics::record_cache(&model.name, lookup);
            let answer = result
                .map_err(|e| match &*e {
                    RegistryError::InvalidInput { .. }
                    | RegistryError::Call {
                        error: crate::runtime::CallError::RejectedInput(_),
                        ..
                    } => Failure::BadRequest(e.to_string()),
                    _ => Failure::Model(e.to_string()),
                })
                .and_then(|outputs| {
                    read_predictions(&outputs, &output, kind, rows).map_err(Failure::Model)
                });
            (answer, lookup)
        }
    }

    fn combine(
        &self,
        spec: &ApplicationSpec,
        state: &SelectionState,
        chosen: &[String],
        answers: Vec<Option<(ModelAnswer, Lookup)>>,
        rows: usize,
    ) -> AppAnswer {
        let mut answered = Vec::new();
        let mut missing = Vec::new();
        let mut cache_hits = 0;
        let mut per_model: Vec<Option<Vec<Prediction>>> = Vec::new();
        for (link, answer) in chosen.iter().zip(answers) {
            match answer {
                Some((Ok(predictions), lookup)) => {
                    cache_hits += usize::from(lookup != Lookup::Miss);
                    answered.push(link.clone());
                    per_model.push(Some(predictions));
                }
                Some((Err(failure), _)) => {
                    missing.push(MissingModel {
                        model: link.clone(),
                        reason: format!("failed: {}", failure.message()),
                    });
                    per_model.push(None);
                }
                None => {
                    missing.push(MissingModel {
                        model: link.clone(),
                        reason: format!("no answer within the {} ms SLO", spec.slo_ms),
                    });
                    per_model.push(None);
                }
            }
        }
        let row_answers = (0..rows)
            .map(|row| {
                let row_predictions: Vec<Option<Prediction>> = per_model
                    .iter()
                    .map(|p| p.as_ref().map(|p| p[row]))
                    .collect();
                self.row_answer(spec, state, chosen, &row_predictions, &missing)
            })
            .collect();
        AppAnswer {
            rows: row_answers,
            queried: chosen.to_vec(),
            answered,
            missing,
            cache_hits,
        }
    }

    fn row_answer(
        &self,
        spec: &ApplicationSpec,
        state: &SelectionState,
        chosen: &[String],
        predictions: &[Option<Prediction>],
        missing: &[MissingModel],
    ) -> RowAnswer {
        let default = |reason: String, kind: &str| {
            crate::metrics::record_default_output(&spec.name, kind);
            RowAnswer {
                prediction: spec.default_output,
                confidence: 0.0,
                default_reason: Some(reason),
            }
        };
        match spec.policy.combine(state, chosen, predictions) {
            None => {
                let why: Vec<String> = missing
                    .iter()
                    .map(|m| format!("{}: {}", m.model, m.reason))
                    .collect();
                default(
                    format!("no model answered ({})", why.join("; ")),
                    "no-answer",
                )
            }
            Some(combined) if combined.confidence < spec.confidence_threshold => default(
                format!(
                    "confidence {:.3} is below the application's threshold {}",
                    combined.confidence, spec.confidence_threshold
                ),
                "low-confidence",
            ),
            Some(combined) => RowAnswer {
                prediction: combined.prediction,
                confidence: combined.confidence,
                default_reason: None,
            },
        }
    }

    /// Learns from the true `labels` of `inputs` (one per row): joins them with what each
    /// linked model said (from the cache, or by running it), updates the policy's state for
    /// `(app, user)` and stores it durably before returning.
    pub async fn feedback(
        &self,
        app_name: &str,
        user: &str,
        inputs: Vec<Tensor>,
        labels: Vec<Prediction>,
    ) -> Result<FeedbackOutcome, SelectionError> {
        let app = self.app(app_name)?;
        let spec = &app.spec;
        if spec.models.is_empty() {
            return Err(SelectionError::NoModels(spec.name.clone()));
        }
        let rows = rows_of(&inputs)?;
        if labels.len() != rows {
            return Err(SelectionError::InvalidArgument(format!(
                "labels: {} labels for {rows} input rows",
                labels.len()
            )));
        }
        for (i, label) in labels.iter().enumerate() {
            check_label(spec.kind, *label)
                .map_err(|e| SelectionError::InvalidArgument(format!("labels[{i}]: {e}")))?;
        }
        let digest = digest_inputs(&inputs);
        let inputs = Arc::new(inputs);
        let jobs: Vec<_> = spec
            .models
            .iter()
            .map(|link| {
                tokio::spawn(self.answer_job(link, spec, rows, digest, inputs.clone(), false))
            })
            .collect();
        let mut losses = Vec::with_capacity(jobs.len());
        for job in jobs {
            let loss = match job.await {
                Ok((Ok(predictions), _)) => Some(
                    predictions
                        .iter()
                        .zip(&labels)
                        .map(|(p, l)| policy::loss(*p, *l))
                        .sum::<f64>()
                        / rows as f64,
                ),
                _ => None,
            };
            losses.push(loss);
        }
        let recent = lock(&self.recent)
            .get(&(app_name.to_string(), user.to_string(), digest))
            .cloned();
        let shared = self.state(app_name, user).await?;
        let mut live = shared.lock().await;
        let mut next = live.clone();
        next.sync(&spec.models);
        // The models that answered the judged query; for an input never queried, the ones
        // the policy would pick now (as if it had been).
        let chosen: Vec<usize> = match recent {
            Some(links) => links
                .iter()
                .filter_map(|l| spec.models.iter().position(|m| m == l))
                .collect(),
            None => spec
                .policy
                .select(&next, &spec.models, &mut *lock(&app.rng)),
        };
        spec.policy
            .observe(&mut next, &spec.models, &chosen, &losses);
        let store = self.store.clone();
        let (a, u, stored) = (app_name.to_string(), user.to_string(), next.clone());
        blocking(move || store.put_state(&a, &u, &stored)).await?;
        *live = next.clone();
        Ok(FeedbackOutcome {
            spec: spec.clone(),
            losses: spec.models.iter().cloned().zip(losses).collect(),
            chosen: chosen.iter().map(|&i| spec.models[i].clone()).collect(),
            state: next,
        })
    }
}

impl App {
    fn new(spec: ApplicationSpec) -> App {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(spec.seed)));
        App { spec, rng }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, RuntimeConfig};

    fn applications(states_in_memory: usize) -> Applications {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        let cache = Arc::new(PredictionCache::new(1 << 20));
        Applications::open(registry, cache, Store::in_memory())
            .unwrap()
            .with_states_in_memory(states_in_memory)
    }

    #[tokio::test]
    async fn idle_states_leave_memory_and_come_back_from_the_store() {
        let apps = applications(1);
        let alice = apps.state("app", "alice").await.unwrap();
        {
            let mut state = alice.lock().await;
            state.feedback_count = 5;
            apps.store.put_state("app", "alice", &state).unwrap();
        }
        // Alice's state is in use: bob's arrival must not drop it.
        let bob = apps.state("app", "bob").await.unwrap();
        assert!(Arc::ptr_eq(
            &alice,
            &apps.state("app", "alice").await.unwrap()
        ));
        drop((alice, bob));
        // Now idle, alice's state gives way to carol's, and comes back from the store.
        apps.state("app", "carol").await.unwrap();
        assert!(
            lock(&apps.states).len() <= 2,
            "bounded once states are idle"
        );
        let again = apps.state("app", "alice").await.unwrap();
        assert_eq!(again.lock().await.feedback_count, 5);
    }
}
