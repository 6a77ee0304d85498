//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while finding providers or running scripts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A provider or volume name failed validation.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// "provider", "volume" or "snapshot".
        kind: &'static str,
        /// The rejected name (debug-escaped when printed).
        name: String,
        /// Why it was rejected and what is allowed.
        reason: &'static str,
    },
    /// No directory in the search path holds the provider.
    #[error(
        "ExtStorage provider {provider:?} not found in the search path [{searched}]; \
         check the name or add its parent directory with --search-path"
    )]
    ProviderNotFound {
        /// The provider name asked for.
        provider: String,
        /// The directories searched, joined with ", ".
        searched: String,
    },
    /// The provider exists but is unusable.
    #[error("ExtStorage provider {provider:?} at {} is invalid: {reason}", path.display())]
    InvalidProvider {
        /// The provider name.
        provider: String,
        /// The provider directory.
        path: PathBuf,
        /// What is wrong (missing file, not executable, ...).
        reason: String,
    },
    /// An ext param is not listed in the provider's parameters.list.
    #[error(
        "unknown parameter {name:?} for ExtStorage provider {provider:?}; known parameters: [{known}]"
    )]
    UnknownParameter {
        /// The provider name.
        provider: String,
        /// The unknown parameter.
        name: String,
        /// The known parameters, joined with ", ".
        known: String,
    },
    /// A parameter name or value cannot be passed in the environment.
    #[error("invalid parameter {name:?}: {reason}")]
    InvalidParameter {
        /// The parameter name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A size or other argument is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The script ran and exited unsuccessfully.
    #[error(
        "External storage's {action} script failed ({status}) for volume {volume:?} of provider \
         {provider:?}, last lines of output:\n{tail}"
    )]
    ScriptFailed {
        /// The action (script name).
        action: String,
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// "exit status N" or "killed by signal SIG".
        status: String,
        /// The last lines of output (at most 20).
        tail: String,
    },
    /// The script exceeded its time limit; its process group was killed.
    #[error(
        "External storage's {action} script for volume {volume:?} of provider {provider:?} timed \
         out after {timeout:?}; its process group was killed. Last lines of output:\n{tail}"
    )]
    Timeout {
        /// The action (script name).
        action: String,
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// The limit that was exceeded.
        timeout: Duration,
        /// The last lines of output (at most 20).
        tail: String,
    },
    /// Another operation holds the volume lock for longer than we wait.
    #[error(
        "volume {volume:?} of provider {provider:?} is busy: another operation held the lock {} \
         for longer than {waited:?}; retry later or raise --lock-timeout",
        path.display()
    )]
    LockBusy {
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The provider does not implement an optional operation.
    #[error("{operation} not supported by provider {provider:?}")]
    NotSupported {
        /// The operation ("snapshot", "rename", ...).
        operation: &'static str,
        /// The provider name.
        provider: String,
    },
    /// attach printed something unusable.
    #[error("attach of volume {volume:?} (provider {provider:?}) returned bad output: {reason}")]
    BadAttachOutput {
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// What was wrong.
        reason: String,
    },
    /// No userspace URI for the requested hypervisor.
    #[error(
        "Userspace access is not supported by the '{provider}' ExtStorage provider for the \
         '{hypervisor}' hypervisor"
    )]
    NoUserspaceUri {
        /// The provider name.
        provider: String,
        /// The hypervisor asked for.
        hypervisor: String,
    },
    /// An operation needs a block device but the volume has none.
    #[error(
        "volume {volume:?} of provider {provider:?} has no block device (userspace access only); \
         {what} needs one"
    )]
    NoBlockDevice {
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// The operation that needed the device.
        what: &'static str,
    },
    /// A SIGINT, SIGTERM or SIGHUP stopped the operation (see
    /// [`crate::interrupt`]).
    #[error("interrupted by {} {what}", signal_name(*.signal))]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What was interrupted and what became of it: a running script's
        /// group was sent the signal and has exited; a lock wait stopped; a
        /// script did not start.
        what: String,
    },
    /// A log or lock file is a symbolic link or not a regular file.
    #[error(
        "refusing to use {what} {}: {reason}; remove it (extstorage never follows a \
         symbolic link to a log or lock file)",
        path.display()
    )]
    UnsafeFile {
        /// "log file" or "lock file".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The size given for a volume is not the size of its block device.
    #[error(
        "volume {volume:?} of provider {provider:?} is {measured_mib} MiB ({bytes} bytes, \
         measured on {}), not the {given_mib} MiB given with --size; omit --size to use the \
         measured size",
        device.display()
    )]
    SizeMismatch {
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// The attached device that was measured.
        device: PathBuf,
        /// Its size in bytes.
        bytes: u64,
        /// Its size in whole MiB.
        measured_mib: u64,
        /// The size that was given.
        given_mib: u64,
    },
    /// detach or remove runs attach first (as Ganeti), and attach failed.
    #[error(
        "{operation} of volume {volume:?} (provider {provider:?}) attaches the volume first, as \
         Ganeti does, and attach failed; if the volume is half gone (e.g. its backing storage \
         was deleted), retry with --force to run {operation} anyway"
    )]
    AttachFailedFirst {
        /// "detach" or "remove".
        operation: &'static str,
        /// The provider name.
        provider: String,
        /// The volume name.
        volume: String,
        /// Why attach failed.
        #[source]
        source: Box<Error>,
    },
    /// An I/O error with context.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The broad class of an [`Error`], for mapping to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operation was attempted and failed, or is not supported.
    Failed,
    /// The request was invalid (names, params, sizes, provider files).
    Invalid,
    /// A script timed out.
    Timeout,
    /// The volume lock was busy.
    LockBusy,
    /// A signal interrupted the operation ([`Error::interrupted_by`] says
    /// which).
    Interrupted,
}

/// The name of a signal number (`SIGTERM`), or the number.
fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}

impl Error {
    /// Classifies the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidName { .. }
            | Error::ProviderNotFound { .. }
            | Error::InvalidProvider { .. }
            | Error::UnknownParameter { .. }
            | Error::InvalidParameter { .. }
            | Error::InvalidArgument(_)
            | Error::SizeMismatch { .. } => ErrorKind::Invalid,
            Error::AttachFailedFirst { source, .. } => source.kind(),
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::LockBusy { .. } => ErrorKind::LockBusy,
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            Error::ScriptFailed { .. }
            | Error::UnsafeFile { .. }
            | Error::NotSupported { .. }
            | Error::BadAttachOutput { .. }
            | Error::NoUserspaceUri { .. }
            | Error::NoBlockDevice { .. }
            | Error::Io { .. } => ErrorKind::Failed,
        }
    }

    /// The signal that interrupted the operation, for
    /// [`ErrorKind::Interrupted`].
    pub fn interrupted_by(&self) -> Option<nix::sys::signal::Signal> {
        match self {
            Error::Interrupted { signal, .. } => nix::sys::signal::Signal::try_from(*signal).ok(),
            Error::AttachFailedFirst { source, .. } => source.interrupted_by(),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
