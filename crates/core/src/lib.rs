//! `extstorage-core`: Ganeti's ExtStorage interface in Rust.
//!
//! A *provider* is a directory of scripts found in an ordered search path
//! ([`SearchPath`]); a [`Volume`] runs those scripts with the environment
//! Ganeti defines (`VOL_NAME`, `VOL_SIZE`, `EXTP_<NAME>`, ...), a clean
//! environment, a per-action timeout that kills the script's process group,
//! bounded output capture, per-action log files and a per-volume lock.
//!
//! ```no_run
//! use extstorage_core::{Config, ExtStorage, VolumeSpec};
//! let es = ExtStorage::new(Config::default());
//! let mut vol = es.volume(VolumeSpec {
//!     provider: "loopfile".into(),
//!     name: "vol1".into(),
//!     params: vec![("dir".into(), "/srv/vols".into())],
//!     ..Default::default()
//! })?;
//! let info = vol.create(64)?;
//! println!("{:?}", info.dev_path);
//! # Ok::<(), extstorage_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod dirs;
pub mod error;
pub mod interrupt;
mod keeper;
pub mod lock;
pub mod names;
pub mod provider;
pub mod redact;
pub mod runner;
pub mod size;
mod sys;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
pub use provider::{Diagnosis, Parameter, Provider, SearchPath};
pub use redact::{looks_secret_name, redact};
pub use runner::RunnerConfig;
pub use size::parse_size_mib;
pub use volume::{
    Access, AttachInfo, Config, Dimensions, ExtStorage, Snapshot, SyncStatus, Volume, VolumeSpec,
};
