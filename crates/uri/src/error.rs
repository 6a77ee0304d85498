//! The crate's error type.

/// Everything that can go wrong while parsing or rendering a storage source.
///
/// Messages say what was wrong and what to do about it. They never contain a
/// password or key: inputs are shown with their secrets replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The input was empty (or only whitespace).
    #[error("empty storage location: give an absolute path or a URI such as rbd:pool/image")]
    Empty,
    /// The protocol existed once but QEMU removed it.
    #[error(
        "the '{protocol}' protocol was removed from QEMU in version {removed_in}; \
         move the volume to a supported protocol (rbd, nbd, iscsi, ...)"
    )]
    RemovedProtocol {
        /// Protocol name as written.
        protocol: String,
        /// QEMU release that removed it.
        removed_in: &'static str,
    },
    /// A `name:` prefix that is not a storage protocol QEMU knows.
    #[error(
        "unknown storage protocol '{0}': expected an absolute path or one of \
         file, host_device, rbd, gluster, iscsi, iser, nbd, nfs, ssh, http, https, ftp, ftps"
    )]
    UnknownProtocol(String),
    /// A path that does not start with `/`.
    #[error(
        "relative path '{0}': give an absolute path (QEMU reads a 'name:' prefix as a protocol)"
    )]
    RelativePath(String),
    /// The input is not a valid URI/filename of its protocol.
    #[error("invalid {protocol} location '{input}': {reason}")]
    Syntax {
        /// Protocol being parsed.
        protocol: &'static str,
        /// The input, secrets redacted.
        input: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// One field of the model holds a value QEMU would not accept.
    #[error("invalid {field} '{value}': {reason}")]
    InvalidValue {
        /// Which field (e.g. "host", "node name").
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A path that cannot be passed to QEMU as text.
    #[error("path '{0}' is not valid UTF-8: rename it, QEMU option strings and JSON need UTF-8")]
    NonUtf8Path(String),
    /// An attach-script output line that is not `<hypervisor>:<uri>`.
    #[error("invalid attach line '{line}': {reason}")]
    AttachLine {
        /// The line, secrets redacted.
        line: String,
        /// What is wrong.
        reason: String,
    },
    /// Disk options that contradict each other or the source.
    #[error("conflicting disk options: {0}")]
    Conflict(String),
    /// The source uses something the requested output form cannot express.
    #[error("cannot render as {form}: {reason}")]
    NotRepresentable {
        /// The output form ("-blockdev", "legacy filename", ...).
        form: &'static str,
        /// What cannot be expressed and what to do instead.
        reason: String,
    },
    /// The source carries a password or key but no directory for secret files was given.
    #[error(
        "the {protocol} source carries a secret; set DiskOptions::secret_dir so it can be \
         passed in a file (-object secret) instead of on the command line"
    )]
    MissingSecretDir {
        /// Protocol of the source.
        protocol: &'static str,
    },
    /// An access mode that needs the block device, for a volume without one.
    #[error(
        "{mode} access needs a block device but attach printed none (the provider offers \
         userspace access only); use userspace access"
    )]
    NoBlockDevice {
        /// The access mode asked for.
        mode: &'static str,
    },
    /// Text that is not a QEMU version.
    #[error(
        "cannot read a QEMU version from '{0}': expected text like 'QEMU emulator version 10.0.2'"
    )]
    Version(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = UriError> = std::result::Result<T, E>;
