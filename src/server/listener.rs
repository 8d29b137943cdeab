//! The listening socket: TCP, a Unix domain socket, or an inherited fd.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

impl BoundSocket {
    /// Closes the socket; a Unix socket's file is removed too, as uvicorn
    /// does, so clients get "connection refused" rather than a stale path.
    pub fn close(self) {
        if let Self::Unix(_, Some(path)) = &self {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::debug!(path = %path.display(), error = %err, "could not remove the Unix socket");
            }
        }
    }
}

impl AsFd for BoundSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(listener) => listener.as_fd(),
            Self::Unix(listener, _) => listener.as_fd(),
        }
    }
}

impl AsRawFd for BoundSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
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

/// Takes ownership of an inherited descriptor after checking it is open.
pub fn own_fd(fd: i32) -> nix::Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: borrowed only for this call; fcntl(F_GETFD) reads flags
        // and fails with EBADF on a closed descriptor.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process to own, through --fd or by the supervisor; nothing else in the
    // process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // The app's own subprocesses must not inherit it.
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(owned)
}

/// Adopts an inherited socket that is already bound and listening.
pub fn adopt_fd(fd: i32) -> Result<BoundSocket, BindError> {
    let fail = |reason: String| BindError::Fd { fd, reason };
    let owned = own_fd(fd).map_err(|err| fail(err.to_string()))?;

    let local: SockaddrStorage =
        getsockname(owned.as_raw_fd()).map_err(|err| fail(err.to_string()))?;
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
