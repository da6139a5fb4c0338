//! Replicas sized by load inside one server: a model loaded with a [`ReplicaRange`] gets an
//! instance more when its queueing delay threatens its latency objective, and one less when a
//! replica has had nothing to do for a while, never leaving the range.
//!
//! Every [`TICK`] the registry's autoscaler samples each such model's queues
//! ([`crate::batching::BatchLoad`]) and asks its [`Autoscaler`] what to do. The rules, with
//! hysteresis so that a load near a threshold does not make the count flap:
//! - **up** by one when the request queued longest has waited at least half the model's SLO at
//!   [`PRESSED_TICKS`] samples in a row (a wait that long leaves the batch too little of its
//!   budget), at most once per [`UP_COOLDOWN`] (a new replica needs a moment to drain the
//!   queue before its effect shows);
//! - **down** by one when, for the whole of the scale-down delay (`serve --scale-down-after-s`,
//!   30 s by default), no request waited in a queue and at least one replica had nothing in
//!   flight; the delay starts again after every change. With a min of 0 an idle model goes
//!   down to zero replicas (its compiled code stays), and the next request starts one
//!   (`Batcher::wake`), once however many wait.
//!
//! The decisions are a pure function of the samples and their times, tested without a clock.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// How often models are sampled.
pub const TICK: Duration = Duration::from_millis(250);
/// Samples in a row that must show the queue pressing before a replica is added.
pub const PRESSED_TICKS: u32 = 2;
/// The least time between two additions.
pub const UP_COOLDOWN: Duration = Duration::from_secs(1);
/// How long a model must have had a replica to spare before one is removed, by default.
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(30);

/// The replicas a model may have, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRange {
    /// The fewest.
    pub min: usize,
    /// The most.
    pub max: usize,
}

impl ReplicaRange {
    /// The range `min..=max`; `(0, 0)` (neither given) means a fixed count, `None`. A min of
    /// 0 lets an idle model scale to zero.
    pub fn new(min: usize, max: usize) -> Result<Option<ReplicaRange>, String> {
        match (min, max) {
            (0, 0) => Ok(None),
            (_, 0) => Err("max_replicas: must be at least 1 with min_replicas".into()),
            (min, max) if min > max => Err(format!(
                "min_replicas: {min} is more than max_replicas {max}"
            )),
            (min, max) => Ok(Some(ReplicaRange { min, max })),
        }
    }

    /// `replicas` moved into the range.
    pub fn clamp(&self, replicas: usize) -> usize {
        replicas.clamp(self.min, self.max)
    }
}

/// The replicas a load asks to start with: `replicas`, where 0 means 1, except with a range
/// from 0, where 0 starts the model with none (registered, not resident: its first request
/// starts a replica).
pub fn starting_replicas(replicas: usize, range: Option<ReplicaRange>) -> usize {
    if range.is_some_and(|range| range.min == 0) {
        replicas
    } else {
        replicas.max(1)
    }
}

/// One sample of a model.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Replicas taking requests.
    pub replicas: usize,
    /// Requests in its queues.
    pub queued: usize,
    /// Requests queued or running.
    pub in_flight: usize,
    /// How long the request queued longest has waited.
    pub oldest_wait: Duration,
    /// The model's latency objective.
    pub slo: Duration,
}

/// The decisions for one model, and what they remember between samples.
#[derive(Debug)]
pub struct Autoscaler {
    range: ReplicaRange,
    scale_down_after: Duration,
    pressed: u32,
    last_up: Option<Instant>,
    /// Since when a replica has been spare without a break (`None`: it is not).
    spare_since: Option<Instant>,
}

impl Autoscaler {
    /// Decisions within `range`, removing a replica after `scale_down_after` spare.
    pub fn new(range: ReplicaRange, scale_down_after: Duration) -> Autoscaler {
        Autoscaler {
            range,
            scale_down_after,
            pressed: 0,
            last_up: None,
            spare_since: None,
        }
    }

    /// The range it keeps to.
    pub fn range(&self) -> ReplicaRange {
        self.range
    }

    /// The replica count `sample` calls for, if it is another than the sample's.
    pub fn decide(&mut self, sample: Sample) -> Option<usize> {
        let current = sample.replicas;
        if current < self.range.min || current > self.range.max {
            return Some(self.range.clamp(current));
        }
        let pressing = sample.queued > 0 && sample.oldest_wait >= sample.slo / 2;
        self.pressed = if pressing { self.pressed + 1 } else { 0 };
        let spare = sample.queued == 0 && sample.in_flight < current;
        self.spare_since = match (spare, self.spare_since) {
            (false, _) => None,
            (true, None) => Some(sample.at),
            (true, since) => since,
        };
        let cooled = self
            .last_up
            .is_none_or(|at| sample.at.duration_since(at) >= UP_COOLDOWN);
        if self.pressed >= PRESSED_TICKS && cooled && current < self.range.max {
            self.pressed = 0;
            self.last_up = Some(sample.at);
            self.spare_since = None;
            return Some(current + 1);
        }
        let spare_long = self
            .spare_since
            .is_some_and(|since| sample.at.duration_since(since) >= self.scale_down_after);
        if spare_long && current > self.range.min {
            self.spare_since = None;
            return Some(current - 1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Duration = Duration::from_millis(100);

    fn sample(
        at: Instant,
        replicas: usize,
        queued: usize,
        in_flight: usize,
        wait_ms: u64,
    ) -> Sample {
        Sample {
            at,
            replicas,
            queued,
            in_flight,
            oldest_wait: Duration::from_millis(wait_ms),
            slo: SLO,
        }
    }

    fn scaler() -> Autoscaler {
        Autoscaler::new(
            ReplicaRange::new(1, 3).unwrap().unwrap(),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(ReplicaRange::new(0, 0), Ok(None));
        assert_eq!(
            ReplicaRange::new(0, 2),
            Ok(Some(ReplicaRange { min: 0, max: 2 })),
            "an idle model may scale to zero"
        );
        assert!(ReplicaRange::new(3, 2).unwrap_err().contains("more than"));
        assert!(ReplicaRange::new(2, 0).is_err());
    }

    #[test]
    fn a_pressing_queue_adds_replicas_one_at_a_time_up_to_the_max() {
        let mut scaler = scaler();
        let t0 = Instant::now();
        let tick = |n: u32| t0 + TICK * n;
        // One pressing sample is not enough; two in a row are.
        assert_eq!(scaler.decide(sample(tick(0), 1, 8, 9, 60)), None);
        assert_eq!(scaler.decide(sample(tick(1), 1, 8, 9, 60)), Some(2));
        // Still pressing, but within the cool-down after an addition.
        assert_eq!(scaler.decide(sample(tick(2), 2, 8, 9, 60)), None);
        assert_eq!(scaler.decide(sample(tick(3), 2, 8, 9, 60)), None);
        assert_eq!(scaler.decide(sample(tick(5), 2, 8, 9, 60)), Some(3));
        // At the max nothing more is added.
        for n in 6..20 {
            assert_eq!(scaler.decide(sample(tick(n), 3, 8, 9, 90)), None);
        }
    }

    #[test]
    fn a_wait_under_half_the_slo_or_a_break_in_the_pressure_adds_nothing() {
        let mut scaler = scaler();
        let t0 = Instant::now();
        for n in 0..20 {
            assert_eq!(scaler.decide(sample(t0 + TICK * n, 1, 8, 9, 49)), None);
        }
        for n in 20..40 {
            let wait = if n % 2 == 0 { 80 } else { 0 };
            assert_eq!(scaler.decide(sample(t0 + TICK * n, 1, 8, 9, wait)), None);
        }
    }

    #[test]
    fn a_replica_spare_for_the_whole_delay_is_removed_down_to_the_min() {
        let mut scaler = scaler();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(scaler.decide(sample(at(0), 3, 0, 1, 0)), None);
        assert_eq!(scaler.decide(sample(at(29), 3, 0, 2, 0)), None);
        // Busy on every replica at 29.5 s: the delay starts again.
        assert_eq!(scaler.decide(sample(at(29) + TICK * 2, 3, 0, 3, 0)), None);
        assert_eq!(scaler.decide(sample(at(31), 3, 0, 0, 0)), None);
        assert_eq!(scaler.decide(sample(at(61), 3, 0, 0, 0)), Some(2));
        // And again after the change.
        assert_eq!(scaler.decide(sample(at(62), 2, 0, 0, 0)), None);
        assert_eq!(scaler.decide(sample(at(92), 2, 0, 0, 0)), Some(1));
        assert_eq!(
            scaler.decide(sample(at(200), 1, 0, 0, 0)),
            None,
            "at the min"
        );
    }

    #[test]
    fn a_count_outside_the_range_is_brought_into_it() {
        let mut scaler = scaler();
        let now = Instant::now();
        assert_eq!(scaler.decide(sample(now, 5, 0, 0, 0)), Some(3));
    }
}
