//! Log set-up: tracing lines on stderr, filtered by `--log-level`, with the
//! access log on its own target so `--no-access-log` can switch it off.
//!
//! `--log-format json` writes every line with tracing-subscriber's JSON
//! formatter. JSON access lines are built whole by [`access`], so they are
//! written as they are, one object per line, whatever the other lines use.

use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::Layer;

use crate::cli::{LogFormat, LogLevel};
use crate::http::access;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel, access_log: bool, format: LogFormat, access_format: LogFormat) {
    let level = match level {
        // tracing has no level above error; uvicorn's "critical" keeps errors.
        LogLevel::Critical | LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let access_level = if access_log { level } else { LevelFilter::OFF };
    let raw_access = access_format == LogFormat::Json;
    // Library internals (hyper, h2) log at debug and trace only when asked.
    let filter = Targets::new()
        .with_default(level.min(LevelFilter::INFO))
        .with_target("fastserve", level)
        .with_target(
            access::TARGET,
            if raw_access {
                LevelFilter::OFF
            } else {
                access_level
            },
        );

    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let access_lines = raw_access
        .then(|| RawLines.with_filter(Targets::new().with_target(access::TARGET, access_level)));
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(access_lines)
        .init();
}

/// Writes the message of each event as one line on stderr, nothing else.
#[derive(Debug)]
struct RawLines;

impl<S: Subscriber> Layer<S> for RawLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut message = MessageText(String::new());
        event.record(&mut message);
        message.0.push('\n');
        // A failed write to stderr has nowhere else to be reported.
        let _ = std::io::stderr().lock().write_all(message.0.as_bytes());
    }
}

struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}
