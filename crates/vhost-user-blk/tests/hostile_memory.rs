//! A hostile frontend's shared memory: files too small for the regions it
//! declares, offsets past their end, and files shrunk after the daemon
//! mapped them (guest memory, then the dirty log). Each of these raised
//! SIGBUS in the daemon and killed it (and this test binary with it); now
//! the bad tables are refused with an error, a shrink costs only the
//! connection, and the server goes on serving the next frontend.
//!
//! vhost's own frontend drives a real [`Server`] over its unix socket;
//! guest memory and the log are memfds, as QEMU shares them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use extstorage_serve_api::SocketAccess;
use extstorage_vhost_user_blk::{Config, Device, Engine, Server, ShutdownHandle};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const VERSION_1: u64 = 1 << 32;
const MIB: u64 = 1 << 20;
/// Where the ring lives in guest memory: descriptors, avail, used.
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

struct Rig {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    dev: std::sync::Arc<Device>,
    shutdown: ShutdownHandle,
    server: Option<JoinHandle<Result<(), extstorage_vhost_user_blk::Error>>>,
}

/// A shrunk file's fault ends every watching connection in the process,
/// so the tests run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Rig {
    fn start() -> Rig {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        File::create(&image).unwrap().set_len(MIB).unwrap();
        let mut cfg = Config::new(&image);
        cfg.device.engine = Engine::Sync;
        cfg.device.queue_size = QSIZE;
        let dev = Device::open(cfg).unwrap();
        let sock = dir.path().join("sock");
        let server = Server::bind(dev.clone(), &sock, &SocketAccess::default()).unwrap();
        let shutdown = server.shutdown_handle();
        let server = Some(std::thread::spawn(move || server.run()));
        Rig {
            _serial: serial,
            _dir: dir,
            sock,
            dev,
            shutdown,
            server,
        }
    }

    /// A frontend past negotiation (LOG_SHMFD and REPLY_ACK: every message
    /// waits for the daemon's answer).
    fn frontend(&self) -> Frontend {
        let mut fe = Frontend::connect(&self.sock, 1).unwrap();
        fe.set_owner().unwrap();
        fe.get_features().unwrap();
        fe.set_protocol_features(
            VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .unwrap();
        fe.set_features(VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .unwrap();
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        fe
    }

    fn connections(&self) -> u64 {
        self.dev.status().connections
    }

    /// The server still serves: a new frontend gets a memory table and
    /// the connection count grows.
    fn still_serves(&self) {
        let before = self.connections();
        let fe = self.frontend();
        let mem = memfd(MIB);
        fe.set_mem_table(&[region(&mem, MIB, 0)]).unwrap();
        // Counted just after the connection's handler starts (it may have
        // answered already).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connections() == before {
            assert!(
                Instant::now() < deadline,
                "the new connection was not counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(t) = self.server.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap().unwrap();
            }
        }
    }
}

fn memfd(size: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(c"guest", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .unwrap();
    let f = File::from(fd);
    f.set_len(size).unwrap();
    f
}

/// A region of `size` bytes at guest address 0 mapped from `file` at
/// `offset` (the user address only names it).
fn region(file: &File, size: u64, offset: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: offset,
        mmap_handle: file.as_raw_fd(),
    }
}

/// Sets up queue 0 with its rings at `desc`, `avail` and `used` (guest
/// addresses) and enables it; returns the kick eventfd.
fn start_queue(fe: &mut Frontend, desc: u64, avail: u64, used: u64) -> (EventFd, EventFd) {
    let uva = 0x7000_0000_0000u64;
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: uva + desc,
            used_ring_addr: uva + used,
            avail_ring_addr: uva + avail,
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(0, 0).unwrap();
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    (kick, call)
}

/// Puts a one-sector read (header at 0x3000, data at 0x4000, status at
/// 0x5000) on the ring through the file, as a guest would.
fn put_read(mem: &File) {
    use std::os::unix::fs::FileExt;
    let mut desc = Vec::new();
    for (addr, len, flags, next) in [
        (0x3000u64, 16u32, 1u16, 1u16),
        (0x4000, 512, 1 | 2, 2),
        (0x5000, 1, 2, 0),
    ] {
        desc.extend_from_slice(&addr.to_le_bytes());
        desc.extend_from_slice(&len.to_le_bytes());
        desc.extend_from_slice(&flags.to_le_bytes());
        desc.extend_from_slice(&next.to_le_bytes());
    }
    mem.write_all_at(&desc, DESC).unwrap();
    mem.write_all_at(&[0u8; 16], 0x3000).unwrap();
    // avail: flags 0, idx 1, ring[0] = head 0.
    mem.write_all_at(&[0, 0, 1, 0, 0, 0], AVAIL).unwrap();
}

/// Waits until the daemon has ended the current connection.
fn wait_disconnected(rig: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.dev.status().connected {
        assert!(
            Instant::now() < deadline,
            "the daemon did not end the hostile connection within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A 64 KiB memfd declared as a 1 MiB region, with the used ring past the
/// file's end: refused with an error, not mapped.
#[test]
fn a_region_larger_than_its_file_is_refused() {
    let rig = Rig::start();
    let fe = rig.frontend();
    let mem = memfd(64 << 10);
    assert!(fe.set_mem_table(&[region(&mem, MIB, 0)]).is_err());
    drop(fe);
    rig.still_serves();
}

/// A mapping offset past the end of the file: refused.
#[test]
fn an_offset_past_the_file_is_refused() {
    let rig = Rig::start();
    let fe = rig.frontend();
    let mem = memfd(MIB);
    assert!(fe.set_mem_table(&[region(&mem, MIB, 2 * MIB)]).is_err());
    drop(fe);
    rig.still_serves();
}

/// Guest memory truncated after the table was set, then a kick: the
/// daemon survives, ends that connection and serves the next one.
#[test]
fn guest_memory_shrunk_after_mapping_costs_only_the_connection() {
    let rig = Rig::start();
    let mut fe = rig.frontend();
    let mem = memfd(MIB);
    fe.set_mem_table(&[region(&mem, MIB, 0)]).unwrap();
    put_read(&mem);
    let (kick, _call) = start_queue(&mut fe, DESC, AVAIL, USED);
    mem.set_len(0).unwrap();
    kick.write(1).unwrap();
    wait_disconnected(&rig);
    drop(fe);
    rig.still_serves();
}

/// The dirty log truncated after LOG_ALL was acked, then a read (which
/// marks the log): the daemon survives and serves the next frontend.
#[test]
fn a_dirty_log_shrunk_after_mapping_costs_only_the_connection() {
    let rig = Rig::start();
    let mut fe = rig.frontend();
    let mem = memfd(MIB);
    fe.set_mem_table(&[region(&mem, MIB, 0)]).unwrap();
    let log = memfd(4096);
    fe.set_log_base(
        0,
        Some(VhostUserDirtyLogRegion {
            mmap_size: 4096,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        }),
    )
    .unwrap();
    fe.set_features(
        VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits(),
    )
    .unwrap();
    fe.get_features().unwrap();
    let (kick, _call) = start_queue(&mut fe, DESC, AVAIL, USED);
    log.set_len(0).unwrap();
    put_read(&mem);
    kick.write(1).unwrap();
    wait_disconnected(&rig);
    drop(fe);
    rig.still_serves();
}

/// A log larger than its file is refused at SET_LOG_BASE.
#[test]
fn a_dirty_log_larger_than_its_file_is_refused() {
    let rig = Rig::start();
    let fe = rig.frontend();
    let mem = memfd(MIB);
    fe.set_mem_table(&[region(&mem, MIB, 0)]).unwrap();
    let log = memfd(4096);
    let r = fe.set_log_base(
        0,
        Some(VhostUserDirtyLogRegion {
            mmap_size: 64 << 10,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        }),
    );
    assert!(r.is_err());
    drop(fe);
    rig.still_serves();
}
