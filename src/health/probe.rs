//! `fastserve health`: probe a running server's health endpoint from inside
//! its container, so a Dockerfile `HEALTHCHECK` needs neither curl nor Python.
//!
//! A blocking HTTP/1.1 request with one overall deadline; the status line is
//! all that is read.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::HealthArgs;
use crate::config::{seconds, DEFAULT_PORT};

/// Why the probe failed; each leads to exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid --timeout: {0}")]
    Timeout(#[from] crate::config::ConfigError),
    #[error("could not resolve {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("health check of {target} failed: {source}")]
    Io {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("health check of {target} failed: the response was not HTTP")]
    NotHttp { target: String },
    #[error("health check of {target} returned {status}")]
    Unhealthy { target: String, status: u16 },
}

/// Where to probe.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// Runs the probe. `port_env` is `PORT`, honoured as by the server.
pub fn run(args: &HealthArgs, port_env: Option<String>) -> Result<(), ProbeError> {
    let deadline = Instant::now() + seconds("--timeout", args.timeout)?;
    let target = match &args.uds {
        Some(path) => Target::Unix(path.clone()),
        None => {
            let port = args
                .port
                .or_else(|| port_env.and_then(|value| value.trim().parse().ok()))
                .unwrap_or(DEFAULT_PORT);
            Target::Tcp(probe_host(args.host.as_deref()), port)
        }
    };
    let label = match &target {
        Target::Tcp(host, port) => {
            format!("http://{}{}", display_host(host, *port), args.health_path)
        }
        Target::Unix(path) => format!("unix:{}{}", path.display(), args.health_path),
    };

    let status = request_status(&target, &args.health_path, deadline, &label)?;
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy {
            target: label,
            status,
        })
    }
}

/// The host to connect to: wildcard bind addresses become loopback.
fn probe_host(host: Option<&str>) -> String {
    let host = host
        .unwrap_or("127.0.0.1")
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.to_string(),
        _ => host.to_owned(),
    }
}

fn display_host(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn request_status(
    target: &Target,
    path: &str,
    deadline: Instant,
    label: &str,
) -> Result<u16, ProbeError> {
    let io_error = |source| ProbeError::Io {
        target: label.to_owned(),
        source,
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: fastserve-health\r\nConnection: close\r\n\r\n");

    let mut response = Vec::with_capacity(256);
    match target {
        Target::Tcp(host, port) => {
            let addr = resolve(host, *port)?;
            let mut stream =
                TcpStream::connect_timeout(&addr, remaining(deadline).map_err(io_error)?)
                    .map_err(io_error)?;
            exchange(&mut stream, &request, deadline, &mut response, |s, t| {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            })
            .map_err(io_error)?;
        }
        Target::Unix(path) => {
            let mut stream = UnixStream::connect(path).map_err(io_error)?;
            exchange(&mut stream, &request, deadline, &mut response, |s, t| {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            })
            .map_err(io_error)?;
        }
    }
    parse_status(&response).ok_or_else(|| ProbeError::NotHttp {
        target: label.to_owned(),
    })
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProbeError> {
    let resolve_error = |source| ProbeError::Resolve {
        host: host.to_owned(),
        source,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(io::Error::other("no addresses found")))
}

/// Writes the request and reads until the status line is complete.
fn exchange<S: Read + Write>(
    stream: &mut S,
    request: &str,
    deadline: Instant,
    response: &mut Vec<u8>,
    set_timeouts: impl Fn(&S, Duration) -> io::Result<()>,
) -> io::Result<()> {
    set_timeouts(stream, remaining(deadline)?)?;
    stream.write_all(request.as_bytes())?;
    let mut buf = [0u8; 512];
    while !response.contains(&b'\n') {
        set_timeouts(stream, remaining(deadline)?)?;
        let read = stream.read(&mut buf)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buf[..read]);
    }
    Ok(())
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    Ok(left)
}

/// The status code from an HTTP/1.x status line.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn wildcard_hosts_probe_loopback() {
        assert_eq!(probe_host(Some("0.0.0.0")), "127.0.0.1");
        assert_eq!(probe_host(Some("::")), "::1");
        assert_eq!(probe_host(Some("[::]")), "::1");
        assert_eq!(probe_host(None), "127.0.0.1");
        assert_eq!(probe_host(Some("10.1.2.3")), "10.1.2.3");
    }
}
