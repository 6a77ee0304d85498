//! The backend-request channel, used only to send
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG (a resize reached the device).
//!
//! The frontend hands the channel over with SET_BACKEND_REQ_FD;
//! vhost-user-backend gives us vhost's `Backend` proxy for it, whose socket
//! we duplicate (patched, see vendor/vhost/PATCHES.md) to send the message
//! ourselves. The frontend may be hostile or hung, so a send never waits:
//! it goes out whole at once (`MSG_DONTWAIT`) or the channel is given up. A
//! frontend that does not read its channel then only misses resize
//! notifications; it cannot stop `resize`, `status`, the next connection or
//! shutdown. No reply is requested, even with REPLY_ACK negotiated: the
//! frontend answers a config change by reading the config space
//! (GET_CONFIG on the main channel) before it would reply, and a backend
//! that waited here could never be told apart from a hung frontend.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{MsgFlags, send};
use vhost::vhost_user::Backend;

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG's header: request 2, flags with
/// version 1 and no NEED_REPLY, an empty payload.
const CONFIG_CHANGE_HEADER: [u8; 12] = [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

/// Why a config-change message could not be sent; the channel is then
/// useless for the rest of the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The frontend stopped reading: its socket buffer is full.
    #[error(
        "the frontend is not reading its backend channel (socket buffer full); \
         it will see the new size when it re-reads the config"
    )]
    NotReading,
    /// Only part of the message fit: the stream is no longer in step.
    #[error("only {sent} of {len} bytes of the message could be sent")]
    Partial {
        /// Bytes sent.
        sent: usize,
        /// Bytes in the message.
        len: usize,
    },
    /// The socket failed (e.g. the frontend closed it).
    #[error("the backend channel failed: {0}")]
    Socket(nix::Error),
}

/// The frontend's backend-request channel of the current connection.
#[derive(Debug)]
pub(crate) struct ConfigChannel {
    stream: UnixStream,
}

impl ConfigChannel {
    /// Takes over the channel vhost-user-backend received.
    pub(crate) fn new(backend: &Backend) -> std::io::Result<Self> {
        Ok(Self {
            stream: backend.try_clone_stream()?,
        })
    }

    /// Sends the config-change message without waiting.
    pub(crate) fn send_config_change(&self) -> Result<(), SendError> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(self.stream.as_raw_fd(), &CONFIG_CHANGE_HEADER, flags) {
            Ok(n) if n == CONFIG_CHANGE_HEADER.len() => Ok(()),
            Ok(sent) => Err(SendError::Partial {
                sent,
                len: CONFIG_CHANGE_HEADER.len(),
            }),
            Err(nix::Error::EAGAIN) => Err(SendError::NotReading),
            Err(e) => Err(SendError::Socket(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    #[test]
    fn sends_the_config_change_header_and_asks_no_reply() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let backend = Backend::from_stream(ours);
        // vhost-user-backend sets this when REPLY_ACK was negotiated.
        backend.set_reply_ack_flag(true);
        let ch = ConfigChannel::new(&backend).unwrap();
        ch.send_config_change().unwrap();
        let mut buf = [0u8; 12];
        theirs.read_exact(&mut buf).unwrap();
        // Request 2, flags: version 1 without NEED_REPLY (bit 3), size 0.
        assert_eq!(buf, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_closed_channel_is_an_error_not_a_hang() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let ch = ConfigChannel::new(&Backend::from_stream(ours)).unwrap();
        assert!(matches!(
            ch.send_config_change(),
            Err(SendError::Socket(nix::Error::EPIPE))
        ));
    }

    /// A frontend that never reads fills the buffer; from then on every
    /// send fails at once instead of waiting for it.
    #[test]
    fn a_channel_nobody_reads_fails_at_once() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let ch = ConfigChannel::new(&Backend::from_stream(ours)).unwrap();
        let start = Instant::now();
        let mut sent = 0;
        let err = loop {
            match ch.send_config_change() {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000, "the buffer never filled");
        };
        assert!(matches!(err, SendError::NotReading), "{err}");
        assert!(sent > 0);
        assert!(matches!(
            ch.send_config_change(),
            Err(SendError::NotReading)
        ));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
