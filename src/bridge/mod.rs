//! The hand-off between tokio threads and the one Python thread.
//!
//! Tokio threads never attach to the interpreter. They push [`Event`]s onto a
//! queue and, when the Python thread is not already due to look at it, write
//! to an eventfd that the asyncio loop watches. The Python thread then takes
//! the whole queue in one go, so a burst of requests costs one wake-up.

pub mod exchange;
pub mod relay;
pub mod session;

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Waker;

use nix::sys::eventfd::{EfdFlags, EventFd};

pub use exchange::{Exchange, RequestHead, ResponseHead, WaitKind};

/// Work for the Python thread.
#[derive(Debug)]
pub enum Event {
    /// A new HTTP request: build its scope and start the app.
    Request(Box<RequestHead>),
    /// A Python future parked on an exchange can make progress.
    Wake(exchange::Parked),
    /// A WebSocket handshake: build its scope and start the app.
    WebSocket(Box<session::WebSocketHead>),
    /// A Python future parked on a WebSocket session can make progress.
    WakeSession(session::ParkedSession),
    /// Stop serving: run lifespan shutdown and stop the event loop.
    Stop,
}

/// The queue of [`Event`]s and the eventfd that announces them.
#[derive(Debug)]
pub struct Bridge {
    queue: Mutex<Vec<Event>>,
    /// True from the moment a producer writes to the eventfd until the
    /// Python thread starts taking the queue, so a burst writes once.
    wake_pending: AtomicBool,
    /// Events were queued with [`Bridge::submit_deferred`] since the last
    /// [`Bridge::flush`].
    pending: AtomicBool,
    eventfd: EventFd,
}

impl Bridge {
    /// Creates the queue and a non-blocking eventfd for the loop to watch.
    pub fn new() -> std::io::Result<Self> {
        let flags = EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC;
        let eventfd = EventFd::from_value_and_flags(0, flags)?;
        Ok(Self {
            queue: Mutex::new(Vec::with_capacity(64)),
            wake_pending: false.into(),
            pending: false.into(),
            eventfd,
        })
    }

    /// The file descriptor the event loop registers as a reader.
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Queues `event` and wakes the Python thread unless a wake-up is
    /// already on its way. Safe from any thread; never blocks on Python.
    pub fn submit(&self, event: Event) {
        self.push(event);
        self.wake();
    }

    /// Queues `event` without waking the Python thread. The caller must call
    /// [`Bridge::flush`] before it waits for anything; the tokio runtime
    /// does so each time before its thread parks, so all requests parsed in
    /// one pass of the runtime reach Python with one wake-up.
    pub fn submit_deferred(&self, event: Event) {
        self.push(event);
        self.pending.store(true, Ordering::Release);
    }

    /// Wakes the Python thread if deferred events are waiting.
    pub fn flush(&self) {
        // Acquire pairs with the Release in `submit_deferred`.
        if self.pending.swap(false, Ordering::Acquire) {
            self.wake();
        }
    }

    fn push(&self, event: Event) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    fn wake(&self) {
        // AcqRel pairs with the store in `take_events`: a producer that reads
        // `false` here pushed after the consumer's reset, so its event may
        // have missed the swap and the consumer must be woken again.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A full counter (2^64 - 2 writes unread) is the only failure of
            // a non-blocking eventfd write; the consumer is awake then anyway.
            let _ = self.eventfd.write(1);
        }
    }

    /// Takes every queued event. Called on the Python thread when the
    /// eventfd is readable, and once more at the end of each pass.
    pub fn take_events(&self, into: &mut Vec<Event>) {
        // Reading resets the counter; EAGAIN only means no producer wrote.
        let _ = self.eventfd.read();

        // Reset before taking: an event pushed after this point either lands
        // in the swap below or reads `false` and writes the eventfd again.
        self.wake_pending.store(false, Ordering::Release);
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *queue, into);
    }
}

thread_local! {
    /// Wakers held back while the Python thread runs a dispatch pass.
    static DEFERRED_WAKERS: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Wakes `waker`, or holds it until the end of the current dispatch pass
/// (see [`DeferWakers`]). Waking a tokio task from the Python thread makes
/// the tokio thread runnable; on a shared core it would then preempt the
/// Python thread once per response instead of once per pass.
pub fn wake_later(waker: Waker) {
    let waker = DEFERRED_WAKERS.with(|deferred| match deferred.borrow_mut().as_mut() {
        Some(wakers) => {
            wakers.push(waker);
            None
        }
        None => Some(waker),
    });
    if let Some(waker) = waker {
        relay::hand_off([waker]);
    }
}

/// Holds back [`wake_later`] wake-ups on this thread until dropped.
#[derive(Debug)]
pub struct DeferWakers(());

impl DeferWakers {
    pub fn start() -> Self {
        DEFERRED_WAKERS.with(|deferred| {
            deferred.borrow_mut().get_or_insert_with(Vec::new);
        });
        Self(())
    }
}

impl Drop for DeferWakers {
    fn drop(&mut self) {
        let wakers = DEFERRED_WAKERS.with(|deferred| deferred.borrow_mut().take());
        relay::hand_off(wakers.into_iter().flatten());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    fn readable(bridge: &Bridge) -> bool {
        let mut fds = [PollFd::new(bridge.eventfd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn burst_of_events_wakes_once_and_is_taken_whole() {
        let bridge = Bridge::new().unwrap();
        assert!(!readable(&bridge));

        bridge.submit(Event::Stop);
        bridge.submit(Event::Stop);
        assert!(readable(&bridge));
        assert_eq!(
            bridge.eventfd.read().unwrap(),
            1,
            "second submit wrote again"
        );
        bridge.eventfd.write(1).unwrap();

        let mut events = Vec::new();
        bridge.take_events(&mut events);
        assert_eq!(events.len(), 2);
        assert!(!readable(&bridge));
    }

    #[test]
    fn deferred_events_wake_on_flush_only() {
        let bridge = Bridge::new().unwrap();
        bridge.submit_deferred(Event::Stop);
        assert!(!readable(&bridge));
        bridge.flush();
        assert!(readable(&bridge));
    }

    #[test]
    fn event_after_take_wakes_again() {
        let bridge = Bridge::new().unwrap();
        let mut events = Vec::new();
        bridge.submit(Event::Stop);
        bridge.take_events(&mut events);
        bridge.submit(Event::Stop);
        assert!(readable(&bridge));
    }
}
