//! Whether the store's writes are going through, for readiness: a store whose commits fail (full
//! or read-only disk, database unreachable) answers every request with a refusal, so it asks a
//! load balancer, through `/readyz`, to send its traffic elsewhere.
//!
//! A failed commit makes the store unready until a later commit succeeds or [`FAILING_FOR`] has
//! passed without another failure; the second rule matters because an unready node may get no
//! traffic to prove itself with. A failed flush is different: the kernel may have dropped the
//! dirty pages, so the store refuses every later commit and stays unready until restarted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::FlushHistogram;

/// How long a failed commit keeps the store unready when nothing succeeds after it.
pub const FAILING_FOR: Duration = Duration::from_secs(10);

/// Commit outcomes as seen by a backend's writer; read by `Store::ready`.
#[derive(Debug)]
pub struct WriteHealth {
    epoch: Instant,
    /// Orders outcomes, however close in time: each takes the next number.
    outcomes: AtomicU64,
    /// The number of the last failed commit (0: none yet).
    last_failure: AtomicU64,
    /// When it failed: milliseconds since `epoch`.
    last_failure_ms: AtomicU64,
    /// The number of the last successful commit (0: none yet).
    last_success: AtomicU64,
    stopped: AtomicBool,
    /// Batches that could not be committed, ever.
    failures: AtomicU64,
    /// How long the flushes took.
    flushes: FlushHistogram,
}

impl Default for WriteHealth {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            outcomes: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            flushes: FlushHistogram::default(),
        }
    }
}

impl WriteHealth {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn next(&self) -> u64 {
        self.outcomes
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1)
    }

    /// Records a commit that wrote something (one that wrote nothing proves nothing about the
    /// disk).
    pub fn succeeded(&self) {
        self.last_success.store(self.next(), Ordering::Release);
    }

    /// Records a flush to stable storage and how long it took.
    pub fn flushed(&self, took: Duration) {
        self.flushes.record(took);
    }

    /// How long flushes took.
    pub fn flushes(&self) -> &FlushHistogram {
        &self.flushes
    }

    /// Batches that could not be committed (a failed flush among them), ever.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a batch that could not be committed.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_failure_ms
            .store(self.elapsed_ms(), Ordering::Release);
        self.last_failure.store(self.next(), Ordering::Release);
    }

    /// Records a failed flush: from now on every commit is refused.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.failed();
    }

    /// Whether a flush has failed.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Whether commits are expected to go through.
    pub fn is_writable(&self) -> bool {
        self.writable_at(self.elapsed_ms())
    }

    fn writable_at(&self, now_ms: u64) -> bool {
        if self.is_stopped() {
            return false;
        }
        let failure = self.last_failure.load(Ordering::Acquire);
        let success = self.last_success.load(Ordering::Acquire);
        let failed_at = self.last_failure_ms.load(Ordering::Acquire);
        let window = u64::try_from(FAILING_FOR.as_millis()).unwrap_or(u64::MAX);
        failure == 0 || success > failure || now_ms.saturating_sub(failed_at) >= window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_makes_the_store_unwritable_until_a_success_or_the_window_ends() {
        let health = WriteHealth::default();
        assert!(health.is_writable(), "a fresh store is writable");
        health.failed();
        assert!(!health.is_writable(), "a failed commit makes it unready");
        let failed_at = health.last_failure_ms.load(Ordering::Acquire);
        let window = u64::try_from(FAILING_FOR.as_millis()).expect("fits");
        assert!(!health.writable_at(failed_at + window - 1));
        assert!(
            health.writable_at(failed_at + window),
            "ready again after the window"
        );
        // A success right after (within the same millisecond, too) clears the failure at once.
        health.succeeded();
        assert!(health.is_writable());
        health.failed();
        assert!(!health.is_writable(), "and a later failure counts again");
    }

    #[test]
    fn a_failed_flush_is_final() {
        let health = WriteHealth::default();
        health.stop();
        health.succeeded();
        assert!(health.is_stopped());
        assert!(
            !health.writable_at(u64::MAX),
            "no success or time brings it back"
        );
    }
}
