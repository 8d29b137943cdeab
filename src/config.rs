//! The resolved, validated configuration that the rest of the program reads.
//!
//! [`Config::from_cli`] turns the raw command line into values that can no
//! longer be wrong: a parsed application reference, one bind target and
//! durations. Every error names the offending value and how to fix it, and
//! leads to exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Cli, LifespanMode, LogFormat, LogLevel, LoopKind, WsMode};
use crate::http::defaults::{InvalidHeaderOption, ResponseDefaults};
use crate::http::limits::Limits;
use crate::proxy::{HeaderSet, InvalidHeaderName, InvalidTrustEntry, ProxyConfig, TrustedNetworks};

/// Port used when neither `--port`, `FASTSERVE_PORT` nor `PORT` is set. 8080
/// is what container platforms (Cloud Run, Knative, most Helm charts) expect.
pub const DEFAULT_PORT: u16 = 8080;

/// Host used when `--host` is not set: every IPv4 interface, so the server is
/// reachable from outside its container.
pub const DEFAULT_HOST: &str = "0.0.0.0";

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid app {value:?}: expected \"module:attribute\", for example \"main:app\"")]
    InvalidApp { value: String },

    #[error("invalid PORT environment variable {value:?}: expected a number from 0 to 65535")]
    InvalidPortEnv { value: String },

    #[error("invalid {option} {value}: expected a finite number of seconds, 0 or more")]
    InvalidSeconds { option: &'static str, value: f64 },

    #[error("--uds and --fd cannot be used together: choose one way to get the socket")]
    ConflictingSockets,

    #[error("invalid --fd {value}: expected a file descriptor number, 3 or more")]
    InvalidFd { value: i32 },

    #[error("invalid WEB_CONCURRENCY environment variable {value:?}: expected a number of workers, 1 or more")]
    InvalidWebConcurrency { value: String },

    #[error("invalid --workers 0: expected 1 or more")]
    ZeroWorkers,

    #[error("invalid --health-path {value:?}: expected a path starting with \"/\"")]
    InvalidHealthPath { value: String },

    #[error("invalid --limit-max-requests 0: expected 1 or more, or leave it unset")]
    ZeroMaxRequests,

    #[error(transparent)]
    TrustEntry(#[from] InvalidTrustEntry),

    #[error(transparent)]
    ForwardedHeader(#[from] InvalidHeaderName),

    #[error(transparent)]
    ResponseHeader(#[from] InvalidHeaderOption),

    #[error("invalid {option} {value}: expected {expected}")]
    InvalidLimit {
        option: &'static str,
        value: u64,
        expected: &'static str,
    },

    #[error("invalid {option} 0: expected 1 or more")]
    ZeroLimit { option: &'static str },
}

/// Environment variables read besides the `FASTSERVE_<NAME>` ones, which
/// clap handles. Kept apart so [`Config::from_cli`] stays a pure function.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// `PORT`, as container platforms set it.
    pub port: Option<String>,
    /// `WEB_CONCURRENCY`, the worker count convention uvicorn and gunicorn read.
    pub web_concurrency: Option<String>,
}

impl Environment {
    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        Self {
            port: std::env::var("PORT").ok(),
            web_concurrency: std::env::var("WEB_CONCURRENCY").ok(),
        }
    }
}

/// File watching for `--reload`.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    pub dirs: Vec<PathBuf>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub delay: Duration,
}

/// The built-in health endpoint.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    /// How long the event loop may go without a heartbeat before /health
    /// reports it as blocked.
    pub loop_timeout: Duration,
    /// Whether health checks appear in the access log.
    pub log_requests: bool,
}

/// Where the application comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// The built-in demo app shipped inside the binary.
    Demo,
    /// `module:attribute` as given on the command line.
    Import { module: String, attribute: String },
}

impl AppSource {
    /// Parses a `module:attribute` reference; the attribute may be dotted.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidApp {
            value: value.to_owned(),
        };
        let (module, attribute) = value.split_once(':').ok_or_else(invalid)?;

        let module_ok = module.split('.').all(is_identifier);
        let attribute_ok = attribute.split('.').all(is_identifier);
        if !module_ok || !attribute_ok {
            return Err(invalid());
        }

        Ok(Self::Import {
            module: module.to_owned(),
            attribute: attribute.to_owned(),
        })
    }
}

impl std::fmt::Display for AppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Demo => f.write_str("the built-in demo app"),
            Self::Import { module, attribute } => write!(f, "{module}:{attribute}"),
        }
    }
}

/// Whether `part` can be a Python identifier. Non-ASCII identifiers are
/// accepted as Python accepts them; Python reports anything subtler.
fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    match chars.next() {
        Some(first) if first == '_' || first.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Where the listening socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindTarget {
    /// Bind a TCP socket; `host` may be a name, an IPv4 or an IPv6 address.
    Tcp { host: String, port: u16 },
    /// Bind a Unix domain socket at this path.
    Unix(PathBuf),
    /// Use an inherited socket that is already bound and listening.
    Fd(i32),
}

/// WebSocket settings; see the `--ws-*` options in [`crate::cli`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// Largest message accepted, in bytes.
    pub max_size: usize,
    /// Received messages queued for the app before reading pauses.
    pub max_queue: usize,
    /// Time between pings; `None` sends none.
    pub ping_interval: Option<Duration>,
    /// Time to wait for a pong; `None` waits forever.
    pub ping_timeout: Option<Duration>,
    /// Whether permessage-deflate is offered.
    pub per_message_deflate: bool,
}

impl WebSocketConfig {
    fn from_cli(cli: &Cli) -> Result<Option<Self>, ConfigError> {
        if cli.ws == WsMode::None {
            return Ok(None);
        }
        if cli.ws_max_size == 0 {
            return Err(ConfigError::ZeroLimit {
                option: "--ws-max-size",
            });
        }
        if cli.ws_max_queue == 0 {
            return Err(ConfigError::ZeroLimit {
                option: "--ws-max-queue",
            });
        }
        let optional = |option, value| {
            seconds(option, value).map(|duration| (!duration.is_zero()).then_some(duration))
        };
        Ok(Some(Self {
            max_size: cli.ws_max_size,
            max_queue: cli.ws_max_queue,
            ping_interval: optional("--ws-ping-interval", cli.ws_ping_interval)?,
            ping_timeout: optional("--ws-ping-timeout", cli.ws_ping_timeout)?,
            per_message_deflate: cli.ws_per_message_deflate,
        }))
    }
}

/// Everything the server needs, checked once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub app: AppSource,
    pub factory: bool,
    pub app_dir: PathBuf,
    pub root_path: String,
    pub lifespan: LifespanMode,
    pub event_loop: LoopKind,
    pub bind: BindTarget,
    pub backlog: u32,
    pub timeout_keep_alive: Duration,
    pub timeout_graceful_shutdown: Duration,
    pub log_level: LogLevel,
    pub access_log: bool,
    pub workers: u32,
    /// Requests after which a worker is replaced, jitter already excluded.
    pub limit_max_requests: Option<u64>,
    pub limit_max_requests_jitter: u64,
    pub shutdown_delay: Duration,
    /// `None` when `--no-health` hands the path to the app.
    pub health: Option<HealthConfig>,
    /// `None` unless `--reload` is given.
    pub reload: Option<ReloadConfig>,
    pub log_format: LogFormat,
    pub access_log_format: LogFormat,
    /// Request paths left out of the access log.
    pub access_log_exclude: Vec<String>,
    pub proxy: ProxyConfig,
    pub timeout_header_read: Duration,
    pub limits: Limits,
    pub response_defaults: ResponseDefaults,
    pub date_header: bool,
    pub env_file: Option<PathBuf>,
    /// `None` with `--ws none`.
    pub websocket: Option<WebSocketConfig>,
}

impl Config {
    /// Validates the command line, with `env` for the variables clap does
    /// not read.
    pub fn from_cli(cli: Cli, env: Environment) -> Result<Self, ConfigError> {
        let limits = limits(&cli)?;
        let websocket = WebSocketConfig::from_cli(&cli)?;
        let app = match cli.app.as_deref() {
            None | Some("") => AppSource::Demo,
            Some(value) => AppSource::parse(value)?,
        };

        let bind = match (cli.uds, cli.fd) {
            (Some(_), Some(_)) => return Err(ConfigError::ConflictingSockets),
            (Some(path), None) => BindTarget::Unix(path),
            (None, Some(fd)) if fd < 3 => return Err(ConfigError::InvalidFd { value: fd }),
            (None, Some(fd)) => BindTarget::Fd(fd),
            (None, None) => BindTarget::Tcp {
                host: cli.host.unwrap_or_else(|| DEFAULT_HOST.to_owned()),
                port: resolve_port(cli.port, env.port)?,
            },
        };

        // The clap flags override each other, so at most one is set.
        let access_log = !cli.no_access_log;
        let proxy = ProxyConfig {
            enabled: !cli.no_proxy_headers,
            trusted: TrustedNetworks::parse(
                cli.forwarded_allow_ips
                    .as_deref()
                    .unwrap_or(crate::proxy::DEFAULT_ALLOW_IPS),
            )?,
            headers: HeaderSet::parse(&cli.forwarded_headers)?,
        };
        let response_defaults =
            ResponseDefaults::from_options(&cli.headers, !cli.no_server_header)?;
        let access_log_exclude = cli
            .access_log_exclude
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(str::to_owned)
            .collect();

        let workers = match (cli.workers, env.web_concurrency) {
            (Some(0), _) => return Err(ConfigError::ZeroWorkers),
            (Some(workers), _) => workers,
            (None, Some(value)) if !value.trim().is_empty() => match value.trim().parse() {
                Ok(workers) if workers > 0 => workers,
                _ => return Err(ConfigError::InvalidWebConcurrency { value }),
            },
            (None, _) => 1,
        };
        if cli.limit_max_requests == Some(0) {
            return Err(ConfigError::ZeroMaxRequests);
        }

        let reload = if cli.reload {
            let dirs = if cli.reload_dir.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                cli.reload_dir
            };
            let include = if cli.reload_include.is_empty() {
                vec!["*.py".to_owned()]
            } else {
                cli.reload_include
            };
            Some(ReloadConfig {
                dirs,
                include,
                exclude: cli.reload_exclude,
                delay: seconds("--reload-delay", cli.reload_delay)?,
            })
        } else {
            None
        };

        let health = if cli.no_health {
            None
        } else {
            if !cli.health_path.starts_with('/') {
                return Err(ConfigError::InvalidHealthPath {
                    value: cli.health_path,
                });
            }
            Some(HealthConfig {
                path: cli.health_path,
                loop_timeout: seconds("--health-loop-timeout", cli.health_loop_timeout)?,
                log_requests: cli.log_health_checks,
            })
        };

        Ok(Self {
            app,
            factory: cli.factory,
            app_dir: cli.app_dir.unwrap_or_else(|| PathBuf::from(".")),
            root_path: cli.root_path.trim_end_matches('/').to_owned(),
            lifespan: cli.lifespan,
            event_loop: cli.event_loop,
            bind,
            backlog: cli.backlog,
            timeout_keep_alive: seconds("--timeout-keep-alive", cli.timeout_keep_alive)?,
            timeout_graceful_shutdown: seconds(
                "--timeout-graceful-shutdown",
                cli.timeout_graceful_shutdown,
            )?,
            log_level: cli.log_level,
            access_log,
            workers,
            limit_max_requests: cli.limit_max_requests,
            limit_max_requests_jitter: cli.limit_max_requests_jitter,
            shutdown_delay: seconds("--shutdown-delay", cli.shutdown_delay)?,
            health,
            reload,
            log_format: cli.log_format,
            access_log_format: cli.access_log_format.unwrap_or(cli.log_format),
            access_log_exclude,
            proxy,
            timeout_header_read: seconds("--timeout-header-read", cli.timeout_header_read)?,
            limits,
            response_defaults,
            date_header: !cli.no_date_header,
            env_file: cli.env_file,
            websocket,
        })
    }
}

/// Checks the `--limit-*` and `--max-header-size` options.
fn limits(cli: &Cli) -> Result<Limits, ConfigError> {
    if cli.max_header_size < Limits::MIN_HEADER_SIZE {
        return Err(ConfigError::InvalidLimit {
            option: "--max-header-size",
            value: cli.max_header_size as u64,
            expected: "8192 bytes or more",
        });
    }
    if cli.limit_concurrency == Some(0) {
        return Err(ConfigError::InvalidLimit {
            option: "--limit-concurrency",
            value: 0,
            expected: "1 or more",
        });
    }
    if cli.limit_request_line == 0 {
        return Err(ConfigError::InvalidLimit {
            option: "--limit-request-line",
            value: 0,
            expected: "1 byte or more",
        });
    }
    Ok(Limits {
        concurrency: cli.limit_concurrency,
        request_body: cli.limit_request_body,
        request_line: cli.limit_request_line,
        header_size: cli.max_header_size,
    })
}

/// Picks the port: the flag (or `FASTSERVE_PORT`, which clap folds into it),
/// then `PORT` as container platforms set it, then [`DEFAULT_PORT`].
fn resolve_port(flag: Option<u16>, port_env: Option<String>) -> Result<u16, ConfigError> {
    if let Some(port) = flag {
        return Ok(port);
    }
    match port_env {
        Some(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|_| ConfigError::InvalidPortEnv { value }),
        _ => Ok(DEFAULT_PORT),
    }
}

/// Converts a `--timeout-*`-style value in seconds.
pub fn seconds(option: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| ConfigError::InvalidSeconds { option, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str], port_env: Option<&str>) -> Result<Config, ConfigError> {
        let mut argv = vec!["fastserve"];
        argv.extend_from_slice(args);
        let env = Environment {
            port: port_env.map(str::to_owned),
            web_concurrency: None,
        };
        Config::from_cli(Cli::parse_from(argv), env)
    }

    #[test]
    fn app_reference_with_dotted_attribute() {
        let app = AppSource::parse("pkg.main:factory.app").unwrap();
        assert_eq!(
            app,
            AppSource::Import {
                module: "pkg.main".into(),
                attribute: "factory.app".into()
            }
        );
    }

    #[test]
    fn app_reference_rejects_missing_colon() {
        let err = AppSource::parse("main").unwrap_err();
        assert!(
            err.to_string().contains("expected \"module:attribute\""),
            "{err}"
        );
    }

    #[test]
    fn app_reference_rejects_empty_parts() {
        for value in [":app", "main:", "main:app.", "ma-in:app", "main:1app"] {
            assert!(AppSource::parse(value).is_err(), "{value} was accepted");
        }
    }

    #[test]
    fn container_defaults_without_flags() {
        let cfg = config(&[], None).unwrap();
        assert_eq!(
            cfg.bind,
            BindTarget::Tcp {
                host: "0.0.0.0".into(),
                port: 8080
            }
        );
        assert_eq!(cfg.app, AppSource::Demo);
        assert!(cfg.access_log);
        assert_eq!(cfg.timeout_keep_alive, Duration::from_secs(5));
    }

    #[test]
    fn port_env_used_only_without_flag() {
        let cfg = config(&[], Some("9000")).unwrap();
        assert_eq!(
            cfg.bind,
            BindTarget::Tcp {
                host: "0.0.0.0".into(),
                port: 9000
            }
        );
        let cfg = config(&["--port", "7000"], Some("9000")).unwrap();
        assert_eq!(
            cfg.bind,
            BindTarget::Tcp {
                host: "0.0.0.0".into(),
                port: 7000
            }
        );
    }

    #[test]
    fn invalid_port_env_names_the_variable() {
        let err = config(&[], Some("http")).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn negative_timeout_rejected() {
        let err = config(&["--timeout-keep-alive=-1"], None).unwrap_err();
        assert!(err.to_string().contains("--timeout-keep-alive"), "{err}");
    }

    #[test]
    fn uds_and_fd_conflict() {
        assert!(matches!(
            config(&["--uds", "/tmp/s", "--fd", "3"], None),
            Err(ConfigError::ConflictingSockets)
        ));
    }

    #[test]
    fn workers_from_web_concurrency_unless_flag() {
        let env = Environment {
            port: None,
            web_concurrency: Some("3".into()),
        };
        let cfg = Config::from_cli(Cli::parse_from(["fastserve"]), env.clone()).unwrap();
        assert_eq!(cfg.workers, 3);
        let cli = Cli::parse_from(["fastserve", "--workers", "2"]);
        assert_eq!(Config::from_cli(cli, env).unwrap().workers, 2);
    }

    #[test]
    fn invalid_web_concurrency_named() {
        let env = Environment {
            port: None,
            web_concurrency: Some("many".into()),
        };
        let err = Config::from_cli(Cli::parse_from(["fastserve"]), env).unwrap_err();
        assert!(err.to_string().contains("WEB_CONCURRENCY"), "{err}");
    }

    #[test]
    fn zero_workers_rejected() {
        assert!(matches!(
            config(&["--workers", "0"], None),
            Err(ConfigError::ZeroWorkers)
        ));
    }

    #[test]
    fn health_path_must_be_absolute() {
        let err = config(&["--health-path", "health"], None).unwrap_err();
        assert!(err.to_string().contains("--health-path"), "{err}");
        assert!(config(&["--no-health"], None).unwrap().health.is_none());
    }

    #[test]
    fn proxy_defaults_trust_loopback() {
        let cfg = config(&[], None).unwrap();
        assert!(cfg.proxy.enabled);
        assert!(cfg.proxy.trusted.contains("::1".parse().unwrap()));
        assert!(cfg.proxy.trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(!cfg.proxy.trusted.contains("10.0.0.1".parse().unwrap()));
        assert!(!cfg.proxy.headers.contains(HeaderSet::FORWARDED));
        let cfg = config(&["--no-proxy-headers"], None).unwrap();
        assert!(!cfg.proxy.enabled);
    }

    #[test]
    fn invalid_forwarded_allow_ips_names_entry() {
        let err = config(&["--forwarded-allow-ips", "127.0.0.1,localhost"], None).unwrap_err();
        assert!(err.to_string().contains("\"localhost\""), "{err}");
    }

    #[test]
    fn small_max_header_size_rejected() {
        let err = config(&["--max-header-size", "100"], None).unwrap_err();
        assert!(err.to_string().contains("--max-header-size"), "{err}");
    }

    #[test]
    fn access_log_format_follows_log_format() {
        let cfg = config(&["--log-format", "json"], None).unwrap();
        assert_eq!(cfg.access_log_format, LogFormat::Json);
        let cfg = config(&["--access-log-format", "json"], None).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.access_log_format, LogFormat::Json);
        assert!(cfg.access_log_exclude.is_empty());
    }

    #[test]
    fn websocket_defaults_match_uvicorn() {
        let ws = config(&[], None).unwrap().websocket.unwrap();
        assert_eq!(ws.max_size, 16 * 1024 * 1024);
        assert_eq!(ws.max_queue, 32);
        assert_eq!(ws.ping_interval, Some(Duration::from_secs(20)));
        assert_eq!(ws.ping_timeout, Some(Duration::from_secs(20)));
        assert!(ws.per_message_deflate);
    }

    #[test]
    fn websocket_off_and_zero_ping() {
        assert!(config(&["--ws", "none"], None).unwrap().websocket.is_none());
        let ws = config(&["--ws-ping-interval", "0"], None)
            .unwrap()
            .websocket
            .unwrap();
        assert_eq!(ws.ping_interval, None);
        let err = config(&["--ws-max-queue", "0"], None).unwrap_err();
        assert!(err.to_string().contains("--ws-max-queue"), "{err}");
    }

    #[test]
    fn root_path_trailing_slash_removed() {
        let cfg = config(&["--root-path", "/api/"], None).unwrap();
        assert_eq!(cfg.root_path, "/api");
    }
}
