//! The listening socket: TCP, a Unix domain socket, or an inherited fd.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::BindTarget;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("could not resolve host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("could not bind {addr}: {source}; is another server using the port? pick another with --port")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("could not bind the Unix socket {path:?}: {source}")]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--fd {fd} is not a listening TCP or Unix socket: {reason}")]
    Fd { fd: i32, reason: String },
}

/// A bound, listening socket, not yet registered with tokio.
#[derive(Debug)]
pub enum BoundSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
}

impl BoundSocket {
    /// The address to show in "listening on ...".
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "a TCP socket".to_owned(),
            },
            Self::Unix(_, Some(path)) => format!("unix:{}", path.display()),
            Self::Unix(_, None) => "an inherited Unix socket".to_owned(),
        }
    }
}

/// Binds (or adopts) the socket named by `target`.
pub fn bind(target: &BindTarget, backlog: u32) -> Result<BoundSocket, BindError> {
    match target {
        BindTarget::Tcp { host, port } => bind_tcp(host, *port, backlog),
        BindTarget::Unix(path) => bind_unix(path, backlog),
        BindTarget::Fd(fd) => adopt_fd(*fd),
    }
}

fn bind_tcp(host: &str, port: u16, backlog: u32) -> Result<BoundSocket, BindError> {
    // Bracketed IPv6 as in URLs ("[::1]") is accepted too.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (bare, port)
        .to_socket_addrs()
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| io::Error::other("no addresses found"))
        })
        .map_err(|source| BindError::Resolve {
            host: host.to_owned(),
            source,
        })?;

    let socket = (|| {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // Allows a restarted server to bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })()
    .map_err(|source| BindError::Tcp { addr, source })?;
    Ok(BoundSocket::Tcp(socket.into()))
}

fn bind_unix(path: &PathBuf, backlog: u32) -> Result<BoundSocket, BindError> {
    let fail = |source| BindError::Unix {
        path: path.clone(),
        source,
    };
    // A socket file left by an earlier run would make bind fail.
    if std::fs::symlink_metadata(path).is_ok_and(|meta| {
        use std::os::unix::fs::FileTypeExt;
        meta.file_type().is_socket()
    }) {
        std::fs::remove_file(path).map_err(fail)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    let addr = socket2::SockAddr::unix(path).map_err(fail)?;
    socket.bind(&addr).map_err(fail)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(BoundSocket::Unix(socket.into(), Some(path.clone())))
}

fn adopt_fd(fd: i32) -> Result<BoundSocket, BindError> {
    let fail = |reason: String| BindError::Fd { fd, reason };
    // Reject a descriptor that is not open before taking ownership of it.
    nix::fcntl::fcntl(
        // SAFETY: borrowed only for this call; fcntl(F_GETFD) reads flags
        // and fails with EBADF on a closed descriptor.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|err| fail(err.to_string()))?;
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process to own through --fd; nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };

    let local: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&owned))
        .map_err(|err| fail(err.to_string()))?;
    let socket = Socket::from(owned);
    socket
        .set_nonblocking(true)
        .map_err(|err| fail(err.to_string()))?;
    match local.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(BoundSocket::Tcp(socket.into())),
        Some(AddressFamily::Unix) => Ok(BoundSocket::Unix(socket.into(), None)),
        other => Err(fail(format!("unsupported address family {other:?}"))),
    }
}
