//! Low-level process and file helpers.
//!
//! Everything but [`open_no_follow`] is async-signal-safe: only system
//! calls, no allocation, no locks, no panics. They run between `fork` and
//! `exec` (the script's `pre_exec`) and in the lock keeper
//! (`crate::keeper`), where a multi-threaded parent leaves nothing else
//! safe to call.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libc::{c_int, c_uint};

use crate::error::{Error, Result};

/// `errno` of the last failed call.
fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A buffer for `getdents64`, aligned for its records.
#[repr(C, align(8))]
struct DirentBuf([u8; 4096]);

/// Calls `f` with the name of every entry of the directory `path` (a
/// NUL-terminated byte string) until `f` returns false. Returns false when
/// the directory cannot be opened.
fn for_each_entry(path: &[u8], mut f: impl FnMut(&[u8], c_int) -> bool) -> bool {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated (checked above in debug builds and
    // by every caller's literal); open has no other preconditions.
    let dir = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    let mut buf = DirentBuf([0; 4096]);
    'read: loop {
        // SAFETY: `buf` is writable for its whole length and outlives the
        // call; `dir` is an open directory fd we own.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.0.as_mut_ptr(), buf.0.len()) };
        if n <= 0 {
            break;
        }
        let n = usize::try_from(n).unwrap_or(0).min(buf.0.len());
        let mut off = 0;
        // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8,
        // then the NUL-terminated name.
        while off + 19 <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf.0[off + 16], buf.0[off + 17]]));
            if reclen == 0 || off + reclen > n {
                break 'read;
            }
            let name = &buf.0[off + 19..off + reclen];
            let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if !f(&name[..len], dir) {
                break 'read;
            }
            off += reclen;
        }
    }
    // SAFETY: `dir` is our own open fd, closed once.
    unsafe { libc::close(dir) };
    true
}

/// Parses a non-negative decimal number.
fn parse_dec(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Whether process `pid` is alive (not a zombie) and in group `pgid`, read
/// from `/proc/<pid>/stat`.
fn live_member(pid: &[u8], pgid: i64) -> bool {
    let mut path = [0u8; 48];
    let parts: [&[u8]; 3] = [b"/proc/", pid, b"/stat\0"];
    let mut len = 0;
    for p in parts {
        if len + p.len() > path.len() {
            return false;
        }
        path[len..len + p.len()].copy_from_slice(p);
        len += p.len();
    }
    // SAFETY: `path` is NUL-terminated (the last part ends with NUL).
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let mut stat = [0u8; 256];
    // SAFETY: `stat` is writable for its length; `fd` is our open fd.
    let n = unsafe { libc::read(fd, stat.as_mut_ptr().cast(), stat.len()) };
    // SAFETY: our own open fd, closed once.
    unsafe { libc::close(fd) };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    let stat = &stat[..n.min(stat.len())];
    // "pid (comm) S ppid pgrp ...": comm may hold anything, so start after
    // the last ')'.
    let Some(rp) = stat.iter().rposition(|&c| c == b')') else {
        return false;
    };
    let mut fields = stat[rp + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty());
    let (Some(state), Some(_ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    parse_dec(pgrp) == Some(pgid) && !matches!(state.first(), Some(b'Z' | b'X' | b'x'))
}

/// Whether any process of group `pgid` is still running. Zombies do not
/// count: a script's orphaned children are reparented to an init that may
/// reap them late (or never), and a zombie holds nothing.
/// Async-signal-safe.
pub(crate) fn group_alive(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(-pgid, 0) } == -1 && errno() == libc::ESRCH {
        return false;
    }
    let mut alive = false;
    let listed = for_each_entry(b"/proc\0", |name, _| {
        if parse_dec(name).is_some() && live_member(name, i64::from(pgid)) {
            alive = true;
            return false;
        }
        true
    });
    // Without /proc, trust kill(): some member exists.
    alive || !listed
}

/// Highest fd number a fallback loop visits when neither `close_range` nor
/// `/proc/self/fd` is available.
const FALLBACK_FD_LIMIT: c_int = 1 << 16;

fn fd_limit() -> c_int {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        c_int::try_from(lim.rlim_cur)
            .unwrap_or(FALLBACK_FD_LIMIT)
            .min(FALLBACK_FD_LIMIT)
    } else {
        FALLBACK_FD_LIMIT
    }
}

/// Marks every fd from `low` up close-on-exec. `close_range` with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11) first, else [`cloexec_fallback`].
/// Marking instead of closing keeps std's exec-error pipe working: it is
/// closed by the exec itself. Async-signal-safe.
pub(crate) fn cloexec_from(low: c_uint) {
    // SAFETY: close_range only changes fd flags in our own table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            low,
            c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        cloexec_fallback(low);
    }
}

/// [`cloexec_from`] for kernels without `CLOSE_RANGE_CLOEXEC`: every fd
/// listed in `/proc/self/fd`, else every fd up to the open-file limit (at
/// most 65536). Async-signal-safe.
pub(crate) fn cloexec_fallback(low: c_uint) {
    let low = c_int::try_from(low).unwrap_or(c_int::MAX);
    let set = |fd: c_int| {
        // SAFETY: F_SETFD only changes the flags of an fd in our table (an
        // fd that is not open makes it fail with EBADF, which is fine).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    };
    let listed = for_each_entry(b"/proc/self/fd\0", |name, _| {
        if let Some(fd) = parse_dec(name).and_then(|v| c_int::try_from(v).ok())
            && fd >= low
        {
            set(fd);
        }
        true
    });
    if !listed {
        for fd in low..fd_limit() {
            set(fd);
        }
    }
}

/// Closes every fd except those in `keep`. Async-signal-safe.
pub(crate) fn close_all_except(keep: [c_int; 2]) {
    let (a, b) = (keep[0].min(keep[1]), keep[0].max(keep[1]));
    let mut ok = true;
    let mut close_range = |lo: c_int, hi: c_int| {
        if lo > hi || !ok {
            return;
        }
        let (Ok(lo), Ok(hi)) = (c_uint::try_from(lo), c_uint::try_from(hi)) else {
            return;
        };
        // SAFETY: close_range only closes fds of our own table.
        ok = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as c_uint) } == 0;
    };
    close_range(0, a - 1);
    close_range(a + 1, b - 1);
    close_range(b.saturating_add(1), c_int::MAX);
    if !ok {
        close_all_except_fallback(keep);
    }
}

/// [`close_all_except`] without `close_range` (Linux before 5.9): every fd
/// listed in `/proc/self/fd`, else every fd below the open-file limit (at
/// most 65536). Async-signal-safe.
pub(crate) fn close_all_except_fallback(keep: [c_int; 2]) {
    let (a, b) = (keep[0], keep[1]);
    let listed = for_each_entry(b"/proc/self/fd\0", |name, dir| {
        if let Some(fd) = parse_dec(name).and_then(|v| c_int::try_from(v).ok())
            && fd != a
            && fd != b
            && fd != dir
        {
            // SAFETY: closing an fd of our own table that nothing in this
            // process uses any more.
            unsafe { libc::close(fd) };
        }
        true
    });
    if !listed {
        for fd in 0..fd_limit() {
            if fd != a && fd != b {
                // SAFETY: as above; a closed fd makes close fail harmlessly.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Opens a log or lock file without following a symbolic link in its last
/// component, and refuses anything but a regular file (a FIFO planted there
/// would block the open or the writes). `O_NONBLOCK` makes a FIFO fail at
/// once instead of blocking; it changes nothing for a regular file.
pub(crate) fn open_no_follow(
    path: &Path,
    opts: &mut OpenOptions,
    what: &'static str,
) -> Result<File> {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let unsafe_file = |reason| Error::UnsafeFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let file = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(unsafe_file("it is a symbolic link"));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(unsafe_file("it is not a regular file"));
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot open {what} {}", path.display()),
                e,
            ));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {what} {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(unsafe_file("it is not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn group_liveness() {
        // Our own group is alive; a group that does not exist is not.
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() };
        assert!(group_alive(own));
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        assert!(group_alive(pgid));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, which does not count.
        let start = std::time::Instant::now();
        while group_alive(pgid) {
            assert!(start.elapsed().as_secs() < 30, "group {pgid} never died");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::fs::read_to_string(format!("/proc/{pgid}/stat")).is_ok(),
            "the zombie is still there"
        );
        child.wait().unwrap();
        assert!(!group_alive(pgid));
        assert!(!group_alive(0));
    }

    /// The fds a child sees after `mark` ran in its pre_exec, with `file`
    /// open (without CLOEXEC) at fd 7.
    fn child_fds(mark: fn()) -> Vec<String> {
        let file = tempfile::tempfile().unwrap();
        let raw = file.as_raw_fd();
        let mut cmd = Command::new("ls");
        cmd.arg("/proc/self/fd").stdout(Stdio::piped());
        // SAFETY: dup2 and the marking function are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                mark();
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn fds_are_marked_close_on_exec() {
        // Without marking, fd 7 reaches the child: the test can fail.
        assert!(child_fds(|| {}).contains(&"7".to_owned()));
        let marks: [fn(); 2] = [|| cloexec_from(3), || cloexec_fallback(3)];
        for mark in marks {
            let fds = child_fds(mark);
            // 0-2 and the directory ls itself opened.
            assert_eq!(fds, ["0", "1", "2", "3"], "{fds:?}");
        }
    }

    #[test]
    fn all_fds_but_two_are_closed() {
        // fd 7 and fd 9 are copies of a file; keep stdout (for ls) and 9.
        let marks: [fn(); 2] = [
            || close_all_except([9, 1]),
            || close_all_except_fallback([1, 9]),
        ];
        for mark in marks {
            let file = tempfile::tempfile().unwrap();
            let raw = file.as_raw_fd();
            let mut cmd = Command::new("ls");
            cmd.arg("/proc/self/fd").stdout(Stdio::piped());
            // SAFETY: dup2 and the closing function are async-signal-safe.
            // (Closing std's exec-error pipe only makes spawn report success
            // early; ls runs all the same.)
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 7) < 0 || libc::dup2(raw, 9) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    mark();
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            let fds: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect();
            // ls's own directory fd takes the lowest free number, 0.
            assert_eq!(fds, ["0", "1", "9"], "{fds:?}");
        }
    }

    #[test]
    fn no_follow_refuses_symlinks_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        let err = open_no_follow(&link, &mut opts, "log file").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("symbolic link"), "{text}");
        assert!(text.contains(&link.display().to_string()), "{text}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = open_no_follow(&fifo, &mut opts, "lock file").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let plain = dir.path().join("plain");
        open_no_follow(&plain, &mut opts, "log file").unwrap();
        assert!(plain.is_file());
    }
}
