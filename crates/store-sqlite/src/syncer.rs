//! Durability, pipelined: the thread that makes committed batches durable and answers them.
//!
//! The writer commits a batch with `synchronous = NORMAL` (the WAL frames are written, not yet
//! flushed) and hands its answers here; while this thread runs `fdatasync` on the WAL, the writer
//! already applies the next batch. A batch is answered only after an `fdatasync` that began after
//! its commit, so every acknowledged request is on stable storage. One flush covers every batch
//! committed before it, so batches that queue up here share it.
//!
//! Answers of later requests may rest on state committed but not yet flushed (a snapshot read
//! from the cache or the database). That is safe because every answer commits its own audit
//! record *after* the state it read, in the same append-only WAL: the flush that acknowledges it
//! covers what it read. If a flush fails, nothing in flight is acknowledged and the store refuses
//! every later commit: after a failed `fsync` the kernel may have dropped the dirty pages.
//!
//! A batch that revoked a principal or token comes with the authentication epoch it advanced
//! to. The syncer publishes it after the flush and before answering the batch, so a revocation's
//! answer happens after every later [`Store::auth_epoch`](selene_kms_store::Store::auth_epoch)
//! shows the advance. It is published even when the flush failed: the revocation is committed
//! and readers see it, and a higher epoch only makes the host authenticate afresh.

use selene_kms_store::backend::{ErrorKind, Receipt, StoreError, StoreResult, WriteHealth};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// Answers of one committed batch, waiting for the flush.
pub(crate) type Answers = Vec<(
    tokio::sync::oneshot::Sender<StoreResult<Receipt>>,
    StoreResult<Receipt>,
)>;

/// A committed batch waiting for the flush: its answers, and the authentication epoch it
/// advanced to, if any.
type Flush = (Answers, Option<u64>);

/// The sending side, held by the writer.
pub(crate) struct Syncer {
    queue: Option<Sender<Flush>>,
    thread: Option<JoinHandle<()>>,
    health: Arc<WriteHealth>,
    /// Batches submitted and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// The published authentication epoch.
    epoch: Arc<AtomicU64>,
}

fn flush_failed() -> StoreError {
    StoreError::new(
        ErrorKind::Unavailable,
        "the write-ahead log could not be flushed to stable storage",
    )
}

impl Syncer {
    /// Starts the thread; it publishes authentication epochs to `epoch`.
    pub(crate) fn start(
        db_path: &Path,
        health: Arc<WriteHealth>,
        epoch: Arc<AtomicU64>,
    ) -> StoreResult<Self> {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let (queue, batches) = channel::<Flush>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (thread_health, thread_in_flight, thread_epoch) =
            (health.clone(), in_flight.clone(), epoch.clone());
        let thread = std::thread::Builder::new()
            .name("kms-sync".into())
            .spawn(move || {
                run(
                    &wal,
                    &batches,
                    &thread_health,
                    &thread_in_flight,
                    &thread_epoch,
                )
            })
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "cannot start the syncer"))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            health,
            in_flight,
            epoch,
        })
    }

    /// Where commit outcomes are recorded, for readiness.
    pub(crate) fn health(&self) -> &WriteHealth {
        &self.health
    }

    /// Whether a flush is under way or queued: a commit made now would wait for the next one.
    pub(crate) fn is_flushing(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Queues a committed batch's answers, and the epoch it advanced to, for the next flush.
    pub(crate) fn submit(&self, answers: Answers, epoch: Option<u64>) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let unsent = match &self.queue {
            Some(q) => q.send((answers, epoch)).err().map(|e| e.0.0),
            None => Some(answers),
        };
        if unsent.is_some() {
            // The syncer is gone: nothing will be flushed again.
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.health.stop();
            if let Some(advanced) = epoch {
                advance(&self.epoch, advanced);
            }
        }
        for (reply, _) in unsent.into_iter().flatten() {
            let _ = reply.send(Err(flush_failed()));
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the queue lets the thread flush what is queued, answer it, and stop.
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes a revocation: the published epoch always moves forward, past what it was and to at
/// least what the database returned. The database's value alone is not trusted: whoever can
/// write the file could have set it back, so that a revocation would land on an epoch a
/// remembered authentication already carries.
fn advance(epoch: &AtomicU64, stored: u64) {
    let _ = epoch.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
        Some(current.saturating_add(1).max(stored))
    });
}

fn flush(wal: &Path, file: &mut Option<File>) -> std::io::Result<()> {
    let f = match file {
        Some(f) => f,
        None => file.insert(File::open(wal)?),
    };
    f.sync_data()
}

fn run(
    wal: &Path,
    batches: &Receiver<Flush>,
    health: &WriteHealth,
    in_flight: &AtomicUsize,
    epoch: &AtomicU64,
) {
    let mut file: Option<File> = None;
    while let Ok(first) = batches.recv() {
        let mut pending = vec![first];
        pending.extend(batches.try_iter());
        let taken = pending.len();
        let flushed = !health.is_stopped() && {
            let started = std::time::Instant::now();
            let flushed = flush(wal, &mut file).is_ok();
            health.flushed(started.elapsed());
            flushed
        };
        if !flushed {
            health.stop();
        }
        for advanced in pending.iter().filter_map(|(_, e)| *e) {
            advance(epoch, advanced);
        }
        for (reply, outcome) in pending.into_iter().flat_map(|(answers, _)| answers) {
            let outcome = if flushed {
                outcome
            } else {
                outcome.and(Err(flush_failed()))
            };
            let _ = reply.send(outcome);
        }
        in_flight.fetch_sub(taken, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_revocation_moves_the_published_epoch_forward() {
        let epoch = AtomicU64::new(10);
        advance(&epoch, 11);
        assert_eq!(epoch.load(Ordering::Acquire), 11);
        // The stored counter was set back: the revocation still moves the epoch on.
        advance(&epoch, 5);
        assert_eq!(epoch.load(Ordering::Acquire), 12);
        advance(&epoch, 40);
        assert_eq!(epoch.load(Ordering::Acquire), 40);
    }
}
