//! Creating the directories extstorage keeps its files in with modes that
//! do not depend on the umask: under `umask 000` a plain `create_dir_all`
//! makes them world-writable (0777), under `umask 077` unreachable for
//! QEMU's user.
//!
//! The modes used (documented in docs/operations.md):
//! [`LOCK_DIR_MODE`], [`LOG_DIR_MODE`], [`RUN_DIR_MODE`],
//! [`PARENT_DIR_MODE`].

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The lock directory: root's only (a lock file anyone can open, anyone can
/// hold).
pub const LOCK_DIR_MODE: u32 = 0o700;
/// A lock file.
pub const LOCK_FILE_MODE: u32 = 0o600;
/// The log directory: readable by the owner's group (e.g. `adm`), as are
/// the logs.
pub const LOG_DIR_MODE: u32 = 0o750;
/// A script's log file.
pub const LOG_FILE_MODE: u32 = 0o640;
/// The run directory and its subdirectories: QEMU's user must reach the
/// sockets in them (each socket has its own owner and mode).
pub const RUN_DIR_MODE: u32 = 0o755;

/// A missing parent of one of those directories (e.g. `/run/extstorage`
/// for the default lock directory `/run/extstorage/locks`, which also holds
/// the run directory's sockets).
pub const PARENT_DIR_MODE: u32 = 0o755;

/// Creates `dir` with exactly `mode`, and each missing parent with
/// [`PARENT_DIR_MODE`] (set with `fchmod` after `mkdir`, whatever the
/// umask). Directories that exist are left as they are: their mode is the
/// operator's choice.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match std::fs::symlink_metadata(cur) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        let mode = if d == dir { mode } else { PARENT_DIR_MODE };
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {
                // Opened without following a symlink, so the mode goes to
                // the directory just made, not to what a swap put there.
                let f: File = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(d)?;
                f.set_permissions(Permissions::from_mode(mode))?;
            }
            // Made by another process meanwhile: theirs to set.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn missing_parents_get_the_mode_and_existing_ones_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("a");
        std::fs::create_dir(&top).unwrap();
        std::fs::set_permissions(&top, Permissions::from_mode(0o711)).unwrap();
        let leaf = top.join("b/c");
        create_dir_mode(&leaf, 0o750).unwrap();
        assert_eq!(mode(&top), 0o711);
        assert_eq!(mode(&top.join("b")), PARENT_DIR_MODE);
        assert_eq!(mode(&leaf), 0o750);
        create_dir_mode(&leaf, 0o700).unwrap();
        assert_eq!(mode(&leaf), 0o750, "an existing directory is kept");
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(create_dir_mode(&file, 0o700).is_err());
        assert!(create_dir_mode(&file.join("x"), 0o700).is_err());
    }
}
