//! The parts of HTTP/1.1 heads that hyper's parsed form drops, read and
//! restored on the socket itself.
//!
//! [`Tapped`] wraps a connection's socket. On the way in, its
//! [`RequestScanner`] notes the request heads that declare both framings or
//! whose header order a `HeaderMap` would change. It leaves the notes in
//! [`ConnHeads`], where the service takes them by request index.
//!
//! On the way out, a response whose app headers hyper would write in another
//! order or case carries a marker header first. The wrapper finds the marker
//! in the bytes hyper writes and writes that head again with the app's
//! headers as sent (see [`order::restore`]). Other writes pass unchanged.
//!
//! Only HTTP/1.1 needs this: HTTP/2 has lower-case names by definition, and
//! the scanner stops at the HTTP/2 preface.

mod scan;

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use http::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::header_order::{self as order, SentHeaders};
pub use scan::HeadNotes;
use scan::RequestScanner;

/// The end of a head: the empty line after the last header line.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// Slices passed on in one vectored write with a restored head: the head,
/// the rest of its slice and the body slices hyper queued after it.
const MAX_SLICES: usize = 8;

/// Notes and pending head restores of one connection, shared by the socket
/// wrapper and the service.
///
/// Both run on the connection's task, one after the other. The counters are
/// hints that spare the common path a lock, and the queues are behind
/// mutexes that are never contended.
#[derive(Debug)]
pub struct ConnHeads {
    /// The scanner and the notes it left. The scanner lives here rather
    /// than in the socket wrapper because the service resumes it.
    scan: Mutex<Scan>,
    notes_waiting: AtomicUsize,
    /// Requests the service has taken notes for, which is the next index.
    requests: AtomicU64,
    restores: Mutex<VecDeque<(u64, SentHeaders)>>,
    restores_waiting: AtomicUsize,
    /// Numbers given to restores so far.
    restores_made: AtomicU64,
}

/// The request scanner of a connection and the notes waiting for requests.
#[derive(Debug, Default)]
struct Scan {
    scanner: RequestScanner,
    notes: VecDeque<(u64, HeadNotes)>,
}

impl Scan {
    fn feed(&mut self, bytes: &[u8]) {
        let notes = &mut self.notes;
        self.scanner
            .feed(bytes, |index, head| notes.push_back((index, head)));
    }
}

impl ConnHeads {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            scan: Mutex::default(),
            notes_waiting: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            restores: Mutex::default(),
            restores_waiting: AtomicUsize::new(0),
            restores_made: AtomicU64::new(0),
        })
    }

    /// Returns the notes on the next request's head. The service calls it
    /// once per request, in the order hyper parsed them.
    pub fn take_notes(&self) -> HeadNotes {
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.notes_waiting.load(Ordering::Relaxed) == 0 {
            return HeadNotes::default();
        }
        let mut scan = self.lock_scan();
        let found = take_numbered(&mut scan.notes, index);
        self.notes_waiting
            .store(scan.notes.len(), Ordering::Relaxed);
        found.unwrap_or_default()
    }

    /// Queues `sent` for the next marked response head and returns the
    /// marker header's value, which goes first in that head.
    pub fn restore(&self, sent: SentHeaders) -> HeaderValue {
        let number = self.restores_made.fetch_add(1, Ordering::Relaxed);
        let mut restores = self.restores.lock().unwrap_or_else(PoisonError::into_inner);
        restores.push_back((number, sent));
        self.restores_waiting
            .store(restores.len(), Ordering::Relaxed);
        HeaderValue::from(number)
    }

    /// Resumes scanning after a request for an upgrade got an ordinary
    /// response, so the connection goes on with HTTP/1.1 requests. The
    /// bytes read meanwhile are scanned now, before hyper parses them.
    pub fn resume_scanning(&self) {
        let mut scan = self.lock_scan();
        let held = scan.scanner.resume();
        scan.feed(&held);
        self.notes_waiting
            .store(scan.notes.len(), Ordering::Relaxed);
    }

    /// Stops scanning for good: the connection switched protocols.
    pub fn stop_scanning(&self) {
        self.lock_scan().scanner.stop();
    }

    /// Scans bytes just read from the socket.
    fn scan(&self, bytes: &[u8]) {
        let mut scan = self.lock_scan();
        scan.feed(bytes);
        self.notes_waiting
            .store(scan.notes.len(), Ordering::Relaxed);
    }

    fn lock_scan(&self) -> MutexGuard<'_, Scan> {
        // A panic while the lock was held left plain data behind; carry on.
        self.scan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the restore numbered `number`, dropping older ones whose
    /// responses were never written.
    fn take_restore(&self, number: u64) -> Option<SentHeaders> {
        let mut restores = self.restores.lock().unwrap_or_else(PoisonError::into_inner);
        let found = take_numbered(&mut restores, number);
        self.restores_waiting
            .store(restores.len(), Ordering::Relaxed);
        found
    }
}

/// A connection's socket, read by the request scanner and with marked
/// response heads restored on the way out.
#[derive(Debug)]
pub struct Tapped<I> {
    io: I,
    heads: Arc<ConnHeads>,
    /// A restored head, and how much of it is written.
    restored: Vec<u8>,
    restored_written: usize,
    /// A marked head taken from hyper's writes until its end arrives.
    marked: Option<Vec<u8>>,
}

impl<I> Tapped<I> {
    pub fn new(io: I, heads: Arc<ConnHeads>) -> Self {
        Self {
            io,
            heads,
            restored: Vec::new(),
            restored_written: 0,
            marked: None,
        }
    }

    /// Returns whether writes need a look because a restore is waiting or
    /// underway.
    fn watching_writes(&self) -> bool {
        self.marked.is_some()
            || !self.restored.is_empty()
            || self.heads.restores_waiting.load(Ordering::Relaxed) > 0
    }

    /// Puts `prefix` and then the restored form of the complete marked
    /// `head` into `restored`.
    fn restore_head(&mut self, prefix: &[u8], head: &[u8]) {
        let marker_line = head
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |i| i + 1);
        let number = head[..marker_line]
            .rsplit(|&b| b == b' ')
            .next()
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.trim_end().parse::<u64>().ok());
        let lines = &head[marker_line..head.len() - 2];

        self.restored.clear();
        self.restored_written = 0;
        self.restored.extend_from_slice(prefix);
        match number.and_then(|number| self.heads.take_restore(number)) {
            Some(sent) => order::restore(lines, &sent, &mut self.restored),
            None => self.restored.extend_from_slice(lines),
        }
        self.restored.extend_from_slice(b"\r\n");
    }
}

impl<I: AsyncWrite + Unpin> Tapped<I> {
    /// Writes what is left of a restored head.
    fn poll_restored(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.restored_written < self.restored.len() {
            let rest = &self.restored[self.restored_written..];
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.restored_written += written;
        }
        if !self.restored.is_empty() {
            // An idle connection keeps no buffer.
            self.restored = Vec::new();
            self.restored_written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `buf` while a restore is waiting: bytes before the marker
    /// pass, and a marked head is taken up to its end and restored.
    ///
    /// hyper keeps a head in one buffer, and this wrapper never writes part
    /// of a marker, so a marker always arrives whole at the start of a
    /// write. The end of the head may come in a later write.
    fn poll_write_watched(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(mut head) = self.marked.take() else {
            let needle = marker_needle();
            return match memchr::memmem::find(buf, needle) {
                Some(0) => {
                    self.marked = Some(Vec::new());
                    self.poll_write_watched(cx, buf)
                }
                Some(start) => Pin::new(&mut self.io).poll_write(cx, &buf[..start]),
                None => Pin::new(&mut self.io).poll_write(cx, buf),
            };
        };

        let searched_from = head.len().saturating_sub(HEAD_END.len() - 1);
        head.extend_from_slice(buf);
        let Some(end) = memchr::memmem::find(&head[searched_from..], HEAD_END) else {
            self.marked = Some(head);
            return Poll::Ready(Ok(buf.len()));
        };
        let end = searched_from + end + HEAD_END.len();
        let taken = end - (head.len() - buf.len());
        head.truncate(end);
        self.restore_head(&[], &head);
        // A write error shows again at the next write or flush.
        let _ = self.poll_restored(cx);
        Poll::Ready(Ok(taken))
    }
}

impl<I: AsyncWrite + Unpin> Tapped<I> {
    /// Restores the marked head at `head` in `bufs[index]` and writes it
    /// with the bytes around it in one call. Returns how many of hyper's
    /// bytes are done: those up to the head's end count once restored.
    fn poll_write_restored_with(
        &mut self,
        cx: &mut Context<'_>,
        head: Range<usize>,
        bufs: &[io::IoSlice<'_>],
        index: usize,
    ) -> Poll<io::Result<usize>> {
        let first = &bufs[index];
        // The bytes before the marker (the status line) are copied along, so
        // they cannot be written without the head that follows them.
        self.restore_head(&first[..head.start], &first[head.clone()]);
        let restored_len = self.restored.len();
        let done = head.end;

        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        slices[0] = io::IoSlice::new(&self.restored);
        slices[1] = io::IoSlice::new(&first[done..]);
        let following = bufs[index + 1..].iter().take(MAX_SLICES - 2);
        let count = 2 + following.len();
        for (slot, buf) in slices[2..].iter_mut().zip(following) {
            *slot = io::IoSlice::new(buf);
        }

        let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
            // The restored head waits in `restored`; the waker is registered.
            Poll::Pending => 0,
            Poll::Ready(result) => result?,
        };
        if written < restored_len {
            self.restored_written = written;
            return Poll::Ready(Ok(done));
        }
        self.restored = Vec::new();
        self.restored_written = 0;
        Poll::Ready(Ok(done + written - restored_len))
    }
}

/// Takes the entry numbered `number` from a queue kept in number order,
/// dropping older entries, whose request or response never came.
fn take_numbered<T>(queue: &mut VecDeque<(u64, T)>, number: u64) -> Option<T> {
    while queue.front().is_some_and(|(n, _)| *n < number) {
        queue.pop_front();
    }
    match queue.front() {
        Some((n, _)) if *n == number => queue.pop_front().map(|(_, entry)| entry),
        _ => None,
    }
}

/// Returns the start of the marker line as hyper writes it.
fn marker_needle() -> &'static [u8] {
    static NEEDLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    NEEDLE.get_or_init(|| [order::marker_name().as_str().as_bytes(), b": "].concat())
}

impl<I: AsyncRead + Unpin> AsyncRead for Tapped<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut this.io).poll_read(cx, buf));
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.heads.scan(read);
        }
        Poll::Ready(result)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tapped<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.watching_writes() {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        ready!(this.poll_restored(cx))?;
        this.poll_write_watched(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.watching_writes() {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        ready!(this.poll_restored(cx))?;

        let Some(index) = bufs.iter().position(|buf| !buf.is_empty()) else {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        };
        let first = &*bufs[index];
        let marker = match this.marked {
            None => memchr::memmem::find(first, marker_needle()),
            Some(_) => None,
        };
        let head = marker.and_then(|start| {
            let end = memchr::memmem::find(&first[start..], HEAD_END)?;
            Some(start..start + end + HEAD_END.len())
        });
        match head {
            // The usual case: the restored head goes out with the body in one call.
            Some(head) => this.poll_write_restored_with(cx, head, bufs, index),
            // Otherwise one slice at a time while a marked head may be among them.
            None => this.poll_write_watched(cx, first),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_restored(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_restored(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sent(pairs: &[(&'static str, &'static str)]) -> SentHeaders {
        SentHeaders(
            pairs
                .iter()
                .map(|(n, v)| {
                    (
                        Bytes::from_static(n.as_bytes()),
                        HeaderValue::from_static(v),
                    )
                })
                .collect(),
        )
    }

    /// Builds a head as hyper would write it, with the marker first.
    fn marked_head(number: &HeaderValue, lines: &str) -> Vec<u8> {
        let marker = order::marker_name().as_str();
        let number = number.to_str().unwrap();
        format!("HTTP/1.1 200 OK\r\n{marker}: {number}\r\n{lines}\r\n").into_bytes()
    }

    /// Returns the offset just past the marker line.
    fn marker_head_end(head: &[u8]) -> usize {
        let marker = memchr::memmem::find(head, marker_needle()).unwrap();
        marker + memchr::memchr(b'\n', &head[marker..]).unwrap() + 1
    }

    async fn written(chunks: Vec<Vec<u8>>, heads: Arc<ConnHeads>) -> String {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut tapped = Tapped::new(server, heads);
        for chunk in chunks {
            tapped.write_all(&chunk).await.unwrap();
        }
        tapped.shutdown().await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn marked_head_restored_body_kept() {
        let heads = ConnHeads::new();
        let number = heads.restore(sent(&[("X-B", "2"), ("x-a", "1"), ("X-B", "3")]));
        let mut bytes = b"tail of an earlier body".to_vec();
        bytes.extend(marked_head(
            &number,
            "x-b: 2\r\nx-b: 3\r\nx-a: 1\r\ncontent-length: 4\r\n",
        ));
        bytes.extend_from_slice(b"body");
        let out = written(vec![bytes], Arc::clone(&heads)).await;
        assert_eq!(
            out,
            "tail of an earlier bodyHTTP/1.1 200 OK\r\nX-B: 2\r\nx-a: 1\r\nX-B: 3\r\n\
             content-length: 4\r\n\r\nbody"
        );
        assert_eq!(heads.restores_waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn marked_head_split_across_writes() {
        let heads = ConnHeads::new();
        let number = heads.restore(sent(&[("B", "2"), ("a", "1")]));
        let bytes = marked_head(&number, "b: 2\r\na: 1\r\n");
        // The first write ends inside the first header after the marker.
        let split = marker_head_end(&bytes) + 3;
        let mut chunks = vec![bytes[..split].to_vec()];
        chunks.extend(bytes[split..].chunks(3).map(<[u8]>::to_vec));
        let out = written(chunks, heads).await;
        assert_eq!(out, "HTTP/1.1 200 OK\r\nB: 2\r\na: 1\r\n\r\n");
    }

    #[tokio::test]
    async fn vectored_head_and_body_restored() {
        let heads = ConnHeads::new();
        let number = heads.restore(sent(&[("B", "2"), ("a", "1")]));
        let head = marked_head(&number, "b: 2\r\na: 1\r\n");
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut tapped = Tapped::new(server, heads);

        let parts: [&[u8]; 3] = [&head, b"body, ", b"more"];
        let mut done = 0;
        let total: usize = parts.iter().map(|part| part.len()).sum();
        while done < total {
            // Present what is left as hyper would: the rest of each part.
            let mut skip = done;
            let mut slices = Vec::new();
            for part in parts {
                let start = skip.min(part.len());
                skip -= start;
                slices.push(io::IoSlice::new(&part[start..]));
            }
            done += tapped.write_vectored(&slices).await.unwrap();
        }
        tapped.shutdown().await.unwrap();

        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nB: 2\r\na: 1\r\n\r\nbody, more");
    }

    #[tokio::test]
    async fn unmarked_writes_pass_unchanged() {
        let heads = ConnHeads::new();
        let out = written(vec![b"HTTP/1.1 200 OK\r\nb: 2\r\n\r\n".to_vec()], heads).await;
        assert_eq!(out, "HTTP/1.1 200 OK\r\nb: 2\r\n\r\n");
    }

    #[tokio::test]
    async fn stale_restores_are_dropped() {
        let heads = ConnHeads::new();
        heads.restore(sent(&[("Never", "written")]));
        let number = heads.restore(sent(&[("X-A", "1")]));
        let out = written(vec![marked_head(&number, "x-a: 1\r\n")], Arc::clone(&heads)).await;
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
        assert_eq!(heads.restores_waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn notes_reach_their_request() {
        let heads = ConnHeads::new();
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut tapped = Tapped::new(server, Arc::clone(&heads));
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = tapped.read(&mut buf).await.unwrap();
        assert!(!heads.take_notes().framing_conflict);
        assert!(heads.take_notes().framing_conflict);
        assert_eq!(heads.take_notes(), HeadNotes::default());
    }
}
