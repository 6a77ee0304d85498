//! The two pieces of the systemd protocol a backend needs, without
//! libsystemd: the socket passed by socket activation (sd_listen_fds(3))
//! and readiness notification (sd_notify(3)).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The first fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

/// The listening socket systemd passed to this process: fd 3 when
/// `LISTEN_PID` is our pid and `LISTEN_FDS` is at least 1.
pub fn listen_fd() -> Option<i32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    (pid == std::process::id() && fds >= 1).then_some(LISTEN_FDS_START)
}

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`, `STATUS=...`) to the
/// service manager when `NOTIFY_SOCKET` is set; returns whether it was
/// sent. Not running under systemd is not an error.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}
