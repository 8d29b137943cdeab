//! Starting a worker process and reading its status pipe.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::unistd::{pipe2, Pid};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::worker::{ENV_ACCEPT_EARLY, ENV_LISTEN_FD, ENV_MAX_REQUESTS, ENV_STATUS_FD};

/// How a worker is started.
#[derive(Debug, Clone, Copy)]
pub struct SpawnOptions {
    pub listen_fd: RawFd,
    pub accept_early: bool,
    pub max_requests: Option<u64>,
}

/// Clears close-on-exec on `fd`, so a worker started later inherits it.
pub fn make_inheritable(fd: &impl std::os::fd::AsFd) -> nix::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop)
}

/// Starts a worker: this same binary and command line, with the socket and
/// a status pipe passed down. Status bytes arrive on `messages` tagged with
/// the worker's pid; the reader stops at end of file, when the worker exits.
pub fn spawn_worker(
    options: SpawnOptions,
    messages: &UnboundedSender<(Pid, u8)>,
) -> io::Result<Pid> {
    let (status_read, status_write) = pipe2(OFlag::O_CLOEXEC)?;
    make_inheritable(&status_write)?;

    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(ENV_LISTEN_FD, options.listen_fd.to_string())
        .env(ENV_STATUS_FD, status_write.as_raw_fd().to_string())
        .env(
            ENV_ACCEPT_EARLY,
            if options.accept_early { "1" } else { "0" },
        )
        // A terminal's Ctrl-C reaches the supervisor alone, which then stops
        // the workers in order, instead of every process at once.
        .process_group(0);
    if let Some(limit) = options.max_requests {
        command.env(ENV_MAX_REQUESTS, limit.to_string());
    }
    let child = command.spawn()?;
    // Our copy of the write end must close, or the reader never sees EOF.
    drop(status_write);

    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    // The supervisor reaps with waitpid(-1); the Child handle is not used.
    drop(child);
    spawn_status_reader(pid, status_read, messages.clone())?;
    Ok(pid)
}

fn spawn_status_reader(
    pid: Pid,
    fd: OwnedFd,
    messages: UnboundedSender<(Pid, u8)>,
) -> io::Result<()> {
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    tokio::spawn(async move {
        let mut buf = [0u8; 16];
        loop {
            match receiver.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    for &byte in &buf[..read] {
                        if messages.send((pid, byte)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
