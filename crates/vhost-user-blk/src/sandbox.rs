//! The sandbox of a process serving as an unprivileged user (`--user`):
//! no way back to privileges (NoNewPrivs, an empty capability bounding and
//! ambient set), no file descriptors but the ones it serves with, and a
//! seccomp allow-list of the system calls the serving path makes.
//!
//! A call outside the list raises SIGSYS (`SECCOMP_RET_TRAP`); the handler
//! writes one line naming the call to stderr and exits with status 159
//! (128 + SIGSYS). Trap rather than `SECCOMP_RET_KILL_PROCESS`: the kill
//! action is reported only through the audit log, which a node may not
//! keep, while the trap puts the call's name in the daemon's own log. A
//! compromised process that catches SIGSYS itself gains nothing: the call
//! was refused either way.
//!
//! `EXTSTORAGE_SECCOMP` selects the filter: unset or `on` (the default),
//! `off` (no filter, for measuring its cost), or `log` (calls outside the
//! list are allowed and logged by the kernel, see docs/operations.md; the
//! filter is then installed even without `--user`).
//!
//! The rbd engine gets no seccomp filter: librbd runs its own messenger
//! and worker threads whose calls (sockets to monitors and OSDs, name
//! resolution, timers, config reads) vary with the Ceph release, so a list
//! wide enough for it would forbid little and break on an upgrade. It
//! still gets NoNewPrivs, the empty bounding set and the closed fds.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::Error;

/// The exit status after a refused system call: 128 + SIGSYS.
pub const VIOLATION_EXIT: i32 = 128 + libc::SIGSYS;

/// The environment variable that selects the filter.
pub const MODE_ENV: &str = "EXTSTORAGE_SECCOMP";

/// What the seccomp filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Calls outside the list kill the process (the default).
    Enforce,
    /// Calls outside the list are allowed and logged by the kernel.
    Log,
    /// No filter.
    Off,
}

impl Mode {
    /// The mode `EXTSTORAGE_SECCOMP` asks for.
    pub fn from_env() -> Result<Mode, Error> {
        match std::env::var(MODE_ENV).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("on") | Ok("") => Ok(Mode::Enforce),
            Ok("log") => Ok(Mode::Log),
            Ok("off") => Ok(Mode::Off),
            Ok(other) => Err(fail(
                "reading EXTSTORAGE_SECCOMP",
                format!("{other:?} is not one of on, off, log"),
            )),
            Err(e) => Err(fail("reading EXTSTORAGE_SECCOMP", e.to_string())),
        }
    }
}

/// Which serving path the filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A file or block device served by the sync engine only.
    Sync,
    /// A file or block device that may use io_uring (uring, split, auto).
    Uring,
}

fn fail(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Sandbox {
        what,
        reason: reason.into(),
    }
}

/// The calls every file-backed serving path makes once set up: the
/// vhost-user and control sockets, the guest memory table and dirty log
/// (mmap of received fds), queue workers and their eventfds/epoll, reads
/// and writes (sync engine, ioctl for block devices' size, discard and
/// zeroing), resize, thread start and exit, and the signal thread.
/// Found by running the tests (tests/vhost_blkio.rs, daemon_ops.rs,
/// cli_serve.rs, guest_migrate.rs, guest_serve.rs) under
/// `EXTSTORAGE_SECCOMP=log` (docs/reliability.md).
const COMMON: &[libc::c_long] = &[
    // I/O on the backing.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    // Sockets (accept on the listening ones, messages with fds).
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    // Event loops.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // File descriptors.
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_fcntl,
    // Memory: guest memory and dirty log, allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // The in-flight region QEMU asks for (GET_INFLIGHT_FD).
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    // Threads.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_prctl,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals (stop requests, the SIGSYS report).
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_tgkill,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    // Leaving: the sockets are unlinked where the directory allows it.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Waiting for the socket cleaner (SocketCleaner).
    libc::SYS_wait4,
];

/// io_uring's calls (the uring and split engines, and auto's probe).
const URING: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// The system calls `profile` allows.
pub fn allowed(profile: Profile) -> Vec<libc::c_long> {
    let mut calls = COMMON.to_vec();
    if profile == Profile::Uring {
        calls.extend_from_slice(URING);
    }
    calls
}

/// A compiled seccomp filter, ready to install. Built before a fork, so
/// the child only has to install it.
#[derive(Debug)]
pub struct Filter {
    program: BpfProgram,
    mode: Mode,
}

impl Filter {
    /// Compiles the allow-list of `profile`; calls outside it trap (or are
    /// logged, in [`Mode::Log`]).
    pub fn new(profile: Profile, mode: Mode) -> Result<Filter, Error> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(profile)
            .into_iter()
            .map(|nr| (nr, Vec::new()))
            .collect();
        // sd_notify (READY=1 after setup, STOPPING=1 on SIGTERM): an
        // unbound unix datagram socket, and nothing else `socket` makes.
        let notify = |arg: u8, value: libc::c_int| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)
        };
        let conditions = vec![
            notify(0, libc::AF_UNIX),
            notify(1, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("building the seccomp filter", e.to_string()))?;
        let rule = SeccompRule::new(conditions)
            .map_err(|e| fail("building the seccomp filter", e.to_string()))?;
        rules.insert(libc::SYS_socket, vec![rule]);
        let mismatch = match mode {
            Mode::Log => SeccompAction::Log,
            Mode::Enforce | Mode::Off => SeccompAction::Trap,
        };
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| fail("building the seccomp filter", e.to_string()))?;
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
            .map_err(|e| fail("building the seccomp filter", e.to_string()))?;
        let program = BpfProgram::try_from(filter)
            .map_err(|e| fail("compiling the seccomp filter", e.to_string()))?;
        Ok(Filter { program, mode })
    }

    /// Installs the SIGSYS report and the filter on every thread of the
    /// process (TSYNC); sets NoNewPrivs, which seccomp needs.
    pub fn install(&self) -> Result<(), Error> {
        install_sigsys_report()?;
        seccompiler::apply_filter_all_threads(&self.program)
            .map_err(|e| fail("installing the seccomp filter", e.to_string()))?;
        tracing::info!(mode = ?self.mode, "seccomp filter installed");
        Ok(())
    }
}

/// Installs the seccomp filter that fits `cfg` once the server is set up:
/// with `--user` (`user`) unless [`Mode::Off`], always in [`Mode::Log`],
/// never for an RBD image (see the module doc).
pub fn install_for(cfg: &crate::Config, user: bool, mode: Mode) -> Result<(), Error> {
    let wanted = match mode {
        Mode::Enforce => user,
        Mode::Log => true,
        Mode::Off => false,
    };
    if mode == Mode::Off && user {
        tracing::warn!(
            variable = MODE_ENV,
            "the seccomp filter is off: the unprivileged server runs without its allow-list \
             (unset the variable to restore it)"
        );
    }
    if cfg.rbd.is_some() {
        if wanted {
            tracing::info!("no seccomp filter for the rbd engine (librbd's calls vary by release)");
        }
        return Ok(());
    }
    if !wanted {
        return Ok(());
    }
    let profile = match cfg.device.engine {
        crate::Engine::Sync => Profile::Sync,
        crate::Engine::Auto | crate::Engine::Uring => Profile::Uring,
    };
    Filter::new(profile, mode)?.install()
}

/// NoNewPrivs, and an empty capability bounding and ambient set. Call
/// before starting threads: the bounding set is per thread, and threads
/// started later inherit it. Needs CAP_SETPCAP (root).
pub fn restrict_privileges() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail(
            "setting NoNewPrivs",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: as above, integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: a capability this kernel does not know.
            if e.raw_os_error() == Some(libc::EINVAL) {
                continue;
            }
            return Err(fail(
                "emptying the capability bounding set",
                format!("{e} (capability {cap}); serving with --user needs root"),
            ));
        }
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(fail(
            "clearing the ambient capabilities",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

/// Closes every file descriptor but `keep` (stdin, stdout and stderr are
/// always kept); returns how many were closed. Call while the process has
/// one thread, before anything it opens itself.
pub fn close_fds_except(keep: &[RawFd]) -> Result<usize, Error> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| fail("listing the open file descriptors", e.to_string()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed = 0;
    for fd in open {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        // SAFETY: the fd is not one the caller keeps; nothing in this
        // single-threaded process uses the others (inherited ones such as
        // the claim lock belong to the parent). The directory listing's
        // own fd is already closed: closing it fails with EBADF, ignored.
        if unsafe { libc::close(fd) } == 0 {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Installs the SIGSYS handler that reports a refused call and exits.
fn install_sigsys_report() -> Result<(), Error> {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
    // handler is an `extern "C"` function with the SA_SIGINFO signature.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        act.sa_sigaction = handler as usize;
        act.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(fail(
                "installing the SIGSYS handler",
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    Ok(())
}

/// The name of x86_64 system call `nr`, if known.
fn name(nr: i32) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        usize::try_from(nr)
            .ok()
            .and_then(|i| crate::sandbox_names::X86_64.get(i))
            .copied()
            .unwrap_or("")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        ""
    }
}

/// A fixed buffer a signal handler can format into without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The SIGSYS handler: names the refused call on stderr and exits. Only
/// async-signal-safe work: a stack buffer, write(2) and _exit(2).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo's SIGSYS fields: after si_signo, si_errno, si_code, the union
    // (pointer-aligned) starts with the call's address, then the number.
    let union_at = (3 * std::mem::size_of::<libc::c_int>())
        .next_multiple_of(std::mem::align_of::<*const libc::c_void>());
    let nr_at = union_at + std::mem::size_of::<*const libc::c_void>();
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers,
    // and for SIGSYS from seccomp the int at `nr_at` is the call number.
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(nr_at).cast::<i32>()) };
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"extstorage: seccomp: system call ");
    line.push_num(u64::from(nr.unsigned_abs()));
    let n = name(nr);
    if !n.is_empty() {
        line.push(b" (");
        line.push(n.as_bytes());
        line.push(b")");
    }
    line.push(
        b" is outside the I/O process's allow-list; exiting with status 159 \
          (see docs/operations.md, \"A seccomp violation\")\n",
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // on this stack frame.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_EXIT);
    }
}

/// A root helper process that removes the sockets when the server exits.
/// After dropping to `--user` the server cannot unlink its sockets in a
/// root-owned directory; the helper, forked before the drop, waits for
/// the server's end of a pipe to close (at the end of
/// [`Serving::run`](crate::serve::Serving::run), or when the server dies
/// in any way) and then removes each socket that is still the one the
/// server created (same device and inode). It ignores SIGTERM and SIGINT
/// (a service manager signals the whole group) and keeps no other fd.
#[derive(Debug)]
pub struct SocketCleaner {
    pid: nix::unistd::Pid,
    pipe: Option<std::os::fd::OwnedFd>,
}

impl SocketCleaner {
    /// Forks the helper for `paths` (sockets this process created).
    pub fn spawn(paths: &[&std::path::Path]) -> Result<SocketCleaner, Error> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        // Everything the helper uses is prepared here: it may not
        // allocate after the fork (other threads may hold the allocator).
        let mut targets = Vec::new();
        for path in paths {
            let meta = std::fs::symlink_metadata(path).map_err(|e| {
                fail(
                    "preparing the socket cleanup",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                fail(
                    "preparing the socket cleanup",
                    format!("{} contains a NUL byte", path.display()),
                )
            })?;
            targets.push((c, meta.dev(), meta.ino()));
        }
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| fail("preparing the socket cleanup", format!("pipe: {e}")))?;
        // SAFETY: the child runs only async-signal-safe calls (sigaction,
        // dup2, close_range, read, lstat, unlink, _exit) on data prepared
        // above, so threads of the parent that do not exist in the child
        // cannot hold anything it needs; it never returns.
        match unsafe { nix::unistd::fork() }
            .map_err(|e| fail("starting the socket cleanup", format!("fork: {e}")))?
        {
            nix::unistd::ForkResult::Child => {
                use std::os::fd::AsRawFd;
                // SAFETY: see above; every pointer passed points into
                // `targets` or this frame.
                unsafe {
                    let mut ign: libc::sigaction = std::mem::zeroed();
                    ign.sa_sigaction = libc::SIG_IGN;
                    libc::sigaction(libc::SIGTERM, &ign, std::ptr::null_mut());
                    libc::sigaction(libc::SIGINT, &ign, std::ptr::null_mut());
                    libc::sigaction(libc::SIGHUP, &ign, std::ptr::null_mut());
                    if libc::dup2(read_end.as_raw_fd(), 3) != 3 {
                        libc::_exit(1);
                    }
                    libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                    let mut byte = 0u8;
                    // Returns 0 (or fails) once every write end is closed.
                    while libc::read(3, (&raw mut byte).cast(), 1) > 0 {}
                    for (path, dev, ino) in &targets {
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::lstat(path.as_ptr(), &mut st) == 0
                            && st.st_dev == *dev
                            && st.st_ino == *ino
                        {
                            libc::unlink(path.as_ptr());
                        }
                    }
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read_end);
                Ok(SocketCleaner {
                    pid: child,
                    pipe: Some(write_end),
                })
            }
        }
    }
}

impl Drop for SocketCleaner {
    /// Lets the helper remove the sockets, and waits until it has.
    fn drop(&mut self) {
        drop(self.pipe.take());
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(self.pid, None) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    /// Forks a child that installs `filter`, then calls `call`; returns its
    /// wait status and what it wrote to stderr.
    fn in_child(filter: &Filter, call: impl FnOnce() -> i32) -> (WaitStatus, String) {
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only redirects stderr, installs the prebuilt
        // filter (prctl, sigaction, seccomp: no allocation) and calls
        // `call`, then _exits; it never returns into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: dup2 and _exit on fds this child owns.
                unsafe {
                    libc::dup2(w.as_raw_fd(), 2);
                    if filter.install().is_err() {
                        libc::_exit(2);
                    }
                    libc::_exit(call());
                }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut err = String::new();
                std::fs::File::from(r).read_to_string(&mut err).unwrap();
                (waitpid(child, None).unwrap(), err)
            }
        }
    }

    #[test]
    fn a_call_outside_the_list_is_reported_by_name_and_ends_the_process() {
        let filter = Filter::new(Profile::Uring, Mode::Enforce).unwrap();
        // getcwd: never made by the serving path.
        // SAFETY: a raw system call with no arguments that matter.
        let (status, err) = in_child(&filter, || unsafe {
            libc::syscall(libc::SYS_getcwd, 0, 0);
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, VIOLATION_EXIT)),
            "{status:?} {err}"
        );
        assert!(
            err.contains(&format!("system call {}", libc::SYS_getcwd)),
            "{err}"
        );
        #[cfg(target_arch = "x86_64")]
        assert!(err.contains("(getcwd)"), "{err}");
    }

    #[test]
    fn calls_on_the_list_still_work_under_the_filter() {
        let filter = Filter::new(Profile::Sync, Mode::Enforce).unwrap();
        let (status, err) = in_child(&filter, || {
            // SAFETY: eventfd2 with valid arguments.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            // SAFETY: getpid takes no arguments.
            let pid = unsafe { libc::getpid() };
            if fd < 0 || pid <= 0 {
                return 3;
            }
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{status:?} {err}"
        );
    }

    #[test]
    fn only_the_notify_socket_may_be_created() {
        let filter = Filter::new(Profile::Uring, Mode::Enforce).unwrap();
        let (status, err) = in_child(&filter, || {
            // SAFETY: socket(2) with constant arguments.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return 3;
            }
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{status:?} {err}"
        );
        let (status, err) = in_child(&filter, || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, VIOLATION_EXIT)) && err.contains("(socket)"),
            "{status:?} {err}"
        );
        let (status, err) = in_child(&filter, || {
            // SAFETY: as above.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, VIOLATION_EXIT)),
            "{status:?} {err}"
        );
    }

    #[test]
    fn io_uring_is_refused_to_the_sync_profile() {
        let filter = Filter::new(Profile::Sync, Mode::Enforce).unwrap();
        // SAFETY: io_uring_setup with a null params pointer fails or traps.
        let (status, err) = in_child(&filter, || unsafe {
            libc::syscall(libc::SYS_io_uring_setup, 1, 0);
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, VIOLATION_EXIT)),
            "{status:?} {err}"
        );
    }
}
