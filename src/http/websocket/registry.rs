//! The open WebSocket sessions, for the drain.
//!
//! An upgraded connection leaves hyper's graceful-shutdown tracking, so each
//! session task keeps a [`Ticket`] here instead. The drain tells every
//! session to close through a watch channel and waits until the last ticket
//! is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// The drain's request to open sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Keep serving.
    Serving,
    /// Send a close frame with this code and finish the closing handshake.
    Close(u16),
    /// Drop the connection now, so the app receives code 1006.
    Abort,
}

/// The set of live session tasks.
#[derive(Debug)]
pub struct Registry {
    signal: watch::Sender<Drain>,
    live: AtomicUsize,
    idle: Notify,
}

/// Held by one session task; dropping it removes the session.
#[derive(Debug)]
pub struct Ticket {
    registry: Arc<Registry>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            signal: watch::Sender::new(Drain::Serving),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Registers a session; the receiver reports the drain to it.
    pub fn track(self: &Arc<Self>) -> (Ticket, watch::Receiver<Drain>) {
        // Relaxed is enough for a counter: `wait_idle` re-reads it after
        // every notification, which the last `Ticket::drop` sends.
        self.live.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            registry: Arc::clone(self),
        };
        (ticket, self.signal.subscribe())
    }

    /// Returns whether a drain has started. New upgrades are rejected then.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow() != Drain::Serving
    }

    /// Returns the number of live sessions.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Asks every session to close with `code`: 1001 on shutdown, 1012 on a
    /// restart.
    pub fn close_all(&self, code: u16) {
        self.signal.send_replace(Drain::Close(code));
    }

    /// Drops every session's connection without a closing handshake.
    pub fn abort_all(&self) {
        self.signal.send_replace(Drain::Abort);
    }

    /// Waits until no session is live.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before reading the count, so a drop in between wakes us.
            notified.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.registry.live.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.registry.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_after_last_ticket() {
        let registry = Registry::new();
        let (first, mut rx) = registry.track();
        let (second, _) = registry.track();
        assert_eq!(registry.len(), 2);

        registry.close_all(1001);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Drain::Close(1001));
        assert!(registry.is_draining());

        let waiter = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.wait_idle().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
        assert_eq!(registry.len(), 0);
    }
}
