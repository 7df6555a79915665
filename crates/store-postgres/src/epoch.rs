//! Reads of the authentication epoch, shared among concurrent callers without ever answering a
//! caller with a read that began before it did.
//!
//! Several nodes revoke, so each call must observe every revocation committed before the call
//! began: a remembered value will not do, and the epoch is read from the database. Reads are
//! numbered (generations). A call that finds no read in flight starts the next one; a call that
//! arrives while a read is in flight cannot use it (that read may have begun before a
//! revocation the caller already saw answered), so it waits for the next generation, which the
//! first such waiter starts as soon as the one in flight ends; one read answers every call
//! waiting for it. The cost is one round trip per generation, not per request: under load at
//! most two reads are outstanding per node (one in flight, one waited for), however many
//! requests authenticate.

use std::future::Future;
use std::sync::Mutex;

use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};
use tokio::sync::Notify;

/// Shares epoch reads among concurrent calls.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
    /// Woken when a read ends.
    ended: Notify,
}

#[derive(Default)]
struct State {
    /// The generation of the last read started.
    started: u64,
    /// Whether that read is still in flight.
    in_flight: bool,
    /// The generation of the last read that ended, and what it read.
    last: Option<(u64, StoreResult<u64>)>,
}

fn poisoned() -> StoreError {
    StoreError::new(ErrorKind::Unavailable, "the auth epoch reader failed")
}

/// Ends the read in flight when dropped, so that a cancelled caller never leaves the others
/// waiting for a read nobody runs.
struct Reading<'a> {
    coalescer: &'a Coalescer,
    generation: u64,
    result: Option<StoreResult<u64>>,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.coalescer.state.lock() {
            state.in_flight = false;
            if let Some(result) = self.result.take() {
                state.last = Some((self.generation, result));
            }
        }
        self.coalescer.ended.notify_waiters();
    }
}

impl Coalescer {
    /// The epoch as `read` finds it, by a read that began after this call did.
    pub(crate) async fn get<F, Fut>(&self, read: F) -> StoreResult<u64>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<u64>>,
    {
        let wanted = self.state.lock().map_err(|_| poisoned())?.started + 1;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            let step = {
                let mut state = self.state.lock().map_err(|_| poisoned())?;
                match &state.last {
                    Some((generation, result)) if *generation >= wanted => {
                        Step::Answer(result.clone())
                    }
                    _ if !state.in_flight => {
                        state.in_flight = true;
                        state.started += 1;
                        Step::Read(state.started)
                    }
                    _ => {
                        // Registered before the lock is released, so the end of the read in
                        // flight cannot be missed.
                        ended.as_mut().enable();
                        Step::Wait
                    }
                }
            };
            match step {
                Step::Answer(result) => return result,
                Step::Read(generation) => {
                    let mut reading = Reading {
                        coalescer: self,
                        generation,
                        result: None,
                    };
                    let result = read().await;
                    reading.result = Some(result.clone());
                    return result;
                }
                Step::Wait => ended.await,
            }
        }
    }
}

/// What a call does next.
enum Step {
    /// A read that began after the call ended: its answer.
    Answer(StoreResult<u64>),
    /// No read is in flight: run this generation's.
    Read(u64),
    /// A read that may have begun before the call is in flight: wait for it to end.
    Wait,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// Polls `job` once: far enough to take its place (start a read, or wait for one).
    async fn arrived<F: Future + Unpin>(mut job: F) -> F {
        tokio::select! {
            biased;
            _ = &mut job => panic!("answered before any read ended"),
            () = std::future::ready(()) => job,
        }
    }

    #[tokio::test]
    async fn a_call_arriving_mid_read_waits_for_the_next_read_which_serves_every_waiter() {
        let coalescer = Coalescer::default();
        let stored = AtomicU64::new(1);
        let reads = AtomicUsize::new(0);
        let gate = Arc::new(Semaphore::new(0));
        // A read sees the epoch as it was when it began, and ends when the gate lets it.
        let (stored, reads, gate) = (&stored, &reads, &gate);
        let read = move || async move {
            reads.fetch_add(1, Ordering::SeqCst);
            let seen = stored.load(Ordering::SeqCst);
            gate.acquire().await.expect("gate").forget();
            Ok(seen)
        };
        let first = arrived(Box::pin(coalescer.get(read))).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "the first call reads");
        // A revocation commits while that read is in flight, then two calls arrive.
        stored.store(2, Ordering::SeqCst);
        let second = arrived(Box::pin(coalescer.get(read))).await;
        let third = arrived(Box::pin(coalescer.get(read))).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "they wait, not read");
        gate.add_permits(2);
        let (first, second, third) = tokio::join!(first, second, third);
        assert_eq!(first, Ok(1));
        assert_eq!(second, Ok(2), "never the read that began before it");
        assert_eq!(third, Ok(2));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "one read served both waiters"
        );
        // With no read in flight, a call reads afresh.
        stored.store(3, Ordering::SeqCst);
        gate.add_permits(1);
        assert_eq!(coalescer.get(read).await, Ok(3));
    }

    #[tokio::test]
    async fn a_cancelled_reader_does_not_strand_the_waiters() {
        let coalescer = Coalescer::default();
        let never = arrived(Box::pin(coalescer.get(std::future::pending))).await;
        let waiting = arrived(Box::pin(coalescer.get(|| async { Ok(7) }))).await;
        drop(never);
        assert_eq!(waiting.await, Ok(7));
    }
}
