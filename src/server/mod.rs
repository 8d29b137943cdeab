//! Accepting connections, serving them with hyper, and draining on a signal.
//!
//! The shutdown path reads like its description: stop accepting, ask every
//! connection to finish (idle keep-alive connections close at once, busy
//! ones after their response), wait up to the graceful timeout, then cancel
//! what is left so the app sees `http.disconnect`.

pub mod listener;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::http::websocket::CLOSE_GOING_AWAY;
use crate::http::{handle, ConnInfo, Shared};
use listener::BoundSocket;

/// Largest request head (request line and headers) accepted. Longer heads
/// get 431, or 414 for a long request line. 64 KiB is four times what
/// uvicorn's h11 backend allows and far above what browsers send.
pub const MAX_HEAD_SIZE: usize = 64 * 1024;

/// Pause after a failed `accept()` (for example when out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Time aborted WebSocket sessions get to drop their sockets after the
/// graceful timeout.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection finished within the graceful timeout.
    Drained,
    /// The graceful timeout passed; remaining connections were cancelled.
    TimedOut,
    /// A second signal, or SIGQUIT: the caller exits at once.
    Forced,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves connections on `socket` until SIGTERM or SIGINT, then drains.
pub async fn serve(
    socket: BoundSocket,
    shared: Arc<Shared>,
    config: &Config,
) -> io::Result<Shutdown> {
    let listener = match socket {
        BoundSocket::Tcp(std) => Listener::Tcp(TcpListener::from_std(std)?),
        BoundSocket::Unix(std, _) => Listener::Unix(UnixListener::from_std(std)?),
    };
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT])?;
    let builder = Arc::new(connection_builder(config));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    loop {
        tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted.spawn(&mut connections, &builder, &graceful, &shared),
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            signal = signals.next() => match signal {
                Some(SIGQUIT) => {
                    tracing::warn!("received SIGQUIT, exiting now");
                    return Ok(Shutdown::Forced);
                }
                Some(signal) => {
                    tracing::info!(signal = signal_name(signal), "shutting down");
                    break;
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Stop accepting: new connections are refused by the kernel from here.
    drop(listener);

    let open = connections.len();
    if open > 0 {
        tracing::info!(
            connections = open,
            "draining connections, signal again to exit now"
        );
    }
    // Open WebSockets get a close frame; the drain waits for their closing
    // handshakes and their apps too, since hyper no longer tracks them.
    let sessions = shared.websocket.as_ref().map(|ws| Arc::clone(&ws.registry));
    if let Some(sessions) = &sessions {
        if sessions.len() > 0 {
            tracing::info!(websockets = sessions.len(), "closing websockets");
        }
        sessions.close_all(CLOSE_GOING_AWAY);
    }
    let drained = async {
        graceful.shutdown().await;
        if let Some(sessions) = &sessions {
            sessions.wait_idle().await;
        }
    };

    let timeout = config.timeout_graceful_shutdown;
    let outcome = tokio::select! {
        () = drained => Shutdown::Drained,
        () = tokio::time::sleep(timeout) => Shutdown::TimedOut,
        _ = signals.next() => {
            tracing::warn!("second signal received, exiting now");
            return Ok(Shutdown::Forced);
        }
    };

    if outcome == Shutdown::TimedOut {
        tracing::warn!(
            connections = connections.len(),
            timeout_s = timeout.as_secs_f64(),
            "graceful shutdown timed out, cancelling the requests still in flight"
        );
        // Dropping a connection drops its requests; the app sees a disconnect.
        connections.abort_all();
        if let Some(sessions) = &sessions {
            sessions.abort_all();
            // Aborted sessions only drop their sockets; this is quick.
            let _ = tokio::time::timeout(ABORT_GRACE, sessions.wait_idle()).await;
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(outcome)
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so
        // it bounds both idle keep-alive time and slow header sending.
        .header_read_timeout(config.timeout_keep_alive)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_SIZE);
    builder.http2().timer(TokioTimer::new());
    builder
}

enum Accepted {
    Tcp(tokio::net::TcpStream, ConnInfo),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            // Small responses must not wait for Nagle's algorithm.
            stream.set_nodelay(true)?;
            let info = ConnInfo {
                client: Some(peer),
                server: stream.local_addr().ok(),
            };
            Ok(Accepted::Tcp(stream, info))
        }
        Listener::Unix(listener) => Ok(Accepted::Unix(listener.accept().await?.0)),
    }
}

impl Accepted {
    fn spawn(
        self,
        connections: &mut JoinSet<()>,
        builder: &Arc<auto::Builder<TokioExecutor>>,
        graceful: &GracefulShutdown,
        shared: &Arc<Shared>,
    ) {
        match self {
            Self::Tcp(stream, info) => {
                serve_connection(connections, builder, graceful, shared, stream, info)
            }
            Self::Unix(stream) => {
                let info = ConnInfo {
                    client: None,
                    server: None,
                };
                serve_connection(connections, builder, graceful, shared, stream, info);
            }
        }
    }
}

fn serve_connection<I>(
    connections: &mut JoinSet<()>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    shared: &Arc<Shared>,
    io: I,
    info: ConnInfo,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(shared);
    let service = service_fn(move |req| handle(req, Arc::clone(&shared), info));
    // With upgrades, hyper hands a WebSocket's socket over once the 101 is
    // written; requests without `Upgrade` are served as before.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let conn = graceful.watch(conn);
    connections.spawn(async move {
        if let Err(err) = conn.await {
            // Clients that hang up or send garbage are routine, not errors.
            tracing::debug!(error = %err, "connection ended with an error");
        }
    });
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
        assert_eq!(signal_name(SIGINT), "SIGINT");
    }
}
