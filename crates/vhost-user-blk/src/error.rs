//! Errors of the vhost-user-blk backend.

use std::path::PathBuf;

/// What went wrong while setting up or running the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has a value the device cannot use.
    #[error("invalid --{what}: {why}")]
    InvalidConfig {
        /// The option.
        what: &'static str,
        /// Why it is rejected.
        why: String,
    },
    /// The backing store could not be opened or inspected.
    #[error(transparent)]
    Backing(#[from] extstorage_blockio::Error),
    /// The requested engine cannot run here.
    #[error("cannot start the {engine} I/O engine ({source}): use --engine sync or auto")]
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
    /// Talking to the control socket failed.
    #[error("control socket {path}: {what}; is the daemon running with --control-socket {path}?")]
    Control {
        /// The control socket path.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}
