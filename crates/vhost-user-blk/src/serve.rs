//! Serving one volume from start to stop, as both the daemon binary and
//! `extstorage serve` do it: open the device, listen (on a path, an
//! inherited fd or systemd's socket), start the control socket, drop
//! privileges, watch a regular file for growth, then serve frontends until
//! shut down.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use extstorage_serve_api::{ListenOptions, systemd};

use crate::control::{self, ControlSocket, Identity};
use crate::{Config, Device, Error, Server, ShutdownHandle};

/// Everything needed to serve one volume.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The backing and its device options.
    pub config: Config,
    /// Where to listen and who may connect.
    pub listen: ListenOptions,
    /// Where to answer control requests (resize, status, config).
    pub control_socket: Option<PathBuf>,
    /// Who serves what, for the control socket's `config` answer.
    pub identity: Identity,
}

/// Takes ownership of the inherited fd `fd` once it is known to be a
/// listening unix socket; anything else is refused without closing it.
fn take_listening_fd(fd: i32) -> Result<OwnedFd, Error> {
    use nix::sys::socket::{
        AddressFamily, SockaddrLike, UnixAddr, getsockname, getsockopt, sockopt,
    };
    if fd < 0 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(Error::ListenFd { fd });
    }
    // SAFETY: `fd` is open (checked above) and only borrowed for the two
    // queries below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
    let unix = getsockname::<UnixAddr>(fd).is_ok_and(|a| a.family() == Some(AddressFamily::Unix));
    if !listening || !unix {
        return Err(Error::ListenFd { fd });
    }
    // SAFETY: `fd` is an open listening unix socket handed to this process
    // to serve on (--listen-fd or systemd's LISTEN_FDS); nothing else in
    // the process owns it, and from here on the OwnedFd does.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A volume being served: set up, not yet running.
#[derive(Debug)]
pub struct Serving {
    dev: Arc<Device>,
    server: Server,
    control: Option<ControlSocket>,
    socket: Option<PathBuf>,
    cleaner: Option<crate::sandbox::SocketCleaner>,
}

impl Serving {
    /// Opens the device, listens, starts the control socket and, when
    /// asked, drops to the unprivileged user. Frontends are served by
    /// [`run`](Self::run).
    pub fn start(spec: ServeSpec) -> Result<Serving, Error> {
        let listen = spec.listen;
        // Take an inherited socket before anything else opens a file, so
        // its number cannot be confused with one of ours.
        let inherited = match listen.listen_fd.or_else(systemd::listen_fd) {
            Some(fd) if listen.socket.is_none() => Some(take_listening_fd(fd)?),
            _ => None,
        };
        // Before any thread starts: threads inherit the bounding set.
        let seccomp = crate::sandbox::Mode::from_env()?;
        if listen.user.is_some() {
            crate::sandbox::restrict_privileges()?;
        }
        let dev = Device::open(spec.config)?;
        let (server, socket) = match (&listen.socket, inherited) {
            (Some(path), _) => (
                Server::bind(Arc::clone(&dev), path, &listen.access)?,
                Some(path.clone()),
            ),
            (None, Some(fd)) => (Server::from_listen_fd(Arc::clone(&dev), fd)?, None),
            (None, None) => {
                return Err(Error::Daemon(
                    "nowhere to listen: give --socket PATH or --listen-fd FD, or start under \
                     systemd socket activation"
                        .into(),
                ));
            }
        };
        let control = match &spec.control_socket {
            Some(path) => Some(control::spawn(
                Arc::clone(&dev),
                path,
                Identity {
                    socket: socket.clone(),
                    ..spec.identity
                },
            )?),
            None => None,
        };
        // Unprivileged, the server cannot unlink its sockets in a root-owned
        // directory: a root helper does it when the server exits.
        let cleaner = match &listen.user {
            Some(_) => {
                let made = [listen.socket.as_deref(), spec.control_socket.as_deref()];
                Some(crate::sandbox::SocketCleaner::spawn(
                    &made.into_iter().flatten().collect::<Vec<_>>(),
                )?)
            }
            None => None,
        };
        if let Some(user) = &listen.user {
            crate::privileges::drop_privileges(user)?;
        }
        crate::sandbox::install_for(dev.config(), listen.user.is_some(), seccomp)?;
        Ok(Serving {
            dev,
            server,
            control,
            socket,
            cleaner,
        })
    }

    /// The device being served.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The vhost-user socket path, unless inherited.
    pub fn socket(&self) -> Option<&PathBuf> {
        self.socket.as_ref()
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.server.shutdown_handle()
    }

    /// Serves frontends one after another until shut down; in-flight
    /// requests are completed before it returns. A regular file is watched
    /// for growth every second (block devices are resized on a control
    /// `resize` request). The control socket goes away on return, and the
    /// helper threads are joined, so the device is closed once the caller
    /// drops nothing else holding it (the volume can then be detached).
    pub fn run(self) -> Result<(), Error> {
        let watch_dev = Arc::clone(&self.dev);
        let (stop_watch, stopped) = std::sync::mpsc::channel::<()>();
        let watcher = crate::threads::spawn_quiet("size-watch", move || {
            // Wakes every second, or at once when `stop_watch` drops.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                if let Err(e) = watch_dev.poll_size() {
                    tracing::warn!(error = %e, "cannot check the backing size");
                }
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the size watcher",
            source,
        })?;
        let result = self.server.run();
        drop(stop_watch);
        let _ = watcher.join();
        drop(self.control);
        drop(self.cleaner);
        result
    }
}
