//! Property test: random batches of valid and hostile requests through the
//! queue worker, over a real vring in real guest memory and a real file.
//!
//! Every batch mixes good reads, writes, flushes and GET_IDs with
//! malformed chains. After the worker ran once: each good request has
//! status OK, the documented used length and the right data (in the guest
//! buffer for reads, in the file for writes); each bad one has IOERR or
//! UNSUPP, or, without a trustworthy status byte, a used entry of length 0
//! and nothing written or done. Then the worker must still serve a read.
//! (An avail entry naming a head past the queue size breaks the ring
//! protocol and stops the queue: see `flood`.)

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use vm_memory::Address;

use super::*;

const DISK_SECTORS: u64 = 2048;
/// Each request of a batch owns 128 sectors of the disk.
const SLOT_SECTORS: u64 = 128;
const MAX_REQS: usize = 10;

#[derive(Debug, Clone)]
enum Kind {
    Read {
        off: u64,
        nsec: u32,
        split: u32,
    },
    Write {
        off: u64,
        nsec: u32,
        split: u32,
        fill: u8,
    },
    Flush,
    GetId,
    /// A read or write whose range ends past the disk.
    BeyondEnd {
        write: bool,
        sector: u64,
    },
    Unknown(u32),
    /// The last descriptor is device-readable.
    LastReadable,
    /// The status descriptor is empty.
    EmptyStatus,
    HeaderWritable,
    ShortHeader,
    DataOutside,
    WrongDirection,
    PartialSector,
    /// A write whose status descriptor loops back to the header.
    LoopingWrite {
        fill: u8,
    },
    /// A read whose status descriptor has NEXT past the queue.
    NextPastQueue {
        next: u16,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Want {
    Ok {
        used: u32,
    },
    IoErr,
    Unsupp,
    /// Used length 0, status byte untouched.
    Unanswered,
}

fn kind() -> impl Strategy<Value = Kind> {
    let range = (0..SLOT_SECTORS - 8, 1u32..=8);
    prop_oneof![
        4 => (range.clone(), 1u32..=3).prop_map(|((off, nsec), split)| Kind::Read { off, nsec, split }),
        4 => (range, 1u32..=3, any::<u8>())
            .prop_map(|((off, nsec), split, fill)| Kind::Write { off, nsec, split, fill }),
        1 => Just(Kind::Flush),
        1 => Just(Kind::GetId),
        2 => (any::<bool>(), prop_oneof![
                DISK_SECTORS - 1..DISK_SECTORS + 4,
                Just(u64::MAX),
                Just(u64::MAX / 512),
                Just(u64::MAX / 512 + 1),
            ])
            .prop_map(|(write, sector)| Kind::BeyondEnd { write, sector }),
        1 => any::<u32>()
            .prop_filter("known type", |t| ![0, 1, 4, 8, 11, 13].contains(t))
            .prop_map(Kind::Unknown),
        1 => Just(Kind::LastReadable),
        1 => Just(Kind::EmptyStatus),
        1 => Just(Kind::HeaderWritable),
        1 => Just(Kind::ShortHeader),
        1 => Just(Kind::DataOutside),
        1 => Just(Kind::WrongDirection),
        1 => Just(Kind::PartialSector),
        1 => any::<u8>().prop_map(|fill| Kind::LoopingWrite { fill }),
        1 => (QSIZE..u16::MAX).prop_map(|next| Kind::NextPastQueue { next }),
    ]
}

/// The file's initial contents: a pattern no request writes.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7) ^ (offset >> 9)) as u8 | 0x80
}

/// One request laid out in guest memory and the descriptor table.
struct Built {
    head: u16,
    status: GuestAddress,
    want: Want,
    /// Disk offset and guest buffers of a good read, to compare.
    read_back: Option<(u64, Vec<D>)>,
    /// Disk range and fill byte of a good write; `None` fill means the
    /// slot must still hold the pattern.
    disk: Option<(u64, u64, Option<u8>)>,
}

struct Batch<'a> {
    r: &'a Rig,
    table: Vec<RawDescriptor>,
}

impl Batch<'_> {
    fn push(&mut self, ds: &[D], tail: Option<u16>) -> u16 {
        let start = u16::try_from(self.table.len()).unwrap();
        for (i, &(addr, len, w)) in ds.iter().enumerate() {
            let last = i + 1 == ds.len();
            let mut flags = if w { F_WRITE } else { 0 };
            let mut next = start + i as u16 + 1;
            if last {
                match tail {
                    Some(n) => {
                        flags |= F_NEXT;
                        next = n;
                    }
                    None => next = 0,
                }
            } else {
                flags |= F_NEXT;
            }
            self.table
                .push(RawDescriptor::from(Descriptor::new(addr, len, flags, next)));
        }
        start
    }

    fn header(&self, at: u64, ty: u32, sector: u64) {
        self.r.header(at, ty, sector);
    }

    fn build(&mut self, k: usize, kind: &Kind) -> Built {
        let hdr = 0x1000 + 0x100 * k as u64;
        let status = st(k as u64);
        let data = 0x10_0000 + 0x1_0000 * k as u64;
        let slot = SLOT_SECTORS * k as u64;
        let mem = self.r.gm.memory();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let plain = |head, want| Built {
            head,
            status: GuestAddress(status),
            want,
            read_back: None,
            disk: None,
        };
        // Data descriptors for `nsec` sectors split into `split` pieces.
        let pieces = |nsec: u32, split: u32, w: bool| {
            let total = nsec * 512;
            let split = split.min(nsec);
            let mut v = Vec::new();
            let mut at = 0u32;
            for i in 0..split {
                // Uneven pieces, each a whole number of sectors except the
                // boundaries, which is allowed: only the total must be.
                let len = if i + 1 == split {
                    total - at
                } else {
                    (total / split / 2).max(1) + i * 3
                };
                v.push((data + u64::from(at) + 0x100 * u64::from(i), len, w));
                at += len;
            }
            v
        };
        match *kind {
            Kind::Read { off, nsec, split } => {
                self.header(hdr, 0, slot + off);
                let mut ds = vec![(hdr, 16, false)];
                let ps = pieces(nsec, split, true);
                ds.extend(&ps);
                ds.push((status, 1, true));
                let head = self.push(&ds, None);
                let mut b = plain(
                    head,
                    Want::Ok {
                        used: nsec * 512 + 1,
                    },
                );
                b.read_back = Some(((slot + off) * 512, ps));
                b
            }
            Kind::Write {
                off,
                nsec,
                split,
                fill,
            } => {
                self.header(hdr, 1, slot + off);
                let ps = pieces(nsec, split, false);
                for &(a, l, _) in &ps {
                    mem.write_slice(&vec![fill; l as usize], GuestAddress(a))
                        .unwrap();
                }
                let mut ds = vec![(hdr, 16, false)];
                ds.extend(&ps);
                ds.push((status, 1, true));
                let head = self.push(&ds, None);
                let mut b = plain(head, Want::Ok { used: 1 });
                b.disk = Some(((slot + off) * 512, u64::from(nsec) * 512, Some(fill)));
                b
            }
            Kind::Flush => {
                self.header(hdr, 4, 0);
                let head = self.push(&[(hdr, 16, false), (status, 1, true)], None);
                plain(head, Want::Ok { used: 1 })
            }
            Kind::GetId => {
                self.header(hdr, 8, 0);
                let head = self.push(
                    &[(hdr, 16, false), (data, 32, true), (status, 1, true)],
                    None,
                );
                plain(head, Want::Ok { used: 21 })
            }
            Kind::BeyondEnd { write, sector } => {
                self.header(hdr, u32::from(write), sector);
                let head = self.push(
                    &[(hdr, 16, false), (data, 1024, !write), (status, 1, true)],
                    None,
                );
                plain(head, Want::IoErr)
            }
            Kind::Unknown(t) => {
                self.header(hdr, t, 0);
                let head = self.push(&[(hdr, 16, false), (status, 1, true)], None);
                plain(head, Want::Unsupp)
            }
            Kind::LastReadable => {
                self.header(hdr, 1, slot);
                mem.write_obj(0xffu8, GuestAddress(data + 511)).unwrap();
                let head = self.push(&[(hdr, 16, false), (data, 512, false)], None);
                let mut b = plain(head, Want::Unanswered);
                b.status = GuestAddress(data + 511);
                b.disk = Some((slot * 512, 512, None));
                b
            }
            Kind::EmptyStatus => {
                self.header(hdr, 0, slot);
                let head = self.push(
                    &[(hdr, 16, false), (data, 512, true), (status, 0, true)],
                    None,
                );
                plain(head, Want::Unanswered)
            }
            Kind::HeaderWritable => {
                self.header(hdr, 0, slot);
                let head = self.push(&[(hdr, 16, true), (status, 1, true)], None);
                plain(head, Want::IoErr)
            }
            Kind::ShortHeader => {
                self.header(hdr, 4, 0);
                let head = self.push(&[(hdr, 8, false), (status, 1, true)], None);
                plain(head, Want::IoErr)
            }
            Kind::DataOutside => {
                self.header(hdr, 1, slot);
                let head = self.push(
                    &[
                        (hdr, 16, false),
                        (MEM_SIZE - 512, 1024, false),
                        (status, 1, true),
                    ],
                    None,
                );
                let mut b = plain(head, Want::IoErr);
                b.disk = Some((slot * 512, 1024, None));
                b
            }
            Kind::WrongDirection => {
                self.header(hdr, 1, slot);
                let head = self.push(
                    &[(hdr, 16, false), (data, 512, true), (status, 1, true)],
                    None,
                );
                let mut b = plain(head, Want::IoErr);
                b.disk = Some((slot * 512, 512, None));
                b
            }
            Kind::PartialSector => {
                self.header(hdr, 1, slot);
                let head = self.push(
                    &[(hdr, 16, false), (data, 500, false), (status, 1, true)],
                    None,
                );
                let mut b = plain(head, Want::IoErr);
                b.disk = Some((slot * 512, 512, None));
                b
            }
            Kind::LoopingWrite { fill } => {
                self.header(hdr, 1, slot);
                mem.write_slice(&[fill; 512], GuestAddress(data)).unwrap();
                let start = u16::try_from(self.table.len()).unwrap();
                let head = self.push(
                    &[(hdr, 16, false), (data, 512, false), (status, 1, true)],
                    Some(start),
                );
                let mut b = plain(head, Want::Unanswered);
                b.disk = Some((slot * 512, 512, None));
                b
            }
            Kind::NextPastQueue { next } => {
                self.header(hdr, 0, slot);
                let head = self.push(
                    &[(hdr, 16, false), (data, 512, true), (status, 1, true)],
                    Some(next),
                );
                plain(head, Want::Unanswered)
            }
        }
    }
}

/// How the worker runs: called once per batch (the sync engine), or as
/// the io_uring event loop on a thread of its own, kicked through a real
/// kick eventfd and waited for on the call eventfd.
enum Driver {
    Direct,
    Looped {
        kick: std::fs::File,
        call: std::fs::File,
        worker: Option<std::thread::JoinHandle<()>>,
        backend: BlkBackend,
        vring: Vring,
    },
}

impl Driver {
    fn new(r: &Rig, looped: bool) -> Driver {
        if !looped {
            return Driver::Direct;
        }
        let eventfd = || {
            let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
                0,
                nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .unwrap();
            std::fs::File::from(std::os::fd::OwnedFd::from(fd))
        };
        let (kick, call) = (eventfd(), eventfd());
        r.vring.set_kick(Some(kick.try_clone().unwrap()));
        r.vring.set_call(Some(call.try_clone().unwrap()));
        let (backend, vring) = (r.backend.clone(), r.vring.clone());
        let worker = std::thread::spawn(move || {
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();
        });
        Driver::Looped {
            kick,
            call,
            worker: Some(worker),
            backend: r.backend.clone(),
            vring: r.vring.clone(),
        }
    }

    /// Has the worker serve what was published; `answers` used entries are
    /// due.
    fn run(&self, r: &Rig, used_before: u16, answers: usize) {
        match self {
            Driver::Direct => {
                r.backend
                    .handle_event(0, EventSet::IN, std::slice::from_ref(&r.vring), 0)
                    .unwrap();
            }
            Driver::Looped { kick, call, .. } => {
                use std::io::{Read, Write};
                use std::os::fd::AsRawFd;
                (&*kick).write_all(&1u64.to_ne_bytes()).unwrap();
                let want = used_before.wrapping_add(u16::try_from(answers).unwrap());
                loop {
                    let idx: u16 =
                        r.gm.memory()
                            .read_obj(r.used_addr.unchecked_add(2))
                            .unwrap();
                    if idx == want {
                        break;
                    }
                    let mut pfd = libc::pollfd {
                        fd: call.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: `pfd` is a valid pollfd for the call.
                    let rc = unsafe { libc::poll(&mut pfd, 1, 60_000) };
                    assert_eq!(rc, 1, "used index stuck at {idx}, want {want}");
                    let _ = (&*call).read(&mut [0u8; 8]);
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Driver::Looped {
            worker,
            backend,
            vring,
            ..
        } = self
            && let Some(w) = worker.take()
        {
            // What GET_VRING_BASE does; the loop returns.
            vring.set_queue_ready(false);
            let _ = backend.stop_vring(0);
            let _ = w.join();
        }
    }
}

/// Writes `table` from index 0, appends `heads` to the avail ring, runs the
/// worker and returns the new used entries (`answers` are due).
fn publish(
    r: &Rig,
    d: &Driver,
    table: &[RawDescriptor],
    heads: &[u16],
    answers: usize,
) -> Vec<(u32, u32)> {
    // Written directly: a new MockSplitQueue would reset the ring indices.
    // The Rig's mock queue starts at 0: table, then the avail ring.
    let guard = r.gm.memory();
    for (i, d) in table.iter().enumerate() {
        guard.write_obj(*d, GuestAddress(16 * i as u64)).unwrap();
    }
    let avail = GuestAddress(16 * u64::from(QSIZE));
    let idx: u16 = guard.read_obj(avail.unchecked_add(2)).unwrap();
    for (j, &h) in heads.iter().enumerate() {
        let slot = u64::from(idx.wrapping_add(j as u16) % QSIZE);
        guard
            .write_obj(h, avail.unchecked_add(4 + 2 * slot))
            .unwrap();
    }
    let used_before: u16 = guard.read_obj(r.used_addr.unchecked_add(2)).unwrap();
    let new_idx = idx.wrapping_add(u16::try_from(heads.len()).unwrap());
    guard.write_obj(new_idx, avail.unchecked_add(2)).unwrap();
    d.run(r, used_before, answers);
    let used_after: u16 = guard.read_obj(r.used_addr.unchecked_add(2)).unwrap();
    (0..used_after.wrapping_sub(used_before))
        .map(|i| {
            let slot = u64::from(used_before.wrapping_add(i) % QSIZE);
            let e = r.used_addr.unchecked_add(4 + 8 * slot);
            let id: u32 = guard.read_obj(e).unwrap();
            let len: u32 = guard.read_obj(e.unchecked_add(4)).unwrap();
            (id, len)
        })
        .collect()
}

fn file_bytes(r: &Rig, offset: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    std::fs::File::open(&r.file)
        .unwrap()
        .read_exact_at(&mut v, offset)
        .unwrap();
    v
}

fn check(kinds: &[Kind], event_idx: bool, looped: bool) -> Result<(), TestCaseError> {
    let r = if looped {
        Rig::with_engine(false, crate::Engine::Uring)
    } else {
        Rig::new(false)
    };
    let init: Vec<u8> = (0..DISK_SECTORS * 512).map(pattern).collect();
    std::fs::File::options()
        .write(true)
        .open(&r.file)
        .unwrap()
        .write_all_at(&init, 0)
        .unwrap();
    r.backend.set_event_idx(event_idx);
    let d = Driver::new(&r, looped);
    let mut batch = Batch {
        r: &r,
        table: Vec::new(),
    };
    let built: Vec<Built> = kinds
        .iter()
        .enumerate()
        .map(|(k, kind)| batch.build(k, kind))
        .collect();
    let table = std::mem::take(&mut batch.table);
    let heads: Vec<u16> = built.iter().map(|b| b.head).collect();
    let answered = built.len();
    let used = publish(&r, &d, &table, &heads, answered);

    let mut by_head: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(id, len) in &used {
        by_head.entry(id).or_default().push(len);
    }
    prop_assert_eq!(used.len(), answered, "used entries {:?}", used);
    let mem = r.gm.memory();
    for (b, kind) in built.iter().zip(kinds) {
        let lens = by_head.get(&u32::from(b.head)).cloned().unwrap_or_default();
        let status: u8 = mem.read_obj(b.status).unwrap();
        let ctx = format!("{kind:?}: used {lens:?}, status {status:#x}");
        match b.want {
            Want::Ok { used } => {
                prop_assert_eq!(&lens, &vec![used], "{}", ctx);
                prop_assert_eq!(status, Status::Ok.as_u8(), "{}", ctx);
            }
            Want::IoErr => {
                prop_assert_eq!(&lens, &vec![1], "{}", ctx);
                prop_assert_eq!(status, Status::IoErr.as_u8(), "{}", ctx);
            }
            Want::Unsupp => {
                prop_assert_eq!(&lens, &vec![1], "{}", ctx);
                prop_assert_eq!(status, Status::Unsupp.as_u8(), "{}", ctx);
            }
            Want::Unanswered => {
                prop_assert_eq!(&lens, &vec![0], "{}", ctx);
                prop_assert_eq!(status, 0xff, "{}", ctx);
            }
        }
        if let Some((off, len, fill)) = b.disk {
            let got = file_bytes(&r, off, len);
            let want: Vec<u8> = match fill {
                Some(f) => vec![f; len as usize],
                None => (off..off + len).map(pattern).collect(),
            };
            prop_assert!(got == want, "{}: disk bytes at {} differ", ctx, off);
        }
        if let Some((disk_off, pieces)) = &b.read_back {
            let mut off = *disk_off;
            for &(a, l, _) in pieces {
                let mut got = vec![0u8; l as usize];
                mem.read_slice(&mut got, GuestAddress(a)).unwrap();
                let want: Vec<u8> = (off..off + u64::from(l)).map(pattern).collect();
                prop_assert!(got == want, "{}: read data at {} differs", ctx, off);
                off += u64::from(l);
            }
        }
    }

    // The worker still serves: read the first 4 KiB of the disk.
    r.header(0x1000, 0, 0);
    let mut b = Batch {
        r: &r,
        table: Vec::new(),
    };
    let head = b.push(
        &[
            (0x1000, 16, false),
            (0x10_0000, 4096, true),
            (st(0), 1, true),
        ],
        None,
    );
    mem.write_obj(0xffu8, GuestAddress(st(0))).unwrap();
    let table = std::mem::take(&mut b.table);
    let used = publish(&r, &d, &table, &[head], 1);
    prop_assert_eq!(used, vec![(u32::from(head), 4097)]);
    prop_assert_eq!(mem.read_obj::<u8>(GuestAddress(st(0))).unwrap(), 0);
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
    let want = file_bytes(&r, 0, 4096);
    prop_assert!(got == want, "the follow-up read returned the wrong data");
    Ok(())
}

#[test]
fn random_batches_of_good_and_hostile_requests() {
    run_hostile(false, 300);
}

/// The same through the io_uring event loop (kicks through a real eventfd,
/// completions asynchronous, the worker on a thread of its own).
#[test]
fn random_batches_through_the_io_uring_event_loop() {
    if !extstorage_blockio::UringEngine::event_loop_supported() {
        extstorage_testbins::skip_or_fail(
            extstorage_testbins::Facility::Uring,
            "io_uring event loop unavailable here",
        );
        return;
    }
    run_hostile(true, 150);
}

fn run_hostile(looped: bool, default_cases: u32) {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    eprintln!("hostile (event loop: {looped}): PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases}");
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(kind(), 1..=MAX_REQS),
        any::<bool>(),
    );
    if let Err(e) = runner.run(&strategy, |(kinds, event_idx)| {
        check(&kinds, event_idx, looped)
    }) {
        panic!("{e}\nreplay with PROPTEST_RNG_SEED={seed}");
    }
}
