//! Creating listening unix sockets: replacing only stale sockets, never
//! other files, and giving them their owner and mode.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use extstorage_serve_api::SocketAccess;

use crate::Error;

/// Refuses to replace anything at `path` that is not a socket; creates the
/// parent directory.
fn prepare(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        // 0755 at most, whatever the umask: QEMU's user needs search
        // permission, nobody else needs to write.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(fail)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(fail(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it or choose another path",
            )));
        }
    }
    Ok(())
}

/// Binds and listens on `path` (replacing a stale socket) and gives it
/// `access`. Between bind and listen a client may see the file and be
/// refused: callers signal readiness separately.
pub fn bind_in_place(path: &Path, access: &SocketAccess) -> Result<UnixListener, Error> {
    prepare(path)?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| Error::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    if let Err(e) = crate::privileges::apply_socket_access(path, access) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// Binds and listens on a unix socket under a temporary name next to
/// `path`, gives it `access` (owner, group, mode), then renames it over
/// `path`. A stale socket at `path` is replaced; anything else there (a
/// regular file, a directory) is refused. The parent directory is created.
/// A client that sees the file can connect at once, so "the socket
/// exists" is a readiness signal; the price is that the socket's own
/// address (getsockname) is the temporary name.
pub fn bind_ready(path: &Path, access: &SocketAccess) -> Result<UnixListener, Error> {
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
    let listener = UnixListener::bind(&tmp).map_err(fail)?;
    let placed = crate::privileges::apply_socket_access(&tmp, access)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(fail));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}
