//! Log set-up: tracing lines on stderr, filtered by `--log-level`, with the
//! access log on its own target so `--no-access-log` can switch it off.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::cli::LogLevel;
use crate::http::access;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel, access_log: bool) {
    let level = match level {
        // tracing has no level above error; uvicorn's "critical" keeps errors.
        LogLevel::Critical | LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let access_level = if access_log { level } else { LevelFilter::OFF };
    // Library internals (hyper, h2) log at debug and trace only when asked.
    let filter = Targets::new()
        .with_default(level.min(LevelFilter::INFO))
        .with_target("fastserve", level)
        .with_target(access::TARGET, access_level);

    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}
