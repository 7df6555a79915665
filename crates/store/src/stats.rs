//! Group-commit statistics: how many units each durable transaction carried.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (inclusive) of the batch-size buckets.
pub const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A histogram of batch sizes, updated by the writer and read by `/metrics`.
#[derive(Debug, Default)]
pub struct BatchHistogram {
    buckets: [AtomicU64; BATCH_BOUNDS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl BatchHistogram {
    /// Records one batch of `size` units.
    pub fn record(&self, size: u64) {
        let index = BATCH_BOUNDS
            .iter()
            .position(|b| size <= *b)
            .unwrap_or(BATCH_BOUNDS.len() - 1);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(size, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), the number of batches and the number of units.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum.load(Ordering::Relaxed),
        )
    }
}
