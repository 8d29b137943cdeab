//! The supervisor: the process the user (or the container runtime) starts.
//!
//! It never loads Python. It binds the listening socket once, runs worker
//! processes that inherit it, reaps every child including orphans handed to
//! it as PID 1 (or as a child subreaper elsewhere), replaces workers that
//! die, and turns signals into worker lifecycle:
//!
//! | signal | effect |
//! |--------|--------|
//! | TERM, INT | drain: workers stop gracefully, then exit 0 |
//! | second TERM/INT, QUIT | exit now |
//! | HUP | replace workers one by one, each new one ready before the old drains |
//! | TTIN, TTOU | one worker more, one fewer |

mod process;
mod reload;

use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::StreamExt;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::python::LIFESPAN_SHUTDOWN_TIMEOUT;
use crate::server::listener::{self, BoundSocket};
use crate::worker::{MSG_READY, MSG_RECYCLE};
use crate::{EXIT_APP_START, EXIT_FAILURE};
use process::{make_inheritable, spawn_worker, SpawnOptions};

/// First wait before restarting a worker that died; doubles per failure.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(100);
/// Maximum wait between restarts of a worker that keeps dying.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(10);
/// Slack on top of the workers' own drain budget before they are killed.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);
/// How long workers get to exit after a forced stop before SIGKILL.
const FORCED_STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Worker {
    pid: Pid,
    ready: bool,
    /// Asked to stop: its exit is expected and not replaced.
    retiring: bool,
    /// The worker this one replaces once it is ready.
    replaces: Option<Pid>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// No worker has become ready yet.
    Starting,
    Running,
    /// Workers were signalled to stop; exit when the last one has.
    Draining,
}

struct Supervisor<'a> {
    config: &'a Config,
    /// The listening socket, closed once draining starts so that new
    /// connections are refused while workers finish.
    socket: Option<BoundSocket>,
    listen_fd: i32,
    target: usize,
    workers: Vec<Worker>,
    phase: Phase,
    messages_tx: mpsc::UnboundedSender<(Pid, u8)>,
    /// Workers still to be replaced by a rolling restart, oldest first.
    rolling: Vec<Pid>,
    restart_delay: Duration,
    restart_at: Option<Instant>,
    /// When draining workers are killed if they have not exited.
    kill_at: Option<Instant>,
    /// When to restart the worker after a file change (`--reload`).
    reload_at: Option<Instant>,
    exit_code: u8,
}

/// Runs the supervisor; `Err` carries the exit code after it was logged.
pub fn run(config: &Config) -> Result<(), u8> {
    // Orphans of the app's own subprocesses are re-parented to the nearest
    // subreaper; becoming one makes this process reap them even when it is
    // not PID 1. Failure only means init reaps them instead.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(error = %err, "could not become a child subreaper");
    }

    let socket = listener::bind(&config.bind, config.backlog).map_err(|err| {
        tracing::error!("{err}");
        EXIT_FAILURE
    })?;
    let listen_fd = socket.as_raw_fd();
    make_inheritable(&socket).map_err(|err| {
        tracing::error!(error = %err, "could not pass the listening socket to workers");
        EXIT_FAILURE
    })?;
    tracing::info!(app = %config.app, workers = config.workers, "listening on {}", socket.describe());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            tracing::error!(error = %err, "could not start the tokio runtime");
            EXIT_FAILURE
        })?;
    let mut target = config.workers as usize;
    if config.reload.is_some() && target > 1 {
        tracing::warn!(
            workers = target,
            "--reload runs one worker; ignoring --workers"
        );
        target = 1;
    }

    let result = runtime.block_on(async {
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let _watcher = match &config.reload {
            Some(reload) => {
                let watcher = reload::watch(reload, changes_tx).map_err(|err| {
                    tracing::error!("{err}");
                    EXIT_FAILURE
                })?;
                tracing::info!(dirs = ?reload.dirs, "watching for file changes");
                Some(watcher)
            }
            None => None,
        };

        let (messages_tx, messages_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            config,
            socket: Some(socket),
            listen_fd,
            target,
            workers: Vec::new(),
            phase: Phase::Starting,
            messages_tx,
            rolling: Vec::new(),
            restart_delay: RESTART_DELAY_MIN,
            restart_at: None,
            kill_at: None,
            reload_at: None,
            exit_code: 0,
        };
        supervisor.run(messages_rx, changes_rx).await
    });
    result
}

impl Supervisor<'_> {
    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<(Pid, u8)>,
        mut changes: mpsc::UnboundedReceiver<std::path::PathBuf>,
    ) -> Result<(), u8> {
        let mut signals =
            Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU]).map_err(
                |err| {
                    tracing::error!(error = %err, "could not install signal handlers");
                    EXIT_FAILURE
                },
            )?;

        // One worker first: if the app cannot start, its traceback is
        // printed once instead of once per worker.
        self.spawn(true, None);

        loop {
            if self.phase == Phase::Draining && self.workers.is_empty() {
                return if self.exit_code == 0 {
                    Ok(())
                } else {
                    Err(self.exit_code)
                };
            }
            let timer = [self.restart_at, self.kill_at, self.reload_at]
                .into_iter()
                .flatten()
                .min();
            let wake = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };

            tokio::select! {
                Some(signal) = signals.next() => self.on_signal(signal),
                Some((pid, message)) = messages.recv() => self.on_message(pid, message),
                Some(path) = changes.recv() => self.on_change(&path),
                () = wake => self.on_timer(),
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            SIGCHLD => self.reap(),
            SIGTERM | SIGINT if self.phase != Phase::Draining => self.drain(),
            SIGTERM | SIGINT | SIGQUIT => self.force_stop(),
            SIGHUP if self.phase == Phase::Running => {
                tracing::info!("received SIGHUP, replacing workers one by one");
                self.rolling = self.active().map(|w| w.pid).collect();
                self.replace_next();
            }
            SIGTTIN if self.phase == Phase::Running => {
                self.target += 1;
                tracing::info!(workers = self.target, "received SIGTTIN, adding a worker");
                self.spawn(false, None);
            }
            SIGTTOU if self.phase == Phase::Running => self.remove_worker(),
            _ => {}
        }
    }

    fn on_message(&mut self, pid: Pid, message: u8) {
        match message {
            MSG_READY => self.on_ready(pid),
            MSG_RECYCLE if self.phase == Phase::Running => {
                tracing::info!(
                    pid = pid.as_raw(),
                    "worker reached its request limit, replacing it"
                );
                if !self.rolling.contains(&pid) {
                    self.rolling.insert(0, pid);
                }
                if !self.replacement_in_progress() {
                    self.replace_next();
                }
            }
            _ => {}
        }
    }

    fn on_change(&mut self, path: &std::path::Path) {
        if self.phase == Phase::Draining || self.reload_at.is_some() {
            return;
        }
        let delay = self
            .config
            .reload
            .as_ref()
            .map_or(Duration::ZERO, |r| r.delay);
        tracing::info!(path = %path.display(), "file changed, restarting the worker");
        self.reload_at = Some(Instant::now() + delay);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reload_at.is_some_and(|at| at <= now) {
            self.reload_at = None;
            let old: Vec<Pid> = self.active().map(|w| w.pid).collect();
            for pid in old {
                self.retire(pid);
            }
            self.restart_at = None;
            self.restart_delay = RESTART_DELAY_MIN;
            self.spawn(true, None);
        }
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            tracing::warn!(
                workers = self.workers.len(),
                "workers did not stop in time, killing them"
            );
            self.signal_all(Signal::SIGKILL);
            self.exit_code = EXIT_FAILURE;
        }
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            while self.active().count() < self.target && self.phase != Phase::Draining {
                if !self.spawn(self.phase == Phase::Starting, None) {
                    break;
                }
            }
        }
    }

    fn on_ready(&mut self, pid: Pid) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        worker.ready = true;
        let replaces = worker.replaces.take();
        tracing::info!(pid = pid.as_raw(), "worker ready");
        self.restart_delay = RESTART_DELAY_MIN;

        if self.phase == Phase::Starting {
            self.phase = Phase::Running;
            while self.active().count() < self.target {
                if !self.spawn(false, None) {
                    break;
                }
            }
        }
        if let Some(old) = replaces {
            self.retire(old);
            self.replace_next();
        }
    }

    /// Reaps every exited child: workers and orphans alike.
    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, signal, _)) => self.on_exit(pid, None, Some(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, code: Option<i32>, signal: Option<Signal>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            tracing::debug!(pid = pid.as_raw(), "reaped an orphaned process");
            return;
        };
        let worker = self.workers.remove(index);
        let status = match (code, signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "unknown status".to_owned(),
        };

        if self.phase == Phase::Draining {
            tracing::info!(pid = pid.as_raw(), status = %status, "worker stopped");
            if code != Some(0) && self.exit_code == 0 {
                self.exit_code = EXIT_FAILURE;
            }
            return;
        }
        if worker.retiring {
            tracing::info!(pid = pid.as_raw(), status = %status, "worker stopped");
            return;
        }

        let no_ready_worker = !self.workers.iter().any(|w| w.ready);
        let startup_failed = !worker.ready && code == Some(i32::from(EXIT_APP_START));
        if startup_failed && self.config.reload.is_some() {
            tracing::error!(
                pid = pid.as_raw(),
                "the application could not start, waiting for a file change"
            );
            return;
        }
        if startup_failed && no_ready_worker {
            tracing::error!(
                pid = pid.as_raw(),
                "the application could not start, exiting"
            );
            self.exit_code = EXIT_APP_START;
            self.drain();
            return;
        }

        // A failed replacement leaves the old worker serving.
        self.rolling.retain(|&old| Some(old) != worker.replaces);
        tracing::warn!(
            pid = pid.as_raw(),
            status = %status,
            restart_in_ms = self.restart_delay.as_millis() as u64,
            "worker exited unexpectedly, restarting it"
        );
        self.restart_at = Some(Instant::now() + self.restart_delay);
        self.restart_delay = (self.restart_delay * 2).min(RESTART_DELAY_MAX);
    }

    /// Starts a worker; logs and schedules a retry if that fails.
    fn spawn(&mut self, accept_early: bool, replaces: Option<Pid>) -> bool {
        let options = SpawnOptions {
            listen_fd: self.listen_fd,
            accept_early,
            max_requests: self.max_requests(),
        };
        match spawn_worker(options, &self.messages_tx) {
            Ok(pid) => {
                tracing::info!(pid = pid.as_raw(), "worker started");
                self.workers.push(Worker {
                    pid,
                    ready: false,
                    retiring: false,
                    replaces,
                });
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "could not start a worker, retrying");
                self.restart_at = Some(Instant::now() + self.restart_delay);
                self.restart_delay = (self.restart_delay * 2).min(RESTART_DELAY_MAX);
                false
            }
        }
    }

    /// `--limit-max-requests` plus this worker's share of the jitter.
    fn max_requests(&self) -> Option<u64> {
        let limit = self.config.limit_max_requests?;
        let jitter = self.config.limit_max_requests_jitter;
        if jitter == 0 {
            return Some(limit);
        }
        // Spread from the clock: no cryptographic quality needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        Some(limit + nanos % (jitter + 1))
    }

    /// Workers that serve and are not on their way out.
    fn active(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| !w.retiring)
    }

    fn replacement_in_progress(&self) -> bool {
        self.workers.iter().any(|w| w.replaces.is_some())
    }

    /// Starts the replacement for the next worker of a rolling restart.
    fn replace_next(&mut self) {
        while let Some(old) = (!self.rolling.is_empty()).then(|| self.rolling.remove(0)) {
            if self.workers.iter().any(|w| w.pid == old && !w.retiring) {
                self.spawn(false, Some(old));
                return;
            }
        }
    }

    fn retire(&mut self, pid: Pid) {
        if let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) {
            worker.retiring = true;
            send(pid, Signal::SIGTERM);
        }
    }

    fn remove_worker(&mut self) {
        if self.target <= 1 {
            tracing::info!("received SIGTTOU, keeping the last worker");
            return;
        }
        self.target -= 1;
        tracing::info!(workers = self.target, "received SIGTTOU, removing a worker");
        if let Some(pid) = self.active().last().map(|w| w.pid) {
            self.retire(pid);
        }
    }

    fn drain(&mut self) {
        self.phase = Phase::Draining;
        self.close_socket();
        self.restart_at = None;
        self.rolling.clear();
        let config = self.config;
        let budget = config.shutdown_delay
            + config.timeout_graceful_shutdown
            + LIFESPAN_SHUTDOWN_TIMEOUT
            + DRAIN_MARGIN;
        self.kill_at = Some(Instant::now() + budget);
        if !self.workers.is_empty() {
            tracing::info!(
                workers = self.workers.len(),
                "stopping workers, signal again to exit now"
            );
        }
        self.signal_all(Signal::SIGTERM);
    }

    fn force_stop(&mut self) {
        tracing::warn!("stopping workers now");
        self.phase = Phase::Draining;
        self.close_socket();
        self.exit_code = EXIT_FAILURE;
        self.signal_all(Signal::SIGQUIT);
        self.kill_at = Some(Instant::now() + FORCED_STOP_GRACE);
    }

    /// Closes the supervisor's copy of the listening socket. Workers keep
    /// theirs until they stop accepting, so the port stays open exactly as
    /// long as some worker still accepts.
    fn close_socket(&mut self) {
        if let Some(socket) = self.socket.take() {
            socket.close();
        }
    }

    fn signal_all(&self, signal: Signal) {
        for worker in &self.workers {
            send(worker.pid, signal);
        }
    }
}

fn send(pid: Pid, signal: Signal) {
    // ESRCH: the worker already exited and waits to be reaped.
    if let Err(err) = kill(pid, signal) {
        if err != Errno::ESRCH {
            tracing::warn!(pid = pid.as_raw(), error = %err, "could not signal a worker");
        }
    }
}
