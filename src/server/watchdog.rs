//! Per-connection timeouts for the time between requests: the keep-alive
//! idle timeout and the header-read timeout, kept apart.
//!
//! hyper's own `header_read_timeout` starts when hyper begins waiting for a
//! request head, which on a keep-alive connection includes the idle time
//! before the client sends anything (hyper 1.13, `Conn::poll_read_head`),
//! so it cannot tell an idle client from a slow one. Instead, the socket is
//! wrapped in [`Watched`], which reads from [`Activity`] whether a request is
//! in flight and counts every byte read:
//!
//! - no request in flight and no byte since the last one ended: the
//!   connection is idle and closes after `--timeout-keep-alive`;
//! - bytes arrived but no complete head yet: the client is sending a head
//!   and must finish within `--timeout-header-read` of its first byte;
//! - a request in flight: no timeout here.
//!
//! A timeout makes the next read fail, and hyper closes the connection.
//!
//! hyper may write the end of a response and not read again in that poll,
//! so while a request is in flight a timer stays armed at most one
//! keep-alive period ahead. When it fires, the read is polled again and the
//! idle time counts from when the last response ended.
//!
//! NOTE: HTTP/2 connections get the same rules, counting streams as
//! requests, so an h2 connection without streams is closed by the idle or
//! header-read timeout, probably without a GOAWAY frame (not tested).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two timeouts, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub keep_alive: Duration,
    pub header_read: Duration,
}

/// Requests of one connection, counted by the service and read by [`Watched`].
///
/// Both run on the connection's task, so Relaxed atomics are enough: they
/// only make the counters `Sync` for the spawned future.
#[derive(Debug)]
pub struct Activity {
    /// Requests started on this connection since it opened.
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// When the connection opened; `last_end` counts from here.
    opened: Instant,
    /// Nanoseconds from `opened` to when the last request ended.
    last_end: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            opened: Instant::now(),
            last_end: AtomicU64::new(0),
        })
    }

    /// The instant the last request ended, or the connection opened.
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_nanos(self.last_end.load(Ordering::Relaxed))
    }

    /// Counts a request whose head hyper has parsed; it stays in flight
    /// until the returned guard is dropped with its response body.
    pub fn begin_request(self: &Arc<Self>) -> RequestActivity {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestActivity(Arc::clone(self))
    }
}

/// A request in flight on its connection; see [`Activity::begin_request`].
#[derive(Debug)]
pub struct RequestActivity(Arc<Activity>);

impl Drop for RequestActivity {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let nanos = activity.opened.elapsed().as_nanos();
            let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
            activity.last_end.store(nanos, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request head since this instant.
    Idle(Instant),
    /// The first byte of a head arrived at this instant.
    Head(Instant),
    /// A request is in flight.
    Busy,
}

/// A connection's socket with the idle and header-read timeouts applied.
#[derive(Debug)]
pub struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    phase: Phase,
    /// `Activity::started` when the phase was last decided.
    seen_started: u64,
    sleep: Pin<Box<Sleep>>,
    /// The instant `sleep` is set to, which may be earlier than the current
    /// deadline: it is moved only when it fires, not on every request.
    armed: Option<Instant>,
}

impl<I> Watched<I> {
    pub fn new(io: I, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            phase: Phase::Idle(activity.idle_since()),
            io,
            activity,
            timeouts,
            seen_started: 0,
            sleep: Box::pin(tokio::time::sleep_until(now + timeouts.keep_alive)),
            armed: None,
        }
    }

    /// Keeps the timer armed no later than one keep-alive period from now,
    /// so the end of the request in flight is noticed in time.
    fn poll_busy_timer(&mut self, cx: &mut Context<'_>) {
        let latest = Instant::now() + self.timeouts.keep_alive;
        if self.sleep.is_elapsed() || self.armed.map_or(true, |armed| armed > latest) {
            self.sleep.as_mut().reset(latest);
            self.armed = Some(latest);
        }
        // Polled only to register the waker: a fired timer makes hyper read
        // again, and the read decides what the connection's state is.
        let _ = self.sleep.as_mut().poll(cx);
    }

    /// Polls the timer for `deadline`; ready when it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            // An earlier timer stays armed and is moved when it fires, so a
            // busy connection does not touch the timer wheel per request.
            if self.armed.map_or(true, |armed| deadline < armed) {
                self.sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.armed = None;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let started = this.activity.started.load(Ordering::Relaxed);
        if this.activity.in_flight.load(Ordering::Relaxed) > 0 {
            this.phase = Phase::Busy;
            this.seen_started = started;
            let result = Pin::new(&mut this.io).poll_read(cx, buf);
            if result.is_pending() {
                this.poll_busy_timer(cx);
            }
            return result;
        }
        // A request ended since the last read, maybe within a single poll.
        if this.phase == Phase::Busy || started != this.seen_started {
            this.seen_started = started;
            this.phase = Phase::Idle(this.activity.idle_since());
        }

        let before = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            if buf.filled().len() > before {
                if let Phase::Idle(_) = this.phase {
                    this.phase = Phase::Head(Instant::now());
                }
            }
            return Poll::Ready(result);
        }

        let (deadline, what) = match this.phase {
            Phase::Idle(since) => (since + this.timeouts.keep_alive, "keep-alive idle timeout"),
            Phase::Head(first) => (first + this.timeouts.header_read, "header read timeout"),
            Phase::Busy => return Poll::Pending,
        };
        match this.poll_deadline(cx, deadline) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUTS: Timeouts = Timeouts {
        keep_alive: Duration::from_secs(5),
        header_read: Duration::from_secs(10),
    };

    fn watched() -> (
        Watched<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let activity = Activity::new();
        (
            Watched::new(server, Arc::clone(&activity), TIMEOUTS),
            client,
            activity,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_times_out_after_keep_alive() {
        let (mut conn, _client, _activity) = watched();
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn started_head_gets_header_timeout_from_first_byte() {
        let (mut conn, mut client, _activity) = watched();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        client.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(4) + TIMEOUTS.header_read
        );
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_waits_then_idles() {
        let (mut conn, mut client, activity) = watched();
        let request = activity.begin_request();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await;
        assert!(read.is_err(), "read ended while a request was in flight");

        drop(request);
        let idle_start = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(idle_start.elapsed(), TIMEOUTS.keep_alive);
        client.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn request_ended_between_reads_starts_new_idle_period() {
        let (mut conn, _client, activity) = watched();
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(activity.begin_request());
        let idle_start = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(idle_start.elapsed(), TIMEOUTS.keep_alive);
    }
}
