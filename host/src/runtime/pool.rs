//! A model's replicas: N instances, each on its own thread, pulling requests from one bounded
//! queue. The bound turns overload into an immediate `QueueFull` instead of growing memory;
//! whichever replica is free first takes the next request.
//!
//! Dropping the pool closes the queue: replicas finish what is already queued, then exit. So
//! unloading a model loses no accepted request.

use super::replica::{InstanceRecipe, Replica};
use super::{CallError, LoadError, Tensor};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, CallError>>,
}

/// The running replicas of one model and the queue in front of them.
pub struct ReplicaPool {
    queue: Sender<Job>,
    replicas: usize,
    capacity: usize,
}

impl ReplicaPool {
    /// Starts `first` (already initialised) and `replicas - 1` more instances of `recipe`,
    /// each on its own thread.
    pub fn start(
        recipe: &InstanceRecipe,
        first: Replica,
        replicas: usize,
    ) -> Result<Self, LoadError> {
        let replicas = replicas.max(1);
        let mut instances = vec![first];
        for _ in 1..replicas {
            instances.push(Replica::new(recipe.clone())?);
        }
        let capacity = recipe.limits.queue_capacity.max(1);
        let (queue, jobs) = crossbeam_channel::bounded(capacity);
        for (index, replica) in instances.into_iter().enumerate() {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("sluice-{}-{index}", recipe.model))
                .spawn(move || serve(replica, jobs))
                .map_err(|e| LoadError::Io(format!("starting a replica thread: {e}")))?;
        }
        Ok(ReplicaPool {
            queue,
            replicas,
            capacity,
        })
    }

    /// The number of replicas.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Queues one batch and waits for a replica to run it.
    pub async fn predict(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, CallError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Job { inputs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(CallError::QueueFull {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(CallError::Unavailable("every replica has stopped".into()));
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(CallError::Unavailable(
                "the replica stopped before answering".into(),
            ))
        })
    }
}

/// A replica's thread: run jobs until the queue is closed and drained.
fn serve(mut replica: Replica, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            continue; // the caller gave up (e.g. its deadline passed); skip the work
        }
        let result = replica.predict(&job.inputs);
        let _ = job.reply.send(result);
    }
}
