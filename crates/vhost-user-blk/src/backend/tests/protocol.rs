//! The vhost-user messages the patched vhost-user-backend forwards
//! (vendor/README.md), sent by a real frontend (the `vhost` crate's) over
//! the daemon's socket to a [`Server`](crate::Server): INFLIGHT_SHMFD
//! offered, GET_INFLIGHT_FD answered with a region of the documented
//! layout, SET_INFLIGHT_FD refusing what it cannot map safely, and the call
//! fd signalled once when SET_VRING_CALL installs it.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhost::VhostBackend;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::{Config, Device, Server};

const QUEUES: u16 = 2;
const QSIZE: u16 = 128;

struct Served {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    dev: Arc<Device>,
    sock: std::path::PathBuf,
    stop: crate::ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut cfg = Config::new(&img);
        cfg.device.num_queues = QUEUES;
        cfg.device.queue_size = QSIZE;
        cfg.device.engine = crate::Engine::Sync;
        let dev = Device::open(cfg).unwrap();
        let sock = dir.path().join("sock");
        let server = Server::bind(Arc::clone(&dev), &sock, &Default::default()).unwrap();
        let stop = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.run().unwrap()));
        Served {
            _dir: dir,
            img,
            dev,
            sock,
            stop,
            thread,
        }
    }

    /// A frontend past feature negotiation (all features, all protocol
    /// features offered) that waits for an answer to every request.
    fn frontend(&self) -> (Frontend, VhostUserProtocolFeatures) {
        let mut fe = Frontend::connect(&self.sock, u64::from(QUEUES)).unwrap();
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        fe.set_features(features).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        fe.set_protocol_features(pf).unwrap();
        // Every request waits for the backend's answer (REPLY_ACK).
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        (fe, pf)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn inflight_regions_are_offered_created_and_checked() {
    let s = Served::new();
    let (mut fe, pf) = s.frontend();
    assert!(pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    let (info, file) = fe
        .get_inflight_fd(&VhostUserInflight::new(0, 0, QUEUES, QSIZE))
        .unwrap();
    // 16-byte header + 16 bytes per descriptor, 64-byte aligned, per queue.
    let per_queue = (16 + 16 * u64::from(QSIZE)).next_multiple_of(64);
    assert_eq!(info.mmap_size, u64::from(QUEUES) * per_queue);
    assert_eq!((info.num_queues, info.queue_size), (QUEUES, QSIZE));
    assert_eq!(file.metadata().unwrap().len(), info.mmap_size);
    fe.set_inflight_fd(&info, file.as_raw_fd()).unwrap();
    // A file the frontend could shrink under the mapping is refused, and
    // so is a description larger than the file.
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(info.mmap_size).unwrap();
    assert!(fe.set_inflight_fd(&info, plain.as_raw_fd()).is_err());
    let bigger = VhostUserInflight::new(info.mmap_size + 4096, 0, QUEUES, QSIZE);
    assert!(fe.set_inflight_fd(&bigger, file.as_raw_fd()).is_err());
    // More queues than the device has: refused (the connection ends).
    assert!(
        fe.get_inflight_fd(&VhostUserInflight::new(0, 0, QUEUES + 1, QSIZE))
            .is_err()
    );
    // The server serves the next frontend.
    let (mut fe, _) = s.frontend();
    assert!(
        fe.get_inflight_fd(&VhostUserInflight::new(0, 0, 1, QSIZE))
            .is_ok()
    );
}

#[test]
fn set_vring_call_signals_the_new_call_fd_once() {
    let s = Served::new();
    let (fe, _) = s.frontend();
    for q in 0..usize::from(QUEUES) {
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        // REPLY_ACK is negotiated: the message has been handled on return.
        fe.set_vring_call(q, &call).unwrap();
        assert_eq!(call.read().unwrap(), 1, "queue {q}: one signal");
        assert!(call.read().is_err(), "queue {q}: only one");
    }
}

/// Runs `f` on another thread and fails the test if it has not returned
/// within `secs` (the thread is left behind: the test fails anyway).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s: the daemon is wedged"))
}

/// A frontend that hands over a backend channel and never reads it (with
/// the smallest socket buffer) must not wedge the daemon: resizes keep
/// answering, status answers, the next frontend is served and shutdown
/// completes while the hostile frontend still holds its end open.
#[test]
fn a_backend_channel_nobody_reads_blocks_nothing() {
    let s = Served::new();
    let (mut fe, pf) = s.frontend();
    assert!(pf.contains(VhostUserProtocolFeatures::BACKEND_REQ));
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &1).unwrap();
    fe.set_backend_request_fd(&ours).unwrap();
    drop(ours);
    // Every grow sends a config change nobody reads.
    let (dev, img) = (Arc::clone(&s.dev), s.img.clone());
    let grown = within(30, "resize", move || {
        for i in 1..=64u64 {
            let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            f.set_len((1 << 20) + i * 4096).unwrap();
            assert!(dev.resize().unwrap().changed);
        }
        dev.capacity_sectors()
    });
    assert_eq!(grown, ((1 << 20) + 64 * 4096) >> 9);
    let dev = Arc::clone(&s.dev);
    within(10, "status", move || dev.status());
    // The hostile frontend leaves (its channel end stays open); the next one
    // is served.
    drop(fe);
    let sock = s.sock.clone();
    within(10, "the next frontend's handshake", move || {
        let fe = Frontend::connect(&sock, u64::from(QUEUES)).unwrap();
        fe.set_owner().unwrap();
        fe.get_features().unwrap()
    });
    within(10, "shutdown", move || drop(s));
    drop(theirs);
}
