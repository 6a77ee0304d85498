//! A vhost-user-blk backend: serves a file, a block device or a Ceph RBD
//! image (through librbd, loaded only then) to QEMU (or any
//! vhost-user frontend such as libblkio) over a unix socket.
//!
//! Layering: [`extstorage_virtio_blk`] parses descriptor chains,
//! [`extstorage_blockio`] moves bytes, and this crate glues them to
//! `vhost-user-backend`:
//!
//! - [`Device`] is the volume: the open backing store, its capacity, the
//!   write-cache mode and the channel for config-change messages. It lives
//!   as long as the daemon, across frontend connections.
//! - The backend (one per connection) implements the `&self`
//!   `VhostUserBackend` trait with one worker thread per queue; each queue
//!   owns its engine and its in-flight table behind its own mutex, so queues
//!   share no lock on the I/O path.
//! - [`Server`] accepts one frontend at a time on a listening socket and
//!   serves the next one when it disconnects, until [`ShutdownHandle::shutdown`].
//! - [`control`] answers the serve API's control-socket protocol (resize,
//!   status, config) for a running [`Device`].
//! - [`Serving`] runs one volume from start to stop (listen, control
//!   socket, privileges, growth watch), for the daemon and `extstorage serve`.
//! - [`stats`] counts requests, bytes, errors and latency per queue.
#![warn(missing_docs)]

mod backend;
mod channel;
pub mod control;
mod device;
mod dirty_log;
mod error;
mod inflight;
pub mod privileges;
pub mod sandbox;
mod sandbox_names;
pub mod serve;
mod server;
mod sigbus;
mod socket;
pub mod stats;
#[cfg(any(test, feature = "test-hooks"))]
mod testonly;
pub mod threads;

pub use device::Device;
pub use error::Error;
pub use serve::{ServeSpec, Serving};
pub use server::{Server, ShutdownHandle};

/// Which I/O engine each queue uses: blockio's vocabulary.
pub use extstorage_blockio::EngineKind;
pub use extstorage_serve_api::{DeviceOptions, Engine, RbdSource, WriteCache};

/// The blockio engine for the configured [`Engine`]: the one place where
/// the serve API's choice meets blockio's engines.
pub fn engine_kind(engine: Engine) -> EngineKind {
    match engine {
        Engine::Auto => EngineKind::Auto,
        Engine::Sync => EngineKind::Sync,
        Engine::Uring => EngineKind::Uring,
    }
}

/// Everything needed to serve one volume: the backing and the device
/// options (the serve API's typed configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file or block device to serve; with [`rbd`](Self::rbd), only a
    /// name for logs and status (`rbd:POOL/IMAGE`, see [`Config::rbd`]).
    pub path: std::path::PathBuf,
    /// How it is served.
    pub device: DeviceOptions,
    /// Serve this Ceph RBD image through librbd instead of `path`.
    pub rbd: Option<RbdSource>,
}

impl Config {
    /// A configuration with the documented defaults (one queue) for `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            device: DeviceOptions::default(),
            rbd: None,
        }
    }

    /// A configuration serving the RBD image `source`, with the documented
    /// defaults (one queue); `path` becomes `rbd:POOL/IMAGE[@SNAP]`.
    pub fn rbd(source: RbdSource) -> Self {
        Self {
            path: format!("rbd:{}", source.spec()).into(),
            device: DeviceOptions::default(),
            rbd: Some(source),
        }
    }

    /// Checks the values a frontend or the kernel would choke on.
    pub fn validate(&self) -> Result<(), Error> {
        self.device.validate()?;
        if let Some(cpus) = &self.device.queue_cpus {
            check_cpus_allowed(cpus)?;
        }
        if let Some(rbd) = &self.rbd {
            rbd.validate()?;
            if rbd.snapshot.is_some() && !self.device.read_only {
                return Err(extstorage_serve_api::Error::InvalidOption {
                    option: "rbd",
                    reason: format!(
                        "snapshot {} is read-only: add --read-only to serve it",
                        rbd.spec()
                    ),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Refuses a `--queue-cpus` CPU this process may not run on (offline,
/// absent, or outside its cpuset), naming the ones it may.
fn check_cpus_allowed(cpus: &extstorage_serve_api::CpuList) -> Result<(), Error> {
    let Ok(allowed) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Ok(());
    };
    let may = |cpu: usize| allowed.is_set(cpu).unwrap_or(false);
    let Some(&bad) = cpus.cpus().iter().find(|&&c| !may(usize::from(c))) else {
        return Ok(());
    };
    let list: Vec<String> = (0..nix::sched::CpuSet::count())
        .filter(|&c| may(c))
        .map(|c| c.to_string())
        .collect();
    let list = list
        .join(",")
        .parse::<extstorage_serve_api::CpuList>()
        .map_or_else(|_| "none".to_owned(), |l| l.to_string());
    Err(extstorage_serve_api::Error::InvalidOption {
        option: "queue-cpus",
        reason: format!(
            "CPU {bad} is not one this daemon may run on (allowed: {list}): pick from those, or widen its cpuset"
        ),
    }
    .into())
}
