//! Group-commit statistics: how many units each durable transaction carried, and how long
//! making them durable took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// Most units in one group commit.
pub const MAX_BATCH: usize = 1024;

/// Upper bounds (inclusive) of the batch-size buckets.
pub const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Counts per bucket, how many were recorded and their sum: the one histogram both
/// statistics below are.
#[derive(Debug)]
struct Buckets<const N: usize> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Buckets<N> {
    /// Records `amount` in bucket `index` (in none when `None`: past the last bound).
    fn record(&self, index: Option<usize>, amount: u64) {
        if let Some(bucket) = index.and_then(|i| self.buckets.get(i)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(amount, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (Vec<u64>, u64, u64) {
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

/// A histogram of batch sizes, updated by the writer and read by `/metrics`.
#[derive(Debug, Default)]
pub struct BatchHistogram(Buckets<{ BATCH_BOUNDS.len() }>);

impl BatchHistogram {
    /// Records one batch of `units` units (a batch is never larger than the last bound).
    pub fn record(&self, units: usize) {
        let size = u64::try_from(units).unwrap_or(u64::MAX);
        let index = BATCH_BOUNDS
            .iter()
            .position(|b| size <= *b)
            .unwrap_or(BATCH_BOUNDS.len() - 1);
        self.0.record(Some(index), size);
    }

    /// Per-bucket counts (not cumulative), the number of batches and the number of units.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        self.0.snapshot()
    }
}

/// Upper bounds (inclusive, seconds) of the flush-duration buckets.
pub const FLUSH_BOUNDS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 1.0,
];

/// A histogram of how long flushes to stable storage took (SQLite: `fdatasync` of the log;
/// PostgreSQL: the commit, which waits for the server's flush).
#[derive(Debug, Default)]
pub struct FlushHistogram(Buckets<{ FLUSH_BOUNDS.len() }>);

impl FlushHistogram {
    /// Records one flush.
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = FLUSH_BOUNDS.iter().position(|b| seconds <= *b);
        self.0
            .record(index, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Per-bucket counts (not cumulative; slower than the last bound in none), the number of
    /// flushes and their summed duration in nanoseconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        self.0.snapshot()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_histogram_counts_in_its_bucket_and_sums() {
        let batches = BatchHistogram::default();
        batches.record(3);
        batches.record(MAX_BATCH);
        let (buckets, count, units) = batches.snapshot();
        assert_eq!((buckets[2], buckets[10], count, units), (1, 1, 2, 1027));

        let flushes = FlushHistogram::default();
        flushes.record(Duration::from_micros(300));
        flushes.record(Duration::from_secs(2));
        let (buckets, count, nanos) = flushes.snapshot();
        assert_eq!(buckets[2], 1, "300 µs is under 0.5 ms");
        assert_eq!(buckets.iter().sum::<u64>(), 1, "2 s is past every bound");
        assert_eq!((count, nanos), (2, 2_000_300_000));
    }
}
