//! The tokio task of one open WebSocket: moves frames between the socket and
//! the [`Session`], sends pings, and runs the closing handshake.
//!
//! yawc's `Streaming` layer parses frames, replies to pings, echoes a client's
//! close frame and applies permessage-deflate per frame. Reassembly and the
//! message checks are ours ([`Assembler`]), so every close code sent for a
//! bad message is decided in one place.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Sink;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use yawc::close::CloseCode;
use yawc::streaming::Streaming;
use yawc::{Frame, HttpStream, OpCode, WebSocketError};

use super::assemble::{Assembler, DataFrame, Violation, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};
use super::registry::{Drain, Ticket};
use crate::bridge::session::{Message, Outgoing, Session, CLOSE_ABNORMAL, CLOSE_NORMAL};
use crate::config::WebSocketConfig;

/// How long to wait for the client's close frame after sending ours before
/// dropping the connection. The same as the `websockets` library's default
/// `close_timeout` (10 s).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code when the client sends no pong in time.
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Close code the app receives when the client's close frame had no code
/// (RFC 6455 §7.1.5).
const CLOSE_NO_STATUS: u16 = 1005;

/// Close code yawc sends for a frame with an unknown opcode.
const CLOSE_UNSUPPORTED: u16 = 1003;

/// Reason sent with the drain's close frame.
const SHUTDOWN_REASON: &str = "server shutting down";

/// The outcome of one pass over the socket.
enum Step {
    /// The client sent a close frame first; its echo is queued.
    PeerClosed { code: u16, reason: String },
    /// The client replied to our close frame: the handshake is complete.
    Finished { code: u16, reason: String },
    /// A message broke the protocol; send this close frame.
    Violation(Violation),
    /// yawc found a frame-level error and already queued a close frame.
    FrameError(u16),
    /// The connection dropped, or the app has ended and nothing is left.
    Dropped,
}

/// The state of one open WebSocket.
struct Connection {
    ws: Streaming<HttpStream>,
    session: Arc<Session>,
    assembler: Assembler,
    /// A frame taken from the session (or a ping or close of ours) that
    /// waits for room in the write buffer.
    pending: Option<Frame>,
    /// Frames of our own, sent before the app's.
    control: Vec<Frame>,
    needs_flush: bool,
    /// Our close frame went out: read only until the client's close.
    close_sent: bool,
    awaiting_pong: bool,
}

/// Runs an accepted WebSocket to its end. `ticket` keeps the session in the
/// drain's registry until the app has finished too.
pub async fn run(
    ws: Streaming<HttpStream>,
    session: Arc<Session>,
    config: WebSocketConfig,
    mut drain: watch::Receiver<Drain>,
    ticket: Ticket,
) {
    let mut conn = Connection {
        ws,
        session: Arc::clone(&session),
        assembler: Assembler::new(config.max_size),
        pending: None,
        control: Vec::new(),
        needs_flush: false,
        close_sent: false,
        awaiting_pong: false,
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next_ping = config
        .ping_interval
        .map_or(far, |every| Instant::now() + every);
    let mut deadline = far;
    let mut drop_now = false;
    // The sender lives as long as the registry; once it is gone no drain
    // can come.
    let mut drain_open = true;

    // A drain that started while the app decided on the handshake was
    // marked seen when this session subscribed: act on it now.
    match *drain.borrow_and_update() {
        Drain::Close(code) => {
            conn.queue_close(code, SHUTDOWN_REASON);
            deadline = Instant::now() + CLOSE_TIMEOUT;
        }
        Drain::Abort => drop_now = true,
        Drain::Serving => {}
    }

    // The closing handshake ends the loop with the code the app receives.
    let (code, reason) = loop {
        if drop_now {
            break (CLOSE_ABNORMAL, String::new());
        }
        tokio::select! {
            step = poll_fn(|cx| conn.poll_step(cx)) => match step {
                Step::PeerClosed { code, reason } => {
                    conn.flush_echo().await;
                    break (code, reason);
                }
                Step::Finished { code, reason } => break (code, reason),
                Step::Violation(violation) => {
                    session.disconnected(violation.code, violation.reason);
                    conn.queue_close(violation.code, violation.reason);
                    deadline = Instant::now() + CLOSE_TIMEOUT;
                }
                Step::FrameError(code) => {
                    conn.flush_echo().await;
                    break (code, String::new());
                }
                Step::Dropped => break (CLOSE_ABNORMAL, String::new()),
            },
            changed = drain.changed(), if drain_open => {
                if changed.is_err() {
                    drain_open = false;
                    continue;
                }
                // After Close, watch on: Abort follows at the graceful timeout.
                match *drain.borrow_and_update() {
                    Drain::Close(code) => {
                        conn.queue_close(code, SHUTDOWN_REASON);
                        deadline = deadline.min(Instant::now() + CLOSE_TIMEOUT);
                    }
                    Drain::Abort => break (CLOSE_ABNORMAL, String::new()),
                    Drain::Serving => {}
                }
            },
            () = sleep_until(next_ping) => {
                if !conn.awaiting_pong && !conn.is_closing() {
                    conn.control.push(Frame::ping(bytes::Bytes::new()));
                    conn.awaiting_pong = true;
                    if let Some(timeout) = config.ping_timeout {
                        deadline = deadline.min(Instant::now() + timeout);
                    }
                }
                next_ping = config.ping_interval.map_or(far, |every| Instant::now() + every);
            },
            () = sleep_until(deadline) => {
                if conn.is_closing() {
                    // The client never replied to our close frame.
                    break (CLOSE_ABNORMAL, String::new());
                }
                if conn.awaiting_pong {
                    tracing::debug!("websocket ping timed out, closing");
                    session.disconnected(CLOSE_INTERNAL_ERROR, "keepalive ping timeout");
                    conn.queue_close(CLOSE_INTERNAL_ERROR, "keepalive ping timeout");
                    deadline = Instant::now() + CLOSE_TIMEOUT;
                } else {
                    deadline = far;
                }
            },
        }
        // A pong that arrived cancels the ping deadline.
        if !conn.awaiting_pong && !conn.is_closing() && deadline != far {
            deadline = far;
        }
    };

    session.disconnected(code, &reason);
    drop(conn);

    // Stay registered until the app has seen the disconnect and finished, so
    // the drain also waits for its cleanup. An abort from the drain ends the
    // wait at once.
    tokio::select! {
        () = poll_fn(|cx| session.poll_app_done(cx)) => {}
        () = async {
            while *drain.borrow_and_update() != Drain::Abort {
                if drain.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        } => {}
    }
    drop(ticket);
}

impl Connection {
    /// Writes what is queued and reads what arrived, until something
    /// needs the caller.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if let Err(err) = self.poll_write(cx) {
            tracing::debug!(error = %err, "writing to a websocket failed");
            return Poll::Ready(Step::Dropped);
        }
        if !self.close_sent
            && self.pending.is_none()
            && self.control.is_empty()
            && self.session.is_app_done()
        {
            // The app returned without closing: close normally for it.
            self.queue_close(CLOSE_NORMAL, "");
            return self.poll_step(cx);
        }
        self.poll_read(cx)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), WebSocketError> {
        loop {
            if self.pending.is_none() && !self.control.is_empty() {
                self.pending = Some(self.control.remove(0));
            }
            if self.pending.is_none() && !self.close_sent {
                if let Poll::Ready(outgoing) = self.session.poll_outgoing(cx) {
                    self.pending = Some(to_frame(outgoing));
                }
            }
            let Some(frame) = self.pending.take() else {
                break;
            };
            if self.close_sent {
                // Nothing may follow our close frame.
                continue;
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => {
                    self.pending = Some(frame);
                    break;
                }
            }
            self.close_sent = frame.opcode() == OpCode::Close;
            Pin::new(&mut self.ws).start_send(frame)?;
            self.needs_flush = true;
        }
        if self.needs_flush {
            if let Poll::Ready(result) = Pin::new(&mut self.ws).poll_flush(cx) {
                result?;
                self.needs_flush = false;
            }
        }
        Ok(())
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            // Past the queue limit, stop reading until the app catches up;
            // after our close frame, read on to get the client's reply.
            if !self.close_sent && self.session.poll_read_room(cx).is_pending() {
                return Poll::Pending;
            }
            let frame = match self.ws.poll_next_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(frame)) => frame,
                Poll::Ready(Err(err)) => return Poll::Ready(frame_error(&err)),
            };
            let (opcode, fin, payload) = frame.into_parts();
            let kind = match opcode {
                OpCode::Text => DataFrame::Text,
                OpCode::Binary => DataFrame::Binary,
                OpCode::Continuation => DataFrame::Continuation,
                OpCode::Pong => {
                    self.awaiting_pong = false;
                    continue;
                }
                OpCode::Ping => continue,
                OpCode::Close => return Poll::Ready(self.on_close(&payload)),
            };
            if self.close_sent {
                // Data after our close frame is read and dropped.
                continue;
            }
            match self.assembler.push(kind, fin, payload) {
                Ok(Some(message)) => self.session.push_incoming(message),
                Ok(None) => {}
                Err(violation) => return Poll::Ready(Step::Violation(violation)),
            }
        }
    }

    fn on_close(&mut self, payload: &[u8]) -> Step {
        let (code, reason) = match payload {
            [high, low, reason @ ..] => (
                u16::from_be_bytes([*high, *low]),
                String::from_utf8_lossy(reason).into_owned(),
            ),
            _ => (CLOSE_NO_STATUS, String::new()),
        };
        if self.close_sent {
            Step::Finished { code, reason }
        } else {
            Step::PeerClosed { code, reason }
        }
    }

    /// Returns whether our close frame is sent or queued.
    fn is_closing(&self) -> bool {
        self.close_sent || self.control.iter().any(|f| f.opcode() == OpCode::Close)
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.is_closing() {
            return;
        }
        self.control
            .push(Frame::close(CloseCode::from(code), reason));
    }

    /// Flushes the close frame yawc queued in reply to the client's, then
    /// returns; dropping the connection closes the TCP stream.
    async fn flush_echo(&mut self) {
        let flushed = poll_fn(|cx| {
            // `poll_ready` writes yawc's queued control frames.
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut self.ws).poll_flush(cx),
                other => other,
            }
        });
        // Bounded: a client that stops reading must not hold the task.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, flushed).await;
    }
}

fn to_frame(outgoing: Outgoing) -> Frame {
    match outgoing {
        Outgoing::Message(Message::Text(text)) => Frame::text(text),
        Outgoing::Message(Message::Binary(data)) => Frame::binary(data),
        Outgoing::Close { code, reason } => Frame::close(CloseCode::from(code), reason),
    }
}

/// Maps an error from yawc's frame reader to a step. yawc has queued a close
/// frame for protocol errors, and the app receives the code it chose.
fn frame_error(err: &WebSocketError) -> Step {
    match err {
        WebSocketError::FrameTooLarge => Step::FrameError(CLOSE_TOO_BIG),
        WebSocketError::InvalidUTF8 => Step::FrameError(super::assemble::CLOSE_INVALID_DATA),
        WebSocketError::ReservedBitsNotZero
        | WebSocketError::ControlFrameFragmented
        | WebSocketError::PingFrameTooLarge
        | WebSocketError::InvalidFragment
        | WebSocketError::InvalidCloseFrame
        | WebSocketError::InvalidCloseCode
        | WebSocketError::InvalidContinuationFrame
        | WebSocketError::CompressionNotSupported => Step::FrameError(CLOSE_PROTOCOL_ERROR),
        // yawc closes with 1003 (unsupported data) for an unknown opcode.
        WebSocketError::InvalidOpCode(_) => Step::FrameError(CLOSE_UNSUPPORTED),
        other => {
            tracing::debug!(error = %other, "websocket connection ended");
            Step::Dropped
        }
    }
}
