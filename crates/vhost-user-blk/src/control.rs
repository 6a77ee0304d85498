//! The control socket of a running [`Device`]: answers the serve API's
//! protocol ([`extstorage_serve_api::control`]) on a background thread.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use extstorage_serve_api::control::{self, Reply, Request, ServedConfig};

use crate::{Device, Error};

/// Who serves what, for the `config` answer.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The provider, when serving an ExtStorage volume.
    pub provider: Option<String>,
    /// The volume, when serving an ExtStorage volume.
    pub volume: Option<String>,
    /// The vhost-user socket, when known.
    pub socket: Option<PathBuf>,
}

/// A running control socket. Dropping it stops answering, removes the
/// socket file, so nobody mistakes a stopped backend for a running one, and
/// waits for the thread (bounded by the protocol's timeout), so the device
/// it holds is released when the drop returns.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Wakes the accept loop, which then ends.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            nix::sys::socket::Shutdown::Both,
        );
        let _ = std::fs::remove_file(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `path` (replacing a stale socket; mode 0600) and answers
/// requests for `dev` on a background thread until the returned handle is
/// dropped.
pub fn spawn(dev: Arc<Device>, path: &Path, identity: Identity) -> Result<ControlSocket, Error> {
    let control_err = |source| Error::Control {
        path: path.to_path_buf(),
        source,
    };
    let access = extstorage_serve_api::SocketAccess::default();
    let listener = crate::socket::bind_ready(path, &access)?;
    let handle = listener.as_fd().try_clone_to_owned().map_err(control_err)?;
    tracing::info!(control_socket = %path.display(), "control socket ready");
    let thread = crate::threads::spawn_quiet("control", move || {
        for conn in listener.incoming() {
            match conn {
                Ok(c) => answer(&dev, &identity, &c),
                // The handle was dropped (shutdown) or the socket broke.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => tracing::warn!(error = %e, "control accept failed"),
            }
        }
    })
    .map_err(|source| Error::Io {
        what: "starting the control thread",
        source,
    })?;
    Ok(ControlSocket {
        path: path.to_path_buf(),
        listener: handle,
        thread: Some(thread),
    })
}

/// The answer to `request`.
pub fn reply(dev: &Device, identity: &Identity, request: Request) -> Reply {
    match request {
        Request::Resize => match dev.resize() {
            Ok(r) => Reply::ok(&r),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::Status => Reply::ok(&dev.status()),
        Request::Config => Reply::ok(&ServedConfig {
            pid: std::process::id(),
            provider: identity.provider.clone(),
            volume: identity.volume.clone(),
            path: dev.config().path.clone(),
            socket: identity.socket.clone(),
            device: dev.config().device.clone(),
        }),
    }
}

fn answer(dev: &Device, identity: &Identity, conn: &UnixStream) {
    let reply = match control::read_request(conn) {
        Ok(request) => {
            tracing::debug!(request = request.as_str(), "control request");
            reply(dev, identity, request)
        }
        Err(e) => Reply::Error(e.to_string()),
    };
    if let Err(e) = control::write_reply(conn, &reply) {
        tracing::debug!(error = %e, "cannot answer a control request");
    }
}
