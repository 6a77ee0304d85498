//! Errors of the serve API.

use std::path::PathBuf;

/// A bad option value, or a failed control-socket exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has a value a backend or frontend cannot use.
    #[error("invalid --{option}: {reason}")]
    InvalidOption {
        /// The option, without dashes.
        option: &'static str,
        /// Why, and what is allowed.
        reason: String,
    },
    /// A control-socket request or reply that does not follow the protocol.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// No backend answers on the control socket.
    #[error(
        "nothing answers on control socket {path}; is the backend running (extstorage serve, or \
         extstorage-vhost-user-blk serve --control-socket)?"
    )]
    NotServing {
        /// The control socket.
        path: PathBuf,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The exchange with a backend failed after connecting.
    #[error("control socket {path}: {what}")]
    Control {
        /// The control socket.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// The backend answered with an error.
    #[error("the backend behind {path} refused {request}: {message}")]
    Refused {
        /// The control socket.
        path: PathBuf,
        /// The request.
        request: &'static str,
        /// The backend's message.
        message: String,
    },
}
