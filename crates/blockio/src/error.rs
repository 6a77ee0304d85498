//! Errors raised while opening or inspecting a backing store.

use std::path::PathBuf;

/// What went wrong while opening or inspecting a backing store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing path could not be opened.
    #[error(
        "cannot open backing store {path}: check it exists and is readable (and writable unless read-only)"
    )]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backing path is neither a regular file nor a block device.
    #[error("backing store {path} is neither a regular file nor a block device")]
    NotFileOrBlockDevice {
        /// The offending path.
        path: PathBuf,
    },
    /// Querying the size or metadata of the backing store failed.
    #[error("cannot read the size of backing store {path}")]
    Size {
        /// The backing path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An engine could not be created.
    #[error("cannot create the {engine} I/O engine")]
    Engine {
        /// Which engine.
        engine: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The logical block size asked for is not usable.
    #[error(
        "logical block size {size} for backing store {path} is not a power of two of at least 512: pick 512, 4096, ..."
    )]
    LogicalBlockSize {
        /// The backing path.
        path: PathBuf,
        /// The size asked for.
        size: u32,
    },
    /// The Ceph client libraries could not be loaded (rbd engine).
    #[error(transparent)]
    RbdLoad(#[from] crate::rbd::LoadError),
    /// A librados/librbd call failed while opening or inspecting an image.
    #[error("rbd image {image}: cannot {op} ({hint})")]
    Rbd {
        /// `pool/[namespace/]image[@snapshot]`.
        image: String,
        /// What was being done ("connect", "open the image", ...).
        op: &'static str,
        /// What to check.
        hint: &'static str,
        /// The errno librbd returned.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errno appears once when the error is printed with its chain
    /// (as the binaries do), not in the message and again as its source.
    #[test]
    fn rbd_error_prints_its_errno_once() {
        let e = Error::Rbd {
            image: "rbd/disk0".into(),
            op: "open the image",
            hint: "check it exists",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text,
            "rbd image rbd/disk0: cannot open the image (check it exists): No such file or directory (os error 2)"
        );
    }
}
