//! Privilege separation for `serve --user`: the process that runs provider
//! scripts keeps root (close and detach need it at stop), and the process
//! that talks to QEMU does not. After attach and open, the server forks;
//! the child opens the device and the sockets, drops to the user and
//! serves; the parent waits for it, forwards stop requests, and runs close
//! and detach when it has drained and exited. Both are this program (no
//! exec): the child runs the same backend crate code as the in-process
//! server.
//!
//! The child keeps only the fds it serves with, and is sandboxed (no
//! capabilities, NoNewPrivs, a seccomp allow-list: see
//! `extstorage_vhost_user_blk::sandbox`).
//!
//! The child dies with the parent (PR_SET_PDEATHSIG), so a killed parent
//! cannot leave an I/O process holding the claim.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use extstorage_vhost_user_blk::{ServeSpec, Serving};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

use crate::Error;

/// The I/O process, seen from the parent.
#[derive(Debug)]
pub(crate) struct ChildServer {
    pid: Pid,
    socket: Option<PathBuf>,
}

/// Asks a child to stop (it drains first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildStop(Pid);

impl ChildStop {
    pub(crate) fn stop(self) {
        let _ = kill(self.0, Signal::SIGTERM);
    }
}

/// How many threads this process has (from /proc).
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Forks the I/O process and waits until it serves (or failed to start).
/// The calling process must have exactly one thread.
pub(crate) fn spawn(spec: ServeSpec) -> Result<ChildServer, Error> {
    let fail = |what: String| Error::PrivilegeSeparation(what);
    if threads() != Some(1) {
        return Err(fail(
            "the server must fork before starting threads, and threads are running".into(),
        ));
    }
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    let parent = getpid();
    // SAFETY: the process has a single thread (checked above), so the child
    // is a full copy with no lock held by a thread that does not exist in
    // it; it runs ordinary Rust code and never returns into the caller
    // (`child_main` ends with `exit`).
    match unsafe { fork() }.map_err(|e| fail(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(read_end);
            child_main(spec, write_end, parent)
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut line = String::new();
            let _ = BufReader::new(std::fs::File::from(read_end)).read_line(&mut line);
            if let Some(socket) = line.trim_end_matches('\n').strip_prefix("ok ") {
                tracing::info!(pid = child.as_raw(), "unprivileged I/O process serving");
                return Ok(ChildServer {
                    pid: child,
                    socket: (!socket.is_empty()).then(|| PathBuf::from(socket)),
                });
            }
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            let why = line
                .trim_end_matches('\n')
                .strip_prefix("error ")
                .map_or_else(
                    || "the I/O process exited before it was ready".to_owned(),
                    str::to_owned,
                );
            Err(fail(why))
        }
    }
}

/// The I/O process: start serving (dropping privileges), report, serve,
/// exit.
fn child_main(spec: ServeSpec, report: OwnedFd, parent: Pid) -> ! {
    let mut report = std::fs::File::from(report);
    if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || getppid() != parent {
        std::process::exit(1);
    }
    // Only the fds it serves with: not the claim lock (the parent holds
    // the claim) nor anything else inherited from the script runner.
    let mut keep = vec![report.as_raw_fd()];
    keep.extend(spec.listen.listen_fd);
    if let Err(e) = extstorage_vhost_user_blk::sandbox::close_fds_except(&keep) {
        let _ = writeln!(report, "error {e}");
        std::process::exit(1);
    }
    let signals = extstorage_vhost_user_blk::threads::stop_signals();
    if signals.thread_block().is_err() {
        std::process::exit(1);
    }
    let serving = match Serving::start(spec) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(report, "error {}", e.to_string().replace('\n', " "));
            std::process::exit(1);
        }
    };
    // Changing credentials clears the parent-death signal: set it again.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || getppid() != parent {
        let _ = writeln!(report, "error the serve process went away");
        std::process::exit(1);
    }
    let socket = serving
        .socket()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let _ = writeln!(report, "ok {socket}");
    drop(report);
    let stop = serving.shutdown_handle();
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "I/O process stopping");
            }
            stop.shutdown();
        });
    if waiter.is_err() {
        std::process::exit(1);
    }
    let code = match serving.run() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "I/O process failed");
            1
        }
    };
    std::process::exit(code)
}

impl ChildServer {
    /// The vhost-user socket, unless inherited.
    pub(crate) fn socket(&self) -> Option<&PathBuf> {
        self.socket.as_ref()
    }

    /// A handle that stops the child.
    pub(crate) fn stop_handle(&self) -> ChildStop {
        ChildStop(self.pid)
    }

    /// Waits for the child to exit; an exit other than 0 is an error.
    pub(crate) fn wait(self) -> Result<(), Error> {
        loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, code)) => {
                    return Err(Error::ServerDied(format!("exit status {code}")));
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(Error::ServerDied(format!("killed by {sig}")));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::ServerDied(format!("cannot wait for it: {e}"))),
            }
        }
    }
}
