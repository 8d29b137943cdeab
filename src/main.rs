//! fastserve: serve an ASGI app with an embedded CPython behind hyper.
//!
//! The flow: parse the command line, validate it into a [`Config`], bind the
//! socket, start the Python thread (import the app, run lifespan startup),
//! serve until a signal, drain, run lifespan shutdown, exit.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | clean shutdown |
//! | 1 | runtime failure (socket, runtime, forced exit) |
//! | 2 | usage or configuration error |
//! | 3 | the app could not be imported, or its lifespan startup failed |

mod bridge;
mod cli;
mod config;
mod http;
mod logging;
mod python;
mod server;
mod version;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use bridge::Bridge;
use cli::Cli;
use config::Config;
use python::PythonThread;
use server::Shutdown;

/// Exit code for a runtime failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage or configuration error; clap uses it too.
const EXIT_USAGE: u8 = 2;
/// Exit code when the app cannot start, as uvicorn uses it.
const EXIT_APP_START: u8 = 3;

/// Time allowed after the graceful timeout for lifespan shutdown to finish.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(cli, std::env::var("PORT").ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    logging::init(config.log_level, config.access_log);

    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Runs the server; `Err` carries the exit code after the failure is logged.
fn run(config: &Config) -> Result<(), u8> {
    let socket = server::listener::bind(&config.bind, config.backlog).map_err(|err| {
        tracing::error!("{err}");
        EXIT_FAILURE
    })?;
    let bridge = Arc::new(Bridge::new().map_err(|err| {
        tracing::error!(error = %err, "could not create the eventfd for the Python thread");
        EXIT_FAILURE
    })?);

    tracing::info!(app = %config.app, pid = std::process::id(), "starting");
    let (python, started) = PythonThread::start(config, Arc::clone(&bridge)).map_err(|err| {
        tracing::error!("application startup failed, exiting\n{err}");
        EXIT_APP_START
    })?;
    tracing::info!(
        python = %started.python_version,
        event_loop = %started.event_loop,
        "application startup complete"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            tracing::error!(error = %err, "could not start the tokio runtime");
            EXIT_FAILURE
        })?;
    let shared = Arc::new(http::Shared {
        bridge,
        access_log: config.access_log,
        websocket: config.websocket.clone().map(http::websocket::Endpoint::new),
    });
    tracing::info!("listening on {}", socket.describe());
    let outcome = runtime
        .block_on(server::serve(socket, shared, config))
        .map_err(|err| {
            tracing::error!(error = %err, "serving failed");
            EXIT_FAILURE
        })?;
    if outcome == Shutdown::Forced {
        return Err(EXIT_FAILURE);
    }

    tracing::info!("waiting for application shutdown");
    if !python.stop(python::LIFESPAN_SHUTDOWN_TIMEOUT + STOP_MARGIN) {
        tracing::warn!("application shutdown did not finish in time");
    }
    tracing::info!("shutdown complete");
    Ok(())
}
