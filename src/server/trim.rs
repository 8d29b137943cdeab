//! Returning the heap memory of closed connections to the kernel.
//!
//! Each connection's buffers and task come from glibc's heap, and glibc
//! gives freed memory back to the kernel only from the top of the heap. A
//! burst of connections therefore stays resident after they close: 2,000
//! idle keep-alive connections left a worker at 63.6 MiB instead of 27.3
//! once they were gone (glibc 2.36, the raw app of `benches/apps`).
//! `malloc_trim(0)` releases the free pages inside the heap too, so the
//! serve loop calls it once many connections have closed.

use std::time::Duration;

use tokio::time::Instant;

/// Connections that must have closed, counted from the largest number open
/// since the last trim, before a trim is scheduled. An idle connection uses
/// about 18 KiB of the heap, so 64 of them free about 1 MiB. Fewer would
/// free too little to be worth a pass over the heap.
const TRIM_AFTER_CLOSED: usize = 64;

/// Time from the close that crosses [`TRIM_AFTER_CLOSED`] to the trim, so
/// that a burst of closes leads to one trim rather than several.
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Decides when the serve loop trims the heap, from the number of open
/// connections it reports after each accept and each close.
#[derive(Debug, Default)]
pub struct HeapTrim {
    /// Largest number of open connections since the last trim.
    peak: usize,
    /// When the scheduled trim runs.
    due: Option<Instant>,
}

impl HeapTrim {
    /// Records the number of open connections after one was accepted.
    pub fn opened(&mut self, open: usize) {
        self.peak = self.peak.max(open);
    }

    /// Records the number of open connections after one closed, and
    /// schedules a trim once enough have closed.
    pub fn closed(&mut self, open: usize) {
        if self.due.is_none() && self.peak.saturating_sub(open) >= TRIM_AFTER_CLOSED {
            self.due = Some(Instant::now() + TRIM_DELAY);
        }
    }

    /// Waits until the scheduled trim is due, and forever while none is.
    pub async fn due(&self) {
        match self.due {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Trims the heap and counts closes again from `open`.
    pub fn trim(&mut self, open: usize) {
        self.due = None;
        self.peak = open;
        let started = std::time::Instant::now();
        let released = release_free_heap();
        tracing::debug!(
            released,
            open_connections = open,
            duration_us = started.elapsed().as_micros() as u64,
            "trimmed the heap after connections closed"
        );
    }
}

/// Gives the free pages of every malloc arena back to the kernel. Returns
/// whether any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own
    // arenas, each under its lock, so it is safe from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries have no `malloc_trim`, so their allocators keep their
/// own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_trim_before_enough_closed() {
        let mut trim = HeapTrim::default();
        trim.opened(100);
        trim.closed(100 - TRIM_AFTER_CLOSED + 1);
        assert!(trim.due.is_none());
    }

    #[test]
    fn trim_scheduled_once_enough_closed() {
        let mut trim = HeapTrim::default();
        trim.opened(100);
        trim.closed(100 - TRIM_AFTER_CLOSED);
        assert!(trim.due.is_some());
    }

    #[test]
    fn later_closes_keep_the_first_deadline() {
        let mut trim = HeapTrim::default();
        trim.opened(200);
        trim.closed(100);
        let first = trim.due;
        trim.closed(50);
        assert_eq!(trim.due, first);
    }

    #[test]
    fn trim_counts_again_from_open() {
        let mut trim = HeapTrim::default();
        trim.opened(200);
        trim.closed(100);
        trim.trim(100);
        assert!(trim.due.is_none());
        assert_eq!(trim.peak, 100);
        trim.closed(100 - TRIM_AFTER_CLOSED + 1);
        assert!(trim.due.is_none());
    }
}
