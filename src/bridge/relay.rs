//! Waking tokio tasks from the Python thread with one eventfd write per
//! batch rather than one per response.
//!
//! A tokio task woken from another thread goes through the runtime's inject
//! queue and the I/O driver's waker, which is an eventfd write, every time.
//! On a shared core each write also makes the tokio thread runnable, so it
//! can preempt the Python thread once per response.
//!
//! So the Python thread hands its wakers to one relay task instead. Only the
//! first hand-off since the relay last ran wakes it. The relay then wakes the
//! rest from the tokio thread, where a wake is a push onto the local run
//! queue.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Poll, Waker};

use futures_util::task::AtomicWaker;

/// The relay of this process; a worker runs one tokio runtime.
static RELAY: Relay = Relay {
    wakers: Mutex::new(Vec::new()),
    scheduled: AtomicBool::new(false),
    task: AtomicWaker::new(),
    running: AtomicBool::new(false),
};

#[derive(Debug)]
struct Relay {
    wakers: Mutex<Vec<Waker>>,
    /// Set when a hand-off woke the relay, cleared when the relay runs.
    scheduled: AtomicBool,
    task: AtomicWaker,
    /// Whether the relay task runs; without it, wakers are woken directly.
    running: AtomicBool,
}

/// Wakes `wakers` through the relay task, or directly when it is not
/// running (before the runtime starts, after it stops, in unit tests).
pub fn hand_off(wakers: impl IntoIterator<Item = Waker>) {
    // Acquire pairs with the Release stores in `run`.
    if !RELAY.running.load(Ordering::Acquire) {
        wakers.into_iter().for_each(Waker::wake);
        return;
    }
    let mut queued = RELAY.wakers.lock().unwrap_or_else(PoisonError::into_inner);
    let before = queued.len();
    queued.extend(wakers);
    let added = queued.len() > before;
    drop(queued);

    // AcqRel: the relay's clearing store happens before it takes the queue,
    // so a hand-off that finds the flag clear is seen by the next run.
    if added && !RELAY.scheduled.swap(true, Ordering::AcqRel) {
        RELAY.task.wake();
    }
}

/// Runs the relay until the runtime drops it; spawn it once per runtime.
pub async fn run() {
    /// Marks the relay stopped when the runtime drops its task.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            RELAY.running.store(false, Ordering::Release);
            let left =
                std::mem::take(&mut *RELAY.wakers.lock().unwrap_or_else(PoisonError::into_inner));
            left.into_iter().for_each(Waker::wake);
        }
    }

    let _running = Running;
    let mut taken = Vec::new();
    poll_fn(|cx| {
        RELAY.task.register(cx.waker());
        RELAY.running.store(true, Ordering::Release);
        RELAY.scheduled.store(false, Ordering::Release);
        std::mem::swap(
            &mut *RELAY.wakers.lock().unwrap_or_else(PoisonError::into_inner),
            &mut taken,
        );
        taken.drain(..).for_each(Waker::wake);
        Poll::<()>::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn relay_wakes_handed_off_wakers() {
        let relay = tokio::spawn(run());
        tokio::task::yield_now().await;

        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let wakers: Vec<Waker> = (0..10).map(|_| Waker::from(Arc::clone(&counter))).collect();
        std::thread::spawn(move || hand_off(wakers)).join().unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(counter.0.load(Ordering::Relaxed), 10);

        relay.abort();
        let _ = relay.await;
        assert!(!RELAY.running.load(Ordering::Acquire));
        let late = Arc::new(Counter(AtomicUsize::new(0)));
        hand_off([Waker::from(Arc::clone(&late))]);
        assert_eq!(late.0.load(Ordering::Relaxed), 1);
    }
}
