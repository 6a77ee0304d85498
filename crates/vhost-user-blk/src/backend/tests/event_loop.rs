//! A queue's io_uring event loop, driven the way the daemon drives it: a
//! kick eventfd written by the "guest" (this test), the call eventfd it
//! waits on, `handle_event` running on a worker thread of its own, and
//! `stop_vring` or the worker's exit event ending it.
//!
//! Nothing but the loop reads the kick eventfd here (there is no epoll
//! loop), so a request served after a kick proves the loop served it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use std::cell::Cell;
use std::os::fd::OwnedFd;

use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
use vm_memory::{Address, GuestRegionMmap, MmapRegion};

use super::*;

const DESCS_PER_REQ: u16 = 3;
/// Requests that fit the 64-entry descriptor table at once.
const SLOTS: u16 = QSIZE / DESCS_PER_REQ;
const DATA_BASE: u64 = 0x10_0000;
const DATA_STRIDE: u64 = 0x1_0000;

/// A rig with a kick and a call eventfd, and a guest-side view of its ring.
pub(super) struct Looped {
    pub(super) r: Rig,
    pub(super) kick: File,
    pub(super) call: File,
    /// Avail entries published so far.
    published: Cell<u16>,
}

fn new_eventfd() -> File {
    let fd = NixEventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC);
    File::from(OwnedFd::from(fd.unwrap()))
}

impl Looped {
    /// None (skip) where io_uring or its event loop is unavailable.
    fn new(direct: bool) -> Option<Looped> {
        if !extstorage_blockio::UringEngine::event_loop_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring event loop unavailable here",
            );
            return None;
        }
        Some(Looped::with(crate::Engine::Uring, direct, 0))
    }

    /// A rig with `engine` and `--poll-us poll_us`, kick and call eventfds.
    pub(super) fn with(engine: crate::Engine, direct: bool, poll_us: u32) -> Looped {
        let r = Rig::build_polling(false, engine, direct, 8 << 20, poll_us);
        let (kick, call) = (new_eventfd(), new_eventfd());
        r.vring.set_kick(Some(kick.try_clone().unwrap()));
        r.vring.set_call(Some(call.try_clone().unwrap()));
        Looped {
            r,
            kick,
            call,
            published: Cell::new(0),
        }
    }

    /// Runs the worker for queue 0 as the daemon's worker thread would
    /// for a kick: until the loop returns.
    fn worker(&self) -> std::thread::JoinHandle<()> {
        let (backend, vring) = (self.r.backend.clone(), self.r.vring.clone());
        std::thread::spawn(move || {
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();
        })
    }

    /// Writes request `slot` (descriptors `3 * slot ..`): a read or write
    /// of `len` bytes at `sector` through the slot's data buffer at
    /// `data`; returns its head and status address.
    pub(super) fn request(
        &self,
        slot: u16,
        write: bool,
        sector: u64,
        data: u64,
        len: u32,
    ) -> (u16, GuestAddress) {
        let mem = self.r.gm.memory();
        let head = slot * DESCS_PER_REQ;
        let hdr = 0x1000 + u64::from(slot) * 0x20;
        let status = GuestAddress(st(u64::from(slot)));
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&u32::from(write).to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        mem.write_obj(0xffu8, status).unwrap();
        let descs = [
            Descriptor::new(hdr, 16, 1, head + 1),
            Descriptor::new(data, len, 1 | if write { 0 } else { 2 }, head + 2),
            Descriptor::new(status.raw_value(), 1, 2, 0),
        ];
        for (i, d) in descs.into_iter().enumerate() {
            let at = GuestAddress(16 * u64::from(head + i as u16));
            mem.write_obj(RawDescriptor::from(d), at).unwrap();
        }
        (head, status)
    }

    /// Makes `heads` available and kicks.
    pub(super) fn publish(&self, heads: &[u16]) {
        let mem = self.r.gm.memory();
        let avail = GuestAddress(16 * u64::from(QSIZE));
        for &h in heads {
            let n = self.published.get();
            let slot = u64::from(n % QSIZE);
            mem.write_obj(h, avail.unchecked_add(4 + 2 * slot)).unwrap();
            self.published.set(n.wrapping_add(1));
        }
        mem.store(
            self.published.get(),
            avail.unchecked_add(2),
            Ordering::Release,
        )
        .unwrap();
        (&self.kick).write_all(&1u64.to_ne_bytes()).unwrap();
    }

    /// What GET_VRING_BASE does: the queue stops being ready, then the
    /// backend's `stop_vring`. Returns the next avail index it reports.
    fn stop(&self) -> u16 {
        self.r.vring.set_queue_ready(false);
        self.r.backend.stop_vring(0).unwrap();
        self.r.vring.queue_next_avail()
    }

    pub(super) fn used_idx(&self) -> u16 {
        self.r
            .gm
            .memory()
            .load(self.r.used_addr.unchecked_add(2), Ordering::Acquire)
            .unwrap()
    }

    /// Blocks on the call eventfd until `n` requests have been used.
    pub(super) fn wait_used(&self, n: u16) {
        while self.used_idx() != n {
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, 60_000) };
            assert_eq!(rc, 1, "no completion signalled: the event loop hangs");
            let mut v = [0u8; 8];
            let _ = (&self.call).read(&mut v);
        }
    }

    pub(super) fn status(&self, at: GuestAddress) -> u8 {
        self.r.status(at)
    }

    fn stats(&self) -> extstorage_serve_api::control::QueueStatus {
        self.r.backend.inner.dev.stats().snapshot()[0].clone()
    }
}

/// What ADD_MEM_REG does to the table: a 1 MiB region at `at`.
fn add_region(gm: &Gm, at: GuestAddress) {
    let region = GuestRegionMmap::new(MmapRegion::new(1 << 20).unwrap(), at).unwrap();
    let grown = gm.memory().insert_region(Arc::new(region)).unwrap();
    gm.lock().unwrap().replace(grown);
}

pub(super) fn pattern(slot: u16, round: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8) ^ (slot as u8).wrapping_mul(31) ^ round)
        .collect()
}

#[test]
fn the_event_loop_serves_kicks_until_stop_vring() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    {
        let worker = l.worker();
        let mut used = 0u16;
        for round in 0..3u8 {
            // Writes of a pattern to sectors 8 * slot, then reads into
            // other buffers, each batch announced by one kick.
            let mut heads = Vec::new();
            let mut statuses = Vec::new();
            for slot in 0..SLOTS {
                let data = DATA_BASE + u64::from(slot) * DATA_STRIDE;
                l.r.gm
                    .memory()
                    .write_slice(&pattern(slot, round), GuestAddress(data))
                    .unwrap();
                let (h, st) = l.request(slot, true, 8 * u64::from(slot), data, 4096);
                heads.push(h);
                statuses.push(st);
            }
            l.publish(&heads);
            used = used.wrapping_add(SLOTS);
            l.wait_used(used);
            assert!(statuses.iter().all(|&s| l.status(s) == 0), "round {round}");
            let mut heads = Vec::new();
            for slot in 0..SLOTS {
                let data = DATA_BASE + (u64::from(slot) + 32) * DATA_STRIDE;
                let (h, st) = l.request(slot, false, 8 * u64::from(slot), data, 4096);
                heads.push(h);
                statuses[usize::from(slot)] = st;
            }
            l.publish(&heads);
            used = used.wrapping_add(SLOTS);
            l.wait_used(used);
            for slot in 0..SLOTS {
                assert_eq!(l.status(statuses[usize::from(slot)]), 0);
                let mut got = vec![0u8; 4096];
                let data = DATA_BASE + (u64::from(slot) + 32) * DATA_STRIDE;
                l.r.gm
                    .memory()
                    .read_slice(&mut got, GuestAddress(data))
                    .unwrap();
                assert!(got == pattern(slot, round), "round {round} slot {slot}");
                let mut file = vec![0u8; 4096];
                std::fs::File::open(&l.r.file)
                    .unwrap()
                    .read_exact_at(&mut file, 4096 * u64::from(slot))
                    .unwrap();
                assert!(
                    file == pattern(slot, round),
                    "file, round {round} slot {slot}"
                );
            }
        }
        l.stop();
        worker.join().unwrap();
    }
    let q = l.stats();
    assert_eq!(q.in_flight, 0);
    assert_eq!(q.requests.read, 3 * u64::from(SLOTS));
    assert_eq!(q.requests.write, 3 * u64::from(SLOTS));
    assert_eq!(q.bytes_read, 3 * 4096 * u64::from(SLOTS));
    assert_eq!(q.errors, 0);
}

/// `stop_vring` while requests are in flight (direct I/O, so they really
/// are): when it returns, every request the worker took off the ring has
/// been answered and nothing is in flight, and the ring can be started
/// again and serves the rest.
#[test]
fn stop_vring_under_load_answers_everything_taken() {
    let Some(l) = Looped::new(true) else {
        return;
    };
    let mut statuses = Vec::new();
    let mut heads = Vec::new();
    for slot in 0..SLOTS {
        let data = DATA_BASE + u64::from(slot) * DATA_STRIDE;
        let (h, st) = l.request(slot, false, 128 * u64::from(slot), data, 65536);
        heads.push(h);
        statuses.push(st);
    }
    {
        let worker = l.worker();
        // One request first, so the loop surely runs when the rest arrive.
        l.publish(&heads[..1]);
        l.wait_used(1);
        l.publish(&heads[1..]);
        let taken = l.stop();
        assert_eq!(l.used_idx(), taken, "everything taken was answered");
        assert_eq!(l.stats().in_flight, 0);
        worker.join().unwrap();
    }
    // Started again (as after GET_VRING_BASE and a new kick): the rest.
    l.r.vring.set_queue_ready(true);
    {
        let worker = l.worker();
        (&l.kick).write_all(&1u64.to_ne_bytes()).unwrap();
        l.wait_used(SLOTS);
        l.stop();
        worker.join().unwrap();
    }
    assert!(statuses.iter().all(|&s| l.status(s) == 0));
    let q = l.stats();
    assert_eq!((q.in_flight, q.requests.read), (0, u64::from(SLOTS)));
}

/// The frontend adds a memory region (ADD_MEM_REG) while the loop sleeps,
/// then kicks for a request whose buffer lies in it: the loop must use the
/// new table.
#[test]
fn memory_added_while_the_loop_sleeps_is_used() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    {
        let worker = l.worker();
        // Served once on the old table, so the loop is surely running.
        let (h, st0) = l.request(0, false, 0, DATA_BASE, 4096);
        l.publish(&[h]);
        l.wait_used(1);
        assert_eq!(l.status(st0), 0);
        let extra = GuestAddress(MEM_SIZE * 2);
        add_region(&l.r.gm, extra);
        l.r.write_file(4096, &[0x5a; 4096]);
        let (h, st1) = l.request(1, false, 8, extra.raw_value(), 4096);
        l.publish(&[h]);
        l.wait_used(2);
        assert_eq!(l.status(st1), Status::Ok.as_u8());
        let mut got = [0u8; 4096];
        l.r.gm.memory().read_slice(&mut got, extra).unwrap();
        assert!(got.iter().all(|&b| b == 0x5a));
        l.stop();
        worker.join().unwrap();
    }
}

/// The worker's exit event ends the loop (disconnect, shutdown), and the
/// loop leaves the kick eventfd readable: the epoll loop it returns to may
/// hold a stale readiness event for a kick the loop consumed, and reads
/// the kick with a blocking read.
#[test]
fn exit_event_ends_the_loop_and_leaves_a_kick_to_read() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    let (consumer, notifier) = l.r.backend.exit_event(0).unwrap();
    // As vhost-user-backend does: the epoll owns it as a raw fd from now on.
    let exit_fd = consumer.into_raw_fd();
    {
        let worker = l.worker();
        let (h, _) = l.request(0, false, 0, DATA_BASE, 4096);
        l.publish(&[h]);
        l.wait_used(1);
        notifier.notify().unwrap();
        worker.join().unwrap();
    }
    let readable = |fd: RawFd| {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    };
    assert!(readable(l.kick.as_raw_fd()), "a kick is left to read");
    assert!(
        readable(exit_fd),
        "the exit event is left for the epoll loop"
    );
    assert_eq!(l.stats().in_flight, 0);
    l.r.backend.close_exit_events();
}

/// A ring disabled while the loop sleeps is not served when kicked; the
/// loop returns, and once enabled again the request is served.
#[test]
fn a_disabled_ring_ends_the_loop_unserved() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    {
        let worker = l.worker();
        let (h, _) = l.request(0, false, 0, DATA_BASE, 4096);
        l.publish(&[h]);
        l.wait_used(1);
        l.r.vring.set_enabled(false);
        let (h, st) = l.request(1, false, 0, DATA_BASE, 4096);
        l.publish(&[h]);
        worker.join().unwrap();
        assert_eq!(l.used_idx(), 1, "nothing served while disabled");
        assert_eq!(l.status(st), 0xff);
        l.r.vring.set_enabled(true);
        let worker = l.worker();
        l.wait_used(2);
        assert_eq!(l.status(st), 0);
        l.stop();
        worker.join().unwrap();
    }
}

/// Dirty or under-writeback page-cache pages of the file at `path`
/// (cachestat, Linux 6.5+), or None where the kernel lacks it.
fn unwritten_pages(path: &std::path::Path) -> Option<u64> {
    // The same number on every architecture; libc does not name it for
    // x86_64 glibc yet.
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = File::open(path).unwrap();
    let range = [0u64, 0u64];
    let mut stat = [0u64; 5];
    // SAFETY: `range` (struct cachestat_range) and `stat` (struct
    // cachestat: five u64) are valid for the kernel to read and write.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0,
        )
    };
    (rc == 0).then_some(stat[1] + stat[2])
}

/// With the guest's write cache off (`wce` 0), a write the guest sees
/// completed is durable: no page of the (buffered) file is left dirty.
#[test]
fn write_through_writes_are_durable_when_completed() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    l.r.backend.set_config(32, &[0]).unwrap();
    let worker = l.worker();
    let mut heads = Vec::new();
    let mut statuses = Vec::new();
    for slot in 0..SLOTS {
        let data = DATA_BASE + u64::from(slot) * DATA_STRIDE;
        l.r.gm
            .memory()
            .write_slice(&pattern(slot, 7), GuestAddress(data))
            .unwrap();
        let (h, st) = l.request(slot, true, 8 * u64::from(slot), data, 4096);
        heads.push(h);
        statuses.push(st);
    }
    l.publish(&heads);
    l.wait_used(SLOTS);
    assert!(statuses.iter().all(|&s| l.status(s) == 0));
    if let Some(n) = unwritten_pages(&l.r.file) {
        assert_eq!(n, 0, "every completed write-through write is on disk");
    }
    // Back to writeback: a write leaves its page dirty (the check can tell).
    l.r.backend.set_config(32, &[1]).unwrap();
    let (h, st) = l.request(0, true, 0, DATA_BASE, 4096);
    l.publish(&[h]);
    l.wait_used(SLOTS + 1);
    assert_eq!(l.status(st), 0);
    if let Some(n) = unwritten_pages(&l.r.file) {
        assert!(n > 0, "a writeback write is not flushed");
    }
    l.stop();
    worker.join().unwrap();
}

/// Poll mode on the epoll path (sync engine): a request the spin after a
/// batch finds is served with the memory table as it is then, so a region
/// the frontend added during the spin is used. (The spin used to reuse
/// the table loaded before the batch: such a request failed with IOERR.)
#[test]
fn poll_mode_uses_memory_added_during_the_spin() {
    // A 10 ms spin: long enough for this thread to add the region and
    // publish, however busy the machine (else the test cannot fail, but
    // still passes).
    let l = Looped::with(crate::Engine::Sync, false, 10_000);
    l.r.write_file(4096, &[0x3c; 4096]);
    let (h, st0) = l.request(0, false, 0, DATA_BASE, 4096);
    l.publish(&[h]);
    let worker = l.worker();
    // The first request is answered before the spin starts.
    l.wait_used(1);
    assert_eq!(l.status(st0), 0);
    let extra = GuestAddress(MEM_SIZE * 2);
    add_region(&l.r.gm, extra);
    let (h, st1) = l.request(1, false, 8, extra.raw_value(), 4096);
    l.publish(&[h]);
    worker.join().unwrap();
    if l.used_idx() == 1 {
        // The spin was over before the request came: serve it now.
        eprintln!("the spin ended first: this run cannot tell");
        l.worker().join().unwrap();
    }
    assert_eq!(l.used_idx(), 2);
    assert_eq!(
        l.status(st1),
        Status::Ok.as_u8(),
        "served with the new table"
    );
    let mut got = [0u8; 4096];
    l.r.gm.memory().read_slice(&mut got, extra).unwrap();
    assert!(got.iter().all(|&b| b == 0x3c));
}

/// The frontend adds a memory region and makes a request using it
/// available right after the worker loaded the memory table for the
/// requests it had found (between the load and the popping). Popping
/// re-reads the avail index: the worker must load the table again before
/// it parses the new request. It used to parse it against the table
/// loaded before its region was added and fail it with IOERR ("a data
/// segment lies outside guest memory": seen once in tests/soak.rs, at
/// the first read of a libblkio connection).
fn request_made_after_the_memory_load(l: &Looped, looped: bool) {
    l.r.write_file(4096, &[0x6e; 4096]);
    let extra = GuestAddress(MEM_SIZE * 2);
    let (h0, st0) = l.request(0, false, 0, DATA_BASE, 4096);
    // Written now, made available by the hook: its descriptors only
    // name the region the hook adds.
    let (h1, st1) = l.request(1, false, 8, extra.raw_value(), 4096);
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (gm, kick, ran) = (l.r.gm.clone(), l.kick.try_clone().unwrap(), ran.clone());
        let hook = move || {
            add_region(&gm, extra);
            let mem = gm.memory();
            let avail = GuestAddress(16 * u64::from(QSIZE));
            mem.write_obj(h1, avail.unchecked_add(4 + 2)).unwrap();
            mem.store(2u16, avail.unchecked_add(2), Ordering::Release)
                .unwrap();
            (&kick).write_all(&1u64.to_ne_bytes()).unwrap();
            ran.store(true, Ordering::Release);
        };
        l.r.backend.inner.queues[0]
            .lock()
            .unwrap()
            .after_memory_load = Some(Box::new(hook));
    }
    l.publish(&[h0]);
    let worker = l.worker();
    l.wait_used(2);
    if looped {
        l.stop();
    }
    worker.join().unwrap();
    assert!(ran.load(Ordering::Acquire), "the hook did not run");
    assert_eq!(l.used_idx(), 2);
    assert_eq!((l.status(st0), l.status(st1)), (0, 0), "both served");
    let mut got = [0u8; 4096];
    l.r.gm.memory().read_slice(&mut got, extra).unwrap();
    assert!(got.iter().all(|&b| b == 0x6e));
}

#[test]
fn a_request_made_after_the_memory_load_is_parsed_with_a_fresh_table() {
    let l = Looped::with(crate::Engine::Sync, false, 0);
    request_made_after_the_memory_load(&l, false);
}

#[test]
fn the_event_loop_parses_a_request_made_after_the_memory_load_with_a_fresh_table() {
    let Some(l) = Looped::new(false) else {
        return;
    };
    request_made_after_the_memory_load(&l, true);
}
