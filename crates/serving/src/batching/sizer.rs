//! How many rows the next batch of a replica may hold: AIMD (Clipper's rule) or a fixed size.
//!
//! AIMD: after a batch that was full (it had as many rows as allowed), add `step` rows to the
//! limit if the batch's latency stayed within the SLO; after any batch over the SLO, cut the
//! limit by `backoff` (10% by default). A batch that was not full says nothing about a larger
//! size, so it does not raise the limit. The limit stays within `1..=max_batch`.

use super::BatchMode;
use std::time::Duration;

/// The batch-size controller of one replica.
#[derive(Debug, Clone)]
pub struct BatchSizer {
    mode: BatchMode,
    size: usize,
    max: usize,
    slo: Duration,
}

impl BatchSizer {
    /// Starts at 1 (adaptive) or at the fixed size (static), never above `max_batch`.
    pub fn new(mode: BatchMode, max_batch: usize, slo: Duration) -> Self {
        let max = max_batch.max(1);
        let size = match mode {
            BatchMode::Adaptive { .. } => 1,
            BatchMode::Static { size } => size.clamp(1, max),
        };
        BatchSizer {
            mode,
            size,
            max,
            slo,
        }
    }

    /// The most rows the next batch may hold.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Learns from a finished batch of `rows` rows that took `latency`.
    pub fn observe(&mut self, rows: usize, latency: Duration) {
        let BatchMode::Adaptive { step, backoff } = self.mode else {
            return;
        };
        if latency > self.slo {
            let reduced = (self.size as f64 * (1.0 - backoff)).floor() as usize;
            self.size = reduced.clamp(1, self.size.saturating_sub(1).max(1));
        } else if rows >= self.size {
            self.size = (self.size + step).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Duration = Duration::from_millis(20);

    fn adaptive(max: usize) -> BatchSizer {
        BatchSizer::new(
            BatchMode::Adaptive {
                step: 4,
                backoff: 0.1,
            },
            max,
            SLO,
        )
    }

    /// A model whose batch of n rows takes `fixed + n * per_row`.
    fn settle(
        sizer: &mut BatchSizer,
        fixed: Duration,
        per_row: Duration,
        rounds: usize,
    ) -> Vec<usize> {
        (0..rounds)
            .map(|_| {
                let rows = sizer.size();
                sizer.observe(rows, fixed + per_row * rows as u32);
                sizer.size()
            })
            .collect()
    }

    #[test]
    fn grows_additively_while_under_the_slo_up_to_the_model_max() {
        let mut sizer = adaptive(64);
        let sizes = settle(&mut sizer, Duration::ZERO, Duration::from_micros(10), 20);
        assert_eq!(&sizes[..4], &[5, 9, 13, 17]);
        assert_eq!(sizer.size(), 64, "capped at max_batch");
    }

    #[test]
    fn backs_off_by_ten_percent_and_settles_near_the_slo() {
        // 1 ms per row: the SLO allows 20 rows.
        let mut sizer = adaptive(1000);
        let sizes = settle(&mut sizer, Duration::ZERO, Duration::from_millis(1), 200);
        let tail = &sizes[100..];
        assert!(tail.iter().all(|&s| (16..=24).contains(&s)), "{tail:?}");
        // One batch over the SLO cuts 10%.
        let mut sizer = adaptive(64);
        for _ in 0..25 {
            sizer.observe(sizer.size(), Duration::ZERO);
        }
        assert_eq!(sizer.size(), 64);
        sizer.observe(64, SLO * 2);
        assert_eq!(sizer.size(), 57);
    }

    #[test]
    fn different_costs_settle_at_different_sizes() {
        let mut cheap = adaptive(10_000);
        let mut costly = adaptive(10_000);
        settle(
            &mut cheap,
            Duration::from_millis(2),
            Duration::from_micros(50),
            500,
        );
        settle(
            &mut costly,
            Duration::from_millis(2),
            Duration::from_micros(500),
            500,
        );
        assert!(
            cheap.size() > 5 * costly.size(),
            "{} vs {}",
            cheap.size(),
            costly.size()
        );
    }

    #[test]
    fn a_batch_that_was_not_full_does_not_raise_the_limit() {
        let mut sizer = adaptive(64);
        sizer.observe(1, Duration::ZERO);
        assert_eq!(sizer.size(), 5);
        sizer.observe(2, Duration::ZERO);
        assert_eq!(sizer.size(), 5);
    }

    #[test]
    fn never_drops_below_one_and_static_never_moves() {
        let mut sizer = adaptive(64);
        sizer.observe(1, SLO * 10);
        assert_eq!(sizer.size(), 1);
        let mut fixed = BatchSizer::new(BatchMode::Static { size: 300 }, 256, SLO);
        assert_eq!(fixed.size(), 256, "clamped to max_batch");
        fixed.observe(256, SLO * 10);
        assert_eq!(fixed.size(), 256);
    }
}
