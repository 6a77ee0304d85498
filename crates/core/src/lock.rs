//! Per-volume locks serialising operations across processes.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// The default lock directory.
pub const DEFAULT_LOCK_DIR: &str = "/run/extstorage/locks";

/// A held volume lock; released on drop.
#[derive(Debug)]
pub struct VolumeLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl VolumeLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of a volume: `<lock_dir>/<provider>-<volume>.lock`.
pub fn lock_path(lock_dir: &Path, provider: &str, volume: &str) -> PathBuf {
    lock_dir.join(format!("{provider}-{volume}.lock"))
}

/// Takes the exclusive lock of a volume, waiting at most `wait` for another
/// holder to release it. Names must already be validated.
pub fn lock_volume(
    lock_dir: &Path,
    provider: &str,
    volume: &str,
    wait: Duration,
) -> Result<VolumeLock> {
    fs::create_dir_all(lock_dir).map_err(|e| {
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
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open lock file {}", path.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                tracing::debug!(volume, provider, lock = %path.display(), "volume lock taken");
                return Ok(VolumeLock { _lock: lock, path });
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
}
