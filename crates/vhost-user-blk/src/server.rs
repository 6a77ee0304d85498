//! Accepting frontends one after another on one listening socket.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};

use extstorage_serve_api::SocketAccess;

use crate::backend::BlkBackend;
use crate::socket::SocketFile;
use crate::{Device, Error};

/// Serves a [`Device`] to one frontend at a time, keeping the socket
/// between connections.
pub struct Server {
    dev: Arc<Device>,
    listener: Listener,
    path: Option<PathBuf>,
    /// The socket file bound here, removed at exit if still ours.
    file: Option<SocketFile>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener.as_raw_fd())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Server`] from another thread (e.g. a signal handler
/// thread): the current connection is closed, in-flight requests are
/// completed and [`Server::run`] returns.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
}

struct ShutdownState {
    requested: AtomicBool,
    wake: EventFd,
    conn: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

impl std::fmt::Debug for ShutdownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownState")
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

impl ShutdownHandle {
    fn new() -> Result<Self, Error> {
        let wake = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(|source| Error::Io {
            what: "creating the shutdown eventfd",
            source,
        })?;
        Ok(Self {
            state: Arc::new(ShutdownState {
                requested: AtomicBool::new(false),
                wake,
                conn: Mutex::new(None),
            }),
        })
    }

    /// Asks the server to stop after draining.
    pub fn shutdown(&self) {
        self.state.requested.store(true, Ordering::Release);
        let _ = self.state.wake.write(1);
        if let Some(h) = self
            .state
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_requested(&self) -> bool {
        self.state.requested.load(Ordering::Acquire)
    }

    fn set_conn(&self, h: Option<vhost_user_backend::ShutdownHandle>) {
        let mut g = self.state.conn.lock().unwrap_or_else(|e| e.into_inner());
        *g = h;
        // A shutdown that raced with the connection start still closes it.
        if self.is_requested()
            && let Some(h) = g.as_ref()
        {
            h.shutdown();
        }
    }
}

impl Drop for Server {
    /// A socket this server created goes away with it (unless another
    /// has replaced it since).
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            file.remove();
        }
    }
}

impl Server {
    /// Listens on `path`, removing a stale socket file first (a live one
    /// is refused), and gives the socket the owner, group and mode in
    /// `access`.
    pub fn bind(dev: Arc<Device>, path: &Path, access: &SocketAccess) -> Result<Self, Error> {
        // Bound at its final name (QEMU and `ss` show the name it was bound
        // with); the control socket, created after this one listens, is the
        // readiness signal, as is sd_notify.
        let (listener, file) = crate::socket::bind_in_place(path, access)?;
        tracing::info!(socket = %path.display(), "listening for a vhost-user frontend");
        Ok(Self {
            dev,
            listener: Listener::from(listener),
            path: Some(path.to_path_buf()),
            file: Some(file),
            shutdown: ShutdownHandle::new()?,
        })
    }

    /// Serves on an inherited listening socket (socket activation).
    pub fn from_listen_fd(dev: Arc<Device>, fd: OwnedFd) -> Result<Self, Error> {
        let listening = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
            .unwrap_or(false);
        let unix =
            nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd.as_raw_fd()).is_ok();
        if !listening || !unix {
            return Err(Error::ListenFd { fd: fd.as_raw_fd() });
        }
        tracing::info!(
            fd = fd.as_raw_fd(),
            "listening for a vhost-user frontend on an inherited socket"
        );
        Ok(Self {
            dev,
            listener: Listener::from(UnixListener::from(fd)),
            path: None,
            file: None,
            shutdown: ShutdownHandle::new()?,
        })
    }

    /// A handle that stops [`run`](Self::run).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves frontends one after another until shut down. A frontend that
    /// disconnects or misbehaves ends only its own connection.
    pub fn run(mut self) -> Result<(), Error> {
        while !self.shutdown.is_requested() {
            if !self.wait_for_frontend()? {
                break;
            }
            if let Err(e) = self.serve_one() {
                tracing::error!(error = %e, "connection failed; waiting for the next frontend");
            }
        }
        tracing::info!(socket = ?self.path, "shutting down");
        Ok(())
    }

    /// Waits until a frontend connects (true) or shutdown is requested (false).
    fn wait_for_frontend(&self) -> Result<bool, Error> {
        loop {
            let (frontend, stop) = wait_readable(
                self.listener.as_raw_fd(),
                self.shutdown.state.wake.as_raw_fd(),
            )
            .map_err(|source| Error::Io {
                what: "waiting for a frontend",
                source,
            })?;
            if stop || self.shutdown.is_requested() {
                return Ok(false);
            }
            if frontend {
                return Ok(true);
            }
        }
    }

    fn serve_one(&mut self) -> Result<(), Error> {
        crate::sigbus::install()?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend =
            BlkBackend::new(Arc::clone(&self.dev), mem.clone()).map_err(|source| Error::Io {
                what: "creating the queues' stop events",
                source,
            })?;
        let mut daemon = VhostUserDaemon::new("vhost-user-blk".into(), backend.clone(), mem)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        let mut setup = Ok(());
        for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            if let Some(fd) = backend.completion_fd(q)
                && let Err(source) =
                    handler.register_listener(fd, EventSet::IN, backend.completion_event())
            {
                setup = Err(Error::Io {
                    what: "registering an engine completion fd",
                    source,
                });
            }
        }
        if setup.is_ok() {
            setup = daemon
                .start(&mut self.listener)
                .map_err(|e| Error::Daemon(e.to_string()));
        }
        if let Err(e) = setup {
            drop(daemon);
            backend.close_exit_events();
            return Err(e);
        }
        tracing::info!("frontend connected");
        self.dev.stats().set_connected(true);
        self.shutdown.set_conn(daemon.shutdown_handle());
        let conn = daemon.shutdown_handle();
        let ended = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(|source| Error::Io {
            what: "creating the connection's end event",
            source,
        });
        let result = match ended {
            Ok(ended) => std::thread::scope(|s| {
                s.spawn(|| end_on_memory_fault(&ended, conn.as_ref()));
                let result = daemon.wait();
                let _ = ended.write(1);
                result
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for shrunk guest memory on this connection");
                daemon.wait()
            }
        };
        self.shutdown.set_conn(None);
        self.dev.set_channel(None);
        self.dev.stats().set_connected(false);
        // Dropping the daemon stops and joins the queue workers.
        drop(daemon);
        backend.close_exit_events();
        backend.drain();
        match result {
            Ok(()) => tracing::info!("frontend disconnected"),
            Err(e) => tracing::info!(reason = %e, "frontend connection ended"),
        }
        Ok(())
    }
}

/// Ends the connection when the frontend shrinks a file it shared (guest
/// memory, the dirty log) under our mapping: the access that faulted was
/// survived ([`crate::sigbus`]), but the frontend broke the protocol and
/// its memory cannot be trusted. Returns when `ended` is signalled.
fn end_on_memory_fault(ended: &EventFd, conn: Option<&vhost_user_backend::ShutdownHandle>) {
    let Some(watch) = crate::sigbus::FaultWatch::claim() else {
        tracing::warn!("cannot watch for shrunk guest memory on this connection");
        return;
    };
    let before = crate::sigbus::faults();
    loop {
        let Ok((fault, end)) = wait_readable(watch.fd().as_raw_fd(), ended.as_raw_fd()) else {
            return;
        };
        if end {
            return;
        }
        if fault {
            watch.clear();
            let faults = crate::sigbus::faults() - before;
            if faults > 0 {
                tracing::error!(
                    faults,
                    "the frontend shrank a file it shares with us (guest memory or the dirty log) \
                     under our mapping; ending the connection (the frontend is broken or hostile)"
                );
                if let Some(h) = conn {
                    h.shutdown();
                }
                return;
            }
        }
    }
}

/// Waits until `a` or `b` is readable (retrying on EINTR); says which are.
fn wait_readable(a: std::os::fd::RawFd, b: std::os::fd::RawFd) -> std::io::Result<(bool, bool)> {
    let mut fds = [a, b].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is a valid array of two pollfds during the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
