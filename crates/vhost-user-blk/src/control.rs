//! The control socket of a running [`Device`]: answers the serve API's
//! protocol ([`extstorage_serve_api::control`]) on a background thread.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use extstorage_serve_api::control::{self, Reply, Request, ServedConfig};

use crate::socket::SocketFile;
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

/// How many control connections are answered at once. Each waits at most
/// the protocol's timeout for its request; past this many, a new
/// connection gets a "busy" error at once instead of a thread, so silent
/// clients can neither starve real ones for long nor make the daemon spawn
/// without bound.
pub const MAX_CONNECTIONS: usize = 8;

/// A running control socket. Dropping it stops answering, removes the
/// socket file (if still the one bound here), so nobody mistakes a stopped
/// backend for a running one, and waits for the threads (bounded by the
/// protocol's timeout), so the device they hold is released when the drop
/// returns.
#[derive(Debug)]
pub struct ControlSocket {
    file: SocketFile,
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
        self.file.remove();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listens on `path` (replacing a stale socket, refusing a live one; mode
/// 0600) and answers requests for `dev` on background threads, up to
/// [`MAX_CONNECTIONS`] at once, until the returned handle is dropped.
pub fn spawn(dev: Arc<Device>, path: &Path, identity: Identity) -> Result<ControlSocket, Error> {
    let control_err = |source| Error::Control {
        path: path.to_path_buf(),
        source,
    };
    let access = extstorage_serve_api::SocketAccess::default();
    let (listener, file) = crate::socket::bind_ready(path, &access)?;
    let handle = listener.as_fd().try_clone_to_owned().map_err(control_err)?;
    tracing::info!(control_socket = %path.display(), "control socket ready");
    let thread = crate::threads::spawn_quiet("control", move || {
        let identity = Arc::new(identity);
        let mut answering: Vec<std::thread::JoinHandle<()>> = Vec::new();
        for conn in listener.incoming() {
            answering.retain(|t| !t.is_finished());
            match conn {
                Ok(c) if answering.len() >= MAX_CONNECTIONS => refuse_busy(&c),
                Ok(c) => {
                    let (dev, identity) = (Arc::clone(&dev), Arc::clone(&identity));
                    match crate::threads::spawn_quiet("control-conn", move || {
                        answer(&dev, &identity, &c);
                    }) {
                        Ok(t) => answering.push(t),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a control connection thread")
                        }
                    }
                }
                // The handle was dropped (shutdown) or the socket broke.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => tracing::warn!(error = %e, "control accept failed"),
            }
        }
        for t in answering {
            let _ = t.join();
        }
    })
    .map_err(|source| Error::Io {
        what: "starting the control thread",
        source,
    })?;
    Ok(ControlSocket {
        file,
        listener: handle,
        thread: Some(thread),
    })
}

/// Answers a connection past the limit with an error, without waiting on it.
fn refuse_busy(conn: &UnixStream) {
    tracing::warn!(
        limit = MAX_CONNECTIONS,
        "control socket busy: refusing a connection"
    );
    let reply = Reply::Error(format!(
        "the control socket is answering {MAX_CONNECTIONS} other connections; retry in a few seconds"
    ));
    if conn.set_nonblocking(true).is_ok() {
        let _ = control::write_reply(conn, &reply);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use extstorage_serve_api::control::StatusReport;
    use std::time::{Duration, Instant};

    fn device(dir: &Path) -> Arc<Device> {
        let img = dir.join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        Device::open(crate::Config::new(&img)).unwrap()
    }

    /// Silent clients hold their connections for the protocol's timeout;
    /// a real request is answered at once beside them, and past the limit
    /// a client is told the socket is busy instead of waiting.
    #[test]
    fn silent_connections_do_not_hold_up_a_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let ctl = spawn(device(dir.path()), &path, Identity::default()).unwrap();
        let silent: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let start = Instant::now();
        let status: StatusReport = control::call(&path, Request::Status).unwrap();
        assert_eq!(status.size_bytes, 1 << 20);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "status waited {:?} behind silent connections",
            start.elapsed()
        );
        let more: Vec<UnixStream> = (3..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // Give the accept loop time to hand each one a thread.
        std::thread::sleep(Duration::from_millis(300));
        let err = control::call::<StatusReport>(&path, Request::Status).unwrap_err();
        assert!(err.to_string().contains("retry"), "{err}");
        drop((silent, more));
        drop(ctl);
        assert!(!path.exists());
    }
}
