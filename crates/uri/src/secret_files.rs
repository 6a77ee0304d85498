//! Writing secret files: the one part of the crate that touches the
//! filesystem. Rendering returns [`SecretObject`]s; call
//! [`write_secret_files`] before starting QEMU and remove the files after.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::render::SecretObject;

/// Failures while writing secret files.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The secret directory could not be created or is unsafe.
    #[error("secret directory {path}: {reason}")]
    Directory {
        /// Directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret file could not be written.
    #[error("cannot write secret file {path}; check the directory is writable")]
    Write {
        /// File.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

fn ensure_dir(dir: &Path) -> Result<(), SecretFileError> {
    let bad = |reason: String| SecretFileError::Directory {
        path: dir.to_path_buf(),
        reason,
    };
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(bad("is a symlink; give the real directory".into()));
        }
        Ok(m) if !m.is_dir() => return Err(bad("exists and is not a directory".into())),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => {
            return Err(bad(
                "is writable by group or others; chmod go-w it or use another directory".into(),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Missing parents (e.g. /run/extstorage, which also holds the
            // vhost-user sockets QEMU's user must reach) 0755, the
            // directory itself 0700; explicit modes, so no umask loosens them.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| bad(format!("cannot create its parent: {e}")))?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| bad(format!("cannot create it: {e}")))?;
        }
        Err(e) => return Err(bad(format!("cannot inspect it: {e}"))),
    }
    Ok(())
}

/// Writes each secret to its path with mode 0600. An existing file is
/// replaced: it is unlinked first and the new one created with `O_EXCL`,
/// which never follows a symlink planted at the path.
/// The parent directory is created with mode 0700 when missing and refused
/// when it is a symlink or writable by others.
pub fn write_secret_files(secrets: &[SecretObject]) -> Result<(), SecretFileError> {
    for s in secrets {
        let werr = |source: io::Error| SecretFileError::Write {
            path: s.path.clone(),
            source,
        };
        if let Some(dir) = s.path.parent() {
            ensure_dir(dir)?;
        }
        match fs::remove_file(&s.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(e)),
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&s.path)
            .map_err(werr)?;
        f.write_all(s.data.expose().as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
    }
    Ok(())
}

/// Removes the secret files; missing files are not an error.
pub fn remove_secret_files(secrets: &[SecretObject]) -> io::Result<()> {
    for s in secrets {
        match fs::remove_file(&s.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::render::SecretFormat;

    #[test]
    fn writes_0600_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let s = SecretObject {
            id: "d0-secret".into(),
            path: dir.join("d0-secret"),
            format: SecretFormat::Raw,
            data: Secret::new("pw"),
        };
        write_secret_files(std::slice::from_ref(&s)).unwrap();
        write_secret_files(std::slice::from_ref(&s)).unwrap();
        assert_eq!(fs::read_to_string(&s.path).unwrap(), "pw");
        let mode = fs::metadata(&s.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        remove_secret_files(std::slice::from_ref(&s)).unwrap();
        assert!(!s.path.exists());
    }

    /// This process's umask, read without changing it (which would race
    /// other test threads).
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
    }

    #[test]
    fn missing_parents_stay_reachable_and_the_directory_private() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let dir = run.join("secrets/vol");
        let s = SecretObject {
            id: "k".into(),
            path: dir.join("k"),
            format: SecretFormat::Raw,
            data: Secret::new("pw"),
        };
        write_secret_files(std::slice::from_ref(&s)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // Parents such as /run/extstorage also hold QEMU's sockets.
        assert_eq!(mode(&run), 0o755 & !umask());
        assert_eq!(mode(&run.join("secrets")), 0o755 & !umask());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn refuses_open_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let s = SecretObject {
            id: "x".into(),
            path: dir.join("x"),
            format: SecretFormat::Raw,
            data: Secret::new("pw"),
        };
        assert!(matches!(
            write_secret_files(&[s]),
            Err(SecretFileError::Directory { .. })
        ));
    }
}
