//! The batching logic against a fake model, under tokio's paused clock: time advances only
//! when every task waits, so latencies are exact and nothing sleeps for real.

use super::*;
use sluice_types::{Dtype, TensorSpec};
use std::sync::Mutex as StdMutex;

/// What the fake model saw: for each batch, the runner id and the input values.
type Log = Arc<StdMutex<Vec<(usize, Vec<f32>)>>>;

/// The input that makes the fake model's host code panic (what a fault outside the sandbox
/// does to a worker).
const PANICS: f32 = 666.0;

/// Doubles `x` after sleeping `fixed + per_row * rows`; refuses negative values; panics on
/// [`PANICS`].
struct FakeRunner {
    id: usize,
    fixed: Duration,
    per_row: Duration,
    log: Log,
}

fn values(t: &Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn x(values: &[f32]) -> Vec<Tensor> {
    vec![Tensor {
        name: "x".into(),
        dtype: Dtype::Fp32,
        shape: vec![values.len() as u32, 1],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }]
}

impl BatchRunner for FakeRunner {
    async fn run(&mut self, inputs: Vec<Tensor>) -> (Vec<Tensor>, Result<Vec<Tensor>, CallError>) {
        let seen = values(&inputs[0]);
        self.log.lock().unwrap().push((self.id, seen.clone()));
        tokio::time::sleep(self.fixed + self.per_row * seen.len() as u32).await;
        assert!(!seen.contains(&PANICS), "the host failed");
        if seen.iter().any(|v| *v < 0.0) {
            return (
                inputs,
                Err(CallError::RejectedInput("negative value".into())),
            );
        }
        let doubled: Vec<f32> = seen.iter().map(|v| v * 2.0).collect();
        let mut out = x(&doubled);
        out[0].name = "y".into();
        (inputs, Ok(out))
    }
}

fn info(max_batch: u32) -> Arc<ModelInfo> {
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        dtype: Dtype::Fp32,
        shape: vec![-1, 1],
    };
    Arc::new(ModelInfo {
        name: "fake".into(),
        version: "1".into(),
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
        max_batch,
    })
}

struct Setup {
    replicas: usize,
    config: BatchingConfig,
    fixed: Duration,
    per_row: Duration,
    queue_capacity: usize,
    max_batch: u32,
    /// How long starting a replica takes, for real (a blocking thread sleeps).
    start_delay: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replicas: 1,
            config: BatchingConfig {
                mode: BatchMode::Static { size: 8 },
                slo: Duration::from_millis(20),
                max_delay: None,
            },
            fixed: Duration::from_millis(1),
            per_row: Duration::from_micros(100),
            queue_capacity: 1000,
            max_batch: 64,
            start_delay: Duration::ZERO,
        }
    }
}

fn start(setup: Setup) -> (Arc<Batcher<FakeRunner>>, Log) {
    let (batcher, log, _) = start_gated(setup);
    (batcher, log)
}

/// Like [`start`], with a switch that makes new replicas fail to start while it is on.
fn start_gated(setup: Setup) -> (Arc<Batcher<FakeRunner>>, Log, Arc<AtomicBool>) {
    let log: Log = Arc::default();
    let next_id = Arc::new(AtomicUsize::new(0));
    let starts_fail = Arc::new(AtomicBool::new(false));
    let make = {
        let log = log.clone();
        let starts_fail = starts_fail.clone();
        let (fixed, per_row, start_delay) = (setup.fixed, setup.per_row, setup.start_delay);
        move || {
            std::thread::sleep(start_delay);
            if starts_fail.load(Ordering::SeqCst) {
                return Err(LoadError::Internal("out of memory maps".into()));
            }
            Ok(FakeRunner {
                id: next_id.fetch_add(1, Ordering::Relaxed),
                fixed,
                per_row,
                log: log.clone(),
            })
        }
    };
    let runners = (0..setup.replicas).map(|_| make().unwrap()).collect();
    let factory: RunnerFactory<FakeRunner> = Arc::new(make);
    let batcher = Batcher::start(
        Arc::new(crate::metrics::ModelMetrics::new("fake".into())),
        runners,
        factory,
        setup.config,
        info(setup.max_batch),
        &ModelLimits {
            queue_capacity: setup.queue_capacity,
            ..ModelLimits::default()
        },
    );
    (Arc::new(batcher), log, starts_fail)
}

/// Lets every ready task run (the paused clock moves 1 µs).
async fn settle() {
    tokio::time::sleep(Duration::from_micros(1)).await;
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

async fn call(batcher: &Batcher<FakeRunner>, input: &[f32]) -> Result<Vec<f32>, BatchError> {
    let out = batcher.submit(x(input), input.len(), far()).await?;
    assert_eq!(
        out[0].shape,
        [input.len() as u32, 1],
        "each caller gets its own row count"
    );
    Ok(values(&out[0]))
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_answered_in_full_and_each_caller_gets_its_own_rows_in_order() {
    let (batcher, log) = start(Setup::default());
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let batcher = batcher.clone();
            let input: Vec<f32> = (0..1 + i % 3).map(|r| (i * 10 + r) as f32).collect();
            tokio::spawn(async move { (call(&batcher, &input).await.unwrap(), input) })
        })
        .collect();
    for handle in calls {
        let (got, input) = handle.await.unwrap();
        let expected: Vec<f32> = input.iter().map(|v| v * 2.0).collect();
        assert_eq!(got, expected);
    }
    let batches = log.lock().unwrap();
    assert!(
        batches.iter().all(|(_, rows)| rows.len() <= 8),
        "static size 8 respected"
    );
    assert!(
        batches.len() < 50,
        "requests were batched: {} batches",
        batches.len()
    );
    assert_eq!(
        batcher.stats().rows,
        (0..50).map(|i| 1 + i % 3).sum::<u64>()
    );
}

/// Callers made ready in one instant, as one poll of the sockets makes the connections whose
/// requests arrived: they share the idle worker's first batch, although tokio runs the worker
/// as soon as the first of them wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn callers_ready_together_share_the_first_batch() {
    let (batcher, log) = start(Setup {
        fixed: Duration::ZERO,
        per_row: Duration::ZERO,
        config: BatchingConfig {
            mode: BatchMode::Static { size: 64 },
            ..Setup::default().config
        },
        ..Setup::default()
    });
    let go = Arc::new(tokio::sync::Barrier::new(33));
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let (batcher, go) = (batcher.clone(), go.clone());
            tokio::spawn(async move {
                go.wait().await;
                call(&batcher, &[i as f32]).await.unwrap()
            })
        })
        .collect();
    go.wait().await;
    let answers = futures_join(calls).await;
    assert_eq!(answers.len(), 32);
    let batches = log.lock().unwrap();
    assert!(
        batches[0].1.len() > 1,
        "the first batch held {} rows (of {} batches)",
        batches[0].1.len(),
        batches.len()
    );
}

#[tokio::test(start_paused = true)]
async fn aimd_settles_near_the_slo_under_saturating_load() {
    // A batch of n rows takes 2 ms + 0.5 ms * n: the 20 ms SLO allows 36 rows.
    let (batcher, log) = start(Setup {
        config: BatchingConfig {
            mode: BatchMode::Adaptive {
                step: 4,
                backoff: 0.1,
            },
            ..Setup::default().config
        },
        fixed: Duration::from_millis(2),
        per_row: Duration::from_micros(500),
        max_batch: 256,
        ..Setup::default()
    });
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                for _ in 0..60 {
                    call(&batcher, &[i as f32]).await.unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let sizes: Vec<usize> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, rows)| rows.len())
        .collect();
    let settled = &sizes[sizes.len() / 2..];
    assert!(
        settled.iter().all(|&s| (25..=40).contains(&s)),
        "{settled:?}"
    );
    let size = batcher.batch_sizes()[0];
    assert!((25..=40).contains(&size), "live batch size {size}");
}

#[tokio::test(start_paused = true)]
async fn expired_requests_get_deadline_exceeded_without_running() {
    let (batcher, log) = start(Setup {
        fixed: Duration::from_millis(50),
        ..Setup::default()
    });
    let busy = {
        let batcher = batcher.clone();
        tokio::spawn(async move { call(&batcher, &[1.0]).await })
    };
    settle().await;
    let sent = Instant::now();
    let expired = batcher
        .submit(x(&[7.0]), 1, sent + Duration::from_millis(10))
        .await;
    assert_eq!(expired.unwrap_err(), BatchError::DeadlineExceeded);
    assert_eq!(
        sent.elapsed(),
        Duration::from_millis(10),
        "answered at its deadline"
    );
    busy.await.unwrap().unwrap();
    let ran: Vec<f32> = log
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert_eq!(ran, [1.0], "the expired request never reached the model");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let (batcher, _) = start(Setup {
        fixed: Duration::from_millis(100),
        queue_capacity: 2,
        config: BatchingConfig {
            mode: BatchMode::Static { size: 1 },
            ..Setup::default().config
        },
        ..Setup::default()
    });
    let mut waiting = Vec::new();
    for i in 0..3 {
        let batcher = batcher.clone();
        waiting.push(tokio::spawn(
            async move { call(&batcher, &[i as f32]).await },
        ));
        settle().await;
    }
    // One running, two queued: the fourth is refused without waiting.
    let refused = batcher.submit(x(&[9.0]), 1, far()).await;
    assert_eq!(refused.unwrap_err(), BatchError::QueueFull { capacity: 2 });
    for handle in waiting {
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn delayed_batching_waits_for_more_rows() {
    for (max_delay, expected) in [
        (None, vec![1, 3]),
        (Some(Duration::from_millis(5)), vec![4]),
    ] {
        let (batcher, log) = start(Setup {
            config: BatchingConfig {
                mode: BatchMode::Static { size: 4 },
                slo: Duration::from_millis(20),
                max_delay,
            },
            ..Setup::default()
        });
        let first = {
            let batcher = batcher.clone();
            tokio::spawn(async move { call(&batcher, &[1.0]).await })
        };
        tokio::time::sleep(Duration::from_micros(500)).await;
        let rest: Vec<_> = (2..5)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { call(&batcher, &[i as f32]).await })
            })
            .collect();
        first.await.unwrap().unwrap();
        for handle in rest {
            handle.await.unwrap().unwrap();
        }
        let sizes: Vec<usize> = log.lock().unwrap().iter().map(|(_, v)| v.len()).collect();
        assert_eq!(sizes, expected, "max_delay {max_delay:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_request_fails_alone_when_batched() {
    let (batcher, _) = start(Setup {
        config: BatchingConfig {
            max_delay: Some(Duration::from_millis(5)),
            ..Setup::default().config
        },
        ..Setup::default()
    });
    let calls: Vec<_> = [1.0, -1.0, 3.0]
        .into_iter()
        .map(|v| {
            let batcher = batcher.clone();
            tokio::spawn(async move { call(&batcher, &[v]).await })
        })
        .collect();
    let results: Vec<_> = futures_join(calls).await;
    assert_eq!(results[0], Ok(vec![2.0]));
    assert_eq!(
        results[1],
        Err(BatchError::Call(CallError::RejectedInput(
            "negative value".into()
        )))
    );
    assert_eq!(results[2], Ok(vec![6.0]));
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn requests_go_to_the_replica_that_is_free() {
    let (batcher, log) = start(Setup {
        replicas: 2,
        fixed: Duration::from_millis(50),
        ..Setup::default()
    });
    let first = {
        let batcher = batcher.clone();
        tokio::spawn(async move { call(&batcher, &[1.0]).await })
    };
    settle().await;
    call(&batcher, &[2.0]).await.unwrap();
    first.await.unwrap().unwrap();
    let runners: Vec<usize> = log.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert_eq!(runners.len(), 2);
    assert_ne!(
        runners[0], runners[1],
        "the second request did not wait behind the first"
    );
}

#[tokio::test(start_paused = true)]
async fn scaling_up_and_down_under_load_loses_nothing() {
    let (batcher, log) = start(Setup::default());
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                for j in 0..20 {
                    let v = (i * 100 + j) as f32;
                    assert_eq!(call(&batcher, &[v]).await.unwrap(), [v * 2.0]);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    batcher.scale(3).await.unwrap();
    assert_eq!(batcher.replicas(), 3);
    tokio::time::sleep(Duration::from_millis(5)).await;
    batcher.scale(1).await.unwrap();
    assert_eq!(batcher.replicas(), 1);
    for client in clients {
        client.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.iter().map(|(_, v)| v.len()).sum::<usize>(), 800);
    let used: std::collections::BTreeSet<usize> = log.iter().map(|(id, _)| *id).collect();
    assert_eq!(used.len(), 3, "the added replicas served requests");
}

#[tokio::test(start_paused = true)]
async fn a_scale_that_cannot_start_every_replica_adds_none() {
    let (batcher, _, starts_fail) = start_gated(Setup::default());
    starts_fail.store(true, Ordering::SeqCst);
    let error = batcher.scale(4).await.unwrap_err();
    assert!(error.to_string().contains("out of memory maps"), "{error}");
    assert_eq!(batcher.replicas(), 1, "all or nothing");
    assert_eq!(call(&batcher, &[1.0]).await.unwrap(), [2.0]);
}

#[tokio::test(start_paused = true)]
async fn a_dead_worker_is_replaced_and_its_queue_is_served() {
    let (batcher, _) = start(Setup {
        replicas: 2,
        ..Setup::default()
    });
    // One replica runs the request that kills its worker; the requests that arrive meanwhile
    // queue on both replicas.
    let dying = {
        let batcher = batcher.clone();
        tokio::spawn(async move { call(&batcher, &[PANICS]).await })
    };
    settle().await;
    let queued: Vec<_> = (0..6)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move { call(&batcher, &[i as f32]).await })
        })
        .collect();
    // The batch that was running when the worker died fails; nothing else does.
    let error = dying.await.unwrap().unwrap_err();
    assert!(
        matches!(error, BatchError::Call(CallError::Unavailable(_))),
        "{error}"
    );
    for (i, request) in queued.into_iter().enumerate() {
        assert_eq!(
            request.await.unwrap().unwrap(),
            [i as f32 * 2.0],
            "none is lost"
        );
    }
    settle().await;
    assert_eq!(batcher.replicas(), 2, "the dead replica was replaced");
    assert_eq!(call(&batcher, &[5.0]).await.unwrap(), [10.0]);
}

#[tokio::test(start_paused = true)]
async fn a_model_whose_replicas_died_says_why_and_recovers() {
    let (batcher, _, starts_fail) = start_gated(Setup::default());
    starts_fail.store(true, Ordering::SeqCst);
    call(&batcher, &[PANICS]).await.unwrap_err();
    settle().await;
    assert_eq!(batcher.replicas(), 0);
    let why = batcher.unavailable().expect("no replica runs");
    assert!(why.contains("out of memory maps"), "{why}");
    let error = call(&batcher, &[1.0]).await.unwrap_err();
    assert!(error.to_string().contains("out of memory maps"), "{error}");
    // Replacement is retried with a growing pause; once a replica can start, it serves.
    starts_fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(MAX_RESTART_PAUSE).await;
    assert_eq!(batcher.replicas(), 1);
    assert_eq!(batcher.unavailable(), None);
    assert_eq!(call(&batcher, &[1.0]).await.unwrap(), [2.0]);
}

#[test]
fn only_calls_that_have_been_fast_run_inline() {
    let mut calls = CallMean::default();
    assert!(!calls.inline(), "the first call leaves the async thread");
    calls.record(Duration::from_micros(3));
    assert!(calls.inline());
    // One call that ran long moves the next ones off the async threads.
    calls.record(Duration::from_millis(200));
    assert!(!calls.inline());
    for _ in 0..64 {
        calls.record(Duration::from_micros(3));
    }
    assert!(calls.inline(), "and a model that is fast again comes back");
}

#[tokio::test(start_paused = true)]
async fn a_model_scaled_to_zero_starts_one_replica_for_all_the_requests_that_wait() {
    let (batcher, log) = start(Setup::default());
    batcher.scale(0).await.unwrap();
    assert_eq!(batcher.replicas(), 0);
    assert!(batcher.scaled_to_zero());
    assert_eq!(batcher.unavailable(), None, "scaled to zero is not down");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let batcher = batcher.clone();
            tokio::spawn(async move { call(&batcher, &[i as f32]).await.unwrap() })
        })
        .collect();
    for (i, handle) in calls.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), [i as f32 * 2.0]);
    }
    assert_eq!(batcher.replicas(), 1);
    let used: std::collections::BTreeSet<usize> =
        log.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert_eq!(
        used,
        [1].into(),
        "one replica started (id 0 was scaled away), not twenty"
    );
}

/// On the real clock (a start blocks a thread, which the paused clock does not wait for): the
/// start takes at least 200 ms, the request's deadline is 10 ms away.
#[tokio::test]
async fn a_cold_start_past_the_deadline_or_failing_is_an_error_and_the_start_goes_on() {
    let (batcher, _, starts_fail) = start_gated(Setup {
        start_delay: Duration::from_millis(200),
        ..Setup::default()
    });
    batcher.scale(0).await.unwrap();
    let soon = Instant::now() + Duration::from_millis(10);
    let late = batcher.submit(x(&[1.0]), 1, soon).await.unwrap_err();
    assert!(matches!(late, BatchError::DeadlineExceeded), "{late}");
    // The start the late request began goes on, and serves the next one.
    assert_eq!(call(&batcher, &[2.0]).await.unwrap(), [4.0]);
    assert_eq!(batcher.replicas(), 1);
    batcher.scale(0).await.unwrap();
    starts_fail.store(true, Ordering::SeqCst);
    let failed = call(&batcher, &[1.0]).await.unwrap_err();
    assert!(
        failed
            .to_string()
            .contains("scaled to zero and starting a replica failed"),
        "{failed}"
    );
}
