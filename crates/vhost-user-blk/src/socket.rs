//! Creating listening unix sockets safely on a shared host: only in a
//! directory no other user can replace them in, never over a socket another
//! server still listens on, never over other files, with their final mode
//! from the moment they exist, and removed at exit only if still ours.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use extstorage_serve_api::SocketAccess;

use crate::Error;

/// Mode of a directory the daemon creates for its sockets: others may
/// traverse it (QEMU's user reaches the socket), only root may add to it.
const SOCKET_DIR_MODE: u32 = 0o755;

/// A socket file this process bound, known by its inode: removing it at
/// exit never removes a socket someone else put at the same path since.
/// An `O_PATH` descriptor keeps the inode alive, so its number cannot be
/// reused by a newer file while this is held.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    _pin: std::fs::File,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Records the socket now at `path` as ours.
    fn record(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let pin = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)?;
        let meta = pin.metadata()?;
        Ok(Self {
            path: path.to_path_buf(),
            _pin: pin,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the socket if the file at its path is still the one bound
    /// here; another server's socket there is left alone.
    pub(crate) fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::info!(
                socket = %self.path.display(),
                "the socket was replaced since it was bound; leaving the new one"
            ),
            Err(_) => {}
        }
    }
}

fn listen_error(path: &Path, kind: std::io::ErrorKind, msg: String) -> Error {
    Error::Listen {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, msg),
    }
}

/// Refuses a directory on the way to a socket that a user other than its
/// owner could rename or replace entries in: writable by others without
/// the sticky bit (a sticky directory such as /tmp lets only an entry's
/// owner remove it).
fn check_dir(path: &Path, dir: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(listen_error(
            path,
            std::io::ErrorKind::PermissionDenied,
            format!(
                "directory {} is writable by every user (mode {:04o}) without the sticky bit: \
                 another user could replace the socket and receive the guest's memory; \
                 chmod o-w (or +t) it, or choose another directory",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Creates the parent directory when missing (mode 0755), checks it and
/// its ancestors, and clears the way at `path`: a socket nobody listens on
/// is removed; a live socket (another server, probably another daemon for
/// the same volume) and anything that is not a socket are refused.
fn prepare(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Listen {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(dir)
            .map_err(fail)?;
    }
    let dir = dir.canonicalize().map_err(fail)?;
    for d in dir.ancestors() {
        check_dir(path, d)?;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(listen_error(
            path,
            std::io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way; remove it or choose another path".into(),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(listen_error(
            path,
            std::io::ErrorKind::AddrInUse,
            "another server is listening on this socket (a second daemon for the same volume?); \
             stop it first or choose another path"
                .into(),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(socket = %path.display(), "removing a stale socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(listen_error(
            path,
            e.kind(),
            format!(
                "cannot tell whether a server still listens on the socket there ({e}); remove it if none does"
            ),
        )),
    }
}

/// Binds and listens on `path` with the socket file created at `mode`
/// from the start: the bind runs on a thread of its own whose umask (not
/// shared with the process's other threads, `unshare(CLONE_FS)`) leaves
/// exactly `mode`.
fn bind_with_mode(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    let path = path.to_path_buf();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
            UnixListener::bind(&path)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the bind thread panicked")))
    })
}

/// Binds and listens on `path` (replacing a stale socket) and gives it
/// `access`. Between bind and listen a client may see the file and be
/// refused: callers signal readiness separately.
pub(crate) fn bind_in_place(
    path: &Path,
    access: &SocketAccess,
) -> Result<(UnixListener, SocketFile), Error> {
    let fail = |source| Error::Listen {
        path: path.to_path_buf(),
        source,
    };
    prepare(path)?;
    let listener = bind_with_mode(path, access.mode).map_err(fail)?;
    let placed = SocketFile::record(path).map_err(fail);
    let placed =
        placed.and_then(
            |file| match crate::privileges::apply_socket_access(path, access) {
                Ok(()) => Ok(file),
                Err(e) => {
                    file.remove();
                    Err(e)
                }
            },
        )?;
    Ok((listener, placed))
}

/// Binds and listens on a unix socket under a temporary name next to
/// `path`, gives it `access` (owner, group, mode), then renames it over
/// `path`. A stale socket at `path` is replaced; a live one, or anything
/// else there (a regular file, a directory), is refused. The parent
/// directory is created. A client that sees the file can connect at once,
/// so "the socket exists" is a readiness signal; the price is that the
/// socket's own address (getsockname) is the temporary name.
pub(crate) fn bind_ready(
    path: &Path,
    access: &SocketAccess,
) -> Result<(UnixListener, SocketFile), Error> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let fail = |source| Error::Listen {
        path: path.to_path_buf(),
        source,
    };
    prepare(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".es-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = bind_with_mode(&tmp, access.mode).map_err(fail)?;
    let placed = crate::privileges::apply_socket_access(&tmp, access)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(fail))
        .and_then(|()| SocketFile::record(path).map_err(fail));
    match placed {
        Ok(file) => Ok((listener, file)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (live, file) = bind_in_place(&path, &SocketAccess::default()).unwrap();
        let err = bind_in_place(&path, &SocketAccess::default()).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()));
        let chain = format!("{:?}", std::error::Error::source(&err));
        assert!(chain.contains("another server is listening"), "{chain}");
        let err = bind_ready(&path, &SocketAccess::default()).unwrap_err();
        assert!(format!("{:?}", std::error::Error::source(&err)).contains("another server"));
        // The refused attempts left the live socket in place.
        assert_eq!(SocketFile::record(&path).unwrap().ino, file.ino);
        drop(live);
        let (_again, again) = bind_in_place(&path, &SocketAccess::default()).unwrap();
        assert_ne!(again.ino, file.ino);
    }

    #[test]
    fn only_the_socket_bound_here_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (first, file) = bind_in_place(&path, &SocketAccess::default()).unwrap();
        // Someone replaced it (e.g. an operator started another server).
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let (_second, second) = bind_in_place(&path, &SocketAccess::default()).unwrap();
        file.remove();
        assert!(path.exists(), "the other server's socket was removed");
        second.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_directory_others_may_write_without_sticky_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        for bind in [bind_in_place, bind_ready] {
            let err = bind(&open.join("s.sock"), &SocketAccess::default()).unwrap_err();
            let why = format!("{:?}", std::error::Error::source(&err));
            assert!(why.contains("writable by every user"), "{why}");
        }
        // A subdirectory of it inherits the danger (it can be renamed away).
        let sub = open.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(bind_in_place(&sub.join("s.sock"), &SocketAccess::default()).is_err());
        // With the sticky bit (as /tmp) it is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind_in_place(&open.join("s.sock"), &SocketAccess::default()).unwrap();
    }

    #[test]
    fn sockets_have_their_final_mode_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Checked before any chmod: the mode came with the bind.
        let _l = bind_with_mode(&path, 0o660).unwrap();
        assert_eq!(mode_of(&path), 0o660);
        let _l = bind_with_mode(&dir.path().join("t.sock"), 0o600).unwrap();
        assert_eq!(mode_of(&dir.path().join("t.sock")), 0o600);
        let access = SocketAccess {
            mode: 0o640,
            ..SocketAccess::default()
        };
        let (_l, f) = bind_ready(&dir.path().join("c.sock"), &access).unwrap();
        assert_eq!(mode_of(&f.path), 0o640);
    }

    #[test]
    fn a_missing_directory_is_created_0755() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/s.sock");
        bind_in_place(&path, &SocketAccess::default()).unwrap();
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o755);
        assert_eq!(mode_of(&dir.path().join("a")), 0o755);
    }
}
