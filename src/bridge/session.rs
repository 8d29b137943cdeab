//! One WebSocket session, shared by the tokio side and the Python side.
//!
//! The counterpart of [`super::Exchange`] for the ASGI `websocket` scope. The
//! tokio side learns how the app responded to the handshake (accept, close before
//! accept, or a denial response), then moves messages between the socket and
//! the app: it pushes received messages in and takes queued frames out. The
//! Python side (the ASGI `receive` and `send` callables) does the opposite.
//! All state sits behind one mutex held only for a few field updates. When
//! the Python side must wait it parks an asyncio future here, and the tokio
//! side sends it back through the [`Bridge`] when it may go on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use pyo3::{Py, PyAny};

use super::exchange::WaitKind;
use super::{Bridge, Event};
use crate::http::header_order::NameOrder;

/// Bytes of queued outgoing messages above which `send()` makes the app
/// wait. The same bound as for HTTP response bodies, for the same reason: a
/// client that does not read must not pin much memory.
pub const SEND_HIGH_WATER: usize = super::exchange::RESPONSE_HIGH_WATER;

/// Queued outgoing bytes at or below which a waiting `send()` resumes.
pub const SEND_LOW_WATER: usize = super::exchange::RESPONSE_LOW_WATER;

/// Close code for a connection that ended without a close frame (RFC 6455
/// §7.1.5); the app receives it when the TCP connection drops.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// Close code sent when the app sends `websocket.close` without a code.
pub const CLOSE_NORMAL: u16 = 1000;

/// The parts of a WebSocket request that the Python thread needs to start
/// the app.
#[derive(Debug)]
pub struct WebSocketHead {
    pub session: Arc<Session>,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The order the headers were sent in, when `headers` groups a name
    /// that repeats with another name in between.
    pub header_order: Option<NameOrder>,
    /// The peer address; `None` on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The local address; `None` on a Unix socket.
    pub server: Option<SocketAddr>,
    pub scheme: &'static str,
}

/// An asyncio future parked on a session, travelling back to the Python
/// thread inside [`Event::WakeSession`].
#[derive(Debug)]
pub struct ParkedSession {
    pub session: Arc<Session>,
    pub kind: WaitKind,
    /// The asyncio future; created, resolved and dropped on the Python thread.
    pub future: Py<PyAny>,
}

/// The app's response to the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// `websocket.accept`: switch protocols with these extra response headers.
    Accept {
        subprotocol: Option<String>,
        headers: HeaderMap,
    },
    /// `websocket.close` before accept: the client gets HTTP 403.
    Reject,
    /// A complete `websocket.http.response.*` denial response.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The app raised, or returned, before it responded: HTTP 500.
    Failed,
}

/// A message between the app and the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(data) => data.len(),
        }
    }
}

/// A frame the app queued for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Message(Message),
    Close { code: u16, reason: String },
}

/// A `receive()` result available without waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Connect,
    Message(Message),
    Disconnect { code: u16, reason: String },
}

/// The result of [`Session::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued; the app may go on.
    Accepted,
    /// Queued, but the queue is over [`SEND_HIGH_WATER`]: the app waits.
    Full,
    /// The connection is closed; nothing was queued.
    Closed,
}

/// An error from a handshake message on the Python side.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The app already responded to the handshake.
    AlreadyAnswered,
}

#[derive(Debug, Default)]
struct State {
    connect_delivered: bool,
    /// The app's reply, set once and taken by the tokio side.
    handshake: Option<Handshake>,
    handshake_answered: bool,
    handshake_waker: Option<Waker>,
    /// Status and headers of a denial response whose body is still coming.
    denial: Option<(StatusCode, HeaderMap, Vec<u8>)>,

    incoming: VecDeque<Message>,
    /// The socket reader waits while `incoming` contains this many messages.
    max_queue: usize,
    reader_waker: Option<Waker>,

    outgoing: VecDeque<Outgoing>,
    outgoing_bytes: usize,
    writer_waker: Option<Waker>,
    /// The app sent `websocket.close`; later sends fail.
    app_closed: bool,

    /// Close code and reason once the connection has ended.
    disconnect: Option<(u16, String)>,
    app_done: bool,
    app_done_waker: Option<Waker>,
    parked: Option<(WaitKind, Py<PyAny>)>,
}

/// Shared state of one WebSocket session.
#[derive(Debug)]
pub struct Session {
    state: Mutex<State>,
    bridge: Arc<Bridge>,
}

impl Session {
    /// Creates a session whose socket reader pauses once `max_queue`
    /// messages wait for the app.
    pub fn new(bridge: Arc<Bridge>, max_queue: usize) -> Arc<Self> {
        let state = State {
            max_queue: max_queue.max(1),
            ..State::default()
        };
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
        self.bridge.submit(Event::WakeSession(ParkedSession {
            session: Arc::clone(self),
            kind,
            future,
        }));
    }

    // ----- tokio side -------------------------------------------------------

    /// Polls for the app's reply to the handshake.
    pub fn poll_handshake(&self, cx: &mut Context<'_>) -> Poll<Handshake> {
        let mut state = self.lock();
        if let Some(handshake) = state.handshake.take() {
            return Poll::Ready(handshake);
        }
        if state.app_done {
            return Poll::Ready(Handshake::Failed);
        }
        state.handshake_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Polls for the next frame to write; `None` waits.
    pub fn poll_outgoing(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<Outgoing> {
        let mut state = self.lock();
        if let Some(frame) = state.outgoing.pop_front() {
            if let Outgoing::Message(message) = &frame {
                state.outgoing_bytes -= message.len();
            }
            if state.outgoing_bytes <= SEND_LOW_WATER {
                self.wake_python(state);
            }
            return Poll::Ready(frame);
        }
        state.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Polls whether the reader may take another message from the socket:
    /// ready once the app has room for it in its queue.
    pub fn poll_read_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.incoming.len() < state.max_queue {
            return Poll::Ready(());
        }
        state.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues a message received from the client for the app.
    pub fn push_incoming(self: &Arc<Self>, message: Message) {
        let mut state = self.lock();
        state.incoming.push_back(message);
        self.wake_python(state);
    }

    /// Records that the connection ended with `code`; the app's next
    /// `receive()` after the queued messages returns `websocket.disconnect`.
    /// Only the first call counts.
    pub fn disconnected(self: &Arc<Self>, code: u16, reason: &str) {
        let mut state = self.lock();
        if state.disconnect.is_some() {
            return;
        }
        state.disconnect = Some((code, reason.to_owned()));
        // Frames the client will never read free their room for `send()`.
        state.outgoing.clear();
        state.outgoing_bytes = 0;
        self.wake_python(state);
    }

    /// Whether the ASGI task of this session has ended.
    pub fn is_app_done(&self) -> bool {
        self.lock().app_done
    }

    /// Polls until the ASGI task of this session has ended.
    pub fn poll_app_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.app_done {
            return Poll::Ready(());
        }
        state.app_done_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    // ----- Python side ------------------------------------------------------

    /// Takes the next `receive()` message, or `None` when the app must wait.
    pub fn try_receive(&self) -> Option<Received> {
        let mut state = self.lock();
        if !state.connect_delivered {
            state.connect_delivered = true;
            return Some(Received::Connect);
        }
        if let Some(message) = state.incoming.pop_front() {
            if let Some(waker) = state.reader_waker.take() {
                waker.wake();
            }
            return Some(Received::Message(message));
        }
        state
            .disconnect
            .as_ref()
            .map(|(code, reason)| Received::Disconnect {
                code: *code,
                reason: reason.clone(),
            })
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

    /// Whether the connection has ended.
    pub fn is_disconnected(&self) -> bool {
        self.lock().disconnect.is_some()
    }

    /// Records the app's response to the handshake. Returns an error if it
    /// already responded.
    pub fn answer(&self, handshake: Handshake) -> Result<(), HandshakeError> {
        let mut state = self.lock();
        if state.handshake_answered {
            return Err(HandshakeError::AlreadyAnswered);
        }
        state.handshake_answered = true;
        if handshake != Handshake::Failed && !matches!(handshake, Handshake::Accept { .. }) {
            // No WebSocket will exist: `receive()` reports the end at once.
            state.disconnect = Some((CLOSE_ABNORMAL, String::new()));
        }
        state.handshake = Some(handshake);
        if let Some(waker) = state.handshake_waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Starts a denial response (`websocket.http.response.start`).
    pub fn start_denial(
        &self,
        status: StatusCode,
        headers: HeaderMap,
    ) -> Result<(), HandshakeError> {
        let mut state = self.lock();
        if state.handshake_answered || state.denial.is_some() {
            return Err(HandshakeError::AlreadyAnswered);
        }
        state.denial = Some((status, headers, Vec::new()));
        Ok(())
    }

    /// Adds body to the denial response; the last part sends it. Returns
    /// false when no denial response was started.
    // NOTE: the body is held whole until `more_body` is false, because
    // denial bodies are short error pages; a streamed one would need the
    // `Exchange` machinery.
    pub fn denial_body(&self, data: &[u8], more_body: bool) -> bool {
        let finished = {
            let mut state = self.lock();
            let Some((_, _, body)) = state.denial.as_mut() else {
                return false;
            };
            body.extend_from_slice(data);
            if more_body {
                return true;
            }
            state.denial.take()
        };
        if let Some((status, headers, body)) = finished {
            // Cannot fail: `start_denial` checked that no response was recorded yet.
            let _ = self.answer(Handshake::Deny {
                status,
                headers,
                body: Bytes::from(body),
            });
        }
        true
    }

    /// Whether a denial response was started and is still missing its body.
    pub fn denial_started(&self) -> bool {
        self.lock().denial.is_some()
    }

    /// Queues a message or close frame for the client.
    pub fn send(&self, frame: Outgoing) -> SendOutcome {
        let mut state = self.lock();
        if state.disconnect.is_some() || state.app_closed {
            return SendOutcome::Closed;
        }
        match &frame {
            Outgoing::Message(message) => state.outgoing_bytes += message.len(),
            Outgoing::Close { .. } => state.app_closed = true,
        }
        state.outgoing.push_back(frame);
        if let Some(waker) = state.writer_waker.take() {
            waker.wake();
        }
        if state.outgoing_bytes > SEND_HIGH_WATER {
            SendOutcome::Full
        } else {
            SendOutcome::Accepted
        }
    }

    /// Records that the ASGI task ended, so the tokio side stops waiting for
    /// a handshake reply or for more frames.
    pub fn app_finished(&self) {
        let mut state = self.lock();
        state.app_done = true;
        if let Some(waker) = state.handshake_waker.take() {
            waker.wake();
        }
        if let Some(waker) = state.writer_waker.take() {
            waker.wake();
        }
        if let Some(waker) = state.app_done_waker.take() {
            waker.wake();
        }
    }
}

impl State {
    fn condition_holds(&self, kind: WaitKind) -> bool {
        if self.disconnect.is_some() {
            return true;
        }
        match kind {
            WaitKind::Send => self.outgoing_bytes <= SEND_LOW_WATER,
            WaitKind::Receive => !self.connect_delivered || !self.incoming.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(max_queue: usize) -> Arc<Session> {
        Session::new(Arc::new(Bridge::new().unwrap()), max_queue)
    }

    fn poll_now<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let mut cx = Context::from_waker(Waker::noop());
        f(&mut cx)
    }

    fn text(value: &str) -> Message {
        Message::Text(value.to_owned())
    }

    #[test]
    fn connect_first_then_messages_then_disconnect() {
        let s = session(4);
        assert_eq!(s.try_receive(), Some(Received::Connect));
        assert_eq!(s.try_receive(), None);
        s.push_incoming(text("a"));
        s.disconnected(1000, "bye");
        assert_eq!(s.try_receive(), Some(Received::Message(text("a"))));
        let end = Received::Disconnect {
            code: 1000,
            reason: "bye".into(),
        };
        assert_eq!(s.try_receive(), Some(end));
    }

    #[test]
    fn first_disconnect_code_wins() {
        let s = session(4);
        s.try_receive();
        s.disconnected(1001, "");
        s.disconnected(CLOSE_ABNORMAL, "");
        assert!(matches!(
            s.try_receive(),
            Some(Received::Disconnect { code: 1001, .. })
        ));
    }

    #[test]
    fn reader_pauses_at_max_queue() {
        let s = session(2);
        s.try_receive();
        s.push_incoming(text("a"));
        assert_eq!(poll_now(|cx| s.poll_read_room(cx)), Poll::Ready(()));
        s.push_incoming(text("b"));
        assert_eq!(poll_now(|cx| s.poll_read_room(cx)), Poll::Pending);
        s.try_receive();
        assert_eq!(poll_now(|cx| s.poll_read_room(cx)), Poll::Ready(()));
    }

    #[test]
    fn send_reports_full_and_closed() {
        let s = session(1);
        let big = Message::Binary(Bytes::from(vec![0u8; SEND_HIGH_WATER]));
        assert_eq!(s.send(Outgoing::Message(big)), SendOutcome::Accepted);
        assert_eq!(s.send(Outgoing::Message(text("x"))), SendOutcome::Full);
        assert!(poll_now(|cx| s.poll_outgoing(cx)).is_ready());

        let close = Outgoing::Close {
            code: 1000,
            reason: String::new(),
        };
        s.send(close);
        assert_eq!(s.send(Outgoing::Message(text("y"))), SendOutcome::Closed);
    }

    #[test]
    fn close_before_accept_rejects_once() {
        let s = session(1);
        assert_eq!(s.answer(Handshake::Reject), Ok(()));
        assert_eq!(
            s.answer(Handshake::Reject),
            Err(HandshakeError::AlreadyAnswered)
        );
        assert_eq!(
            poll_now(|cx| s.poll_handshake(cx)),
            Poll::Ready(Handshake::Reject)
        );
        s.try_receive();
        assert!(matches!(
            s.try_receive(),
            Some(Received::Disconnect {
                code: CLOSE_ABNORMAL,
                ..
            })
        ));
    }

    #[test]
    fn denial_body_is_joined() {
        let s = session(1);
        s.start_denial(StatusCode::UNAUTHORIZED, HeaderMap::new())
            .unwrap();
        assert!(s.denial_body(b"no ", true));
        assert!(poll_now(|cx| s.poll_handshake(cx)).is_pending());
        assert!(s.denial_body(b"entry", false));
        match poll_now(|cx| s.poll_handshake(cx)) {
            Poll::Ready(Handshake::Deny { status, body, .. }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert_eq!(body, "no entry");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn app_that_ends_without_answer_fails_handshake() {
        let s = session(1);
        s.app_finished();
        assert_eq!(
            poll_now(|cx| s.poll_handshake(cx)),
            Poll::Ready(Handshake::Failed)
        );
    }
}
