//! The per-node claim on a served volume: an exclusive `flock` held for the
//! whole life of `serve`, so a volume is served at most once per node. It
//! is a different lock from the core's per-operation volume lock, which
//! `serve` takes only while it runs a script, so `grow`, `setinfo` or
//! `kvm-args` keep working on a served volume. The kernel drops the claim
//! when the process dies, however it dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::Error;

/// A held claim; released on drop (or process death).
#[derive(Debug)]
pub struct Claim {
    _lock: Flock<File>,
    path: PathBuf,
}

impl Claim {
    /// The claim file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Claims the volume behind `path`, or says who holds it. The file holds
/// the holder's pid, for the message a second `serve` prints.
pub fn claim(path: &Path, provider: &str, volume: &str) -> Result<Claim, Error> {
    let io = |what: &str, source| Error::Claim {
        path: path.to_path_buf(),
        what: what.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        extstorage_core::dirs::create_dir_mode(dir, extstorage_core::dirs::RUN_DIR_MODE)
            .map_err(|e| io("cannot create its directory", e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io("cannot open it", e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(|e| io("cannot write it", e))?;
            lock.rewind().map_err(|e| io("cannot write it", e))?;
            writeln!(lock, "{}", std::process::id()).map_err(|e| io("cannot write it", e))?;
            Ok(Claim {
                _lock: lock,
                path: path.to_path_buf(),
            })
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(Error::AlreadyServed {
                provider: provider.to_owned(),
                volume: volume.to_owned(),
                pid: text.trim().parse().ok(),
            })
        }
        Err((_, errno)) => Err(io("cannot lock it", errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve/p.v.lock");
        let held = claim(&path, "p", "v").unwrap();
        let err = claim(&path, "p", "v").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(matches!(err, Error::AlreadyServed { .. }));
        drop(held);
        claim(&path, "p", "v").unwrap();
    }

    #[test]
    fn a_symlinked_claim_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(claim(&path, "p", "v").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
