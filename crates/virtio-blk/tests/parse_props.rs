//! Property test: random (mostly hostile) descriptor chains through
//! `Request::parse`, checked against an oracle written from the virtio 1.x
//! spec (2.7.5 descriptor table, 2.7.5.3 indirect descriptors, 5.2.6
//! virtio-blk request layout).
//!
//! Chains are built in real guest memory with `MockSplitQueue` and popped
//! through a real `virtio_queue::Queue`. Several thousand cases; the RNG
//! seed is printed and can be replayed with `PROPTEST_RNG_SEED=<seed>`.

use std::hash::{BuildHasher, RandomState};

use extstorage_virtio_blk::{ParseError, Request, RequestType, Segment};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

// Guest memory: A and B are adjacent regions, then a hole, then C.
const A_END: u64 = 0x40_0000;
const B_END: u64 = 0x50_0000;
const C_START: u64 = 0x60_0000;
const C_END: u64 = 0x70_0000;
/// Where indirect tables go (below every address a header is written to).
const TABLE: u64 = 0x1_0000;
/// Headers are only written at or above this (the rings live below).
const WRITABLE_FROM: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), A_END as usize),
        (GuestAddress(A_END), (B_END - A_END) as usize),
        (GuestAddress(C_START), (C_END - C_START) as usize),
    ])
    .unwrap()
}

/// The oracle's view of guest memory: [addr, addr + len) is backed.
fn in_memory(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    end <= B_END || (addr >= C_START && end <= C_END)
}

/// One raw descriptor as the driver writes it.
#[derive(Debug, Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl D {
    fn raw(self) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(self.addr, self.len, self.flags, self.next))
    }
}

/// How the logical descriptors are laid out in the tables.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A direct chain over a permutation of table slots.
    Plain,
    /// The last descriptor points back to descriptor `to % n` (a loop).
    Loop { to: usize },
    /// The last descriptor has NEXT with an index past the queue size.
    BadNext { past: u16 },
    /// The head descriptor refers to an indirect table holding the chain.
    Indirect {
        fault: IndirectFault,
        also_next: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum IndirectFault {
    None,
    /// Table length not a multiple of 16.
    Unaligned,
    /// Table length 0.
    Empty,
    /// Table in the hole.
    InHole,
    /// Table straddles the end of region B into the hole.
    Straddles,
    /// Entry `k % n` has the INDIRECT flag too (nested).
    Nested {
        k: usize,
    },
    /// Entry `k % n` points past the table.
    NextPastTable {
        k: usize,
    },
    /// The last entry points back into the table.
    Loop {
        to: usize,
    },
}

#[derive(Debug, Clone)]
struct Case {
    qsize: u16,
    /// Permutation seed for the table slots of a plain chain.
    perm_seed: u64,
    ty: u32,
    ioprio: u32,
    sector: u64,
    /// Logical descriptors: (addr, len, device-writable, extra flag noise).
    descs: Vec<(u64, u32, bool, u16)>,
    shape: Shape,
}

fn addr_near(good: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        30 => Just(good),
        2 => (0..0x1000u64).prop_map(|o| A_END - o),
        2 => (0..0x1000u64).prop_map(|o| B_END - o),
        1 => B_END..C_START,
        2 => (C_START..C_END - 0x2_0000).prop_map(|a| a & !0xf),
        1 => (0..0x1000u64).prop_map(|o| C_END - o),
        1 => Just(0u64),
        1 => (0..0x1000u64).prop_map(|o| u64::MAX - o),
        1 => any::<u64>(),
    ]
}

fn len_near(good: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        45 => Just(good),
        1 => Just(0u32),
        1 => Just(1u32),
        1 => Just(15u32),
        1 => Just(17u32),
        1 => Just(511u32),
        1 => Just(513u32),
        1 => 0..8192u32,
        1 => Just(u32::MAX),
        1 => Just(0x8000_0000u32),
        1 => any::<u32>(),
    ]
}

fn dir_near(good: bool) -> impl Strategy<Value = bool> {
    prop_oneof![15 => Just(good), 1 => Just(!good)]
}

fn flag_noise() -> impl Strategy<Value = u16> {
    prop_oneof![80 => Just(0u16), 1 => Just(F_INDIRECT), 1 => any::<u16>()]
}

fn shape() -> impl Strategy<Value = Shape> {
    let fault = prop_oneof![
        6 => Just(IndirectFault::None),
        1 => Just(IndirectFault::Unaligned),
        1 => Just(IndirectFault::Empty),
        1 => Just(IndirectFault::InHole),
        1 => Just(IndirectFault::Straddles),
        1 => any::<usize>().prop_map(|k| IndirectFault::Nested { k }),
        1 => any::<usize>().prop_map(|k| IndirectFault::NextPastTable { k }),
        1 => any::<usize>().prop_map(|to| IndirectFault::Loop { to }),
    ];
    prop_oneof![
        10 => Just(Shape::Plain),
        1 => any::<usize>().prop_map(|to| Shape::Loop { to }),
        1 => any::<u16>().prop_map(|past| Shape::BadNext { past }),
        4 => (fault, any::<bool>()).prop_map(|(fault, also_next)| Shape::Indirect { fault, also_next }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let ty = prop_oneof![
        6 => Just(0u32),
        6 => Just(1u32),
        1 => Just(4u32),
        1 => Just(8u32),
        1 => Just(11u32),
        1 => Just(13u32),
        1 => any::<u32>(),
    ];
    let sector = prop_oneof![
        4 => 0..4096u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 512),
        1 => any::<u64>(),
    ];
    (ty, any::<u32>(), sector, 0usize..=6, any::<u64>()).prop_flat_map(
        |(ty, ioprio, sector, ndata, perm_seed)| {
            // Good data lengths and directions for this type.
            let (unit, writable) = match ty {
                0 => (512u32, true),
                1 => (512, false),
                8 => (20, true),
                11 | 13 => (16, false),
                _ => (512, false),
            };
            let data = proptest::collection::vec(
                (
                    (WRITABLE_FROM..A_END - 0x2_0000).prop_flat_map(|a| addr_near(a & !0x1ff)),
                    (1u32..=8).prop_flat_map(move |k| len_near(k * unit)),
                    dir_near(writable),
                    flag_noise(),
                ),
                ndata..=ndata,
            );
            let header = (
                (WRITABLE_FROM..A_END - 0x2_0000).prop_flat_map(|a| addr_near(a & !0xf)),
                len_near(16),
                dir_near(false),
                flag_noise(),
            );
            let status = (
                (WRITABLE_FROM..A_END).prop_flat_map(addr_near),
                len_near(1),
                dir_near(true),
                flag_noise(),
            );
            let qsize = prop_oneof![Just(4u16), Just(8), Just(16), Just(64), Just(256)];
            // Sometimes drop the header or the status descriptor entirely.
            let drop = prop_oneof![12 => Just(0u8), 1 => Just(1), 1 => Just(2)];
            (header, data, status, qsize, shape(), drop).prop_map(
                move |(h, d, s, qsize, shape, drop)| {
                    let mut descs = vec![h];
                    descs.extend(d);
                    descs.push(s);
                    match drop {
                        1 => {
                            descs.remove(0);
                        }
                        2 => {
                            descs.pop();
                        }
                        _ => {}
                    }
                    Case {
                        qsize,
                        perm_seed,
                        ty,
                        ioprio,
                        sector,
                        descs,
                        shape,
                    }
                },
            )
        },
    )
}

/// Writes `case` (header, descriptor tables, avail entry) into `mem`.
fn build(mem: &GuestMemoryMmap<()>, mq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, case: &Case) {
    // The header, wherever the first descriptor points (if writable there).
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&case.ty.to_le_bytes());
    hdr[4..8].copy_from_slice(&case.ioprio.to_le_bytes());
    hdr[8..16].copy_from_slice(&case.sector.to_le_bytes());
    if let Some(&(a, _, _, _)) = case.descs.first()
        && a >= WRITABLE_FROM
        && in_memory(a, 16)
    {
        mem.write_slice(&hdr, GuestAddress(a)).unwrap();
    }
    let qsize = usize::from(case.qsize);
    let n = case.descs.len();
    let flags_of = |(_, _, w, noise): (u64, u32, bool, u16)| {
        (if w { F_WRITE } else { 0 }) | (noise & !(F_NEXT | F_WRITE))
    };
    match case.shape {
        Shape::Plain | Shape::Loop { .. } | Shape::BadNext { .. } => {
            // A pseudo-random permutation of the table slots.
            let mut slots: Vec<u16> = (0..case.qsize).collect();
            let mut x = case.perm_seed | 1;
            for i in (1..slots.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                slots.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let n = n.min(qsize);
            for i in 0..n {
                let (addr, len, ..) = case.descs[i];
                let mut d = D {
                    addr,
                    len,
                    flags: flags_of(case.descs[i]),
                    next: 0,
                };
                if i + 1 < n {
                    d.flags |= F_NEXT;
                    d.next = slots[i + 1];
                } else {
                    match case.shape {
                        Shape::Loop { to } => {
                            d.flags |= F_NEXT;
                            d.next = slots[to % n];
                        }
                        Shape::BadNext { past } => {
                            d.flags |= F_NEXT;
                            d.next = case.qsize.saturating_add(past % (u16::MAX - case.qsize));
                        }
                        _ => {}
                    }
                }
                mq.desc_table().store(slots[i], d.raw()).unwrap();
            }
            set_head(mq, slots[0]);
        }
        Shape::Indirect { fault, also_next } => {
            let mut table: Vec<D> = case
                .descs
                .iter()
                .enumerate()
                .map(|(i, &ld)| D {
                    addr: ld.0,
                    len: ld.1,
                    flags: flags_of(ld) | if i + 1 < n { F_NEXT } else { 0 },
                    next: u16::try_from(i + 1).unwrap(),
                })
                .collect();
            let mut at = TABLE;
            let mut len = u32::try_from(16 * n).unwrap();
            if n > 0 {
                match fault {
                    IndirectFault::None => {}
                    IndirectFault::Unaligned => len += 8,
                    IndirectFault::Empty => len = 0,
                    IndirectFault::InHole => at = B_END + 0x1000,
                    IndirectFault::Straddles => at = B_END - 16,
                    IndirectFault::Nested { k } => table[k % n].flags |= F_INDIRECT,
                    IndirectFault::NextPastTable { k } => {
                        table[k % n].flags |= F_NEXT;
                        table[k % n].next = u16::try_from(n + k % 7).unwrap();
                    }
                    IndirectFault::Loop { to } => {
                        table[n - 1].flags |= F_NEXT;
                        table[n - 1].next = u16::try_from(to % n).unwrap();
                    }
                }
            }
            for (i, d) in table.iter().enumerate() {
                let a = at + 16 * i as u64;
                if in_memory(a, 16) {
                    mem.write_obj(d.raw(), GuestAddress(a)).unwrap();
                }
            }
            let head = D {
                addr: at,
                len,
                flags: F_INDIRECT | if also_next { F_NEXT } else { 0 },
                next: 1,
            };
            mq.desc_table().store(0, head.raw()).unwrap();
            set_head(mq, 0);
        }
    }
}

fn set_head(mq: &MockSplitQueue<'_, GuestMemoryMmap<()>>, head: u16) {
    mq.avail().ring().ref_at(0).unwrap().store(head);
    mq.avail().idx().store(1);
}

/// The descriptors a device sees walking the chain from `head`, per spec
/// 2.7.5 / 2.7.5.3: NEXT links within one table, at most one indirect
/// table (never nested, length a multiple of 16), no more descriptors than
/// the table has entries, at most 4 GiB in total. `complete` is false if the
/// walk had to stop before a descriptor without NEXT.
fn walk(mem: &GuestMemoryMmap<()>, table: u64, qsize: u16, head: u16) -> (Vec<D>, bool) {
    let mut out = Vec::new();
    let (mut table, mut size, mut idx) = (table, u32::from(qsize), u32::from(head));
    let mut indirect = false;
    let mut in_this_table = 0u32;
    let mut total = 0u64;
    loop {
        if idx >= size || in_this_table >= size {
            return (out, false);
        }
        let at = table + 16 * u64::from(idx);
        if !in_memory(at, 16) {
            return (out, false);
        }
        let raw: RawDescriptor = mem.read_obj(GuestAddress(at)).unwrap();
        let d = Descriptor::from(raw);
        let d = D {
            addr: d.addr().0,
            len: d.len(),
            flags: d.flags(),
            next: d.next(),
        };
        if d.flags & F_INDIRECT != 0 {
            if indirect || !d.len.is_multiple_of(16) || d.len / 16 > u32::from(u16::MAX) {
                return (out, false);
            }
            indirect = true;
            table = d.addr;
            size = d.len / 16;
            idx = 0;
            in_this_table = 0;
            continue;
        }
        total += u64::from(d.len);
        if total > u64::from(u32::MAX) {
            return (out, false);
        }
        out.push(d);
        if d.flags & F_NEXT == 0 {
            return (out, true);
        }
        idx = u32::from(d.next);
        in_this_table += 1;
    }
}

/// The verdict the spec (and docs/vhost-user-blk.md) asks for.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    NoStatus,
    IoErrAt(u64),
    Ok {
        ty: RequestType,
        sector: u64,
        data_len: u64,
        status: u64,
        segments: Vec<Segment>,
    },
}

fn oracle(mem: &GuestMemoryMmap<()>, descs: &[D], complete: bool) -> Verdict {
    let w = |d: &D| d.flags & F_WRITE != 0;
    // A chain that ends early has no trustworthy last descriptor.
    let Some(last) = descs.last() else {
        return Verdict::NoStatus;
    };
    if !complete || !w(last) || last.len == 0 {
        return Verdict::NoStatus;
    }
    let Some(status) = last.addr.checked_add(u64::from(last.len) - 1) else {
        return Verdict::NoStatus;
    };
    if !in_memory(status, 1) {
        return Verdict::NoStatus;
    }
    let ioerr = Verdict::IoErrAt(status);
    let first = descs[0];
    if descs.len() < 2 || w(&first) || first.len < 16 || !in_memory(first.addr, 16) {
        return ioerr;
    }
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, GuestAddress(first.addr)).unwrap();
    let raw_ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let ty = match raw_ty {
        0 => RequestType::In,
        1 => RequestType::Out,
        4 => RequestType::Flush,
        8 => RequestType::GetId,
        11 => RequestType::Discard,
        13 => RequestType::WriteZeroes,
        t => RequestType::Unsupported(t),
    };
    // Data: the rest of the header descriptor, the middle descriptors, the
    // last one minus its status byte.
    let mut segments = Vec::new();
    // An empty middle descriptor still has a direction (2.7.4.2: readable
    // before writable), so it is kept for the direction check.
    let mut push = |addr: u64, len: u32, writable: bool, keep_empty: bool| {
        if len > 0 || keep_empty {
            segments.push(Segment {
                addr: GuestAddress(addr),
                len,
                writable,
            });
        }
    };
    push(first.addr + 16, first.len - 16, false, false);
    for d in &descs[1..descs.len() - 1] {
        push(d.addr, d.len, w(d), true);
    }
    push(last.addr, last.len - 1, true, false);
    let need = match ty {
        RequestType::In | RequestType::GetId => Some(true),
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => Some(false),
        _ => None,
    };
    let mut data_len = 0u64;
    for s in &segments {
        if need.is_some_and(|n| n != s.writable) || !in_memory(s.addr.0, u64::from(s.len)) {
            return ioerr;
        }
        data_len += u64::from(s.len);
    }
    let ok_len = match ty {
        RequestType::In | RequestType::Out => data_len.is_multiple_of(512),
        RequestType::Discard | RequestType::WriteZeroes => {
            data_len > 0 && data_len.is_multiple_of(16)
        }
        RequestType::GetId => data_len > 0,
        _ => true,
    };
    if !ok_len {
        return ioerr;
    }
    segments.retain(|s| s.len > 0);
    Verdict::Ok {
        ty,
        sector,
        data_len,
        status,
        segments,
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    ioerr: usize,
    no_status: usize,
    incomplete: usize,
    indirect_ok: usize,
    unsupported_ok: usize,
}

fn check(case: &Case, tally: &mut Tally) -> Result<(), TestCaseError> {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, case.qsize);
    build(&mem, &mq, case);
    let mut queue: Queue = mq.create_queue().unwrap();
    let chain = queue
        .iter(&mem)
        .unwrap()
        .next()
        .ok_or_else(|| TestCaseError::fail("the avail ring entry was not popped"))?;
    // Stale contents must not leak into the result.
    let mut segs = vec![
        Segment {
            addr: GuestAddress(0xdead),
            len: 7,
            writable: true,
        };
        3
    ];
    let got = Request::parse(&chain, &mut segs);
    let (descs, complete) = walk(&mem, mq.desc_table_addr().0, case.qsize, chain.head_index());
    prop_assert!(
        descs.len() <= usize::from(u16::MAX) + usize::from(case.qsize),
        "walk unbounded"
    );
    let want = oracle(&mem, &descs, complete);
    if !complete {
        tally.incomplete += 1;
    }
    match (&got, &want) {
        (Err(ParseError::NoStatus), Verdict::NoStatus) => tally.no_status += 1,
        (Err(e @ ParseError::Malformed { .. }), Verdict::IoErrAt(s)) => {
            prop_assert_eq!(e.status_addr(), Some(GuestAddress(*s)), "{}", e);
            tally.ioerr += 1;
        }
        (
            Ok(r),
            Verdict::Ok {
                ty,
                sector,
                data_len,
                status,
                segments,
            },
        ) => {
            prop_assert_eq!(r.ty, *ty);
            prop_assert_eq!(r.sector, *sector);
            prop_assert_eq!(r.data_len, *data_len);
            prop_assert_eq!(r.status_addr, GuestAddress(*status));
            prop_assert_eq!(r.head_index, chain.head_index());
            // Empty descriptors carry no data; where they sit is not part of the contract.
            let nonempty: Vec<Segment> = segs.iter().copied().filter(|s| s.len > 0).collect();
            prop_assert_eq!(&nonempty, segments);
            tally.ok += 1;
            if matches!(case.shape, Shape::Indirect { .. }) {
                tally.indirect_ok += 1;
            }
            if matches!(r.ty, RequestType::Unsupported(_)) {
                tally.unsupported_ok += 1;
            }
        }
        _ => {
            return Err(TestCaseError::fail(format!(
                "parse gave {got:?}, the spec oracle wants {want:?} (walked {descs:?}, complete {complete})"
            )));
        }
    }
    Ok(())
}

#[test]
fn random_chains_match_the_spec_oracle() {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().hash_one(std::process::id()));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    eprintln!("parse_props: PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases}");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let tally = std::cell::RefCell::new(Tally::default());
    let result = runner.run(&case(), |c| check(&c, &mut tally.borrow_mut()));
    if let Err(e) = result {
        panic!("{e}\nreplay with PROPTEST_RNG_SEED={seed}");
    }
    let t = tally.into_inner();
    eprintln!("parse_props: {t:?}");
    // The generator must reach every verdict, or the test proves little.
    let min = cases as usize / 50;
    assert!(t.ok >= min, "too few well-formed requests: {t:?}");
    assert!(t.ioerr >= min, "too few IOERR verdicts: {t:?}");
    assert!(t.no_status >= min, "too few no-status verdicts: {t:?}");
    assert!(t.incomplete >= min, "too few broken chains: {t:?}");
    assert!(t.indirect_ok >= min / 4, "too few indirect chains: {t:?}");
    assert!(t.unsupported_ok > 0, "no unknown request type: {t:?}");
}
