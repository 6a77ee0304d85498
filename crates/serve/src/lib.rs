//! `extstorage-serve`: serving an ExtStorage volume to QEMU in one process.
//!
//! [`VolumeServer::start`] claims the volume on this node ([`claim`]),
//! attaches it through its provider, runs `open` (exclusive, or shared for a
//! live-migration target) and starts the vhost-user-blk backend on the
//! attached block device; [`VolumeServer::run`] serves until shut down,
//! drains in-flight I/O, then runs `close` and `detach`. Each script runs
//! under the core's per-operation lock, taken only for that script, so
//! other operations (`grow`, `setinfo`, `kvm-args`) work on a served volume.
//! If the process dies, the volume stays attached and the next `serve`
//! picks it up (attach is idempotent).
#![warn(missing_docs)]

pub mod claim;

use std::path::{Path, PathBuf};

use extstorage_core::{ExtStorage, Volume, VolumeSpec};
use extstorage_serve_api::{DeviceOptions, ListenOptions, RunDir};
use extstorage_vhost_user_blk::control::Identity;
use extstorage_vhost_user_blk::{Config, ServeSpec, Serving, ShutdownHandle};

/// The name of a volume's files in the run directory: provider and volume
/// joined unambiguously (provider names have no `.`).
pub fn volume_key(provider: &str, volume: &str) -> String {
    format!("{provider}.{volume}")
}

/// What can go wrong while serving a volume.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A provider script or a volume operation failed.
    #[error(transparent)]
    Volume(#[from] extstorage_core::Error),
    /// The backend could not start or failed.
    #[error(transparent)]
    Backend(#[from] extstorage_vhost_user_blk::Error),
    /// An option is unusable.
    #[error(transparent)]
    Options(#[from] extstorage_serve_api::Error),
    /// Another process serves the volume on this node.
    #[error(
        "volume {volume:?} of provider {provider:?} is already served on this node{}; stop \
         that server first (a volume is served at most once per node)",
        pid.map(|p| format!(" by pid {p}")).unwrap_or_default()
    )]
    AlreadyServed {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// The serving process, when known.
        pid: Option<u32>,
    },
    /// The claim file could not be used.
    #[error("serve claim {path}: {what}")]
    Claim {
        /// The claim file.
        path: PathBuf,
        /// What failed.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Serving stopped, but undoing `open` or `attach` failed.
    #[error("the backend stopped, but {step} failed; the volume may still be open or attached")]
    Cleanup {
        /// "close" or "detach".
        step: &'static str,
        /// The failure.
        #[source]
        source: Box<extstorage_core::Error>,
    },
}

impl Error {
    /// The class of the error, for exit codes: a volume served elsewhere
    /// is "busy", like a held volume lock.
    pub fn kind(&self) -> extstorage_core::ErrorKind {
        use extstorage_core::ErrorKind;
        match self {
            Error::Volume(e) => e.kind(),
            Error::AlreadyServed { .. } => ErrorKind::LockBusy,
            Error::Options(_) => ErrorKind::Invalid,
            Error::Backend(extstorage_vhost_user_blk::Error::InvalidConfig(_)) => {
                ErrorKind::Invalid
            }
            Error::Backend(_) | Error::Claim { .. } | Error::Cleanup { .. } => ErrorKind::Failed,
        }
    }
}

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// Which volume, with its ext params.
    pub volume: VolumeSpec,
    /// Run `open` with `VOL_OPEN_EXCLUSIVE=False` (the target of a live
    /// migration, while the source still has the volume open).
    pub shared: bool,
    /// On stop, leave the volume open and attached (e.g. for a restart).
    pub keep_attached: bool,
    /// How the backend serves it.
    pub device: DeviceOptions,
    /// Where it listens; with neither a socket nor a listen fd (nor
    /// systemd's), the run directory's default socket for the volume.
    pub listen: ListenOptions,
    /// The run directory (claim, control socket, default socket).
    pub run_dir: RunDir,
}

/// A served volume.
#[derive(Debug)]
pub struct VolumeServer<'a> {
    vol: Volume<'a>,
    serving: Serving,
    keep_attached: bool,
    control_socket: PathBuf,
    device_path: PathBuf,
    _claim: claim::Claim,
}

/// The default socket is used when nothing else says where to listen.
fn with_default_socket(mut listen: ListenOptions, run_dir: &RunDir, key: &str) -> ListenOptions {
    let inherited =
        listen.listen_fd.is_some() || extstorage_serve_api::systemd::listen_fd().is_some();
    if listen.socket.is_none() && !inherited {
        listen.socket = Some(run_dir.vhost_user_socket(key));
    }
    listen
}

impl<'a> VolumeServer<'a> {
    /// Claims, attaches, opens and starts serving. On a failure after
    /// attach, the volume is closed and detached again (unless
    /// `keep_attached`), so a failed start leaves nothing behind.
    pub fn start(es: &'a ExtStorage, req: ServeRequest) -> Result<VolumeServer<'a>, Error> {
        req.device.validate()?;
        let mut vol = es.volume(req.volume.clone())?;
        let provider = vol.provider().name.clone();
        let volume = vol.name().to_owned();
        let key = volume_key(&provider, &volume);
        let listen = with_default_socket(req.listen, &req.run_dir, &key);
        let claim = claim::claim(&req.run_dir.claim(&key), &provider, &volume)?;
        let info = vol.attach()?;
        let Some(device_path) = info.dev_path else {
            return Err(extstorage_core::Error::NoBlockDevice {
                provider,
                volume,
                what: "serve",
            }
            .into());
        };
        vol.open(!req.shared)?;
        let control_socket = req.run_dir.control_socket(&key);
        let started = Serving::start(ServeSpec {
            config: Config {
                path: device_path.clone(),
                device: req.device,
            },
            listen,
            control_socket: Some(control_socket.clone()),
            identity: Identity {
                provider: Some(provider.clone()),
                volume: Some(volume.clone()),
                socket: None,
            },
        });
        let serving = match started {
            Ok(s) => s,
            Err(e) => {
                if !req.keep_attached {
                    undo(&mut vol);
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            provider,
            volume,
            device = %device_path.display(),
            socket = ?serving.socket(),
            control_socket = %control_socket.display(),
            "serving"
        );
        Ok(VolumeServer {
            vol,
            serving,
            keep_attached: req.keep_attached,
            control_socket,
            device_path,
            _claim: claim,
        })
    }

    /// The vhost-user socket, unless inherited.
    pub fn socket(&self) -> Option<&Path> {
        self.serving.socket().map(PathBuf::as_path)
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The attached block device being served.
    pub fn device_path(&self) -> &Path {
        &self.device_path
    }

    /// The device options in force.
    pub fn device_options(&self) -> &DeviceOptions {
        &self.serving.device().config().device
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.serving.shutdown_handle()
    }

    /// Serves until shut down; then, unless `keep_attached`, runs `close`
    /// and `detach`.
    pub fn run(self) -> Result<(), Error> {
        let VolumeServer {
            mut vol,
            serving,
            keep_attached,
            ..
        } = self;
        let served = serving.run();
        if keep_attached {
            tracing::info!(
                volume = vol.name(),
                "stopped; the volume stays open and attached"
            );
            return Ok(served?);
        }
        let closed = vol.close();
        let detached = vol.shutdown();
        served?;
        closed.map_err(|source| Error::Cleanup {
            step: "close",
            source: Box::new(source),
        })?;
        detached.map_err(|source| Error::Cleanup {
            step: "detach",
            source: Box::new(source),
        })?;
        tracing::info!(volume = vol.name(), "stopped, closed and detached");
        Ok(())
    }
}

/// Best-effort close and detach after a failed start.
fn undo(vol: &mut Volume<'_>) {
    if let Err(e) = vol.close() {
        tracing::warn!(volume = vol.name(), error = %e, "close after a failed start failed");
    }
    if let Err(e) = vol.shutdown() {
        tracing::warn!(volume = vol.name(), error = %e, "detach after a failed start failed");
    }
}
