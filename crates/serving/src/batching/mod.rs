//! Adaptive batching, per replica (Clipper's layer 3).
//!
//! Every replica of a model has its own bounded queue ordered by deadline and its own worker
//! task. [`Batcher::submit`] puts a request on the queue of the replica expected to serve it
//! soonest; the worker takes as many rows as its [`sizer::BatchSizer`] allows (AIMD or a fixed
//! size), optionally waits a little for more (delayed batching), answers expired requests with
//! `DeadlineExceeded` without running them, joins the rest into one batch tensor per input,
//! runs it on its model instance, and hands each caller its own rows.
//!
//! The worker is generic over [`BatchRunner`], so the logic is unit-tested with a fake model
//! under tokio's paused clock; [`ReplicaRunner`] runs batches on a wasm [`Replica`].

pub mod queue;
pub mod rows;
pub mod sizer;

use crate::metrics::ModelMetrics;
use crate::settings::ModelLimits;
use crate::telemetry;
use opentelemetry::KeyValue;
use queue::DeadlineQueue;
use sizer::BatchSizer;
use sluice_runtime::{CallError, HostCall, LoadError, Replica};
use sluice_types::{ErrorKind, HasKind, ModelInfo, Tensor, contract};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Why a queued request got no answer from its model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BatchError {
    /// The call into the model failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The model's answer to one request is larger than the model's response limit.
    #[error("the model's answer is {bytes} bytes, over its response limit of {limit} bytes")]
    ResponseTooLarge {
        /// The size of the answer.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The model's answer does not match what it declared.
    #[error("the model returned an invalid output: {0}")]
    InvalidOutput(String),
    /// The request's deadline passed while it waited; it was not run.
    #[error("the request's deadline passed before a replica could run it")]
    DeadlineExceeded,
    /// Every replica's queue is full; the request was not run.
    #[error("the model's queues are full ({capacity} requests waiting per replica)")]
    QueueFull {
        /// The queue bound.
        capacity: usize,
    },
}

impl HasKind for BatchError {
    fn kind(&self) -> ErrorKind {
        match self {
            BatchError::Call(call) => call.kind(),
            BatchError::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            BatchError::QueueFull { .. } | BatchError::ResponseTooLarge { .. } => {
                ErrorKind::ResourceExhausted
            }
            BatchError::InvalidOutput(_) => ErrorKind::Internal,
        }
    }
}

fn unavailable(why: &str) -> BatchError {
    BatchError::Call(CallError::Unavailable(why.into()))
}

/// How a replica sizes its batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchMode {
    /// AIMD: grow by `step` rows while batches meet the SLO, shrink by `backoff` (a fraction)
    /// when one does not.
    Adaptive {
        /// Rows added after a full batch within the SLO.
        step: usize,
        /// Fraction removed after a batch over the SLO (0.1 = 10%).
        backoff: f64,
    },
    /// Always up to `size` rows (1 = no batching), as TF Serving does.
    Static {
        /// The fixed batch size.
        size: usize,
    },
}

/// Batching settings of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchingConfig {
    /// How batch sizes are chosen.
    pub mode: BatchMode,
    /// The latency objective: AIMD keeps batch latency under it, and a request without its own
    /// deadline must be answered within it (else `DEADLINE_EXCEEDED`).
    pub slo: Duration,
    /// Delayed batching: when fewer rows wait than the batch size, wait up to this long for
    /// more. `None` (the default) runs whatever is waiting at once.
    pub max_delay: Option<Duration>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            mode: BatchMode::Adaptive {
                step: 4,
                backoff: 0.1,
            },
            slo: Duration::from_millis(100),
            max_delay: None,
        }
    }
}

/// Runs one batch on a model instance. Returns the inputs with the result, so that a failed
/// batch can be retried request by request.
pub trait BatchRunner: Send + 'static {
    /// Runs `inputs` (one tensor per declared input, batch already joined).
    fn run(
        &mut self,
        inputs: Vec<Tensor>,
    ) -> impl Future<Output = (Vec<Tensor>, Result<Vec<Tensor>, CallError>)> + Send;

    /// Makes the next runs record the host calls they make (a batch holds a traced
    /// request), or stop.
    fn record_host_calls(&mut self, _on: bool) {}

    /// The host calls the last run made, if it recorded them.
    fn take_host_calls(&mut self) -> Vec<HostCall> {
        Vec::new()
    }
}

/// Calls whose recent mean is below this run on the async thread itself (see
/// [`ReplicaRunner`]).
pub const INLINE_CALL_BELOW: Duration = Duration::from_micros(50);

/// Runs batches on a wasm replica without stalling the async executor for long.
///
/// A call that has lately taken microseconds (mean under [`INLINE_CALL_BELOW`]) runs right
/// here, on the async thread: handing it to another thread would cost more than the call
/// (KServe REST infer on `digits-logreg`, a 2 µs call, ran at 31 200 req/s that way and at
/// 41 500 req/s inline; docs/benchmarks.md). Any other call, and the first, runs in
/// `block_in_place` on a multi-threaded runtime: tokio hands this worker's other tasks to
/// another thread and the guest starts at once. Moving the replica to the blocking pool
/// instead (`spawn_blocking`, what a current-thread runtime needs) costs two more thread
/// wake-ups per batch: 49.3 µs against 19.2 µs for a batch-1 call through the queue
/// (`floors/queued-predict`). A fast model that suddenly runs long holds its async thread for
/// that one call, at most its `call_timeout`; its mean then moves it off the async threads.
pub struct ReplicaRunner {
    replica: Option<Replica>,
    calls: CallMean,
}

/// The exponentially weighted mean wall time of a replica's calls.
#[derive(Debug, Default)]
struct CallMean {
    /// Microseconds; 0 before the first call.
    micros: u64,
}

impl CallMean {
    /// Whether the next call may run on the async thread.
    fn inline(&self) -> bool {
        self.micros > 0 && self.micros < INLINE_CALL_BELOW.as_micros() as u64
    }

    fn record(&mut self, took: Duration) {
        let sample = (took.as_micros() as u64).max(1);
        self.micros = match self.micros {
            0 => sample,
            mean => (mean * 7 + sample) / 8,
        };
    }
}

impl ReplicaRunner {
    /// Wraps an initialised replica.
    pub fn new(replica: Replica) -> Self {
        ReplicaRunner {
            replica: Some(replica),
            calls: CallMean::default(),
        }
    }
}

impl BatchRunner for ReplicaRunner {
    async fn run(&mut self, inputs: Vec<Tensor>) -> (Vec<Tensor>, Result<Vec<Tensor>, CallError>) {
        let mut replica = self
            .replica
            .take()
            .expect("a replica whose call panicked is not used again: its worker ends");
        let call = move || {
            let started = std::time::Instant::now();
            let (inputs, result) = replica.predict(inputs);
            (replica, inputs, result, started.elapsed())
        };
        // A panic here is the host's, not the guest's (a guest's trap is an error): it ends
        // this worker, and the batcher replaces the replica.
        let (replica, inputs, result, took) = if self.calls.inline() {
            call()
        } else {
            match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(call),
                _ => match tokio::task::spawn_blocking(call).await {
                    Ok(done) => done,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
            }
        };
        self.replica = Some(replica);
        self.calls.record(took);
        (inputs, result)
    }

    fn record_host_calls(&mut self, on: bool) {
        if let Some(replica) = &mut self.replica {
            replica.record_host_calls(on);
        }
    }

    fn take_host_calls(&mut self) -> Vec<HostCall> {
        self.replica
            .as_mut()
            .map(Replica::take_host_calls)
            .unwrap_or_default()
    }
}

/// Makes a new runner when replicas are added.
pub type RunnerFactory<R> = Arc<dyn Fn() -> Result<R, LoadError> + Send + Sync>;

/// A request waiting in a replica's queue.
struct Pending {
    inputs: Vec<Tensor>,
    rows: usize,
    /// Set when a worker takes the request into a batch: from then on the caller waits for
    /// the result even past its deadline (the call is bounded by the model's time limit).
    started: Arc<AtomicBool>,
    /// When it was queued (for the queue-time metric).
    enqueued: Instant,
    /// The request's trace, if it is traced: its queue wait and batch are recorded under it.
    trace: Option<opentelemetry::Context>,
    reply: oneshot::Sender<Result<Vec<Tensor>, BatchError>>,
}

struct SlotState {
    queue: DeadlineQueue<Pending>,
    queued_rows: usize,
    closed: bool,
}

/// One replica as the dispatcher sees it: its queue and what it is doing.
struct Slot {
    state: Mutex<SlotState>,
    notify: Notify,
    busy_rows: AtomicUsize,
    batch_size: AtomicUsize,
    /// Exponentially weighted mean batch latency, microseconds.
    latency_us: AtomicU64,
}

impl Slot {
    fn new(queue_capacity: usize, batch_size: usize) -> Self {
        Slot {
            state: Mutex::new(SlotState {
                queue: DeadlineQueue::new(queue_capacity),
                queued_rows: 0,
                closed: false,
            }),
            notify: Notify::new(),
            busy_rows: AtomicUsize::new(0),
            batch_size: AtomicUsize::new(batch_size),
            latency_us: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Microseconds until this replica would finish `rows` more rows: the batch it is running
    /// (if any) plus the batches needed for what is queued and the new rows, times its mean
    /// batch latency (at least 1 µs, so an idle replica with no history still wins).
    fn estimated_wait(&self, rows: usize) -> u64 {
        let queued = self.lock().queued_rows;
        let running = u64::from(self.busy_rows.load(Ordering::Relaxed) > 0);
        let batch = self.batch_size.load(Ordering::Relaxed).max(1);
        let batches = running + (queued + rows).div_ceil(batch) as u64;
        batches * self.latency_us.load(Ordering::Relaxed).max(1)
    }

    fn push(&self, deadline: Instant, pending: Pending) -> Result<(), Pending> {
        let mut state = self.lock();
        if state.closed {
            return Err(pending);
        }
        if state.queue.len() == state.queue.capacity() {
            // Make room by dropping requests whose callers gave up (their deadline passed).
            state.queue.retain(|p| !p.reply.is_closed());
            state.queued_rows = state.queue.iter().map(|p| p.rows).sum();
        }
        let rows = pending.rows;
        state.queue.push(deadline, pending)?;
        state.queued_rows += rows;
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros() as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }
}

/// What the workers of one model share.
struct Shared {
    /// The model's metrics.
    metrics: Arc<ModelMetrics>,
    config: BatchingConfig,
    info: Arc<ModelInfo>,
    queue_capacity: usize,
    max_response_bytes: usize,
    batches: AtomicU64,
    rows: AtomicU64,
    /// Requests submitted and not yet answered (queued or running).
    in_flight: AtomicUsize,
    /// Replicas started so far: each is numbered in traces by its order of start.
    replicas_started: AtomicUsize,
}

/// Counters of what a model's replicas have run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Batches run.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
}

/// The requests a model holds now: what an autoscaler scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchLoad {
    /// Requests waiting in the replicas' queues.
    pub queued: usize,
    /// Requests submitted and not answered yet: the queued ones and those running.
    pub in_flight: usize,
    /// How long the request queued longest has been waiting (zero when none waits).
    pub oldest_wait: Duration,
}

/// Counts a request in flight for as long as it lives (its caller may drop it at any await).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The replicas of one model, each with its queue and worker.
///
/// A worker that dies (a panic in the host while it ran a batch; a guest's traps are answered
/// as errors and never end a worker) is noticed: its replica leaves the set, the requests
/// queued on it go to the others, and a new replica is started in its place, retried with a
/// growing pause while it fails. Meanwhile a model left with no replica answers
/// `Unavailable` with the reason.
pub struct Batcher<R: BatchRunner> {
    pool: Arc<Pool<R>>,
}

/// The replica set of one model, shared with the tasks that watch its workers.
struct Pool<R: BatchRunner> {
    slots: RwLock<Vec<Arc<Slot>>>,
    factory: RunnerFactory<R>,
    shared: Arc<Shared>,
    /// One change of the set at a time: scaling, or replacing a dead replica.
    changing: tokio::sync::Mutex<()>,
    /// The replicas asked for; dead ones are replaced until this many run again.
    target: AtomicUsize,
    /// Why the last attempt to replace a dead replica failed (cleared when one succeeds).
    lost: Mutex<Option<String>>,
    /// Set when the model is dropped: nothing is replaced any more.
    retired: AtomicBool,
}

/// The longest pause between two attempts to replace a dead replica.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

impl<R: BatchRunner> Batcher<R> {
    /// Starts one worker per runner for the model whose metrics are `metrics`. Must be called
    /// within a tokio runtime.
    pub fn start(
        metrics: Arc<ModelMetrics>,
        runners: Vec<R>,
        factory: RunnerFactory<R>,
        config: BatchingConfig,
        info: Arc<ModelInfo>,
        limits: &ModelLimits,
    ) -> Self {
        let pool = Arc::new(Pool {
            slots: RwLock::default(),
            factory,
            shared: Arc::new(Shared {
                metrics,
                config,
                info,
                queue_capacity: limits.queue_capacity,
                max_response_bytes: limits.max_response_bytes,
                batches: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                replicas_started: AtomicUsize::new(0),
            }),
            changing: tokio::sync::Mutex::new(()),
            target: AtomicUsize::new(runners.len()),
            lost: Mutex::new(None),
            retired: AtomicBool::new(false),
        });
        for runner in runners {
            pool.add(runner);
        }
        Batcher { pool }
    }

    /// The batching settings.
    pub fn config(&self) -> BatchingConfig {
        self.pool.shared.config
    }

    /// The number of replicas taking new requests.
    pub fn replicas(&self) -> usize {
        self.pool.slots().len()
    }

    /// Whether the model was scaled to zero replicas on purpose: its next request starts one.
    pub fn scaled_to_zero(&self) -> bool {
        self.pool.target.load(Ordering::Relaxed) == 0
    }

    /// Why the model cannot answer now: every replica died and none could be started again.
    pub fn unavailable(&self) -> Option<String> {
        if self.replicas() > 0 || self.scaled_to_zero() {
            return None;
        }
        let lost = self.pool.lost.lock().unwrap_or_else(|p| p.into_inner());
        Some(match lost.as_deref() {
            Some(why) => format!("no replica is running: {why}"),
            None => "no replica is running; one is being started".to_string(),
        })
    }

    /// The current batch size limit of each replica.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.pool
            .slots()
            .iter()
            .map(|s| s.batch_size.load(Ordering::Relaxed))
            .collect()
    }

    /// Batches and rows run so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.pool.shared.batches.load(Ordering::Relaxed),
            rows: self.pool.shared.rows.load(Ordering::Relaxed),
        }
    }

    /// The requests waiting and in flight now.
    pub fn load(&self) -> BatchLoad {
        let now = Instant::now();
        let (mut queued, mut oldest_wait) = (0, Duration::ZERO);
        for slot in self.pool.slots().iter() {
            let state = slot.lock();
            queued += state.queue.len();
            if let Some(enqueued) = state.queue.iter().map(|p| p.enqueued).min() {
                oldest_wait = oldest_wait.max(now.saturating_duration_since(enqueued));
            }
        }
        BatchLoad {
            queued,
            in_flight: self.pool.shared.in_flight.load(Ordering::Relaxed),
            oldest_wait,
        }
    }

    /// Queues a request of `rows` rows (inputs in declared order, already checked) on the
    /// replica expected to answer soonest, and waits for its rows of the output. If no
    /// replica has started it by `deadline`, it fails with `DeadlineExceeded` at that moment
    /// (and is dropped from the queue unrun).
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        deadline: Instant,
    ) -> Result<Vec<Tensor>, BatchError> {
        let _in_flight = InFlight::enter(&self.pool.shared.in_flight);
        if self.scaled_to_zero() {
            let span = telemetry::LayerSpan::start("cold start", Vec::new);
            span.run_or_fail(self.wake(deadline)).await?;
        }
        let (reply, mut answer) = oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let pending = Pending {
            inputs,
            rows,
            started: started.clone(),
            enqueued: Instant::now(),
            trace: telemetry::current(),
            reply,
        };
        if self.pool.dispatch(deadline, pending).is_err() {
            if let Some(why) = self.unavailable() {
                return Err(unavailable(&why));
            }
            return Err(BatchError::QueueFull {
                capacity: self.pool.shared.queue_capacity,
            });
        }
        let stopped = |_| Err(unavailable("the replica stopped before answering"));
        tokio::select! {
            result = &mut answer => result.unwrap_or_else(stopped),
            _ = tokio::time::sleep_until(deadline) => {
                if started.load(Ordering::Acquire) {
                    answer.await.unwrap_or_else(stopped)
                } else {
                    Err(BatchError::DeadlineExceeded)
                }
            }
        }
    }

    /// Starts a replica of a model scaled to zero for a request due by `deadline`. However
    /// many requests wait, one replica is started (the first to take the lock starts it, the
    /// others find it running); the start goes on if the request gives up, and a request it
    /// cannot serve in time fails with `DeadlineExceeded`.
    async fn wake(&self, deadline: Instant) -> Result<(), BatchError> {
        let pool = self.pool.clone();
        let waking = tokio::spawn(async move { pool.wake().await });
        let failed = |error: String| {
            unavailable(&format!(
                "the model was scaled to zero and starting a replica failed: {error}"
            ))
        };
        match tokio::time::timeout_at(deadline, waking).await {
            Err(_) => Err(BatchError::DeadlineExceeded),
            Ok(Ok(started)) => started.map_err(|e| failed(e.to_string())),
            Ok(Err(task)) => Err(failed(task.to_string())),
        }
    }

    /// Changes the number of replicas to `replicas`. New replicas are all instantiated before
    /// any takes requests; if one cannot be, none is added and the error says why. Removed
    /// ones stop taking requests at once and finish what they have queued. No request is
    /// lost. At 0 the model is scaled to zero: nothing runs until a request comes, and that
    /// request starts a replica.
    pub async fn scale(&self, replicas: usize) -> Result<(), LoadError> {
        let pool = &self.pool;
        let _one_change_at_a_time = pool.changing.lock().await;
        let missing = replicas.saturating_sub(self.replicas());
        let mut started = Vec::with_capacity(missing);
        for _ in 0..missing {
            started.push(pool.start_runner().await?);
        }
        pool.target.store(replicas, Ordering::Relaxed);
        started.into_iter().for_each(|runner| pool.add(runner));
        let removed = {
            let mut slots = pool.slots.write().unwrap_or_else(|p| p.into_inner());
            let keep = replicas.min(slots.len());
            slots.split_off(keep)
        };
        removed.iter().for_each(|slot| slot.close());
        Ok(())
    }
}

impl<R: BatchRunner> Pool<R> {
    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a worker for `runner`, and a task that replaces it if it dies.
    fn add(self: &Arc<Self>, runner: R) {
        let shared = &self.shared;
        let sizer = BatchSizer::new(
            shared.config.mode,
            shared.info.max_batch as usize,
            shared.config.slo,
        );
        let slot = Arc::new(Slot::new(shared.queue_capacity, sizer.size()));
        let replica = shared.replicas_started.fetch_add(1, Ordering::Relaxed);
        let worker = tokio::spawn(run_worker(
            slot.clone(),
            runner,
            sizer,
            shared.clone(),
            replica,
        ));
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let Err(death) = worker.await else {
                return; // closed and drained
            };
            if let Some(pool) = pool.upgrade() {
                pool.replace_dead(&slot, &panic_message(death)).await;
            }
        });
    }

    /// Puts `pending` on the replica expected to answer soonest; gives it back if every
    /// queue is full or no replica runs.
    fn dispatch(&self, deadline: Instant, mut pending: Pending) -> Result<(), Pending> {
        let slots = self.slots();
        if let [only] = slots.as_slice() {
            // One replica: no choice to make (the common case, and the cheapest path).
            return only.push(deadline, pending);
        }
        let mut order: Vec<(u64, usize)> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (slot.estimated_wait(pending.rows), i))
            .collect();
        order.sort_unstable();
        for (_, i) in order {
            match slots[i].push(deadline, pending) {
                Ok(()) => return Ok(()),
                Err(back) => pending = back,
            }
        }
        Err(pending)
    }

    /// Starts one replica if the model is scaled to zero (see [`Batcher::wake`]).
    async fn wake(self: &Arc<Self>) -> Result<(), LoadError> {
        let _one_change_at_a_time = self.changing.lock().await;
        if self.target.load(Ordering::Relaxed) > 0 {
            return Ok(());
        }
        let started = Instant::now();
        let runner = self.start_runner().await?;
        self.add(runner);
        self.target.store(1, Ordering::Relaxed);
        self.shared.metrics.record_cold_start(started.elapsed());
        tracing::info!(model = %self.shared.metrics.model(), took_ms = started.elapsed().as_millis() as u64,
            "a model scaled to zero started a replica for a request");
        Ok(())
    }

    /// Makes a runner on a blocking thread (instantiation runs the model's `init`).
    async fn start_runner(&self) -> Result<R, LoadError> {
        let factory = self.factory.clone();
        tokio::task::spawn_blocking(move || factory())
            .await
            .map_err(|e| LoadError::Internal(format!("starting a replica failed: {e}")))?
    }

    /// Takes a replica whose worker died out of the set, sends what was queued on it to the
    /// others, and starts replicas until the set is back to its target.
    async fn replace_dead(self: &Arc<Self>, slot: &Arc<Slot>, why: &str) {
        let model = self.shared.metrics.model().to_string();
        tracing::error!(%model, why, "a replica's worker died; replacing the replica");
        self.shared.metrics.record_replica_died();
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(s, slot));
        let orphans = {
            let mut state = slot.lock();
            state.closed = true;
            state.queued_rows = 0;
            std::iter::from_fn(|| state.queue.pop()).collect::<Vec<_>>()
        };
        for (deadline, pending) in orphans {
            if let Err(pending) = self.dispatch(deadline, pending) {
                let _ = pending.reply.send(Err(unavailable(&format!(
                    "the model's replica died ({why}) and no other could take the request"
                ))));
            }
        }
        let mut pause = Duration::from_secs(1);
        while !self.retired.load(Ordering::Relaxed) {
            {
                let _one_change_at_a_time = self.changing.lock().await;
                if self.slots().len() >= self.target.load(Ordering::Relaxed) {
                    return;
                }
                match self.start_runner().await {
                    Ok(runner) => {
                        self.add(runner);
                        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        tracing::info!(%model, "a replica was started in place of a dead one");
                        continue;
                    }
                    Err(e) => {
                        let reason = format!("replacing a dead replica failed: {e}");
                        tracing::error!(%model, %reason, retry_in = ?pause);
                        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RESTART_PAUSE);
        }
    }
}

/// What a dead task's panic said.
fn panic_message(death: tokio::task::JoinError) -> String {
    if !death.is_panic() {
        return death.to_string();
    }
    let payload = death.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

impl<R: BatchRunner> Drop for Batcher<R> {
    fn drop(&mut self) {
        self.pool.retired.store(true, Ordering::Relaxed);
        self.pool.slots().iter().for_each(|slot| slot.close());
    }
}

/// A replica's worker: wait for work, form a batch, run it, answer, learn; until closed and
/// drained.
async fn run_worker<R: BatchRunner>(
    slot: Arc<Slot>,
    mut runner: R,
    mut sizer: BatchSizer,
    shared: Arc<Shared>,
    replica: usize,
) {
    let mut recording = false;
    loop {
        loop {
            {
                let state = slot.lock();
                if state.queued_rows > 0 {
                    break;
                }
                if state.closed {
                    return;
                }
            }
            slot.notify.notified().await;
        }
        if let Some(delay) = shared.config.max_delay {
            let until = Instant::now() + delay;
            loop {
                {
                    let state = slot.lock();
                    if state.queued_rows >= sizer.size() || state.closed {
                        break;
                    }
                }
                tokio::select! {
                    _ = slot.notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        } else if slot.lock().queued_rows < sizer.size() {
            // The request that woke this worker is rarely alone: the connections whose
            // requests arrived in the same poll of the sockets are ready to run too, and
            // tokio runs a woken task next. One turn at the back of the queue lets them queue
            // theirs first, so that they share this batch instead of each waiting for a
            // batch of its own (KServe REST under 64 connections: 1.09 rows a batch
            // without it). With nothing else to run it costs one pass of the scheduler.
            tokio::task::yield_now().await;
        }
        let batch = take_batch(&slot, sizer.size());
        if batch.is_empty() {
            continue;
        }
        let rows: usize = batch.iter().map(|p| p.rows).sum();
        slot.busy_rows.store(rows, Ordering::Relaxed);
        let started = Instant::now();
        let waits: Vec<Duration> = batch.iter().map(|p| started - p.enqueued).collect();
        let traced = batch.iter().any(|p| p.trace.is_some());
        if traced != recording {
            runner.record_host_calls(traced);
            recording = traced;
        }
        let traces: Vec<(opentelemetry::Context, Instant)> = batch
            .iter()
            .filter_map(|p| Some((p.trace.clone()?, p.enqueued)))
            .collect();
        let requests = batch.len();
        let ran = run_batch(&mut runner, batch, &shared).await;
        let latency = started.elapsed();
        if traced {
            let batch = TracedBatch {
                replica,
                rows,
                requests,
                started,
                ran,
                host_calls: runner.take_host_calls(),
            };
            traces
                .iter()
                .for_each(|(trace, enqueued)| batch.record(trace, *enqueued));
        }
        shared
            .metrics
            .record_batch(rows, latency, waits.into_iter());
        sizer.observe(rows, latency);
        slot.record_latency(latency);
        slot.batch_size.store(sizer.size(), Ordering::Relaxed);
        slot.busy_rows.store(0, Ordering::Relaxed);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// Takes up to `size` rows of compatible requests, earliest deadline first. Requests whose
/// deadline has passed are answered `DeadlineExceeded`; those whose caller left are dropped.
/// A single request larger than `size` (but within the model's max batch) runs alone.
fn take_batch(slot: &Slot, size: usize) -> Vec<Pending> {
    let now = Instant::now();
    let mut state = slot.lock();
    let mut batch: Vec<Pending> = Vec::new();
    let mut rows = 0;
    let mut set_aside = Vec::new();
    while let Some((deadline, pending)) = state.queue.pop() {
        state.queued_rows -= pending.rows;
        if pending.reply.is_closed() {
            continue;
        }
        if deadline <= now {
            let _ = pending.reply.send(Err(BatchError::DeadlineExceeded));
            continue;
        }
        if let Some(first) = batch.first() {
            let fits = rows + pending.rows <= size;
            if !fits || !rows::compatible(&first.inputs, &pending.inputs) {
                set_aside.push((deadline, pending));
                if fits {
                    continue;
                }
                break;
            }
        }
        rows += pending.rows;
        pending.started.store(true, Ordering::Release);
        batch.push(pending);
        if rows >= size {
            break;
        }
    }
    for (deadline, pending) in set_aside {
        state.queued_rows += pending.rows;
        // Room is certain: these were just popped.
        let _ = state.queue.push(deadline, pending);
    }
    batch
}

/// Runs a batch and answers its callers. If the batch fails and held several requests, each
/// is retried alone, so that one bad request (or one that makes the model trap) fails only
/// itself.
async fn run_batch<R: BatchRunner>(
    runner: &mut R,
    batch: Vec<Pending>,
    shared: &Shared,
) -> BatchRun {
    let info = &shared.info;
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total = rows.iter().sum();
    let mut replies = Vec::with_capacity(batch.len());
    let mut requests = Vec::with_capacity(batch.len());
    for pending in batch {
        replies.push(pending.reply);
        requests.push(pending.inputs);
    }
    let call_started = Instant::now();
    let (inputs, result) = runner.run(rows::concat(requests)).await;
    let call_ended = Instant::now();
    let mut ran = BatchRun {
        call_started,
        call_ended,
        answered: call_ended,
        failure: None,
    };
    let result = result
        .map_err(BatchError::from)
        .and_then(|outputs| checked(info, outputs, total));
    match result.and_then(|outputs| rows::split(outputs, &rows).map_err(BatchError::InvalidOutput))
    {
        Ok(parts) => {
            ran.answered = Instant::now();
            for (reply, part) in replies.into_iter().zip(parts) {
                let _ = reply.send(within_limit(part, shared.max_response_bytes));
            }
        }
        Err(error) if replies.len() == 1 || inputs.is_empty() => {
            ran.answered = Instant::now();
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            ran.failure = Some(error);
        }
        Err(error) => {
            ran.failure = Some(error);
            let parts = rows::split(inputs, &rows).unwrap_or_default();
            for ((reply, part), n) in replies.into_iter().zip(parts).zip(rows) {
                if reply.is_closed() {
                    continue;
                }
                let (_, result) = runner.run(part).await;
                let result = result
                    .map_err(BatchError::from)
                    .and_then(|outputs| checked(info, outputs, n));
                ran.answered = Instant::now();
                let _ = reply.send(result.and_then(|o| within_limit(o, shared.max_response_bytes)));
            }
        }
    }
    ran
}

/// How a batch's call into the model went (for the spans of the traced requests in it).
struct BatchRun {
    call_started: Instant,
    call_ended: Instant,
    /// When the last answer was sent (a traced request's batch ends there).
    answered: Instant,
    /// Why the batch failed; when it held several requests, each was then retried alone.
    failure: Option<BatchError>,
}

/// A batch that held traced requests, as their traces show it.
struct TracedBatch {
    replica: usize,
    rows: usize,
    requests: usize,
    started: Instant,
    ran: BatchRun,
    host_calls: Vec<HostCall>,
}

impl TracedBatch {
    /// Records, under one traced request, its wait in the queue, the batch, the guest call and
    /// the host calls the guest made.
    fn record(&self, trace: &opentelemetry::Context, enqueued: Instant) {
        let replica = KeyValue::new("sluice.replica", self.replica as i64);
        let queue = vec![replica.clone()];
        telemetry::record(
            trace,
            "queue",
            enqueued.into_std(),
            self.started.into_std(),
            queue,
        );
        let batch = telemetry::record(
            trace,
            "batch",
            self.started.into_std(),
            self.ran.answered.into_std(),
            vec![
                replica,
                KeyValue::new("sluice.batch.rows", self.rows as i64),
                KeyValue::new("sluice.batch.requests", self.requests as i64),
            ],
        );
        let ran = &self.ran;
        let call = telemetry::record(
            &batch,
            "guest predict",
            ran.call_started.into_std(),
            ran.call_ended.into_std(),
            Vec::new(),
        );
        if let Some(failure) = &ran.failure {
            telemetry::record_failure(&call, failure);
        }
        for host_call in &self.host_calls {
            let ended = host_call.started + host_call.took;
            telemetry::record(
                &call,
                host_call.operation,
                host_call.started,
                ended,
                Vec::new(),
            );
        }
    }
}

/// Refuses one request's answer if it is larger than the model's response limit.
fn within_limit(outputs: Vec<Tensor>, limit: usize) -> Result<Vec<Tensor>, BatchError> {
    let bytes = outputs.iter().map(|t| t.data.len()).sum();
    if bytes > limit {
        return Err(BatchError::ResponseTooLarge { bytes, limit });
    }
    Ok(outputs)
}

fn checked(info: &ModelInfo, outputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, BatchError> {
    contract::check_outputs(info, &outputs, rows).map_err(BatchError::InvalidOutput)?;
    Ok(outputs)
}

#[cfg(test)]
mod tests;
