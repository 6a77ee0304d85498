//! Errors of the vhost-user-blk backend.

use std::path::PathBuf;

/// What went wrong while setting up or running the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has a value the device cannot use.
    #[error(transparent)]
    InvalidConfig(#[from] extstorage_serve_api::Error),
    /// The backing store could not be opened or inspected.
    #[error(transparent)]
    Backing(#[from] extstorage_blockio::Error),
    /// The requested engine cannot run here.
    #[error("cannot start the {engine} I/O engine (use --engine sync or auto)")]
    Engine {
        /// The engine asked for.
        engine: crate::EngineKind,
        /// Why it failed.
        #[source]
        source: extstorage_blockio::Error,
    },
    /// The vhost-user socket could not be created.
    #[error(
        "cannot listen on vhost-user socket {path}: check the directory exists and is writable"
    )]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The inherited listening fd is unusable.
    #[error("fd {fd} is not a listening unix socket: pass the socket given by the service manager")]
    ListenFd {
        /// The fd number.
        fd: i32,
    },
    /// The socket's owner, group or mode could not be set.
    #[error("cannot give socket {path} {what}: {reason}")]
    SocketAccess {
        /// The socket path.
        path: PathBuf,
        /// What was being set ("owner nobody", "mode 0660", ...).
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// Dropping privileges failed.
    #[error("cannot serve as user {user:?}: {reason}")]
    DropPrivileges {
        /// The user asked for.
        user: String,
        /// Why it failed.
        reason: String,
    },
    /// The sandbox of an unprivileged server could not be set up.
    #[error("cannot sandbox the serving process ({what}): {reason}")]
    Sandbox {
        /// The step that failed.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A test-only environment variable has a value it cannot take
    /// (feature `test-hooks` only).
    #[cfg(any(test, feature = "test-hooks"))]
    #[error("test-only variable {var}={value:?} is malformed: expected {expected} (or unset it)")]
    TestOption {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it takes.
        expected: &'static str,
    },
    /// The vhost-user daemon machinery failed.
    #[error("vhost-user daemon error: {0}")]
    Daemon(String),
    /// A system call in the serving loop failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be set up.
    #[error("cannot listen on control socket {path}: check the directory exists and is writable")]
    Control {
        /// The control socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and its sources joined as the binaries print them
    /// (anyhow's `{:#}`).
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// The engine's failure appears once in the printed chain, not in the
    /// message and again as its source.
    #[test]
    fn engine_error_prints_its_cause_once() {
        let e = Error::Engine {
            engine: crate::EngineKind::Uring,
            source: extstorage_blockio::Error::Engine {
                engine: "io_uring",
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            },
        };
        let text = chain(&e);
        assert_eq!(
            text.matches("cannot create the io_uring I/O engine")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("Operation not permitted").count(), 1, "{text}");
        assert!(text.contains("use --engine sync or auto"), "{text}");
    }
}
