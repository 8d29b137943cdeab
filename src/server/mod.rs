//! Accepting connections, serving them with hyper, and draining on a signal.
//!
//! The shutdown path reads like its description: stop accepting, ask every
//! connection to finish (idle keep-alive connections close at once, busy
//! ones after their response), wait up to the graceful timeout, then cancel
//! what is left so the app receives `http.disconnect`.

pub mod heads;
pub mod listener;
mod trim;
pub mod watchdog;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
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
use crate::http::limits::Limits;
use crate::http::websocket::CLOSE_GOING_AWAY;
use crate::http::{ConnInfo, Shared};
use heads::{ConnHeads, Tapped};
use listener::BoundSocket;
use trim::HeapTrim;
use watchdog::{Activity, Timeouts, Watched};

/// Pause after a failed `accept()` (for example when out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Time aborted WebSocket sessions get to drop their sockets after the
/// graceful timeout.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// The outcome of serving.
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
    let timeouts = Timeouts {
        keep_alive: config.timeout_keep_alive,
        header_read: config.timeout_header_read,
    };
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut heap_trim = HeapTrim::default();

    // Set by the first SIGTERM or SIGINT: serving goes on until then, with
    // /health already returning 503, so load balancers can deregister.
    let mut stop_accepting_at: Option<tokio::time::Instant> = None;
    loop {
        let delay_over = async {
            match stop_accepting_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => {
                    let watch = (Activity::new(), timeouts);
                    accepted.spawn(&mut connections, &builder, &graceful, &shared, watch);
                    heap_trim.opened(connections.len());
                }
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
                Some(_) if stop_accepting_at.is_some() => {
                    tracing::warn!("second signal received, exiting now");
                    return Ok(Shutdown::Forced);
                }
                Some(signal) => {
                    shared.health.set_draining();
                    let delay = config.shutdown_delay;
                    tracing::info!(signal = signal_name(signal), "shutting down, health checks now fail");
                    if delay.is_zero() {
                        break;
                    }
                    tracing::info!(delay_s = delay.as_secs_f64(), "serving during the shutdown delay");
                    stop_accepting_at = Some(tokio::time::Instant::now() + delay);
                }
                None => break,
            },
            () = delay_over => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                heap_trim.closed(connections.len());
            }
            () = heap_trim.due() => heap_trim.trim(connections.len()),
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
        // Dropping a connection drops its requests, so the app receives a disconnect.
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
        // The watchdog applies the keep-alive and header-read timeouts;
        // hyper's own timer would count idle time as header time.
        .header_read_timeout(None)
        .keep_alive(true)
        // A client that shuts down its sending side after a request (as
        // `nc` and some test tools do) still gets the response.
        .half_close(true)
        .auto_date_header(config.date_header)
        // hyper returns 431 when a head fills its read buffer. hyper-util's
        // auto builder does not expose hyper's `max_header_size`.
        .max_buf_size(config.limits.header_size.max(Limits::MIN_HEADER_SIZE));
    builder
        .http2()
        .timer(TokioTimer::new())
        .auto_date_header(config.date_header);
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
        (activity, timeouts): (Arc<Activity>, Timeouts),
    ) {
        match self {
            Self::Tcp(stream, info) => {
                let heads = ConnHeads::new();
                let io = Tapped::new(stream, Arc::clone(&heads));
                let io = Watched::new(io, Arc::clone(&activity), timeouts);
                let conn = (activity, heads);
                serve_connection(connections, builder, graceful, shared, io, info, conn)
            }
            Self::Unix(stream) => {
                let info = ConnInfo {
                    client: None,
                    server: None,
                };
                let heads = ConnHeads::new();
                let io = Tapped::new(stream, Arc::clone(&heads));
                let io = Watched::new(io, Arc::clone(&activity), timeouts);
                let conn = (activity, heads);
                serve_connection(connections, builder, graceful, shared, io, info, conn);
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
    (activity, heads): (Arc<Activity>, Arc<ConnHeads>),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(shared);
    let service = service_fn(move |req| {
        let request = activity.begin_request();
        let notes = heads.take_notes();
        crate::http::serve(
            req,
            Arc::clone(&shared),
            info,
            request,
            (Arc::clone(&heads), notes),
        )
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    // `map` keeps one copy of the connection in the task. An `async move`
    // block that awaits the moved-in future stores it twice: 3,848 bytes
    // per connection task instead of 1,920 (rustc 1.95, hyper-util 0.1.21).
    connections.spawn(graceful.watch(conn).map(log_connection_end));
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(err) = result {
        // Clients that hang up or send garbage are routine, not errors.
        tracing::debug!(error = %err, "connection ended with an error");
    }
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
