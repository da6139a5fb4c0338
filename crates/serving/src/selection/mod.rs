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

//!
//! The parts, one job each: [`app`] (what an application is), `catalog` (the registered
//! applications, durable), `states` (the live per-user selection states, bounded), `recent`
//! (which models answered a recent query, for feedback), `fanout` (asking models under a
//! deadline), `combine` (one answer per row, or the default) and `feedback` (learning).
//!
//! With a shared store (several servers as replicas), the applications and states other
//! servers change are read again when the store announces the change, and which models
//! answered a query is shared for [`SHARED_QUERY_TTL`], so feedback may reach any server.

pub mod app;
mod catalog;
mod combine;
mod error;
mod fanout;
mod feedback;
pub mod policy;
mod recent;
mod states;

use crate::cache::{InputDigest, PredictionCache, digest_inputs};
use crate::registry::Registry;
use crate::store::{Change, Follower, Store, StoreError};
use crate::telemetry;
use app::ApplicationSpec;
use catalog::Catalog;
pub use error::SelectionError;
use fanout::{Failure, Query, ask_until};
use opentelemetry::KeyValue;
pub use policy::{ArmState, Policy, PolicyConfig, Prediction, SelectionState};
use recent::RecentQueries;
use sluice_types::{ErrorKind, HasKind, Tensor, contract};
use states::StateCache;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

/// Recent queries remembered for joining feedback with the model(s) that answered.
const RECENT_QUERIES: NonZeroUsize = NonZeroUsize::new(100_000).expect("non-zero");

/// How long the record of which models answered a query stays in a shared store, for feedback
/// that reaches another server: feedback later than this is joined against what the policy
/// would choose at the time of the feedback, as for an input never queried.
pub const SHARED_QUERY_TTL: Duration = Duration::from_secs(600);

/// Selection states kept in memory by default; beyond it the least recently used ones that no
/// call is using are dropped (every state is in the store, and comes back from it when needed).
const STATES_IN_MEMORY: usize = 100_000;

/// Per-user states each application keeps in the store by default; past it the least
/// recently updated are dropped (those users start again from the application's own state).
/// A state is its user id (at most 256 bytes) and about 60 bytes per linked model, so 100 000
/// users of a five-model application take about 40 MB.
pub const DEFAULT_MAX_USER_STATES: usize = 100_000;

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

/// The applications of a server and their selection state.
pub struct Applications {
    registry: Arc<Registry>,
    cache: Arc<PredictionCache>,
    store: Store,
    catalog: Catalog,
    states: StateCache,
    recent: RecentQueries,
}

/// The longest user id accepted, in bytes. Every distinct user may get a selection state (in
/// memory, bounded in count, and in the store), so the id's length bounds what each costs.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Checks a user id: at most [`MAX_USER_ID_BYTES`], and no NUL (the store's key separator).
fn check_user(user: &str) -> Result<(), SelectionError> {
    if user.len() > MAX_USER_ID_BYTES {
        return Err(SelectionError::InvalidArgument(format!(
            "user_id: `{}` is {} bytes long; a user id has at most {MAX_USER_ID_BYTES}",
            sluice_types::names::quoted(user),
            user.len()
        )));
    }
    if user.contains('\0') {
        return Err(SelectionError::InvalidArgument(
            "user_id: must not contain NUL".into(),
        ));
    }
    Ok(())
}

/// The batch size of a request: the first dimension of its tensors, which must agree.
fn rows_of(inputs: &[Tensor]) -> Result<usize, SelectionError> {
    if inputs.is_empty() {
        return Err(SelectionError::InvalidArgument(
            "inputs: at least one tensor".into(),
        ));
    }
    match contract::batch_size(inputs) {
        Ok(0) => Err(SelectionError::InvalidArgument(
            "inputs: the batch has 0 rows".into(),
        )),
        Ok(rows) => Ok(rows),
        Err(e) => Err(SelectionError::InvalidArgument(format!("inputs: {e}"))),
    }
}

impl Applications {
    /// Opens the applications kept in `store`, answering with the models of `registry`; each
    /// keeps at most `max_user_states` per-user states. With a shared store, the changes other
    /// servers make are followed for as long as the applications live.
    pub async fn open(
        registry: Arc<Registry>,
        cache: Arc<PredictionCache>,
        store: Store,
        max_user_states: usize,
    ) -> Result<Arc<Applications>, StoreError> {
        let applications = Arc::new(Applications {
            registry,
            cache,
            catalog: Catalog::open(store.clone()).await?,
            states: StateCache::new(store.clone(), STATES_IN_MEMORY, max_user_states),
            recent: RecentQueries::new(RECENT_QUERIES),
            store,
        });
        applications.store.follow(&applications);
        Ok(applications)
    }

    /// The spec of `name`, if registered.
    pub fn get(&self, name: &str) -> Option<ApplicationSpec> {
        self.catalog.app(name).ok().map(|app| app.spec.clone())
    }

    /// Every application, by name.
    pub fn list(&self) -> Vec<ApplicationSpec> {
        self.catalog.list()
    }

    /// Registers an application. Its linked models must be loaded and have its output.
    pub async fn register(&self, spec: ApplicationSpec) -> Result<(), SelectionError> {
        self.catalog.register(&self.registry, spec).await
    }

    /// Links a model (`name` or `name@version`) to an application; its weight starts at the
    /// mean of the others'.
    pub async fn link(&self, app: &str, model: &str) -> Result<ApplicationSpec, SelectionError> {
        self.catalog.link(&self.registry, app, model).await
    }

    /// Unlinks a model from an application; its learned weight is dropped.
    pub async fn unlink(&self, app: &str, model: &str) -> Result<ApplicationSpec, SelectionError> {
        self.catalog.unlink(app, model).await
    }

    /// Deletes an application and all its selection state.
    pub async fn delete(&self, app: &str) -> Result<(), SelectionError> {
        self.catalog.delete(app).await?;
        self.states.forget(app, None);
        Ok(())
    }

    /// The application and the selection state of `(app, user)` (user empty: the
    /// application-wide state), with every linked model present.
    pub async fn selection_state(
        &self,
        app: &str,
        user: &str,
    ) -> Result<(ApplicationSpec, SelectionState), SelectionError> {
        check_user(user)?;
        let spec = self.catalog.app(app)?.spec.clone();
        let shared = self.states.get(app, user).await?;
        let mut state = shared.lock().await.clone();
        state.sync(&spec.models);
        Ok((spec, state))
    }

    /// Forgets what was learned for one user of `app`, or for all of them (`None`).
    pub async fn reset(&self, app: &str, user: Option<&str>) -> Result<(), SelectionError> {
        user.map(check_user).transpose()?;
        self.catalog.app(app)?;
        Ok(self.states.reset(app, user).await?)
    }

    /// The application a query or feedback names, which must have linked models, and the
    /// rows of its inputs; the user id is checked too.
    fn queried(
        &self,
        app_name: &str,
        user: &str,
        inputs: &[Tensor],
    ) -> Result<(Arc<catalog::App>, usize), SelectionError> {
        check_user(user)?;
        let app = self.catalog.app(app_name)?;
        if app.spec.models.is_empty() {
            return Err(SelectionError::NoModels(app.spec.name.clone()));
        }
        let rows = rows_of(inputs)?;
        Ok((app, rows))
    }

    /// Answers a query on `app` for `user` (empty: no user).
    pub async fn predict(
        &self,
        app_name: &str,
        user: &str,
        inputs: Vec<Tensor>,
        bypass_cache: bool,
    ) -> Result<AppAnswer, SelectionError> {
        let span = telemetry::LayerSpan::start("selection", || {
            vec![KeyValue::new("sluice.application", app_name.to_string())]
        });
        span.run_or_fail(self.select_and_ask(&span, app_name, user, inputs, bypass_cache))
            .await
    }

    async fn select_and_ask(
        &self,
        span: &telemetry::LayerSpan,
        app_name: &str,
        user: &str,
        inputs: Vec<Tensor>,
        bypass_cache: bool,
    ) -> Result<AppAnswer, SelectionError> {
        let (app, rows) = self.queried(app_name, user, &inputs)?;
        let spec = &app.spec;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(spec.slo_ms);
        let shared = self.state_for_query(app_name, user, deadline).await?;
        let (state, chosen) = {
            let mut state = shared.lock().await;
            state.sync(&spec.models);
            let mut rng = app.rng.lock().unwrap_or_else(|e| e.into_inner());
            let chosen = spec.policy.select(&state, &spec.models, &mut *rng);
            (state.clone(), chosen)
        };
        let digest = digest_inputs(&inputs);
        let chosen: Vec<String> = chosen.iter().map(|&i| spec.models[i].clone()).collect();
        span.set(|| {
            let models: Vec<opentelemetry::StringValue> =
                chosen.iter().map(|m| m.clone().into()).collect();
            vec![
                KeyValue::new("sluice.policy", spec.policy.name()),
                KeyValue::new("sluice.models", opentelemetry::Value::Array(models.into())),
            ]
        });
        self.recent.remember(app_name, user, digest, chosen.clone());
        if self.store.is_shared() {
            self.share_query(app_name, user, digest, chosen.clone());
        }
        let query = Query::new(spec, rows, digest, inputs, bypass_cache);
        let answers = ask_until(&self.registry, &self.cache, &chosen, &query, deadline).await;
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
        Ok(combine::combine(spec, &state, &chosen, answers, rows))
    }

    /// The state a query selects with. When a shared store cannot give it by the query's
    /// deadline (it is unreachable, say), the query goes on with a fresh state, not kept:
    /// predictions keep being answered, from what this server holds.
    async fn state_for_query(
        &self,
        app: &str,
        user: &str,
        deadline: tokio::time::Instant,
    ) -> Result<states::SharedState, StoreError> {
        // The embedded store answers from local disk: no timer on the query's path for it.
        if !self.store.is_shared() {
            return self.states.get(app, user).await;
        }
        match tokio::time::timeout_at(deadline, self.states.get(app, user)).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(error)) if error.kind() != ErrorKind::Unavailable => Err(error),
            failed => {
                let why = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer by the query's deadline".into(),
                };
                tracing::warn!(app, user, %why, "the selection state could not be read; selecting with a fresh one");
                Ok(Arc::new(tokio::sync::Mutex::new(SelectionState::default())))
            }
        }
    }

    /// Shares, in the background, which models answered a query, for feedback that reaches
    /// another server; the answer does not wait for it (a server cut off from the store keeps
    /// answering).
    fn share_query(&self, app: &str, user: &str, digest: InputDigest, chosen: Vec<String>) {
        let store = self.store.clone();
        let (app, user) = (app.to_string(), user.to_string());
        tokio::spawn(async move {
            let shared = store
                .share_query(&app, &user, &hex(&digest), &chosen, SHARED_QUERY_TTL)
                .await;
            match shared {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    app,
                    "the query's record was not shared: Redis is unreachable"
                ),
                Err(error) => tracing::debug!(%error, app, "the query's record was not shared"),
            }
        });
    }
}

/// A digest as lowercase hex.
fn hex(digest: &InputDigest) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What another server changed in the shared store: its applications and states are read
/// again.
impl Follower for Applications {
    async fn apply(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Application(name) => {
                if !self.catalog.refresh(&name).await? {
                    self.states.forget(&name, None);
                }
            }
            Change::States { app, user } => self.states.forget(&app, user.as_deref()),
            Change::Resync => {
                self.states.forget_all();
                self.catalog.reload().await?;
            }
            Change::Model { .. } | Change::DefaultVersion(_) => {}
        }
        Ok(())
    }
}
