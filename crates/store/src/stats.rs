//! Group-commit statistics: how many units each durable transaction carried, and how long
//! making them durable took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// Most units in one group commit.
pub const MAX_BATCH: usize = 1024;

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
    /// Records one batch of `units` units.
    pub fn record(&self, units: usize) {
        let size = u64::try_from(units).unwrap_or(u64::MAX);
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

/// Upper bounds (inclusive, seconds) of the flush-duration buckets.
pub const FLUSH_BOUNDS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 1.0,
];

/// A histogram of how long flushes to stable storage took (SQLite: `fdatasync` of the log;
/// PostgreSQL: the commit, which waits for the server's flush).
#[derive(Debug, Default)]
pub struct FlushHistogram {
    buckets: [AtomicU64; FLUSH_BOUNDS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl FlushHistogram {
    /// Records one flush.
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(bucket) = FLUSH_BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .and_then(|i| self.buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Per-bucket counts (not cumulative; slower than the last bound in none), the number of
    /// flushes and their summed duration in nanoseconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_ns.load(Ordering::Relaxed),
        )
    }
}

/// One group commit's first jobs: `first`, then whatever else is queued (up to [`MAX_BATCH`]).
pub fn drain<T>(first: T, jobs: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    take_queued(&mut batch, jobs, MAX_BATCH);
    batch
}

/// Moves queued jobs into `batch` without waiting, until it holds `max_len` or the queue is empty.
pub fn take_queued<T>(batch: &mut Vec<T>, jobs: &mut mpsc::UnboundedReceiver<T>, max_len: usize) {
    while batch.len() < max_len {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}
