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
  fastserve myproject.asgi:create_app --factory --root-path /api
  fastserve health                           exit 0 if the local server is healthy (for HEALTHCHECK)";

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
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// Seconds an idle keep-alive connection stays open while no request is
    /// being received or served.
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

    /// Number of worker processes. Default: `WEB_CONCURRENCY` when it is set, else 1.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_WORKERS",
        help_heading = "Processes"
    )]
    pub workers: Option<u32>,

    /// Replace a worker after it has served this many requests.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_LIMIT_MAX_REQUESTS",
        help_heading = "Processes"
    )]
    pub limit_max_requests: Option<u64>,

    /// Add a random 0..=N to --limit-max-requests per worker, so workers are
    /// not all replaced at the same moment.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_LIMIT_MAX_REQUESTS_JITTER",
        default_value_t = 0,
        help_heading = "Processes"
    )]
    pub limit_max_requests_jitter: u64,

    /// Seconds to keep serving after SIGTERM while /health already returns 503,
    /// so load balancers stop sending traffic before connections close.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_SHUTDOWN_DELAY",
        default_value_t = 0.0,
        help_heading = "Processes"
    )]
    pub shutdown_delay: f64,

    /// Restart the worker when files change: for local development, never in
    /// production. Uses one worker.
    #[arg(long, env = "FASTSERVE_RELOAD", help_heading = "Development")]
    pub reload: bool,

    /// Directory to watch with --reload (repeatable). Default: the current directory.
    #[arg(long, value_name = "DIR", help_heading = "Development")]
    pub reload_dir: Vec<PathBuf>,

    /// Glob of file names that trigger a reload (repeatable). Default: `*.py`.
    #[arg(long, value_name = "GLOB", help_heading = "Development")]
    pub reload_include: Vec<String>,

    /// Glob of file or directory names to ignore (repeatable). Always ignored:
    /// names starting with `.`, `*.py[cod]`, `*~`, `__pycache__`.
    #[arg(long, value_name = "GLOB", help_heading = "Development")]
    pub reload_exclude: Vec<String>,

    /// Seconds to wait after a change before restarting, so a burst of saves
    /// restarts once.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_RELOAD_DELAY",
        default_value_t = 0.25,
        help_heading = "Development"
    )]
    pub reload_delay: f64,

    /// Path of the built-in health endpoint, answered without running Python.
    #[arg(
        long,
        value_name = "PATH",
        env = "FASTSERVE_HEALTH_PATH",
        default_value = "/health",
        help_heading = "Health"
    )]
    pub health_path: String,

    /// Turn the built-in health endpoint off; its path goes to the app.
    #[arg(long, env = "FASTSERVE_NO_HEALTH", help_heading = "Health")]
    pub no_health: bool,

    /// Seconds the event loop may go without running before /health returns 503.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_HEALTH_LOOP_TIMEOUT",
        default_value_t = 5.0,
        help_heading = "Health"
    )]
    pub health_loop_timeout: f64,

    /// Write access log lines for health checks too.
    #[arg(long, env = "FASTSERVE_LOG_HEALTH_CHECKS", help_heading = "Health")]
    pub log_health_checks: bool,
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

    /// Format of every log line: `text`, or `json` for one JSON object per line.
    #[arg(
        long,
        value_enum,
        env = "FASTSERVE_LOG_FORMAT",
        default_value_t = LogFormat::Text,
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Format of access log lines: `text` (uvicorn-like) or `json` (with a
    /// request id, returned as `x-request-id`). Default: the --log-format.
    #[arg(
        long,
        value_enum,
        env = "FASTSERVE_ACCESS_LOG_FORMAT",
        help_heading = "Logging"
    )]
    pub access_log_format: Option<LogFormat>,

    /// Comma-separated request paths left out of the access log, such as probes.
    /// An empty value logs every path.
    #[arg(
        long,
        value_name = "PATHS",
        env = "FASTSERVE_ACCESS_LOG_EXCLUDE",
        default_value = "",
        help_heading = "Logging"
    )]
    pub access_log_exclude: String,

    /// Read the client address and scheme from proxy headers sent by a peer
    /// in --forwarded-allow-ips (the default).
    #[arg(
        long,
        overrides_with = "no_proxy_headers",
        env = "FASTSERVE_PROXY_HEADERS",
        help_heading = "Proxy"
    )]
    pub proxy_headers: bool,

    /// Ignore proxy headers: the scope shows the connection's own peer and scheme.
    #[arg(long, overrides_with = "proxy_headers", help_heading = "Proxy")]
    pub no_proxy_headers: bool,

    /// Comma-separated peers whose proxy headers are trusted: IPv4 or IPv6
    /// addresses, CIDR ranges, or `*` for all. Unix socket peers are always
    /// trusted. Falls back to FORWARDED_ALLOW_IPS, as in uvicorn.
    /// [default: 127.0.0.1,::1]
    #[arg(
        long,
        value_name = "LIST",
        env = "FASTSERVE_FORWARDED_ALLOW_IPS",
        help_heading = "Proxy"
    )]
    pub forwarded_allow_ips: Option<String>,

    /// Comma-separated proxy headers to read from trusted peers: x-forwarded-for,
    /// x-forwarded-proto, x-forwarded-host, x-forwarded-port, x-forwarded-prefix,
    /// forwarded (RFC 7239), or `all`.
    #[arg(
        long,
        value_name = "LIST",
        env = "FASTSERVE_FORWARDED_HEADERS",
        default_value = crate::proxy::DEFAULT_HEADERS,
        help_heading = "Proxy"
    )]
    pub forwarded_headers: String,

    /// Seconds a client may take to send a request's headers, counted from its
    /// first byte. Closes slowloris connections without shortening keep-alive.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "FASTSERVE_TIMEOUT_HEADER_READ",
        default_value_t = 10.0,
        help_heading = "Timeouts"
    )]
    pub timeout_header_read: f64,

    /// Maximum number of requests served at once; further requests get 503
    /// without running the app. Idle connections do not count. Default: no limit.
    #[arg(
        long,
        value_name = "N",
        env = "FASTSERVE_LIMIT_CONCURRENCY",
        help_heading = "Limits"
    )]
    pub limit_concurrency: Option<usize>,

    /// Maximum request body size in bytes; larger bodies get 413. Default: no limit.
    #[arg(
        long,
        value_name = "BYTES",
        env = "FASTSERVE_LIMIT_REQUEST_BODY",
        help_heading = "Limits"
    )]
    pub limit_request_body: Option<u64>,

    /// Maximum length in bytes of the request target (the URI in the request
    /// line); longer ones get 414.
    #[arg(
        long,
        value_name = "BYTES",
        env = "FASTSERVE_LIMIT_REQUEST_LINE",
        default_value_t = 16 * 1024,
        help_heading = "Limits"
    )]
    pub limit_request_line: usize,

    /// Maximum size in bytes of the request head (request line and headers);
    /// larger heads get 431. At least 8192.
    #[arg(
        long,
        value_name = "BYTES",
        env = "FASTSERVE_MAX_HEADER_SIZE",
        default_value_t = 64 * 1024,
        help_heading = "Limits"
    )]
    pub max_header_size: usize,

    /// A header added to every response unless the app sets it, as `NAME:VALUE`.
    /// Repeat for several; FASTSERVE_HEADER takes one per line.
    #[arg(
        long = "header",
        value_name = "NAME:VALUE",
        env = "FASTSERVE_HEADER",
        value_delimiter = '\n',
        help_heading = "Responses"
    )]
    pub headers: Vec<String>,

    /// Add `server: fastserve` to responses that have no `server` header (the default).
    #[arg(
        long,
        overrides_with = "no_server_header",
        env = "FASTSERVE_SERVER_HEADER",
        help_heading = "Responses"
    )]
    pub server_header: bool,

    /// Send no `server` header unless the app sets one.
    #[arg(long, overrides_with = "server_header", help_heading = "Responses")]
    pub no_server_header: bool,

    /// Add a `date` header to every response (the default).
    #[arg(
        long,
        overrides_with = "no_date_header",
        env = "FASTSERVE_DATE_HEADER",
        help_heading = "Responses"
    )]
    pub date_header: bool,

    /// Send no `date` header unless the app sets one.
    #[arg(long, overrides_with = "date_header", help_heading = "Responses")]
    pub no_date_header: bool,

    /// A dotenv file (KEY=VALUE lines) loaded into the environment before the
    /// app is imported. Variables already set keep their values.
    #[arg(
        long,
        value_name = "PATH",
        env = "FASTSERVE_ENV_FILE",
        help_heading = "Application"
    )]
    pub env_file: Option<PathBuf>,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; access lines look like uvicorn's.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Probe a running fastserve's health endpoint: exit 0 on 200, else 1.
    /// Reads the same flags and environment variables as the server, so a
    /// Dockerfile `HEALTHCHECK CMD ["fastserve", "health"]` needs no arguments.
    Health(HealthArgs),
}

/// Options of `fastserve health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Address of the server. Default: 127.0.0.1 (a wildcard server address
    /// such as 0.0.0.0 or :: is probed on loopback).
    #[arg(long, value_name = "ADDR", env = "FASTSERVE_HOST")]
    pub host: Option<String>,

    /// Port of the server. Default: 8080, or the `PORT` environment variable.
    #[arg(long, short = 'p', env = "FASTSERVE_PORT")]
    pub port: Option<u16>,

    /// Probe over this Unix domain socket instead of TCP.
    #[arg(long, value_name = "PATH", env = "FASTSERVE_UDS")]
    pub uds: Option<PathBuf>,

    /// Path of the health endpoint.
    #[arg(
        long,
        value_name = "PATH",
        env = "FASTSERVE_HEALTH_PATH",
        default_value = "/health"
    )]
    pub health_path: String,

    /// Seconds to wait for the whole probe before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub timeout: f64,
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
    fn health_subcommand_parses() {
        let cli = Cli::parse_from(["fastserve", "health", "--port", "9000"]);
        match cli.command {
            Some(Command::Health(args)) => assert_eq!(args.port, Some(9000)),
            None => panic!("health subcommand not parsed"),
        }
    }

    #[test]
    fn app_named_like_subcommand_needs_colon() {
        let cli = Cli::parse_from(["fastserve", "health:app"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.app.as_deref(), Some("health:app"));
    }

    #[test]
    fn repeated_header_option_collects_values() {
        let cli = Cli::parse_from(["fastserve", "--header", "a:1", "--header", "b: 2, 3"]);
        assert_eq!(cli.headers, ["a:1", "b: 2, 3"]);
    }

    #[test]
    fn last_proxy_headers_flag_wins() {
        let cli = Cli::parse_from(["fastserve", "--proxy-headers", "--no-proxy-headers"]);
        assert!(cli.no_proxy_headers);
        let cli = Cli::parse_from(["fastserve", "--no-proxy-headers", "--proxy-headers"]);
        assert!(!cli.no_proxy_headers);
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
