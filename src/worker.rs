//! A worker process: the Python thread plus the tokio server, on a socket
//! the supervisor bound and passed down.
//!
//! The supervisor starts each worker by running this same binary again with
//! a few `FASTSERVE_INTERNAL_*` variables: the listening socket's fd, the
//! write end of a status pipe, and whether to accept connections before the
//! app is ready. The worker writes one byte per event to the pipe:
//! [`MSG_READY`] once lifespan startup finished, [`MSG_RECYCLE`] once it
//! served `--limit-max-requests` requests and wants a replacement.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::bridge::{self, Bridge};
use crate::config::Config;
use crate::health::Health;
use crate::http::Shared;
use crate::python::{self, PythonThread};
use crate::server::listener;
use crate::server::{self, Shutdown};
use crate::{EXIT_APP_START, EXIT_FAILURE};

/// Variable that marks a process as a worker and names its socket's fd.
pub const ENV_LISTEN_FD: &str = "FASTSERVE_INTERNAL_LISTEN_FD";
/// Variable naming the fd of the status pipe's write end.
pub const ENV_STATUS_FD: &str = "FASTSERVE_INTERNAL_STATUS_FD";
/// Variable set to "1" when the worker may accept before it is ready, so
/// `/health` can answer 503 during start-up. Only the first workers get it:
/// a replacement must not take connections while older workers can serve.
pub const ENV_ACCEPT_EARLY: &str = "FASTSERVE_INTERNAL_ACCEPT_EARLY";
/// Variable with the number of requests after which this worker asks to be
/// replaced, jitter included.
pub const ENV_MAX_REQUESTS: &str = "FASTSERVE_INTERNAL_MAX_REQUESTS";

/// Status byte: lifespan startup finished, the worker serves.
pub const MSG_READY: u8 = b'R';
/// Status byte: the request limit is reached, replace this worker.
pub const MSG_RECYCLE: u8 = b'M';

/// Time allowed after the graceful timeout for lifespan shutdown to finish.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// Settings the supervisor passed to this worker.
#[derive(Debug)]
pub struct WorkerEnv {
    listen_fd: i32,
    status: Option<File>,
    accept_early: bool,
    max_requests: Option<u64>,
}

impl WorkerEnv {
    /// Reads the worker variables; `None` in the supervisor.
    pub fn from_process() -> Option<Self> {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<i64>().ok());
        let listen_fd = i32::try_from(number(ENV_LISTEN_FD)?).ok()?;
        let status = number(ENV_STATUS_FD)
            .and_then(|fd| i32::try_from(fd).ok())
            .and_then(|fd| listener::own_fd(fd).ok())
            .map(File::from);
        let accept_early = std::env::var(ENV_ACCEPT_EARLY).is_ok_and(|v| v == "1");
        let max_requests = number(ENV_MAX_REQUESTS).and_then(|n| u64::try_from(n).ok());

        // The variables are for this process only, not for the app's own
        // subprocesses.
        // Called at start-up on the main thread, before any other thread
        // that could read the environment exists.
        for name in [
            ENV_LISTEN_FD,
            ENV_STATUS_FD,
            ENV_ACCEPT_EARLY,
            ENV_MAX_REQUESTS,
        ] {
            std::env::remove_var(name);
        }
        Some(Self {
            listen_fd,
            status,
            accept_early,
            max_requests,
        })
    }

    fn notify(&mut self, message: u8) {
        if let Some(status) = &mut self.status {
            if let Err(err) = status.write_all(&[message]) {
                tracing::warn!(error = %err, "could not report to the supervisor");
            }
        }
    }
}

/// Runs the worker; `Err` carries the exit code after the failure is logged.
pub fn run(config: &Config, mut env: WorkerEnv) -> Result<(), u8> {
    // Worker lines carry the pid, which distinguishes the lines of several workers.
    let _span = tracing::info_span!("worker", pid = std::process::id()).entered();

    // Ends this worker if the supervisor dies without stopping it.
    if let Err(err) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        tracing::debug!(error = %err, "could not set the parent-death signal");
    }

    let socket = listener::adopt_fd(env.listen_fd).map_err(|err| {
        tracing::error!("{err}");
        EXIT_FAILURE
    })?;
    let bridge = Arc::new(Bridge::new().map_err(|err| {
        tracing::error!(error = %err, "could not create the eventfd for the Python thread");
        EXIT_FAILURE
    })?);
    let loop_timeout = config
        .health
        .as_ref()
        .map_or(Duration::MAX, |h| h.loop_timeout);
    let health = Arc::new(Health::new(loop_timeout));

    python::initialize().map_err(|err| startup_failed(&err))?;
    let (python, startup) = PythonThread::spawn(config, Arc::clone(&bridge), Arc::clone(&health))
        .map_err(|err| startup_failed(&err))?;

    let park_bridge = Arc::clone(&bridge);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Requests are queued without waking Python: one wake-up per pass.
        .on_thread_park(move || park_bridge.flush())
        .build()
        .map_err(|err| {
            tracing::error!(error = %err, "could not start the tokio runtime");
            EXIT_FAILURE
        })?;
    let shared = Arc::new(Shared::new(
        bridge,
        config,
        Arc::clone(&health),
        env.max_requests,
    ));
    let accept_early = env.accept_early;

    let outcome = runtime.block_on(async {
        tokio::spawn(bridge::relay::run());
        let serving = server::serve(socket, Arc::clone(&shared), config);
        tokio::pin!(serving);

        let started = if accept_early {
            tokio::select! {
                started = startup => started,
                outcome = &mut serving => return outcome_or_exit(outcome),
            }
        } else {
            startup.await
        };
        let started = match started {
            Ok(Ok(started)) => started,
            Ok(Err(err)) => return Err(startup_failed(&err)),
            Err(_) => return Err(startup_failed(&python::StartupError::ThreadDied)),
        };
        tracing::info!(
            python = %started.python_version,
            event_loop = %started.event_loop,
            "application startup complete"
        );
        health.set_ready();
        env.notify(MSG_READY);

        loop {
            tokio::select! {
                outcome = &mut serving => return outcome_or_exit(outcome),
                () = shared.recycle.notified() => {
                    tracing::info!("request limit reached, asking the supervisor for a replacement");
                    env.notify(MSG_RECYCLE);
                }
            }
        }
    });
    outcome?;

    tracing::info!("waiting for application shutdown");
    let budget = python::LIFESPAN_SHUTDOWN_TIMEOUT + STOP_MARGIN;
    if !python.stop(budget) {
        tracing::warn!(
            timeout_s = budget.as_secs_f64(),
            "application shutdown timed out"
        );
    }
    tracing::info!("shutdown complete");
    Ok(())
}

fn outcome_or_exit(outcome: std::io::Result<Shutdown>) -> Result<(), u8> {
    match outcome {
        Ok(Shutdown::Forced) => Err(EXIT_FAILURE),
        Ok(_) => Ok(()),
        Err(err) => {
            tracing::error!(error = %err, "serving failed");
            Err(EXIT_FAILURE)
        }
    }
}

fn startup_failed(err: &python::StartupError) -> u8 {
    tracing::error!("application startup failed, exiting\n{err}");
    EXIT_APP_START
}
