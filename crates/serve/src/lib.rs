//! `extstorage-serve`: serving an ExtStorage volume to QEMU in one process.
//!
//! [`VolumeServer::start`] claims the volume on this node ([`claim`]),
//! attaches it through its provider, runs `open` (exclusive, or shared for a
//! live-migration target) and starts the vhost-user-blk backend on the
//! attached block device, or, for a volume with no block device whose
//! provider prints a `kvm:rbd:...` URI, on that RBD image through librbd;
//! [`VolumeServer::run`] serves until shut down,
//! drains in-flight I/O, then runs `close` and `detach`. Each script runs
//! under the core's per-operation lock, taken only for that script, so
//! other operations (`grow`, `setinfo`, `kvm-args`) work on a served volume.
//! If the process dies, the volume stays attached and the next `serve`
//! picks it up (attach is idempotent).
#![warn(missing_docs)]

pub mod claim;
mod privsep;

use std::path::{Path, PathBuf};

use extstorage_core::{ExtStorage, Volume, VolumeSpec};
use extstorage_serve_api::{DeviceOptions, ListenOptions, RbdSource, RunDir};
use extstorage_vhost_user_blk::control::Identity;
use extstorage_vhost_user_blk::{Config, ServeSpec, Serving, ShutdownHandle};

/// The name of a volume's files in the run directory: provider and volume
/// joined unambiguously, the core's one join
/// ([`extstorage_core::names::volume_key`]).
pub fn volume_key(provider: &str, volume: &str) -> String {
    extstorage_core::names::volume_key(provider, volume)
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
    /// A directory for the claim or a socket could not be created.
    #[error(
        "cannot create directory {path}: {source}; create it (mode 0755) or choose another with \
         --run-dir or --socket"
    )]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The provider's rbd URI cannot be served by the rbd engine.
    #[error("volume {volume:?} of provider {provider:?} cannot be served through librbd: {reason}")]
    RbdUri {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The unprivileged I/O process (`--user`) could not be started.
    #[error("cannot start the unprivileged I/O process: {0}")]
    PrivilegeSeparation(String),
    /// The unprivileged I/O process ended on its own.
    #[error("the I/O process died ({0}); the volume stays open and attached for the next serve")]
    ServerDied(String),
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
            Error::Options(_) | Error::RbdUri { .. } => ErrorKind::Invalid,
            Error::Backend(extstorage_vhost_user_blk::Error::InvalidConfig(_)) => {
                ErrorKind::Invalid
            }
            Error::Backend(_)
            | Error::Claim { .. }
            | Error::Directory { .. }
            | Error::Cleanup { .. }
            | Error::PrivilegeSeparation(_)
            | Error::ServerDied(_) => ErrorKind::Failed,
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

/// Where the backend runs: in this process, or (with `--user`) in an
/// unprivileged child.
#[derive(Debug)]
enum Backend {
    InProcess(Box<Serving>),
    Child(privsep::ChildServer),
}

/// Stops a [`VolumeServer`] from another thread (e.g. a signal thread).
#[derive(Debug, Clone)]
pub struct StopHandle(StopInner);

#[derive(Debug, Clone)]
enum StopInner {
    InProcess(ShutdownHandle),
    Child(privsep::ChildStop),
}

impl StopHandle {
    /// Asks the backend to drain and stop; [`VolumeServer::run`] then
    /// closes and detaches.
    pub fn stop(&self) {
        match &self.0 {
            StopInner::InProcess(h) => h.shutdown(),
            StopInner::Child(c) => c.stop(),
        }
    }
}

/// A served volume.
#[derive(Debug)]
pub struct VolumeServer<'a> {
    vol: Volume<'a>,
    backend: Backend,
    keep_attached: bool,
    control_socket: PathBuf,
    device_path: PathBuf,
    device: DeviceOptions,
    _claim: claim::Claim,
}

/// Where to listen: the given socket or fd, else systemd's socket (named
/// explicitly, so an I/O child, whose pid is not LISTEN_PID, uses it
/// too), else the run directory's default socket for the volume.
fn resolve_listen(mut listen: ListenOptions, run_dir: &RunDir, key: &str) -> ListenOptions {
    if listen.socket.is_none() && listen.listen_fd.is_none() {
        listen.listen_fd = extstorage_serve_api::systemd::listen_fd();
        if listen.listen_fd.is_none() {
            listen.socket = Some(run_dir.vhost_user_socket(key));
        }
    }
    listen
}

impl<'a> VolumeServer<'a> {
    /// Claims, attaches, opens and starts serving. On a failure after
    /// attach, the volume is closed and detached again (unless
    /// `keep_attached`), so a failed start leaves nothing behind.
    pub fn start(es: &'a ExtStorage, req: ServeRequest) -> Result<VolumeServer<'a>, Error> {
        // Every option is checked before any script runs: a provider's
        // attach may touch shared storage (rbd) for nothing.
        req.device.validate()?;
        req.listen.check_on_host()?;
        let mut vol = es.volume(req.volume.clone())?;
        let provider = vol.provider().name.clone();
        let volume = vol.name().to_owned();
        let key = volume_key(&provider, &volume);
        let listen = resolve_listen(req.listen, &req.run_dir, &key);
        // Paths under the run directory fit unless the directory's own
        // name is too long.
        for path in [
            listen.socket.as_ref(),
            Some(&req.run_dir.control_socket(&key)),
        ]
        .into_iter()
        .flatten()
        {
            extstorage_serve_api::listen::check_socket_path("run-dir", path)?;
        }
        let separate = listen.user.is_some();
        // Made here with their modes, whatever the umask: the backend's
        // socket code would leave them to it.
        let socket_dir = listen.socket.as_deref().and_then(Path::parent);
        for dir in [Some(req.run_dir.serve_dir().as_path()), socket_dir]
            .into_iter()
            .flatten()
            .filter(|d| !d.as_os_str().is_empty())
        {
            extstorage_core::dirs::create_dir_mode(dir, extstorage_core::dirs::RUN_DIR_MODE)
                .map_err(|source| Error::Directory {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let claim = claim::claim(&req.run_dir.claim(&key), &provider, &volume)?;
        let info = vol.attach()?;
        // The block device when there is one; else an RBD image named by
        // the provider's userspace URI (the rbd engine); else nothing to serve.
        let config = match (info.dev_path, rbd_source(&provider, &volume, &info.uris)) {
            (Some(path), _) => Config {
                path,
                device: req.device.clone(),
                rbd: None,
            },
            (None, Some(Ok(src))) => Config {
                device: req.device.clone(),
                ..Config::rbd(src)
            },
            (None, Some(Err(e))) => {
                if !req.keep_attached {
                    undo(&mut vol);
                }
                return Err(e);
            }
            (None, None) => {
                if !req.keep_attached {
                    undo(&mut vol);
                }
                return Err(extstorage_core::Error::NoBlockDevice {
                    provider,
                    volume,
                    what: "serve",
                }
                .into());
            }
        };
        let device_path = config.path.clone();
        if let Err(e) = vol.open(!req.shared) {
            if !req.keep_attached {
                undo(&mut vol);
            }
            return Err(e.into());
        }
        let control_socket = req.run_dir.control_socket(&key);
        let spec = ServeSpec {
            config,
            listen,
            control_socket: Some(control_socket.clone()),
            identity: Identity {
                provider: Some(provider.clone()),
                volume: Some(volume.clone()),
                socket: None,
            },
        };
        let started = if separate {
            privsep::spawn(spec).map(Backend::Child)
        } else {
            Serving::start(spec)
                .map(|s| Backend::InProcess(Box::new(s)))
                .map_err(Error::from)
        };
        let backend = match started {
            Ok(b) => b,
            Err(e) => {
                if !req.keep_attached {
                    undo(&mut vol);
                }
                return Err(e);
            }
        };
        let server = VolumeServer {
            vol,
            backend,
            keep_attached: req.keep_attached,
            control_socket,
            device_path,
            device: req.device,
            _claim: claim,
        };
        tracing::info!(
            provider,
            volume,
            device = %server.device_path.display(),
            socket = ?server.socket(),
            control_socket = %server.control_socket.display(),
            unprivileged = separate,
            "serving"
        );
        Ok(server)
    }

    /// The vhost-user socket, unless inherited.
    pub fn socket(&self) -> Option<&Path> {
        match &self.backend {
            Backend::InProcess(s) => s.socket(),
            Backend::Child(c) => c.socket(),
        }
        .map(PathBuf::as_path)
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// The attached block device being served (`rbd:POOL/IMAGE` for an
    /// RBD image served through librbd).
    pub fn device_path(&self) -> &Path {
        &self.device_path
    }

    /// The device options in force.
    pub fn device_options(&self) -> &DeviceOptions {
        &self.device
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(match &self.backend {
            Backend::InProcess(s) => StopInner::InProcess(s.shutdown_handle()),
            Backend::Child(c) => StopInner::Child(c.stop_handle()),
        })
    }

    /// Serves until shut down; then, unless `keep_attached`, runs `close`
    /// and `detach`.
    pub fn run(self) -> Result<(), Error> {
        let VolumeServer {
            mut vol,
            backend,
            keep_attached,
            ..
        } = self;
        let served = match backend {
            Backend::InProcess(s) => s.run().map_err(Error::from),
            Backend::Child(c) => match c.wait() {
                // A crashed I/O process: leave the volume attached for the
                // next serve (as if this process had crashed).
                Err(e @ Error::ServerDied(_)) => return Err(e),
                other => other,
            },
        };
        if keep_attached {
            tracing::info!(
                volume = vol.name(),
                "stopped; the volume stays open and attached"
            );
            return served;
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

/// The RBD image a `kvm:rbd:...` attach line names, if the provider
/// printed one: what the rbd engine serves when there is no block device.
/// The key itself is never taken from a URI (librbd finds it through the
/// conf, as QEMU does), nor are monitors or other Ceph options: those
/// belong in the conf.
fn rbd_source(provider: &str, volume: &str, uris: &[String]) -> Option<Result<RbdSource, Error>> {
    let rbd = uris
        .iter()
        .find_map(|line| match extstorage_uri::parse_attach_line(line) {
            Ok((hv, extstorage_uri::Source::Rbd(r))) if hv == "kvm" => Some(r),
            _ => None,
        })?;
    let refuse = |what: &str| {
        Some(Err(Error::RbdUri {
            provider: provider.to_owned(),
            volume: volume.to_owned(),
            reason: format!(
                "its URI carries {what}, which the rbd engine takes only from the ceph.conf: put \
                 it in the conf the provider names"
            ),
        }))
    };
    if rbd.key.is_some() {
        return refuse("a key");
    }
    if !rbd.mon_hosts.is_empty() {
        return refuse("monitor addresses");
    }
    if !rbd.auth_client_required.is_empty() || !rbd.options.is_empty() {
        return refuse("Ceph options");
    }
    let src = RbdSource {
        pool: rbd.pool,
        namespace: rbd.namespace,
        image: rbd.image,
        snapshot: rbd.snapshot,
        conf: rbd.conf.map(PathBuf::from),
        id: rbd.user,
        keyring: None,
        timeout_secs: extstorage_serve_api::rbd::DEFAULT_RBD_TIMEOUT,
    };
    Some(src.validate().map(|()| src).map_err(|e| Error::RbdUri {
        provider: provider.to_owned(),
        volume: volume.to_owned(),
        reason: e.to_string(),
    }))
}

/// Best-effort close and detach after a failed start. A signal that
/// interrupted the start is forgotten first, or no script would run (the
/// error already carries it); a further one interrupts the cleanup.
fn undo(vol: &mut Volume<'_>) {
    if let Some(signal) = extstorage_core::interrupt::pending() {
        tracing::info!(volume = vol.name(), %signal, "start interrupted; closing and detaching");
        extstorage_core::interrupt::clear();
    }
    if let Err(e) = vol.close() {
        tracing::warn!(volume = vol.name(), error = %e, "close after a failed start failed");
    }
    if let Err(e) = vol.shutdown() {
        tracing::warn!(volume = vol.name(), error = %e, "detach after a failed start failed");
    }
}
