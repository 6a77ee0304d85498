//! Per-volume locks serialising operations across processes.
//!
//! A held lock is also recorded for its thread, so the runner can hand it
//! to a lock keeper (`crate::keeper`) while a script runs: the lock then
//! outlives a caller killed with SIGKILL until the script's group is gone.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::names::volume_key;

/// The default lock directory.
pub const DEFAULT_LOCK_DIR: &str = "/run/extstorage/locks";

thread_local! {
    /// The fds of the locks this thread holds, innermost last.
    static HELD: RefCell<Vec<RawFd>> = const { RefCell::new(Vec::new()) };
}

/// A held volume lock; released on drop. It stays on the thread that took
/// it (the runner finds the lock of the running operation through it).
#[derive(Debug)]
pub struct VolumeLock {
    lock: Flock<File>,
    path: PathBuf,
    _same_thread: PhantomData<*const ()>,
}

impl VolumeLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        let fd = self.lock.as_raw_fd();
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(i) = held.iter().rposition(|&f| f == fd) {
                held.remove(i);
            }
        });
    }
}

/// Runs `f` with the innermost volume lock this thread holds, if any.
pub(crate) fn with_held_lock<T>(f: impl FnOnce(Option<BorrowedFd<'_>>) -> T) -> T {
    let fd = HELD.with(|held| held.borrow().last().copied());
    match fd {
        // SAFETY: the fd is in HELD only while its VolumeLock (which owns
        // the file) is alive on this thread, and the VolumeLock cannot be
        // dropped during `f`: it is not Send, and `f` gets no access to it.
        Some(fd) => f(Some(unsafe { BorrowedFd::borrow_raw(fd) })),
        None => f(None),
    }
}

/// The lock file of a volume: `<lock_dir>/<provider>.<volume>.lock` (see
/// [`volume_key`]).
pub fn lock_path(lock_dir: &Path, provider: &str, volume: &str) -> PathBuf {
    lock_dir.join(format!("{}.lock", volume_key(provider, volume)))
}

/// Takes the exclusive lock of a volume, waiting at most `wait` for another
/// holder to release it. Names must already be validated. The lock file is
/// never opened through a symbolic link. A signal recorded by
/// [`crate::interrupt`] stops the wait.
pub fn lock_volume(
    lock_dir: &Path,
    provider: &str,
    volume: &str,
    wait: Duration,
) -> Result<VolumeLock> {
    crate::dirs::create_dir_mode(lock_dir, crate::dirs::LOCK_DIR_MODE).map_err(|e| {
        Error::io(
            format!(
                "cannot create the lock directory {}; create it or choose another with --lock-dir",
                lock_dir.display()
            ),
            e,
        )
    })?;
    let path = lock_path(lock_dir, provider, volume);
    let start = Instant::now();
    let mut logged = false;
    loop {
        if let Some(signal) = crate::interrupt::pending() {
            return Err(Error::Interrupted {
                signal: signal as i32,
                what: format!(
                    "while waiting {:?} for the lock {} of volume {volume:?} of provider \
                     {provider:?}; no script ran",
                    start.elapsed(),
                    path.display()
                ),
            });
        }
        let file = crate::sys::open_no_follow(
            &path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(crate::dirs::LOCK_FILE_MODE),
            "lock file",
        )?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                tracing::debug!(volume, provider, lock = %path.display(), "volume lock taken");
                HELD.with(|held| held.borrow_mut().push(lock.as_raw_fd()));
                return Ok(VolumeLock {
                    lock,
                    path,
                    _same_thread: PhantomData,
                });
            }
            Err((_, Errno::EWOULDBLOCK)) | Err((_, Errno::EINTR)) => {
                if start.elapsed() >= wait {
                    return Err(Error::LockBusy {
                        provider: provider.to_owned(),
                        volume: volume.to_owned(),
                        path,
                        waited: wait,
                    });
                }
                if !logged {
                    tracing::info!(volume, provider, lock = %path.display(), "volume busy, waiting for its lock");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, errno)) => {
                return Err(Error::io(
                    format!("cannot lock {}", path.display()),
                    errno.into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn second_holder_waits_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_volume(dir.path(), "p", "v", Duration::ZERO).unwrap();
        let err = lock_volume(dir.path(), "p", "v", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, Error::LockBusy { .. }), "{err}");
        assert!(err.to_string().contains("\"v\""), "{err}");
        // Another volume is independent.
        lock_volume(dir.path(), "p", "w", Duration::ZERO).unwrap();
        drop(held);
        lock_volume(dir.path(), "p", "v", Duration::ZERO).unwrap();
    }

    #[test]
    fn ambiguous_dash_joins_lock_independently() {
        let dir = tempfile::tempdir().unwrap();
        let a = lock_volume(dir.path(), "a-b", "c", Duration::ZERO).unwrap();
        let b = lock_volume(dir.path(), "a", "b-c", Duration::ZERO).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(a.path(), dir.path().join("a-b.c.lock"));
        assert_eq!(b.path(), dir.path().join("a.b-c.lock"));
    }

    #[test]
    fn held_locks_are_recorded_per_thread() {
        let dir = tempfile::tempdir().unwrap();
        assert!(with_held_lock(|fd| fd.is_none()));
        let outer = lock_volume(dir.path(), "p", "outer", Duration::ZERO).unwrap();
        let inner = lock_volume(dir.path(), "p", "inner", Duration::ZERO).unwrap();
        let inner_fd = inner.lock.as_raw_fd();
        assert_eq!(
            with_held_lock(|fd| fd.map(|f| f.as_raw_fd())),
            Some(inner_fd)
        );
        std::thread::spawn(|| assert!(with_held_lock(|fd| fd.is_none())))
            .join()
            .unwrap();
        drop(inner);
        let outer_fd = outer.lock.as_raw_fd();
        assert_eq!(
            with_held_lock(|fd| fd.map(|f| f.as_raw_fd())),
            Some(outer_fd)
        );
        drop(outer);
        assert!(with_held_lock(|fd| fd.is_none()));
    }

    #[test]
    fn symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, "data").unwrap();
        std::os::unix::fs::symlink(&target, lock_path(dir.path(), "p", "v")).unwrap();
        let err = lock_volume(dir.path(), "p", "v", Duration::ZERO).unwrap_err();
        assert!(matches!(err, Error::UnsafeFile { .. }), "{err}");
        assert!(err.to_string().contains("p.v.lock"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "data");
    }
}
