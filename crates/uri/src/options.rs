//! Disk options (`cache`, `aio`, `discard`, ...) and the rules that tie them
//! to each other and to the source.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Result, UriError};
use crate::model::{Source, check_abs, path_str};

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal $(| $alias:literal)*,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var,)+ }
        impl $name {
            /// The keyword QEMU uses.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = UriError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s $(| $alias)* => Ok($name::$var),)+
                    _ => Err(UriError::InvalidValue {
                        field: stringify!($name),
                        value: s.to_string(),
                        reason: format!("expected one of: {}", [$($s),+].join(", ")),
                    }),
                }
            }
        }
    };
}

keyword_enum!(
    /// QEMU's `-drive cache=` modes.
    CacheMode {
        /// Host page cache, guest sees a write cache (QEMU default).
        Writeback = "writeback",
        /// O_DIRECT, guest sees a write cache (required for shared storage).
        None = "none",
        /// Host page cache, every write flushed.
        Writethrough = "writethrough",
        /// O_DIRECT and every write flushed.
        Directsync = "directsync",
        /// Flushes ignored: test machines only.
        Unsafe = "unsafe",
    }
);

impl CacheMode {
    /// `cache.direct` in `-blockdev` terms.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }
    /// `cache.no-flush` in `-blockdev` terms.
    pub fn no_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
    /// The guest device's `write-cache=` for this mode.
    pub fn write_cache(self) -> bool {
        !matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
}

keyword_enum!(
    /// QEMU's `aio=` engines (file and host_device nodes only).
    Aio {
        /// Thread pool.
        Threads = "threads",
        /// Linux AIO; needs `cache.direct`.
        Native = "native",
        /// io_uring.
        IoUring = "io_uring",
    }
);

keyword_enum!(
    /// `discard=`: what to do with guest discard requests.
    Discard {
        /// Drop them (QEMU default).
        Ignore = "ignore" | "off",
        /// Pass them down.
        Unmap = "unmap" | "on",
    }
);

keyword_enum!(
    /// `detect-zeroes=`.
    DetectZeroes {
        /// No detection.
        Off = "off",
        /// Turn zero writes into write-zeroes.
        On = "on",
        /// Turn zero writes into discards (needs `discard=unmap`).
        Unmap = "unmap",
    }
);

/// How a disk is opened, independent of where its data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Cache mode.
    pub cache: CacheMode,
    /// I/O engine for local sources; `None` is QEMU's default (threads).
    pub aio: Option<Aio>,
    /// Discard handling.
    pub discard: Discard,
    /// Zero-write detection; `None` leaves QEMU's default (off).
    pub detect_zeroes: Option<DetectZeroes>,
    /// Open read-only.
    pub read_only: bool,
    /// The disk is a Ganeti ext disk: shared storage that live-migrates, so
    /// Ganeti's rule applies and the cache mode must be `none`.
    pub shared: bool,
    /// Directory for secret files (passwords, keys). Required when the
    /// source has a secret; the files are written by the caller with
    /// [`crate::secret_files::write_secret_files`].
    pub secret_dir: Option<PathBuf>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            cache: CacheMode::Writeback,
            aio: None,
            discard: Discard::Ignore,
            detect_zeroes: None,
            read_only: false,
            shared: false,
            secret_dir: None,
        }
    }
}

impl DiskOptions {
    /// What Ganeti uses for ext disks: shared, `cache=none`.
    pub fn ganeti_ext() -> Self {
        DiskOptions {
            cache: CacheMode::None,
            shared: true,
            ..DiskOptions::default()
        }
    }

    /// Checks the options against each other and against `source`.
    pub fn validate(&self, source: &Source) -> Result<()> {
        if self.aio.is_some() && !source.is_local() {
            return Err(UriError::Conflict(format!(
                "aio applies to files and block devices only, not to {} sources; remove it",
                source.driver()
            )));
        }
        if self.aio == Some(Aio::Native) && !self.cache.direct() {
            return Err(UriError::Conflict(format!(
                "aio=native needs cache.direct=on (cache=none or directsync), not cache={}",
                self.cache
            )));
        }
        if self.shared && self.cache != CacheMode::None {
            return Err(UriError::Conflict(format!(
                "shared (ext) disks must use cache=none so live migration stays \
                 consistent, not cache={}",
                self.cache
            )));
        }
        if self.detect_zeroes == Some(DetectZeroes::Unmap) && self.discard != Discard::Unmap {
            return Err(UriError::Conflict(
                "detect-zeroes=unmap needs discard=unmap".into(),
            ));
        }
        if matches!(source, Source::Curl(_)) && !self.read_only {
            return Err(UriError::Conflict(format!(
                "{} sources are read-only: set read_only",
                source.driver()
            )));
        }
        if let Source::Rbd(r) = source
            && r.snapshot.is_some()
            && !self.read_only
        {
            return Err(UriError::Conflict(
                "rbd snapshots open read-only: set read_only".into(),
            ));
        }
        if source.has_secret() {
            match &self.secret_dir {
                None => {
                    return Err(UriError::MissingSecretDir {
                        protocol: source.driver(),
                    });
                }
                Some(d) => check_abs(&path_str(d)?)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Source {
        Source::from_file("/srv/a.img").unwrap()
    }

    #[test]
    fn keywords() {
        assert_eq!("none".parse::<CacheMode>().unwrap(), CacheMode::None);
        assert_eq!("on".parse::<Discard>().unwrap(), Discard::Unmap);
        assert_eq!(Aio::IoUring.to_string(), "io_uring");
        let e = "fast".parse::<CacheMode>().unwrap_err().to_string();
        assert!(e.contains("writeback") && e.contains("fast"), "{e}");
    }

    #[test]
    fn aio_rules() {
        let mut o = DiskOptions {
            aio: Some(Aio::Native),
            ..DiskOptions::default()
        };
        assert!(
            matches!(o.validate(&file()), Err(UriError::Conflict(m)) if m.contains("aio=native"))
        );
        o.cache = CacheMode::None;
        o.validate(&file()).unwrap();
        let rbd = Source::parse_legacy("rbd:p/i").unwrap();
        assert!(matches!(o.validate(&rbd), Err(UriError::Conflict(m)) if m.contains("rbd")));
        o.aio = None;
        o.validate(&rbd).unwrap();
    }

    #[test]
    fn ganeti_and_other_rules() {
        let mut o = DiskOptions::ganeti_ext();
        o.validate(&file()).unwrap();
        o.cache = CacheMode::Writeback;
        assert!(o.validate(&file()).is_err());
        let z = DiskOptions {
            detect_zeroes: Some(DetectZeroes::Unmap),
            ..DiskOptions::default()
        };
        assert!(z.validate(&file()).is_err());
        let http = Source::parse_legacy("http://127.0.0.1/a.img").unwrap();
        assert!(DiskOptions::default().validate(&http).is_err());
        let snap = Source::parse_legacy("rbd:p/i@s").unwrap();
        assert!(DiskOptions::default().validate(&snap).is_err());
        let keyed = Source::parse_legacy("rbd:p/i:key=AQAAAA==").unwrap();
        assert_eq!(
            DiskOptions::default().validate(&keyed),
            Err(UriError::MissingSecretDir { protocol: "rbd" })
        );
    }
}
