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
    fn unknown_lifespan_value_is_rejected() {
        let err = Cli::try_parse_from(["fastserve", "--lifespan", "maybe"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
