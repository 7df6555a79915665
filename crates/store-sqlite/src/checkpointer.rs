//! WAL checkpoints off the writer's thread.
//!
//! SQLite's automatic checkpoint runs inside the committing writer, stalling every request of
//! the batch behind it. Here the writer's connection has `wal_autocheckpoint = 0` and this thread
//! copies committed frames into the database with PASSIVE checkpoints, which never block the
//! writer or readers. Under sustained writes a PASSIVE checkpoint never catches up with the end of
//! the log, so the WAL would never restart and would grow without bound (and every read would
//! search a larger WAL index): past [`WAL_LIMIT`] bytes the thread runs a RESTART checkpoint,
//! which briefly holds the writer back, copies the rest and makes the writer start the log over.
//! Before it, this thread flushes the database file itself: the PASSIVE checkpoints leave tens of
//! megabytes of copied pages unflushed, and flushing them inside the RESTART (about 10 ms on a
//! virtual disk) held every request that long; now the RESTART flushes only its last few pages.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};

use crate::open_connection;

/// How often the thread checkpoints.
const PERIOD: Duration = Duration::from_millis(250);
/// WAL size past which the log is checkpointed completely and emptied.
const WAL_LIMIT: i64 = 16 * 1024 * 1024;

/// The running checkpoint thread; stops (after one last checkpoint) when dropped.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path, false)?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096);
        let db = std::fs::File::open(path).map_err(|_| {
            StoreError::new(ErrorKind::Unavailable, "cannot open the database file")
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kms-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(PERIOD);
                    // PASSIVE answers (busy, frames in the log, frames checkpointed).
                    let frames = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                        .unwrap_or(0);
                    if frames.saturating_mul(page_size) > WAL_LIMIT {
                        // Copy what arrived meanwhile without blocking anyone, so that the
                        // blocking RESTART has only a few frames left to copy. A failed
                        // checkpoint is retried next period; meanwhile the WAL grows.
                        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                        // A failed flush here is not trusted: the RESTART flushes again.
                        let _ = db.sync_data();
                        let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
                    }
                }
            })
            .map_err(|_| {
                StoreError::new(ErrorKind::Unavailable, "cannot start the checkpointer")
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
