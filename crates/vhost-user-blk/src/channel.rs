//! The backend-request channel, used only to send
//! VHOST_USER_BACKEND_CONFIG_CHANGE_MSG (a resize reached the device).
//!
//! The frontend hands the channel over with SET_BACKEND_REQ_FD; vhost-user-backend
//! gives us vhost's `Backend` proxy for it, which (patched, see
//! vendor/vhost/PATCHES.md) sends the message. No reply is requested, even with
//! REPLY_ACK negotiated: the frontend answers a config change by reading
//! the config space (GET_CONFIG on the main channel) before it would reply,
//! and a backend that waited here could never be told apart from a hung
//! frontend.

use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

/// The frontend's backend-request channel of the current connection.
#[derive(Clone)]
pub(crate) struct ConfigChannel {
    backend: Backend,
}

impl std::fmt::Debug for ConfigChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigChannel").finish_non_exhaustive()
    }
}

impl ConfigChannel {
    /// Takes over the channel vhost-user-backend received.
    pub(crate) fn new(backend: Backend) -> Self {
        // Messages on it request no reply (see the module comment). The
        // flag lives in the proxy all clones share, and nothing else sends
        // on this channel.
        backend.set_reply_ack_flag(false);
        Self { backend }
    }

    /// Sends the config-change message (request 2, no payload).
    pub(crate) fn send_config_change(&self) -> std::io::Result<()> {
        self.backend.handle_config_change().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sends_the_config_change_header_and_asks_no_reply() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let backend = Backend::from_stream(ours);
        // vhost-user-backend sets this when REPLY_ACK was negotiated.
        backend.set_reply_ack_flag(true);
        let ch = ConfigChannel::new(backend);
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
        let ch = ConfigChannel::new(Backend::from_stream(ours));
        assert!(ch.send_config_change().is_err());
    }
}
