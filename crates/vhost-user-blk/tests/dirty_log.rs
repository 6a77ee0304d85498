//! Dirty-page logging for live migration, through the real server.
//!
//! vhost's own frontend connects to a [`Server`] on a unix socket, shares
//! guest memory and a dirty log as memfds (SET_MEM_TABLE, SET_LOG_BASE, as
//! QEMU does when a migration starts), acks VHOST_F_LOG_ALL and puts
//! requests on the ring; the test then reads the log. Every path that
//! writes guest memory must leave its pages marked before the request shows
//! up in the used ring: reads by each engine (io_uring and synchronous,
//! straight into guest memory or through bounce buffers under O_DIRECT),
//! GET_ID, status bytes and the used ring itself. Without a log
//! (VHOST_F_LOG_ALL not acked) the engines' pages are left alone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use extstorage_serve_api::SocketAccess;
use extstorage_vhost_user_blk::{Config, Device, Engine, Server, ShutdownHandle};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 16 << 20;
const PAGE: u64 = 4096;
/// The dirty log: one bit per page of guest memory (512 bytes would do).
const LOG_SIZE: u64 = 4096;
const QSIZE: u16 = 64;
const DISK_SIZE: u64 = 1 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const VERSION_1: u64 = 1 << 32;
/// Requests' headers, one per 0x100 bytes, from here (never written by the device).
const HEADERS: u64 = 0x2_0000;
/// Status bytes, one per page, from here.
const STATUS: u64 = 0x40_0000;
/// Data buffers, from here.
const DATA: u64 = 0x10_0000;

/// One frontend connection to a fresh server over a 1 MiB image whose
/// sector `s` holds the byte `s as u8 ^ 0x5a`.
struct Session {
    dir: tempfile::TempDir,
    mem: GuestMemoryMmap<()>,
    log: File,
    fe: Frontend,
    kick: EventFd,
    _call: EventFd,
    shutdown: ShutdownHandle,
    server: Option<JoinHandle<Result<(), extstorage_vhost_user_blk::Error>>>,
    used_addr: GuestAddress,
    desc_addr: GuestAddress,
    avail_addr: GuestAddress,
    /// Descriptors written so far (the next chain's first index; the
    /// tests use fewer than the queue's size).
    next_desc: u16,
    /// Requests made so far.
    requests: u16,
}

fn memfd(name: &str, size: u64) -> File {
    let name = std::ffi::CString::new(name).unwrap();
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .unwrap();
    let f = File::from(fd);
    f.set_len(size).unwrap();
    f
}

fn sector_byte(sector: u64) -> u8 {
    (sector as u8) ^ 0x5a
}

impl Session {
    fn start(engine: Engine, direct: bool) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let content: Vec<u8> = (0..DISK_SIZE).map(|b| sector_byte(b / 512)).collect();
        std::fs::write(&image, &content).unwrap();
        let mut cfg = Config::new(&image);
        cfg.device.engine = engine;
        cfg.device.direct_io = direct;
        cfg.device.queue_size = QSIZE;
        cfg.device.serial = "dirty-log-serial".into();
        let dev = Device::open(cfg).unwrap();
        let sock = dir.path().join("sock");
        let server = Server::bind(dev, &sock, &SocketAccess::default()).unwrap();
        let shutdown = server.shutdown_handle();
        let server = std::thread::spawn(move || server.run());

        // Guest memory, mapped here (the "guest") and by the server.
        let mem_file = memfd("guest", MEM_SIZE as u64);
        let region = GuestRegionMmap::new(
            MmapRegion::from_file(FileOffset::new(mem_file.try_clone().unwrap(), 0), MEM_SIZE)
                .unwrap(),
            GuestAddress(0),
        )
        .unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        let uva = mem
            .get_host_address(GuestAddress(0))
            .unwrap()
            .expose_provenance() as u64;

        let mut fe = Frontend::connect(&sock, 1).unwrap();
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_ne!(
            offered & VhostUserVirtioFeatures::LOG_ALL.bits(),
            0,
            "VHOST_F_LOG_ALL offered"
        );
        let pf = fe.get_protocol_features().unwrap();
        assert!(
            pf.contains(VhostUserProtocolFeatures::LOG_SHMFD),
            "LOG_SHMFD offered: {pf:?}"
        );
        fe.set_protocol_features(
            VhostUserProtocolFeatures::LOG_SHMFD | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .unwrap();
        fe.set_features(VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .unwrap();
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: uva,
            mmap_offset: 0,
            mmap_handle: mem_file.as_raw_fd(),
        }])
        .unwrap();

        let mq = MockSplitQueue::new(&mem, QSIZE);
        let (desc_addr, avail_addr, used_addr) =
            (mq.desc_table_addr(), mq.avail_addr(), mq.used_addr());
        fe.set_vring_num(0, QSIZE).unwrap();
        fe.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: uva + mq.desc_table_addr().0,
                used_ring_addr: uva + mq.used_addr().0,
                avail_ring_addr: uva + mq.avail_addr().0,
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

        let log = memfd("dirty-log", LOG_SIZE);
        Session {
            dir,
            mem,
            log,
            fe,
            kick,
            _call: call,
            shutdown,
            server: Some(server),
            used_addr,
            desc_addr,
            avail_addr,
            next_desc: 0,
            requests: 0,
        }
    }

    /// SET_LOG_BASE: the server maps the log (QEMU sends it when a
    /// migration starts, before acking LOG_ALL).
    fn set_log(&self) {
        self.fe
            .set_log_base(
                0,
                Some(VhostUserDirtyLogRegion {
                    mmap_size: LOG_SIZE,
                    mmap_offset: 0,
                    mmap_handle: self.log.as_raw_fd(),
                }),
            )
            .unwrap();
    }

    /// SET_FEATURES with or without VHOST_F_LOG_ALL.
    fn log_all(&self, on: bool) {
        let log = if on {
            VhostUserVirtioFeatures::LOG_ALL.bits()
        } else {
            0
        };
        self.fe
            .set_features(VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | log)
            .unwrap();
        // SET_FEATURES has no reply: a request that has one makes sure the
        // server handled it before the next kick (QEMU waits the same way
        // when it turns logging on).
        self.fe.get_features().unwrap();
    }

    /// Clears the log, as QEMU does when it syncs it.
    fn clear_log(&self) {
        self.log
            .write_all_at(&vec![0u8; LOG_SIZE as usize], 0)
            .unwrap();
    }

    fn dirty(&self, addr: u64) -> bool {
        let page = addr / PAGE;
        let mut b = [0u8; 1];
        self.log.read_exact_at(&mut b, page / 8).unwrap();
        b[0] & (1 << (page % 8)) != 0
    }

    /// Puts one request on the ring: header (type, sector), data
    /// descriptors (address, length, device-writable) and a status byte.
    /// Returns the status byte's address.
    fn request(&mut self, ty: u32, sector: u64, data: &[(u64, u32, bool)]) -> u64 {
        let n = self.requests;
        self.requests += 1;
        let header = HEADERS + u64::from(n) * 0x100;
        let status = STATUS + u64::from(n) * PAGE;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(header)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let mut ds = vec![(header, 16u32, false)];
        ds.extend_from_slice(data);
        ds.push((status, 1, true));
        let first = self.next_desc;
        for (i, &(addr, len, w)) in ds.iter().enumerate() {
            let last = i + 1 == ds.len();
            let mut flags = if w { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let index = first + i as u16;
            let next = if last { 0 } else { index + 1 };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&d, self.desc_addr.unchecked_add(16 * u64::from(index)))
                .unwrap();
        }
        // The avail ring: the head, then the index (flags at +0, idx at +2).
        let idx: u16 = self.mem.read_obj(self.avail_addr.unchecked_add(2)).unwrap();
        self.mem
            .write_obj(
                first,
                self.avail_addr
                    .unchecked_add(4 + 2 * u64::from(idx % QSIZE)),
            )
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), self.avail_addr.unchecked_add(2))
            .unwrap();
        self.next_desc += u16::try_from(ds.len()).unwrap();
        status
    }

    /// Kicks the queue and waits until every request made so far is in the
    /// used ring (failing, not hanging, if the server never answers).
    fn run(&self) {
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let idx: u16 = self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap();
            if idx == self.requests {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server answered {idx} of {} requests in 60 s",
                self.requests
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn read_back(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

impl Drop for Session {
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

/// Every page of `[addr, addr + len)`.
fn pages(addr: u64, len: u64) -> impl Iterator<Item = u64> {
    (addr / PAGE..(addr + len).div_ceil(PAGE)).map(|p| p * PAGE)
}

/// Reads through `engine` while the frontend logs: the data pages, the
/// status page and the used ring are marked, and no page the device did
/// not write is. `offset` shifts the buffers off alignment (bounced under
/// O_DIRECT).
fn reads_mark_their_pages(engine: Engine, direct: bool, offset: u64) {
    if engine == Engine::Uring && !extstorage_blockio::UringEngine::is_supported() {
        extstorage_testbins::skip_or_fail(
            extstorage_testbins::Facility::Uring,
            "io_uring unavailable here",
        );
        return;
    }
    let mut s = Session::start(engine, direct);
    s.set_log();
    s.log_all(true);
    s.clear_log();
    // A one-segment read of 3 pages, and a two-segment read whose segments
    // sit in pages of their own, far apart.
    let a = DATA + offset;
    let (b1, b2) = (DATA + 0x10_0000 + offset, DATA + 0x20_0000 + offset);
    let st_a = s.request(0, 8, &[(a, 3 * 4096, true)]);
    let st_b = s.request(0, 40, &[(b1, 4096, true), (b2, 8192, true)]);
    s.run();
    assert_eq!(s.status(st_a), 0, "read A succeeded");
    assert_eq!(s.status(st_b), 0, "read B succeeded");
    let want = |sector: u64, len: u64| -> Vec<u8> {
        (0..len).map(|i| sector_byte(sector + i / 512)).collect()
    };
    assert_eq!(s.read_back(a, 3 * 4096), want(8, 3 * 4096));
    assert_eq!(s.read_back(b1, 4096), want(40, 4096));
    assert_eq!(s.read_back(b2, 8192), want(48, 8192));
    let written = [(a, 3 * 4096), (b1, 4096), (b2, 8192)];
    for (addr, len) in written {
        for p in pages(addr, len) {
            assert!(
                s.dirty(p),
                "{engine:?} (direct={direct}): page {p:#x} of the read buffer at {addr:#x}+{len:#x} is not marked in the dirty log"
            );
        }
    }
    assert!(s.dirty(st_a) && s.dirty(st_b), "status pages marked");
    assert!(s.dirty(s.used_addr.0), "used ring marked");
    // Pages the device only read (headers) or never touched stay clean.
    assert!(
        !s.dirty(HEADERS),
        "header page (device-readable) not marked"
    );
    assert!(!s.dirty(DATA + 0x28_0000), "untouched page not marked");
}

#[test]
fn sync_engine_reads_mark_their_pages() {
    reads_mark_their_pages(Engine::Sync, false, 0);
}

#[test]
fn io_uring_reads_mark_their_pages() {
    reads_mark_their_pages(Engine::Uring, false, 0);
}

#[test]
fn sync_engine_bounced_reads_mark_their_pages() {
    // O_DIRECT with buffers one byte off alignment: copied out of bounce buffers.
    reads_mark_their_pages(Engine::Sync, true, 1);
}

#[test]
fn io_uring_bounced_reads_mark_their_pages() {
    reads_mark_their_pages(Engine::Uring, true, 1);
}

#[test]
fn get_id_marks_its_page() {
    let mut s = Session::start(Engine::Sync, false);
    s.set_log();
    s.log_all(true);
    s.clear_log();
    let buf = DATA + 0x5_0000;
    let st = s.request(8, 0, &[(buf, 20, true)]);
    s.run();
    assert_eq!(s.status(st), 0);
    assert_eq!(&s.read_back(buf, 16), b"dirty-log-serial");
    assert!(s.dirty(buf), "GET_ID's buffer page marked");
}

/// Without VHOST_F_LOG_ALL the workers leave the engines' pages alone (the
/// fast path checks one flag); once it is acked they mark them, and when
/// it is withdrawn (a migration that failed or was cancelled) they stop.
#[test]
fn engine_pages_are_marked_only_while_log_all_is_acked() {
    let mut s = Session::start(Engine::Sync, false);
    s.set_log();
    s.clear_log();
    let a = DATA;
    s.request(0, 0, &[(a, 4096, true)]);
    s.run();
    assert!(!s.dirty(a), "no LOG_ALL yet: data page not marked");

    s.log_all(true);
    let b = DATA + 0x1_0000;
    s.request(0, 8, &[(b, 4096, true)]);
    s.run();
    assert!(s.dirty(b), "LOG_ALL acked: data page marked");

    s.log_all(false);
    s.clear_log();
    let c = DATA + 0x2_0000;
    s.request(0, 16, &[(c, 4096, true)]);
    s.run();
    assert!(!s.dirty(c), "LOG_ALL withdrawn: data page not marked");
}

/// Writes and flushes move no data into guest memory: only their status
/// bytes and the used ring are marked, never their (device-readable) data.
#[test]
fn writes_mark_only_status_and_used_ring() {
    if !extstorage_blockio::UringEngine::is_supported() {
        extstorage_testbins::skip_or_fail(
            extstorage_testbins::Facility::Uring,
            "io_uring unavailable here",
        );
        return;
    }
    let mut s = Session::start(Engine::Uring, false);
    s.set_log();
    s.log_all(true);
    s.clear_log();
    let a = DATA + 0x8_0000;
    s.mem.write_slice(&[0x77u8; 4096], GuestAddress(a)).unwrap();
    let st = s.request(1, 64, &[(a, 4096, false)]);
    let st_flush = s.request(4, 0, &[]);
    s.run();
    assert_eq!(s.status(st), 0);
    assert_eq!(s.status(st_flush), 0);
    assert!(
        !s.dirty(a),
        "a write's data page is only read by the device"
    );
    assert!(s.dirty(st) && s.dirty(st_flush) && s.dirty(s.used_addr.0));
    let mut back = [0u8; 4096];
    File::open(s.dir.path().join("img"))
        .unwrap()
        .read_exact_at(&mut back, 64 * 512)
        .unwrap();
    assert_eq!(back, [0x77u8; 4096]);
}

/// A migration that is cancelled: the log stays installed but LOG_ALL is
/// withdrawn. From then on nothing is marked, not even what vm-memory
/// writes (status bytes, the used ring), and acking LOG_ALL again resumes
/// marking into the same log.
#[test]
fn marking_stops_when_log_all_is_withdrawn() {
    let mut s = Session::start(Engine::Sync, false);
    s.set_log();
    s.log_all(true);
    let a = DATA;
    let st_a = s.request(0, 0, &[(a, 4096, true)]);
    s.run();
    assert!(s.dirty(a) && s.dirty(st_a), "LOG_ALL acked: pages marked");

    s.log_all(false);
    s.clear_log();
    let b = DATA + 0x1_0000;
    let st_b = s.request(0, 8, &[(b, 4096, true)]);
    let st_get_id = s.request(8, 0, &[(DATA + 0x2_0000, 20, true)]);
    s.run();
    assert_eq!(s.status(st_b), 0);
    assert_eq!(s.status(st_get_id), 0);
    for (what, page) in [
        ("data", b),
        ("status", st_b),
        ("GET_ID buffer", DATA + 0x2_0000),
        ("used ring", s.used_addr.0),
    ] {
        assert!(
            !s.dirty(page),
            "LOG_ALL withdrawn: the {what} page {page:#x} is still marked in the log"
        );
    }

    s.log_all(true);
    let c = DATA + 0x3_0000;
    let st_c = s.request(0, 16, &[(c, 4096, true)]);
    s.run();
    assert!(
        s.dirty(c) && s.dirty(st_c) && s.dirty(s.used_addr.0),
        "LOG_ALL acked again: marking resumes"
    );
}
