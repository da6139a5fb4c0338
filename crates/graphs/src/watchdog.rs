//! Stops graph runs at their deadline. A run is a host call: the sandbox's epoch interruption
//! cannot stop it, so a graph that runs long would hold its replica past the model's call
//! time limit. Each run with a deadline registers its ONNX Runtime `RunOptions` here; one
//! thread for the process sets their terminate flag when the deadline passes, and ONNX Runtime
//! then ends the run with an error at its next check (between nodes of the graph).

use ort::session::RunOptions;
use std::sync::{Arc, Condvar, LazyLock, Mutex, Weak};
use std::time::Instant;

/// Runs waiting for their deadline; the thread sleeps until the earliest.
struct Watchdog {
    runs: Mutex<Vec<(Instant, Weak<RunOptions>)>>,
    changed: Condvar,
}

static WATCHDOG: LazyLock<Arc<Watchdog>> = LazyLock::new(|| {
    let watchdog = Arc::new(Watchdog {
        runs: Mutex::default(),
        changed: Condvar::new(),
    });
    let watching = watchdog.clone();
    std::thread::Builder::new()
        .name("sluice-graph-watchdog".into())
        .spawn(move || watching.watch())
        .expect("the graph watchdog thread starts");
    watchdog
});

/// Terminates `options`' run at `deadline`, unless the run is over (its `RunOptions` dropped)
/// by then.
pub(crate) fn stop_at(deadline: Instant, options: &Arc<RunOptions>) {
    let watchdog = &*WATCHDOG;
    let mut runs = watchdog.runs.lock().unwrap_or_else(|p| p.into_inner());
    // The thread sleeps until the earliest deadline it holds: it needs waking only for an
    // earlier one. Runs of one model have the same time limit, so a new run's deadline is
    // nearly always the latest, and a graph run costs no thread wake-up.
    let sooner = runs.iter().all(|(queued, _)| deadline < *queued);
    runs.push((deadline, Arc::downgrade(options)));
    drop(runs);
    if sooner {
        watchdog.changed.notify_one();
    }
}

impl Watchdog {
    fn watch(&self) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            runs.retain(|(deadline, options)| {
                let Some(options) = options.upgrade() else {
                    return false; // finished
                };
                if *deadline > now {
                    return true;
                }
                if let Err(error) = options.terminate() {
                    tracing::warn!(%error, "could not stop a graph run at its deadline");
                }
                false
            });
            runs = match runs.iter().map(|(deadline, _)| *deadline).min() {
                Some(next) => {
                    let wait = next.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(runs, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(runs).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}
