//! One request/response exchange, shared by the tokio side and the Python side.
//!
//! The tokio side feeds the request body in and streams the response out; the
//! Python side (the ASGI `receive` and `send` callables) takes the request
//! body and hands response parts over. All state sits behind one mutex that is
//! held only for a few field updates, never while running Python code or
//! waiting. When the Python side must wait, it parks an asyncio future here;
//! the tokio side sends it back through the [`Bridge`] as a wake-up when the
//! condition it waits for may hold.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use pyo3::{Py, PyAny};

use super::{Bridge, Event};
use crate::http::header_order::{NameOrder, SentHeaders};

/// Response bytes queued for hyper above which `send()` makes the app wait.
/// 64 KiB keeps a few socket buffers' worth ready without letting a client
/// that does not read pin much memory.
pub const RESPONSE_HIGH_WATER: usize = 64 * 1024;

/// Queued response bytes at or below which a waiting `send()` resumes. Lower
/// than the high-water mark so the app is not woken for every small write.
pub const RESPONSE_LOW_WATER: usize = 16 * 1024;

/// Request body bytes read ahead of the app once it has started reading.
/// Bounds memory per upload while keeping the socket busy.
pub const REQUEST_READ_AHEAD: usize = 256 * 1024;

/// The condition a parked Python future waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// `receive()`: request body, the end of the response, or a disconnect.
    Receive,
    /// `send()`: room in the response queue, or a disconnect.
    Send,
}

/// An asyncio future parked on an exchange, travelling back to the Python
/// thread inside [`Event::Wake`].
#[derive(Debug)]
pub struct Parked {
    pub exchange: Arc<Exchange>,
    pub kind: WaitKind,
    /// The asyncio future. It is created, resolved and dropped only on the
    /// Python thread; tokio threads merely move it into the bridge queue.
    pub future: Py<PyAny>,
}

/// The parsed request as it reaches the Python thread.
#[derive(Debug)]
pub struct RequestHead {
    pub exchange: Arc<Exchange>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// The peer address; `None` on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The local address; `None` on a Unix socket.
    pub server: Option<SocketAddr>,
    pub scheme: &'static str,
    /// The order the headers were sent in, when `headers` groups a name
    /// that repeats with another name in between.
    pub header_order: Option<NameOrder>,
    /// Scope values set by trusted proxy headers (`root_path`, `server`, a
    /// named client); `None` for most requests.
    pub overrides: Option<Box<crate::proxy::Overrides>>,
}

/// Status and headers from `http.response.start`.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The headers as the app sent them, when `headers` loses their order
    /// or the case of a name.
    pub sent: Option<SentHeaders>,
}

/// The outcome the service future gets for the response head.
#[derive(Debug)]
pub enum HeadOutcome {
    /// The app started a response. `body_len` is the exact body length when
    /// the app had already sent the whole body.
    Started {
        head: ResponseHead,
        body_len: Option<u64>,
    },
    /// The app failed, or finished, before starting a response.
    Failed,
}

/// A `receive()` message available without waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Body { data: Bytes, more_body: bool },
    Disconnect,
}

/// The outcome for a chunk passed to [`Exchange::send_body`].
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued; the app may go on.
    Accepted,
    /// Queued, but the queue is over [`RESPONSE_HIGH_WATER`]: the app waits.
    Full,
    /// The client has gone; nothing was queued.
    Disconnected,
}

#[derive(Debug, Default)]
struct Inbound {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The client sent the whole body.
    finished: bool,
    /// The last `http.request` message (with `more_body: false`) was given.
    delivered_last: bool,
    /// The app has asked for body that was not there yet; from then on the
    /// pump reads ahead. Reading is what makes hyper send `100 Continue`.
    reading: bool,
    pump_waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Outbound {
    head: Option<ResponseHead>,
    head_delivered: bool,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The app sent the last body chunk.
    finished: bool,
    /// hyper wrote the last body chunk.
    sent: bool,
    /// The app failed; after the head this aborts the connection.
    failed: bool,
    /// The service future or the body stream waiting for more.
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct State {
    inbound: Inbound,
    outbound: Outbound,
    disconnected: bool,
    /// The ASGI task of this exchange has ended.
    app_done: bool,
    parked: Option<(WaitKind, Py<PyAny>)>,
}

/// Shared state of one request/response exchange.
#[derive(Debug)]
pub struct Exchange {
    state: Mutex<State>,
    bridge: Arc<Bridge>,
}

impl Exchange {
    /// Creates an exchange whose request body still has to be read.
    pub fn new(bridge: Arc<Bridge>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            bridge,
        })
    }

    /// Creates an exchange whose request body was read in full already.
    pub fn with_body(bridge: Arc<Bridge>, body: Bytes) -> Arc<Self> {
        let mut state = State::default();
        state.inbound.finished = true;
        state.inbound.buffered = body.len();
        if !body.is_empty() {
            state.inbound.chunks.push_back(body);
        }
        Arc::new(Self {
            state: Mutex::new(state),
            bridge,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left plain data behind; carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a parked future back to the Python thread if what it waits for
    /// may now hold. Takes the guard so the check and the take are atomic.
    fn wake_python(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        let ready = match &state.parked {
            Some((kind, _)) => state.condition_holds(*kind),
            None => false,
        };
        if !ready {
            return;
        }
        let Some((kind, future)) = state.parked.take() else {
            return;
        };
        drop(state);
        self.bridge.submit(Event::Wake(Parked {
            exchange: Arc::clone(self),
            kind,
            future,
        }));
    }

    // ----- tokio side -------------------------------------------------------

    /// Polls for the response head; the service future awaits this.
    pub fn poll_head(&self, cx: &mut Context<'_>) -> Poll<HeadOutcome> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let out = &mut state.outbound;
        if let Some(head) = out.head.take() {
            let body_len = out.finished.then_some(out.buffered as u64);
            return Poll::Ready(HeadOutcome::Started { head, body_len });
        }
        if out.failed || (state.app_done && !out.head_delivered) {
            return Poll::Ready(HeadOutcome::Failed);
        }
        out.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Polls for the next response chunk: `None` once the body is complete,
    /// an error if the app failed mid-response.
    pub fn poll_chunk(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, AppFailed>>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let out = &mut state.outbound;
        if let Some(chunk) = out.chunks.pop_front() {
            out.buffered -= chunk.len();
            if out.buffered <= RESPONSE_LOW_WATER {
                self.wake_python(guard);
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if out.finished {
            out.sent = true;
            if let Some(waker) = state.inbound.pump_waker.take() {
                waker.wake();
            }
            self.wake_python(guard);
            return Poll::Ready(None);
        }
        if out.failed || state.app_done {
            return Poll::Ready(Some(Err(AppFailed)));
        }
        out.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Marks the client as gone: the connection closed or failed before the
    /// response was complete. Wakes every waiter so nothing hangs.
    pub fn client_gone(self: &Arc<Self>) {
        let mut state = self.lock();
        // Once the app has sent the whole response nothing waits on the
        // client; hyper also drops bodies it never writes (HEAD, 304).
        if state.outbound.finished || state.disconnected {
            return;
        }
        state.disconnected = true;
        if let Some(waker) = state.inbound.pump_waker.take() {
            waker.wake();
        }
        self.wake_python(state);
    }

    /// Polls whether the body pump should read another frame: `true` to read,
    /// `false` when the exchange no longer needs the body.
    pub fn poll_read_demand(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.lock();
        if state.disconnected || state.outbound.sent || state.app_done {
            return Poll::Ready(false);
        }
        let inbound = &mut state.inbound;
        if inbound.reading && inbound.buffered < REQUEST_READ_AHEAD {
            return Poll::Ready(true);
        }
        inbound.pump_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues a request body chunk read from the client.
    pub fn push_request_data(self: &Arc<Self>, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.inbound.buffered += data.len();
        state.inbound.chunks.push_back(data);
        self.wake_python(state);
    }

    /// Records that the client sent the whole request body.
    pub fn finish_request_body(self: &Arc<Self>) {
        let mut state = self.lock();
        state.inbound.finished = true;
        self.wake_python(state);
    }

    // ----- Python side ------------------------------------------------------

    /// Takes the next `receive()` message, or `None` when the app must wait.
    pub fn try_receive(&self) -> Option<Received> {
        let mut state = self.lock();
        if state.disconnected {
            return Some(Received::Disconnect);
        }
        let response_finished = state.outbound.finished;
        let inbound = &mut state.inbound;

        if !inbound.chunks.is_empty() {
            let data = take_all(&mut inbound.chunks);
            inbound.buffered = 0;
            let more_body = !inbound.finished;
            inbound.delivered_last = !more_body;
            if let Some(waker) = inbound.pump_waker.take() {
                super::wake_later(waker);
            }
            return Some(Received::Body { data, more_body });
        }
        if inbound.finished && !inbound.delivered_last {
            inbound.delivered_last = true;
            return Some(Received::Body {
                data: Bytes::new(),
                more_body: false,
            });
        }
        if inbound.delivered_last {
            // After the whole body, `receive()` only reports the end of the
            // exchange: at once if the response is complete.
            return response_finished.then_some(Received::Disconnect);
        }

        inbound.reading = true;
        if let Some(waker) = inbound.pump_waker.take() {
            super::wake_later(waker);
        }
        None
    }

    /// Parks `future` until what `kind` waits for may hold. Returns the
    /// future back if that is already the case, so the caller retries.
    pub fn park(&self, kind: WaitKind, future: Py<PyAny>) -> Result<(), Py<PyAny>> {
        let mut state = self.lock();
        if state.condition_holds(kind) {
            return Err(future);
        }
        state.parked = Some((kind, future));
        Ok(())
    }

    /// Whether the app sent the whole response and hyper took every chunk.
    pub fn response_drained(&self) -> bool {
        let state = self.lock();
        state.outbound.finished && state.outbound.chunks.is_empty()
    }

    /// Records that hyper wrote all the response it will write before the
    /// app finished sending: a body of declared length is complete, or the
    /// response to HEAD has none. Later body messages are accepted and
    /// dropped, as the bytes cannot go anywhere.
    pub fn response_written(self: &Arc<Self>) {
        let mut state = self.lock();
        state.outbound.sent = true;
        state.outbound.chunks.clear();
        state.outbound.buffered = 0;
        if let Some(waker) = state.inbound.pump_waker.take() {
            waker.wake();
        }
        self.wake_python(state);
    }

    /// Whether the client has gone.
    pub fn is_disconnected(&self) -> bool {
        self.lock().disconnected
    }

    /// Hands the response head to hyper, with the first body chunk.
    pub fn deliver_head(&self, head: ResponseHead, first: Bytes, finished: bool) -> SendOutcome {
        let mut state = self.lock();
        if state.disconnected {
            return SendOutcome::Disconnected;
        }
        let out = &mut state.outbound;
        out.head = Some(head);
        out.head_delivered = true;
        out.finished = finished;
        push_chunk(out, first);
        let outcome = queue_outcome(out);
        if let Some(waker) = out.waker.take() {
            super::wake_later(waker);
        }
        outcome
    }

    /// Queues a response body chunk after the head was delivered.
    pub fn send_body(&self, data: Bytes, finished: bool) -> SendOutcome {
        let mut state = self.lock();
        if state.disconnected {
            return SendOutcome::Disconnected;
        }
        let out = &mut state.outbound;
        out.finished = finished;
        if out.sent {
            return SendOutcome::Accepted;
        }
        push_chunk(out, data);
        let outcome = queue_outcome(out);
        if let Some(waker) = out.waker.take() {
            super::wake_later(waker);
        }
        outcome
    }

    /// Records that the ASGI task ended; `failed` when it raised. A response
    /// that is not complete then ends in a 500 (before the head) or an
    /// aborted connection (after it).
    pub fn app_finished(self: &Arc<Self>, failed: bool) {
        let mut state = self.lock();
        state.app_done = true;
        let out = &mut state.outbound;
        out.failed |= failed && !out.finished;
        if let Some(waker) = out.waker.take() {
            super::wake_later(waker);
        }
        if let Some(waker) = state.inbound.pump_waker.take() {
            super::wake_later(waker);
        }
    }
}

impl State {
    fn condition_holds(&self, kind: WaitKind) -> bool {
        if self.disconnected {
            return true;
        }
        match kind {
            WaitKind::Send => self.outbound.sent || self.outbound.buffered <= RESPONSE_LOW_WATER,
            WaitKind::Receive => {
                let inbound = &self.inbound;
                !inbound.chunks.is_empty()
                    || (inbound.finished && !inbound.delivered_last)
                    || (inbound.delivered_last && self.outbound.finished)
            }
        }
    }
}

/// The app failed after the response head went out; hyper aborts the
/// connection so the client sees an incomplete response, not a short one.
#[derive(Debug, thiserror::Error)]
#[error("the application failed while sending the response body")]
pub struct AppFailed;

fn push_chunk(out: &mut Outbound, data: Bytes) {
    if !data.is_empty() {
        out.buffered += data.len();
        out.chunks.push_back(data);
    }
}

fn queue_outcome(out: &Outbound) -> SendOutcome {
    if out.buffered > RESPONSE_HIGH_WATER {
        SendOutcome::Full
    } else {
        SendOutcome::Accepted
    }
}

/// Joins queued chunks into one, without copying when there is only one.
fn take_all(chunks: &mut VecDeque<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let total = chunks.iter().map(Bytes::len).sum();
    let mut joined = BytesMut::with_capacity(total);
    for chunk in chunks.drain(..) {
        joined.extend_from_slice(&chunk);
    }
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn exchange() -> Arc<Exchange> {
        Exchange::new(Arc::new(Bridge::new().unwrap()))
    }

    fn head() -> ResponseHead {
        ResponseHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            sent: None,
        }
    }

    fn poll_now<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let mut cx = Context::from_waker(Waker::noop());
        f(&mut cx)
    }

    #[test]
    fn prefetched_body_then_disconnect_after_response() {
        let ex = Exchange::with_body(Arc::new(Bridge::new().unwrap()), Bytes::from_static(b"hi"));
        assert_eq!(
            ex.try_receive(),
            Some(Received::Body {
                data: Bytes::from_static(b"hi"),
                more_body: false
            })
        );
        assert_eq!(
            ex.try_receive(),
            None,
            "must wait while the response is open"
        );
        ex.deliver_head(head(), Bytes::from_static(b"ok"), true);
        assert_eq!(ex.try_receive(), Some(Received::Disconnect));
    }

    #[test]
    fn empty_body_gives_one_empty_message() {
        let ex = Exchange::with_body(Arc::new(Bridge::new().unwrap()), Bytes::new());
        assert_eq!(
            ex.try_receive(),
            Some(Received::Body {
                data: Bytes::new(),
                more_body: false
            })
        );
    }

    #[test]
    fn streamed_body_is_joined_and_read_ahead_starts_on_demand() {
        let ex = exchange();
        assert_eq!(
            poll_now(|cx| ex.poll_read_demand(cx)),
            Poll::Pending,
            "read before asked"
        );
        assert_eq!(ex.try_receive(), None);
        assert_eq!(poll_now(|cx| ex.poll_read_demand(cx)), Poll::Ready(true));

        ex.push_request_data(Bytes::from_static(b"ab"));
        ex.push_request_data(Bytes::from_static(b"cd"));
        assert_eq!(
            ex.try_receive(),
            Some(Received::Body {
                data: Bytes::from_static(b"abcd"),
                more_body: true
            })
        );
        ex.finish_request_body();
        assert_eq!(
            ex.try_receive(),
            Some(Received::Body {
                data: Bytes::new(),
                more_body: false
            })
        );
    }

    #[test]
    fn whole_body_before_head_gives_exact_length() {
        let ex = exchange();
        ex.deliver_head(head(), Bytes::from_static(b"hello"), true);
        match poll_now(|cx| ex.poll_head(cx)) {
            Poll::Ready(HeadOutcome::Started { body_len, .. }) => assert_eq!(body_len, Some(5)),
            other => panic!("unexpected {other:?}"),
        }
        let chunk = poll_now(|cx| ex.poll_chunk(cx));
        assert!(matches!(chunk, Poll::Ready(Some(Ok(ref b))) if b == "hello"));
        assert!(matches!(
            poll_now(|cx| ex.poll_chunk(cx)),
            Poll::Ready(None)
        ));
    }

    #[test]
    fn send_reports_full_above_high_water() {
        let ex = exchange();
        let big = Bytes::from(vec![0u8; RESPONSE_HIGH_WATER]);
        assert_eq!(ex.deliver_head(head(), big, false), SendOutcome::Accepted);
        assert_eq!(
            ex.send_body(Bytes::from_static(b"x"), false),
            SendOutcome::Full
        );
    }

    #[test]
    fn app_that_ends_without_head_fails() {
        let ex = exchange();
        assert!(poll_now(|cx| ex.poll_head(cx)).is_pending());
        ex.app_finished(false);
        assert!(matches!(
            poll_now(|cx| ex.poll_head(cx)),
            Poll::Ready(HeadOutcome::Failed)
        ));
    }

    #[test]
    fn failure_after_head_errors_the_body() {
        let ex = exchange();
        ex.deliver_head(head(), Bytes::new(), false);
        ex.app_finished(true);
        assert!(matches!(
            poll_now(|cx| ex.poll_chunk(cx)),
            Poll::Ready(Some(Err(AppFailed)))
        ));
    }

    #[test]
    fn disconnect_rejects_sends_and_ends_receive() {
        let ex = exchange();
        ex.client_gone();
        assert!(ex.is_disconnected());
        assert_eq!(
            ex.send_body(Bytes::from_static(b"x"), false),
            SendOutcome::Disconnected
        );
        assert_eq!(ex.try_receive(), Some(Received::Disconnect));
        assert_eq!(poll_now(|cx| ex.poll_read_demand(cx)), Poll::Ready(false));
    }

    #[test]
    fn body_after_written_response_is_dropped() {
        let ex = exchange();
        ex.deliver_head(head(), Bytes::from_static(b"abc"), false);
        ex.response_written();
        assert_eq!(ex.send_body(Bytes::new(), true), SendOutcome::Accepted);
        assert!(!ex.is_disconnected());
        assert_eq!(ex.try_receive(), None, "body not read yet");
    }

    #[tokio::test]
    async fn head_future_wakes_on_delivery() {
        let ex = exchange();
        let waiter = {
            let ex = Arc::clone(&ex);
            tokio::spawn(async move { poll_fn(|cx| ex.poll_head(cx)).await })
        };
        tokio::task::yield_now().await;
        ex.deliver_head(head(), Bytes::new(), true);
        let outcome = waiter.await.unwrap();
        assert!(matches!(
            outcome,
            HeadOutcome::Started {
                body_len: Some(0),
                ..
            }
        ));
    }
}
