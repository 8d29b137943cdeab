//! fastserve: serve an ASGI app with an embedded CPython behind hyper.
//!
//! The flow: parse the command line and validate it into a [`Config`]. The
//! process the user started becomes the supervisor: it binds the socket and
//! runs worker processes, which are this binary again with the socket passed
//! down. A worker starts the Python thread (import the app, run lifespan
//! startup), serves until a signal, drains, runs lifespan shutdown, exits.
//! `fastserve health` probes a running server instead.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | clean shutdown |
//! | 1 | runtime failure (socket, runtime, forced exit) |
//! | 2 | usage or configuration error |
//! | 3 | the app could not be imported, or its lifespan startup failed |
//!
//! The modules live in the library (`src/lib.rs`), which also defines these
//! codes as the `EXIT_*` constants.

use std::process::ExitCode;

use clap::Parser;

use fastserve::cli::{Cli, Command};
use fastserve::config::{Config, Environment};
use fastserve::worker::{self, WorkerEnv};
use fastserve::{envfile, health, logging, supervisor, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let mut cli = Cli::parse();

    if let Some(Command::Health(args)) = &cli.command {
        return match health::probe::run(args, std::env::var("PORT").ok()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }

    // Loaded first, while this is the only thread, so that the app and the
    // FORWARDED_ALLOW_IPS fallback below see its variables, as in uvicorn.
    let env_loaded = match cli.env_file.as_deref().map(envfile::load).transpose() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.forwarded_allow_ips.is_none() {
        cli.forwarded_allow_ips = std::env::var("FORWARDED_ALLOW_IPS").ok();
    }

    let config = match Config::from_cli(cli, Environment::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    logging::init(
        config.log_level,
        config.access_log,
        config.log_format,
        config.access_log_format,
    );
    if let (Some(path), Some(count)) = (&config.env_file, env_loaded) {
        tracing::info!(path = %path.display(), variables = count, "loaded environment file");
    }

    let result = match WorkerEnv::from_process() {
        Some(worker_env) => worker::run(&config, worker_env),
        None => supervisor::run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}
