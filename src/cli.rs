//! Command-line parsing: the raw options as the user typed them.
//!
//! Option names and meanings follow uvicorn's, so moving a container from
//! uvicorn is a one-word change. Every option also reads `FASTSERVE_<NAME>`;
//! a flag on the command line wins over the environment. Checking values
//! against each other and filling in defaults that depend on the
//! environment (such as `PORT`) happens in [`crate::config`].

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  fastserve                                  serve the built-in demo app on 0.0.0.0:8080
  fastserve main:app --port 8000             serve the ASGI app `app` from main.py
  fastserve myproject.asgi:create_app --factory --root-path /api";

/// Serve an ASGI application (FastAPI, Starlette, Django ...) with an embedded
/// Python interpreter and a Rust HTTP server.
#[derive(Debug, Parser)]
#[command(
    name = "fastserve",
    version,
    long_version = crate::version::LONG_VERSION.as_str(),
    after_help = EXAMPLES,
    max_term_width = 100
)]
pub struct Cli {
    /// The ASGI application as `module:attribute` (the attribute may be dotted).
    /// Without it, a small built-in demo app is served.
    #[arg(value_name = "APP", env = "FASTSERVE_APP")]
    pub app: Option<String>,

    /// Treat APP as a factory: call it with no arguments to get the app.
    #[arg(long, env = "FASTSERVE_FACTORY", help_heading = "Application")]
    pub factory: bool,

    /// Directory put first on `sys.path` before APP is imported. Default: `.`
    #[arg(
        long,
        value_name = "DIR",
        env = "FASTSERVE_APP_DIR",
        help_heading = "Application"
    )]
    pub app_dir: Option<PathBuf>,

    /// Path prefix the app is mounted under, set as the ASGI `root_path`.
    #[arg(
        long,
        value_name = "PATH",
        env = "FASTSERVE_ROOT_PATH",
        default_value = "",
        help_heading = "Application"
    )]
    pub root_path: String,

    /// Run the ASGI lifespan protocol: `auto` runs it unless the app rejects it.
    #[arg(
        long,
        value_enum,
        env = "FASTSERVE_LIFESPAN",
        default_value_t = LifespanMode::Auto,
        help_heading = "Application"
    )]
    pub lifespan: LifespanMode,

    /// Event loop: `auto` uses uvloop when it is installed, else asyncio.
    #[arg(
        long = "loop",
        value_enum,
        env = "FASTSERVE_LOOP",
        default_value_t = LoopKind::Auto,
        help_heading = "Application"
    )]
    pub event_loop: LoopKind,

    /// Address to bind. Default: 0.0.0.0, so the server is reachable in a container.
    #[arg(
        long,
        value_name = "ADDR",
        env = "FASTSERVE_HOST",
        help_heading = "Socket"
    )]
    pub host: Option<String>,

    /// Port to bind. Default: 8080, or the `PORT` environment variable when it is set.
    #[arg(long, short = 'p', env = "FASTSERVE_PORT", help_heading = "Socket")]
    pub port: Option<u16>,

    /// Bind a Unix domain socket at this path instead of a TCP address.
    #[arg(
        long,
        value_name = "PATH",
        env = "FASTSERVE_UDS",
        help_heading = "Socket"
    )]
    pub uds: Option<PathBuf>,

    /// Serve on an already bound and listening socket, given by its file descriptor.
    #[arg(long, value_name = "N", env = "FASTSERVE_FD", help_heading = "Socket")]
    pub fd: Option<i32>,

    /// Maximum number of pending connections in the listen queue.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_BACKLOG",
        default_value_t = 2048,
        help_heading = "Socket"
    )]
    pub backlog: u32,

    /// Seconds an idle keep-alive connection stays open. Also bounds how long a
    /// client may take to send request headers.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_TIMEOUT_KEEP_ALIVE",
        default_value_t = 5.0,
        help_heading = "Timeouts"
    )]
    pub timeout_keep_alive: f64,

    /// Seconds to wait for requests in flight after SIGTERM before cancelling them.
    /// The default fits inside the 10 s that `docker stop` allows.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_TIMEOUT_GRACEFUL_SHUTDOWN",
        default_value_t = 8.0,
        help_heading = "Timeouts"
    )]
    pub timeout_graceful_shutdown: f64,

    /// WebSocket support: `auto` serves WebSocket upgrades; `none` passes upgrade
    /// requests to the app as plain HTTP. uvicorn's `websockets`, `websockets-sansio`
    /// and `wsproto` mean `auto`.
    #[arg(
        long,
        value_enum,
        env = "FASTSERVE_WS",
        default_value_t = WsMode::Auto,
        help_heading = "WebSockets"
    )]
    pub ws: WsMode,

    /// Largest WebSocket message accepted, in bytes; a larger one closes the
    /// connection with code 1009.
    #[arg(
        long,
        value_name = "BYTES",
        env = "FASTSERVE_WS_MAX_SIZE",
        default_value_t = 16 * 1024 * 1024,
        help_heading = "WebSockets"
    )]
    pub ws_max_size: usize,

    /// Received WebSocket messages queued for the app before the server stops
    /// reading from that client.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_WS_MAX_QUEUE",
        default_value_t = 32,
        help_heading = "WebSockets"
    )]
    pub ws_max_queue: usize,

    /// Seconds between WebSocket pings sent to each client; 0 sends none.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_WS_PING_INTERVAL",
        default_value_t = 20.0,
        help_heading = "WebSockets"
    )]
    pub ws_ping_interval: f64,

    /// Seconds to wait for the pong to a ping before closing the connection
    /// with code 1011; 0 waits forever.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_WS_PING_TIMEOUT",
        default_value_t = 20.0,
        help_heading = "WebSockets"
    )]
    pub ws_ping_timeout: f64,

    /// Offer permessage-deflate compression (RFC 7692) to WebSocket clients.
    #[arg(
        long,
        value_name = "BOOL",
        env = "FASTSERVE_WS_PER_MESSAGE_DEFLATE",
        action = clap::ArgAction::Set,
        default_value_t = true,
        help_heading = "WebSockets"
    )]
    pub ws_per_message_deflate: bool,

    /// Minimum level of log lines written to stderr.
    #[arg(
        long,
        value_enum,
        env = "FASTSERVE_LOG_LEVEL",
        default_value_t = LogLevel::Info,
        help_heading = "Logging"
    )]
    pub log_level: LogLevel,

    /// Write one access log line per request (the default).
    #[arg(
        long,
        overrides_with = "no_access_log",
        env = "FASTSERVE_ACCESS_LOG",
        help_heading = "Logging"
    )]
    pub access_log: bool,

    /// Write no access log lines.
    #[arg(long, overrides_with = "access_log", help_heading = "Logging")]
    pub no_access_log: bool,
}

/// When to run the ASGI lifespan protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LifespanMode {
    /// Run it, but serve without it if the app raises on the lifespan scope.
    Auto,
    /// Run it; an app that does not support it fails to start.
    On,
    /// Never send lifespan events.
    Off,
}

/// Which asyncio event loop implementation runs the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoopKind {
    /// uvloop when it can be imported, else asyncio.
    Auto,
    /// The standard library's asyncio loop.
    Asyncio,
    /// uvloop; fails to start when it is not installed.
    Uvloop,
}

/// Whether WebSocket upgrade requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WsMode {
    /// Serve WebSockets.
    #[value(alias = "websockets", alias = "websockets-sansio", alias = "wsproto")]
    Auto,
    /// Pass upgrade requests to the app as plain HTTP requests.
    None,
}

/// Log levels with uvicorn's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Critical,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn last_access_log_flag_wins() {
        let cli = Cli::parse_from(["fastserve", "--access-log", "--no-access-log"]);
        assert!(cli.no_access_log);
        assert!(!cli.access_log);
        let cli = Cli::parse_from(["fastserve", "--no-access-log", "--access-log"]);
        assert!(cli.access_log);
        assert!(!cli.no_access_log);
    }

    #[test]
    fn loop_option_parses_uvicorn_names() {
        let cli = Cli::parse_from(["fastserve", "--loop", "asyncio", "app:app"]);
        assert_eq!(cli.event_loop, LoopKind::Asyncio);
        assert_eq!(cli.app.as_deref(), Some("app:app"));
    }

    #[test]
    fn ws_accepts_uvicorn_implementation_names() {
        for name in ["auto", "websockets", "websockets-sansio", "wsproto"] {
            let cli = Cli::parse_from(["fastserve", "--ws", name]);
            assert_eq!(cli.ws, WsMode::Auto, "{name}");
        }
        let cli = Cli::parse_from(["fastserve", "--ws", "none"]);
        assert_eq!(cli.ws, WsMode::None);
    }

    #[test]
    fn ws_per_message_deflate_takes_a_value() {
        let cli = Cli::parse_from(["fastserve", "--ws-per-message-deflate", "false"]);
        assert!(!cli.ws_per_message_deflate);
        assert!(Cli::parse_from(["fastserve"]).ws_per_message_deflate);
    }

    #[test]
    fn unknown_lifespan_value_is_rejected() {
        let err = Cli::try_parse_from(["fastserve", "--lifespan", "maybe"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
