//! The backend-request channel, used only to send
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
//!
//! vhost 0.18 hands the backend a `Backend` proxy for this channel but has
//! no config-change sender and does not expose the socket. The socket QEMU
//! passes with SET_BACKEND_REQ_FD is one end of a `socketpair`: an unnamed
//! AF_UNIX stream socket, while the vhost-user connection and the control
//! socket are bound to paths. So we snapshot the unnamed unix stream
//! sockets the process holds before accepting a frontend, and when the
//! channel arrives we take the new one, `dup` it, and write the 12-byte
//! message header to it ourselves. Nothing else writes to the channel.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1, no reply requested (a reply would
/// make the frontend's GET_CONFIG race with us waiting for it).
const VERSION_1: u32 = 0x1;

/// Our own descriptor of the frontend's backend-request socket.
#[derive(Debug)]
pub(crate) struct ConfigChannel {
    fd: OwnedFd,
}

impl ConfigChannel {
    /// Writes the config-change message header (request 2, flags 0x1, size 0).
    pub(crate) fn send_config_change(&self) -> std::io::Result<()> {
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        let mut sent = 0usize;
        while sent < msg.len() {
            let rest = &msg[sent..];
            // SAFETY: `rest` is valid for reads of its length; the fd is
            // owned by `self`. MSG_NOSIGNAL avoids SIGPIPE on a dead peer.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            sent += usize::try_from(n).unwrap_or(0);
        }
        Ok(())
    }
}

/// Whether `fd` is an AF_UNIX stream socket with no address.
fn is_unnamed_unix_stream(fd: RawFd) -> bool {
    // SAFETY: `fd` was just listed in /proc/self/fd; at worst it was closed
    // meanwhile and the calls below fail with EBADF.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let stream = matches!(getsockopt(&bfd, sockopt::SockType), Ok(SockType::Stream));
    stream && matches!(getsockname::<UnixAddr>(fd), Ok(a) if a.is_unnamed())
}

/// The unnamed unix stream sockets open in this process.
pub(crate) fn unnamed_unix_sockets() -> BTreeSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .filter(|&fd| is_unnamed_unix_stream(fd))
        .collect()
}

/// Finds the channel among the sockets that appeared since `before` and
/// duplicates it.
pub(crate) fn find_new_channel(before: &BTreeSet<RawFd>) -> Option<ConfigChannel> {
    let now = unnamed_unix_sockets();
    let mut new: Vec<RawFd> = now.difference(before).copied().collect();
    if new.len() > 1 {
        tracing::warn!(candidates = ?new, "several new unnamed sockets; using the newest for config changes");
    }
    tracing::debug!(before = ?before, now = ?now, "looking for the backend channel");
    let fd = new.pop()?;
    tracing::debug!(fd, "backend channel found");
    // SAFETY: `fd` is open (just listed) and owned by the vhost `Backend`
    // the caller keeps alive; we only borrow it to duplicate it.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    match bfd.try_clone_to_owned() {
        Ok(fd) => Some(ConfigChannel { fd }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot duplicate the backend channel");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn finds_a_new_socketpair_and_sends_the_header() {
        let mut before = unnamed_unix_sockets();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // Only `ours` plays the part of the channel received from the frontend.
        before.insert(theirs.as_raw_fd());
        let ch = find_new_channel(&before).expect("the new socketpair end");
        ch.send_config_change().unwrap();
        let mut buf = [0u8; 12];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        drop(ours);
    }
}
