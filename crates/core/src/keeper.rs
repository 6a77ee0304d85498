//! The lock keeper: a tiny process that holds a volume lock while a script
//! runs, so that the lock outlives a caller killed with SIGKILL until the
//! script's process group is gone.
//!
//! Forked (not exec'd) right before the script is spawned, it shares the
//! lock's open file description (an `flock` lock belongs to that, not to a
//! process) and a pipe from the caller:
//! - the script's child process writes `P` + its process group id into the
//!   pipe in `pre_exec`, before the script can run;
//! - when the run is over (the script exited, timed out or was interrupted
//!   and its group waited for) the caller writes `R`: the keeper exits and
//!   its copy of the lock goes away; background daemons the script left in
//!   its group (qemu-nbd and the like) do not hold the lock;
//! - end of file without `R` means the caller died: the keeper sends the
//!   group SIGTERM, waits the kill grace, sends SIGKILL, waits until no
//!   member of the group is alive, and only then exits, releasing the lock.
//!
//! The keeper runs only async-signal-safe code (the caller may be
//! multi-threaded): it ignores the termination signals, leaves the caller's
//! process group (a signal to the caller's group, a terminal's Ctrl-C or
//! Ctrl-\, does not reach it), closes every fd but the lock and the pipe (so
//! it keeps no pipe of the caller's open), and blocks in `read`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use libc::c_int;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use crate::error::{Error, Result};
use crate::sys::{close_all_except, group_alive};

/// Tag of the message that carries the script's process group id.
const MSG_PGID: u8 = b'P';
/// The message that releases the keeper.
const MSG_RELEASE: u8 = b'R';

/// A running keeper; released (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct Keeper {
    pid: Pid,
    tx: Option<OwnedFd>,
}

/// The message a script's child writes to [`Keeper::report_fd`] before
/// exec: its process group id.
pub(crate) fn pgid_message(pgid: i32) -> [u8; 5] {
    let b = pgid.to_le_bytes();
    [MSG_PGID, b[0], b[1], b[2], b[3]]
}

impl Keeper {
    /// Forks a keeper holding `lock` (an fd of the held lock's open file
    /// description). `grace` is the time between SIGTERM and SIGKILL of an
    /// orphaned script group.
    pub(crate) fn start(lock: BorrowedFd<'_>, grace: Duration) -> Result<Keeper> {
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("cannot create the lock keeper's pipe", e.into()))?;
        let lock_fd = lock.as_raw_fd();
        let rx_fd = rx.as_raw_fd();
        let grace_ns = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        // SAFETY: the child runs only `keeper_main`, which makes nothing but
        // async-signal-safe system calls, allocates nothing, and ends in
        // `_exit` without returning or unwinding.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => keeper_main(lock_fd, rx_fd, grace_ns),
            Ok(ForkResult::Parent { child }) => {
                drop(rx);
                tracing::trace!(keeper = child.as_raw(), "lock keeper started");
                Ok(Keeper {
                    pid: child,
                    tx: Some(tx),
                })
            }
            Err(e) => Err(Error::io("cannot fork the lock keeper process", e.into())),
        }
    }

    /// The pipe the script's child reports its process group on, in
    /// `pre_exec` (it is close-on-exec, so the script never holds it).
    pub(crate) fn report_fd(&self) -> Option<RawFd> {
        self.tx.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// The run is over: the keeper exits without touching the group.
    pub(crate) fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        if let Err(e) = nix::unistd::write(tx.as_fd(), &[MSG_RELEASE]) {
            tracing::warn!(keeper = self.pid.as_raw(), error = %e, "cannot release the lock keeper");
        }
        drop(tx);
        // ECHILD: someone else reaped it (a program that reaps all its
        // children); it is gone either way.
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.finish();
    }
}

fn errno() -> c_int {
    Errno::last_raw()
}

fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

fn nap() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    // SAFETY: `ts` is a valid timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// SIGTERM, grace, SIGKILL, then wait until no member is alive.
fn stop_group(pgid: i32, grace_ns: i64) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let start = now_ns();
    while group_alive(pgid) && now_ns().saturating_sub(start) < grace_ns {
        nap();
    }
    if group_alive(pgid) {
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    // A member in uninterruptible sleep keeps the lock held until it is
    // really gone: that is the point.
    while group_alive(pgid) {
        nap();
    }
}

/// The keeper process. Never returns.
fn keeper_main(lock: c_int, rx: c_int, grace_ns: i64) -> ! {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: signal() with SIG_IGN is async-signal-safe and installs no
        // handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: setpgid on ourselves; a failure leaves us in the caller's
    // group, which only makes us easier to kill.
    unsafe { libc::setpgid(0, 0) };
    close_all_except([lock, rx]);

    let mut pgid: i32 = 0;
    let mut buf = [0u8; 64];
    let mut have = 0usize;
    loop {
        let room = &mut buf[have..];
        // SAFETY: `room` is writable for its length; `rx` is our open fd.
        let n = unsafe { libc::read(rx, room.as_mut_ptr().cast(), room.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        let Ok(n @ 1..) = usize::try_from(n) else {
            // End of file (or a broken pipe): the caller is gone.
            break;
        };
        have += n.min(room.len());
        let mut i = 0;
        while i < have {
            match buf[i] {
                MSG_RELEASE => {
                    // SAFETY: _exit is async-signal-safe and ends the
                    // process; the lock goes with our fds.
                    unsafe { libc::_exit(0) }
                }
                MSG_PGID if have - i >= 5 => {
                    pgid = i32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
                    i += 5;
                }
                MSG_PGID => break,
                _ => i += 1,
            }
        }
        buf.copy_within(i..have, 0);
        have -= i;
        if have == buf.len() {
            have = 0;
        }
    }
    if pgid > 0 {
        stop_group(pgid, grace_ns);
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}
