//! virtio-blk request parsing over arbitrary descriptor chains and guest
//! memory layouts, checked against an oracle written from the virtio 1.x
//! spec (2.7.5 descriptor table, 2.7.5.3 indirect descriptors, 5.2.6
//! request layout).
//!
//! A case is a guest memory layout (1 to 4 regions, adjacent or with holes,
//! low in the address space or just below 2^64), a queue (size, descriptor
//! table address, head index) and a list of writes into guest memory:
//! descriptor table slots, entries of (indirect) tables anywhere, request
//! headers and raw bytes. The chain is popped through a real
//! `virtio_queue::Queue` from a real avail ring and handed to
//! [`Request::parse`]; the oracle walks the same memory on its own (its own
//! address arithmetic, its own idea of which ranges are backed) and says
//! what the verdict must be.

use extstorage_virtio_blk::{DiscardSegment, ParseError, Request, RequestType, Segment};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bytes::{Input, Output};

/// Guest page size used for the layout.
pub const PAGE: u64 = 0x1000;
/// At most this many memory regions besides the ring page.
pub const MAX_REGIONS: usize = 4;
/// At most this many pages per region.
pub const MAX_REGION_PAGES: u8 = 16;
/// At most this many writes per case.
pub const MAX_OPS: usize = 96;

/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const F_INDIRECT: u16 = 4;

/// Where the layout sits in the guest physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The ring page at `(n + 1)` pages, the regions after it.
    Low(u16),
    /// The last region ends `(n + 1)` pages below 2^64.
    High(u16),
}

/// One memory region: `gap` unbacked pages before it, then `pages + 1` pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Unbacked pages between the previous region (or the ring page) and this one.
    pub gap: u8,
    /// Size in pages, minus one (0..16).
    pub pages: u8,
}

/// A guest address, relative to the layout so that most land in or near memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// `offset` (modulo the region size plus a page) from the start of region `region % n`.
    In {
        /// Region index (modulo the region count).
        region: u8,
        /// Offset from the region's start.
        offset: u32,
    },
    /// `back` bytes before the end of region `region % n`.
    FromEnd {
        /// Region index (modulo the region count).
        region: u8,
        /// Distance back from the region's end.
        back: u16,
    },
    /// Any address.
    Raw(u64),
}

/// A descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: Addr,
    /// Buffer length.
    pub len: u32,
    /// Flags (NEXT, WRITE, INDIRECT and any other bits).
    pub flags: u16,
    /// Next index when NEXT is set.
    pub next: u16,
}

/// One write into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Slot `slot` of the queue's descriptor table.
    Slot {
        /// Table index (not reduced: slots past the table land past it).
        slot: u16,
        /// The descriptor.
        desc: Desc,
    },
    /// Entry `index` of a descriptor table at `at` (an indirect table).
    Table {
        /// Table address.
        at: Addr,
        /// Entry index.
        index: u8,
        /// The descriptor.
        desc: Desc,
    },
    /// A 16-byte virtio-blk request header.
    Header {
        /// Where.
        at: Addr,
        /// Request type.
        ty: u32,
        /// The reserved/ioprio word.
        ioprio: u32,
        /// First sector.
        sector: u64,
    },
    /// Raw bytes.
    Bytes {
        /// Where.
        at: Addr,
        /// What (at most 255 bytes).
        data: Vec<u8>,
    },
}

/// One fuzz case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Placement of the layout.
    pub base: Base,
    /// The regions, in address order (1 to 4).
    pub regions: Vec<Region>,
    /// log2 of the queue size (0..=15).
    pub qsize_log2: u8,
    /// Descriptor table address (aligned down to 16 bytes).
    pub table: Addr,
    /// The head index in the avail ring.
    pub head: u16,
    /// Device capacity in sectors, for the range checks.
    pub capacity: u64,
    /// Writes into guest memory, in order.
    pub ops: Vec<Op>,
}

fn read_addr(i: &mut Input<'_>) -> Addr {
    match i.u8() % 3 {
        0 => Addr::In {
            region: i.u8(),
            offset: i.u32(),
        },
        1 => Addr::FromEnd {
            region: i.u8(),
            back: i.u16(),
        },
        _ => Addr::Raw(i.u64()),
    }
}

fn write_addr(o: &mut Output, a: Addr) {
    match a {
        Addr::In { region, offset } => {
            o.u8(0);
            o.u8(region);
            o.u32(offset);
        }
        Addr::FromEnd { region, back } => {
            o.u8(1);
            o.u8(region);
            o.u16(back);
        }
        Addr::Raw(v) => {
            o.u8(2);
            o.u64(v);
        }
    }
}

fn read_desc(i: &mut Input<'_>) -> Desc {
    Desc {
        addr: read_addr(i),
        len: i.u32(),
        flags: i.u16(),
        next: i.u16(),
    }
}

fn write_desc(o: &mut Output, d: Desc) {
    write_addr(o, d.addr);
    o.u32(d.len);
    o.u16(d.flags);
    o.u16(d.next);
}

impl Case {
    /// Decodes fuzz input; every input gives a case.
    pub fn decode(data: &[u8]) -> Case {
        let mut i = Input::new(data);
        let shape = i.u8();
        let n = 1 + usize::from(shape & 3);
        let base = if shape & 4 == 0 {
            Base::Low(i.u16())
        } else {
            Base::High(i.u16())
        };
        let regions = (0..n)
            .map(|_| Region {
                gap: i.u8(),
                pages: i.u8() % MAX_REGION_PAGES,
            })
            .collect();
        let qsize_log2 = i.u8() % 16;
        let table = read_addr(&mut i);
        let head = i.u16();
        let capacity = i.u64();
        let mut ops = Vec::new();
        while !i.is_empty() && ops.len() < MAX_OPS {
            let op = match i.u8() % 4 {
                0 => Op::Slot {
                    slot: i.u16(),
                    desc: read_desc(&mut i),
                },
                1 => Op::Table {
                    at: read_addr(&mut i),
                    index: i.u8(),
                    desc: read_desc(&mut i),
                },
                2 => Op::Header {
                    at: read_addr(&mut i),
                    ty: i.u32(),
                    ioprio: i.u32(),
                    sector: i.u64(),
                },
                _ => {
                    let at = read_addr(&mut i);
                    let len = usize::from(i.u8());
                    Op::Bytes {
                        at,
                        data: i.bytes(len).to_vec(),
                    }
                }
            };
            ops.push(op);
        }
        Case {
            base,
            regions,
            qsize_log2,
            table,
            head,
            capacity,
            ops,
        }
    }

    /// The input [`Case::decode`] reads back as this case (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        assert!((1..=MAX_REGIONS).contains(&self.regions.len()));
        let mut o = Output::default();
        let high = matches!(self.base, Base::High(_));
        o.u8(u8::try_from(self.regions.len() - 1).unwrap_or(0) | if high { 4 } else { 0 });
        match self.base {
            Base::Low(p) | Base::High(p) => o.u16(p),
        }
        for r in &self.regions {
            o.u8(r.gap);
            o.u8(r.pages);
        }
        o.u8(self.qsize_log2);
        write_addr(&mut o, self.table);
        o.u16(self.head);
        o.u64(self.capacity);
        for op in &self.ops {
            match op {
                Op::Slot { slot, desc } => {
                    o.u8(0);
                    o.u16(*slot);
                    write_desc(&mut o, *desc);
                }
                Op::Table { at, index, desc } => {
                    o.u8(1);
                    write_addr(&mut o, *at);
                    o.u8(*index);
                    write_desc(&mut o, *desc);
                }
                Op::Header {
                    at,
                    ty,
                    ioprio,
                    sector,
                } => {
                    o.u8(2);
                    write_addr(&mut o, *at);
                    o.u32(*ty);
                    o.u32(*ioprio);
                    o.u64(*sector);
                }
                Op::Bytes { at, data } => {
                    o.u8(3);
                    write_addr(&mut o, *at);
                    o.u8(u8::try_from(data.len()).expect("at most 255 bytes"));
                    o.bytes(data);
                }
            }
        }
        o.0
    }
}

/// The guest physical layout: the ring page and the regions, in address order.
#[derive(Debug)]
struct Layout {
    /// The page holding the avail and used rings.
    ring: u64,
    /// (start, length) of each fuzzed region.
    regions: Vec<(u64, u64)>,
    /// Maximal runs of backed addresses [start, end), for the oracle.
    spans: Vec<(u64, u64)>,
}

impl Layout {
    fn new(case: &Case) -> Layout {
        let total: u64 = PAGE
            + case
                .regions
                .iter()
                .map(|r| PAGE * (u64::from(r.gap) + u64::from(r.pages) + 1))
                .sum::<u64>();
        let ring = match case.base {
            Base::Low(p) => PAGE * (u64::from(p) + 1),
            // Ends (p + 1) pages below 2^64: 0 - (p + 1) * PAGE - total.
            Base::High(p) => 0u64
                .wrapping_sub(PAGE * (u64::from(p) + 1))
                .wrapping_sub(total),
        };
        let mut regions = Vec::new();
        let mut at = ring + PAGE;
        for r in &case.regions {
            at += PAGE * u64::from(r.gap);
            let len = PAGE * (u64::from(r.pages) + 1);
            regions.push((at, len));
            at += len;
        }
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for &(s, l) in std::iter::once(&(ring, PAGE)).chain(&regions) {
            match spans.last_mut() {
                Some(last) if last.1 == s => last.1 = s + l,
                _ => spans.push((s, s + l)),
            }
        }
        Layout {
            ring,
            regions,
            spans,
        }
    }

    fn resolve(&self, a: Addr) -> u64 {
        let n = self.regions.len();
        match a {
            Addr::In { region, offset } => {
                let (s, l) = self.regions[usize::from(region) % n];
                s + u64::from(offset) % (l + PAGE)
            }
            Addr::FromEnd { region, back } => {
                let (s, l) = self.regions[usize::from(region) % n];
                (s + l).wrapping_sub(u64::from(back))
            }
            Addr::Raw(v) => v,
        }
    }

    /// The oracle's view: [addr, addr + len) is backed (an empty range always is).
    fn in_memory(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.spans.iter().any(|&(s, e)| s <= addr && end <= e)
    }

    fn memory(&self) -> GuestMemoryMmap<()> {
        let mut ranges = vec![(GuestAddress(self.ring), PAGE as usize)];
        ranges.extend(
            self.regions
                .iter()
                .map(|&(s, l)| (GuestAddress(s), l as usize)),
        );
        GuestMemoryMmap::from_ranges(&ranges).expect("the layout's regions are valid")
    }
}

/// A descriptor as read back from guest memory.
#[derive(Debug, Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw(layout: &Layout, d: Desc) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(
        layout.resolve(d.addr),
        d.len,
        d.flags,
        d.next,
    ))
}

/// Writes `bytes` at `addr` if the oracle says the whole range is backed.
fn put(mem: &GuestMemoryMmap<()>, layout: &Layout, addr: u64, bytes: &[u8]) {
    if layout.in_memory(addr, bytes.len() as u64) {
        mem.write_slice(bytes, GuestAddress(addr))
            .expect("the oracle and vm-memory disagree on a backed range");
    }
}

fn desc_bytes(r: RawDescriptor) -> [u8; 16] {
    let d = Descriptor::from(r);
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr().0.to_le_bytes());
    b[8..12].copy_from_slice(&d.len().to_le_bytes());
    b[12..14].copy_from_slice(&d.flags().to_le_bytes());
    b[14..16].copy_from_slice(&d.next().to_le_bytes());
    b
}

fn table_addr(layout: &Layout, case: &Case) -> u64 {
    layout.resolve(case.table) & !0xf
}

fn apply(mem: &GuestMemoryMmap<()>, layout: &Layout, case: &Case) {
    let table = table_addr(layout, case);
    for op in &case.ops {
        match op {
            Op::Slot { slot, desc } => {
                if let Some(at) = table.checked_add(16 * u64::from(*slot)) {
                    put(mem, layout, at, &desc_bytes(raw(layout, *desc)));
                }
            }
            Op::Table { at, index, desc } => {
                if let Some(at) = layout.resolve(*at).checked_add(16 * u64::from(*index)) {
                    put(mem, layout, at, &desc_bytes(raw(layout, *desc)));
                }
            }
            Op::Header {
                at,
                ty,
                ioprio,
                sector,
            } => {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&ty.to_le_bytes());
                h[4..8].copy_from_slice(&ioprio.to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                put(mem, layout, layout.resolve(*at), &h);
            }
            Op::Bytes { at, data } => put(mem, layout, layout.resolve(*at), data),
        }
    }
    // The avail ring (flags, idx = 1, ring[0] = head), written last.
    let mut avail = [0u8; 6];
    avail[2..4].copy_from_slice(&1u16.to_le_bytes());
    avail[4..6].copy_from_slice(&case.head.to_le_bytes());
    put(mem, layout, layout.ring, &avail);
}

/// The descriptors a device sees walking the chain from `head` (spec
/// 2.7.5 / 2.7.5.3): NEXT links within one table, at most one indirect
/// table (never nested, length a multiple of 16, at most 65535 entries), no
/// more descriptors than the table has entries, at most 4 GiB in total.
/// The flag is false when the walk stopped before a descriptor without NEXT.
fn walk(
    mem: &GuestMemoryMmap<()>,
    layout: &Layout,
    table: u64,
    qsize: u16,
    head: u16,
) -> (Vec<D>, bool) {
    let mut out = Vec::new();
    let (mut table, mut size, mut idx) = (table, u32::from(qsize), u32::from(head));
    let mut indirect = false;
    let mut in_this_table = 0u32;
    let mut total = 0u64;
    loop {
        if idx >= size || in_this_table >= size {
            return (out, false);
        }
        let Some(at) = table.checked_add(16 * u64::from(idx)) else {
            return (out, false);
        };
        if !layout.in_memory(at, 16) {
            return (out, false);
        }
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(at))
            .expect("the oracle and vm-memory disagree on a backed range");
        let d = D {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
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

fn request_type(raw: u32) -> RequestType {
    match raw {
        0 => RequestType::In,
        1 => RequestType::Out,
        4 => RequestType::Flush,
        8 => RequestType::GetId,
        11 => RequestType::Discard,
        13 => RequestType::WriteZeroes,
        t => RequestType::Unsupported(t),
    }
}

fn oracle(mem: &GuestMemoryMmap<()>, layout: &Layout, descs: &[D], complete: bool) -> Verdict {
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
    if !layout.in_memory(status, 1) {
        return Verdict::NoStatus;
    }
    let ioerr = Verdict::IoErrAt(status);
    let first = descs[0];
    if descs.len() < 2 || w(&first) || first.len < 16 || !layout.in_memory(first.addr, 16) {
        return ioerr;
    }
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, GuestAddress(first.addr))
        .expect("the oracle and vm-memory disagree on a backed range");
    let ty = request_type(u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    // Data: the rest of the header descriptor, the middle descriptors, the
    // last one minus its status byte. An empty middle descriptor still has
    // a direction (2.7.4.2: readable before writable), so it is kept for
    // the direction check.
    let mut segments = Vec::new();
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
        if need.is_some_and(|n| n != s.writable) || !layout.in_memory(s.addr.0, u64::from(s.len)) {
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

/// `[sector * 512, + len)` if it ends within `capacity` sectors, computed in u128.
fn range_oracle(sector: u64, len: u64, capacity: u64) -> Option<(u64, u64)> {
    let cap = u128::from(capacity) * 512;
    let offset = u128::from(sector) * 512;
    if cap > u128::from(u64::MAX) || offset + u128::from(len) > cap {
        return None;
    }
    Some((u64::try_from(offset).ok()?, len))
}

/// The first 16-byte discard/write-zeroes entry, gathered byte by byte.
fn discard_oracle(mem: &GuestMemoryMmap<()>, segments: &[Segment]) -> Option<DiscardSegment> {
    let mut raw = Vec::with_capacity(16);
    'outer: for s in segments {
        for k in 0..u64::from(s.len) {
            if raw.len() == 16 {
                break 'outer;
            }
            let b: u8 = mem.read_obj(GuestAddress(s.addr.0 + k)).ok()?;
            raw.push(b);
        }
    }
    (raw.len() == 16).then(|| DiscardSegment {
        sector: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
        num_sectors: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
        flags: u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default()),
    })
}

/// What one case ended as, for the seed tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A well-formed request.
    Ok(RequestType),
    /// Malformed; IOERR goes to the status byte.
    IoErr,
    /// No status byte; the chain is returned unanswered.
    NoStatus,
}

/// Builds the case in guest memory, parses the chain and checks the result
/// against the oracle. Panics on any disagreement.
pub fn check(case: &Case) -> Outcome {
    let layout = Layout::new(case);
    let mem = layout.memory();
    apply(&mem, &layout, case);

    let qsize = 1u16 << case.qsize_log2;
    let table = table_addr(&layout, case);
    let mut queue = Queue::new(qsize).expect("a power of two up to 32768");
    queue
        .try_set_desc_table_address(GuestAddress(table))
        .expect("aligned");
    queue
        .try_set_avail_ring_address(GuestAddress(layout.ring))
        .expect("aligned");
    queue
        .try_set_used_ring_address(GuestAddress(layout.ring + 0x800))
        .expect("aligned");
    queue.set_ready(true);
    let chain = queue
        .iter(&mem)
        .expect("the avail ring is in memory")
        .next()
        .expect("one chain is available");
    assert_eq!(chain.head_index(), case.head);

    // Stale contents must not leak into the result.
    let stale = Segment {
        addr: GuestAddress(0xdead),
        len: 7,
        writable: true,
    };
    let mut segs = vec![stale; 3];
    let got = Request::parse(&chain, &mut segs);
    // Parsing is a pure function of guest memory: the same again.
    let mut again = Vec::new();
    assert_eq!(
        Request::parse(&chain, &mut again),
        got,
        "parse is not repeatable"
    );
    assert_eq!(again, segs, "parse is not repeatable");

    let (descs, complete) = walk(&mem, &layout, table, qsize, case.head);
    let want = oracle(&mem, &layout, &descs, complete);
    match (&got, &want) {
        (Err(ParseError::NoStatus), Verdict::NoStatus) => Outcome::NoStatus,
        (Err(e @ ParseError::Malformed { reason, .. }), Verdict::IoErrAt(s)) => {
            assert_eq!(e.status_addr(), Some(GuestAddress(*s)), "{e}");
            assert!(!reason.is_empty());
            Outcome::IoErr
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
            assert_eq!(
                (r.ty, r.sector, r.data_len, r.status_addr, r.head_index),
                (*ty, *sector, *data_len, GuestAddress(*status), case.head)
            );
            // Empty descriptors carry no data; where they sit is not part of the contract.
            let nonempty: Vec<Segment> = segs.iter().copied().filter(|s| s.len > 0).collect();
            assert_eq!(&nonempty, segments, "data segments");
            assert_eq!(
                segs.iter().map(|s| u64::from(s.len)).sum::<u64>(),
                r.data_len
            );
            assert_eq!(
                r.byte_range(case.capacity),
                range_oracle(r.sector, r.data_len, case.capacity),
                "byte_range({})",
                case.capacity
            );
            if matches!(r.ty, RequestType::Discard | RequestType::WriteZeroes) {
                let d = DiscardSegment::read_first(&mem, &segs);
                assert_eq!(d, discard_oracle(&mem, &segs), "first discard segment");
                let d = d.expect("a discard request has a whole segment");
                assert_eq!(
                    d.byte_range(case.capacity),
                    range_oracle(d.sector, u64::from(d.num_sectors) * 512, case.capacity),
                    "discard byte_range({})",
                    case.capacity
                );
            }
            Outcome::Ok(r.ty)
        }
        _ => panic!(
            "parse gave {got:?}, the spec oracle wants {want:?} \
             (walked {descs:x?}, complete {complete}, layout {layout:x?})"
        ),
    }
}

/// Seed cases: well-formed requests of every type, direct and indirect,
/// in one region or across adjacent ones, and the hostile shapes (holes,
/// wrap-around near 2^64, loops, bad indices, nested or misaligned indirect
/// tables, zero-length and overlapping buffers).
pub fn seeds() -> Vec<(&'static str, Case, Outcome)> {
    const HDR: u32 = 0x1000;
    const DATA: u32 = 0x2000;
    const STATUS: u32 = 0x7000;
    let at = |offset: u32| Addr::In { region: 0, offset };
    let d = |offset: u32, len: u32, flags: u16, next: u16| Desc {
        addr: at(offset),
        len,
        flags,
        next,
    };
    let header = |ty: u32, sector: u64| Op::Header {
        at: at(HDR),
        ty,
        ioprio: 0,
        sector,
    };
    // A direct chain in slots 0, 1, 2, ...
    let chain = |descs: &[(Addr, u32, u16)]| -> Vec<Op> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = u16::try_from(i + 1).unwrap_or(0);
                let more = i + 1 < descs.len();
                Op::Slot {
                    slot: u16::try_from(i).unwrap_or(0),
                    desc: Desc {
                        addr,
                        len,
                        flags: flags | if more { F_NEXT } else { 0 },
                        next: if more { next } else { 0 },
                    },
                }
            })
            .collect()
    };
    let one_region = |ops: Vec<Op>| Case {
        base: Base::Low(0),
        regions: vec![Region { gap: 0, pages: 15 }],
        qsize_log2: 4,
        table: at(0),
        head: 0,
        capacity: 1 << 21,
        ops,
    };
    let with = |mut ops: Vec<Op>, more: Vec<Op>| {
        ops.extend(more);
        ops
    };
    let std3 = |ty: u32, data_len: u32, data_flags: u16| {
        with(
            vec![header(ty, 8)],
            chain(&[
                (at(HDR), 16, 0),
                (at(DATA), data_len, data_flags),
                (at(STATUS), 1, F_WRITE),
            ]),
        )
    };
    let mut discard = std3(11, 16, 0);
    discard.push(Op::Bytes {
        at: at(DATA),
        data: [
            24u64.to_le_bytes().as_slice(),
            &8u32.to_le_bytes(),
            &0u32.to_le_bytes(),
        ]
        .concat(),
    });
    let mut write_zeroes = std3(13, 32, 0);
    write_zeroes.push(Op::Bytes {
        at: at(DATA),
        data: [
            u64::MAX.to_le_bytes().as_slice(),
            &u32::MAX.to_le_bytes(),
            &1u32.to_le_bytes(),
        ]
        .concat(),
    });

    let mut out = vec![
        (
            "read",
            one_region(std3(0, 4096, F_WRITE)),
            Outcome::Ok(RequestType::In),
        ),
        (
            "write",
            one_region(std3(1, 1024, 0)),
            Outcome::Ok(RequestType::Out),
        ),
        (
            "write-header-and-data-in-one",
            one_region(with(
                vec![header(1, 0)],
                chain(&[(at(HDR), 16 + 512, 0), (at(STATUS), 1, F_WRITE)]),
            )),
            Outcome::Ok(RequestType::Out),
        ),
        (
            "read-data-and-status-in-one",
            one_region(with(
                vec![header(0, 0)],
                chain(&[(at(HDR), 16, 0), (at(STATUS - 512), 513, F_WRITE)]),
            )),
            Outcome::Ok(RequestType::In),
        ),
        (
            "flush",
            one_region(with(
                vec![header(4, 0)],
                chain(&[(at(HDR), 16, 0), (at(STATUS), 1, F_WRITE)]),
            )),
            Outcome::Ok(RequestType::Flush),
        ),
        (
            "get-id",
            one_region(std3(8, 20, F_WRITE)),
            Outcome::Ok(RequestType::GetId),
        ),
        (
            "discard",
            one_region(discard),
            Outcome::Ok(RequestType::Discard),
        ),
        (
            "write-zeroes-out-of-range",
            one_region(write_zeroes),
            Outcome::Ok(RequestType::WriteZeroes),
        ),
        (
            "unsupported-type",
            one_region(std3(0x77, 3, 0)),
            Outcome::Ok(RequestType::Unsupported(0x77)),
        ),
        (
            "sector-near-u64-max",
            one_region(with(
                vec![header(0, u64::MAX / 256)],
                chain(&[
                    (at(HDR), 16, 0),
                    (at(DATA), 512, F_WRITE),
                    (at(STATUS), 1, F_WRITE),
                ]),
            )),
            Outcome::Ok(RequestType::In),
        ),
        (
            "zero-length-middle-descriptors",
            one_region(with(
                vec![header(1, 0)],
                chain(&[
                    (at(HDR), 16, 0),
                    (Addr::Raw(u64::MAX - 3), 0, 0),
                    (at(DATA), 512, 0),
                    (at(DATA), 0, 0),
                    (at(STATUS), 1, F_WRITE),
                ]),
            )),
            Outcome::Ok(RequestType::Out),
        ),
        (
            "overlapping-buffers",
            one_region(with(
                vec![header(0, 0)],
                chain(&[
                    (at(HDR), 16, 0),
                    (at(HDR), 512, F_WRITE),
                    (at(HDR + 256), 512, F_WRITE),
                    (at(HDR + 15), 1, F_WRITE),
                ]),
            )),
            Outcome::Ok(RequestType::In),
        ),
        (
            "partial-sector",
            one_region(std3(0, 100, F_WRITE)),
            Outcome::IoErr,
        ),
        (
            "wrong-direction",
            one_region(std3(1, 512, F_WRITE)),
            Outcome::IoErr,
        ),
        (
            "header-too-short",
            one_region(with(
                vec![header(0, 0)],
                chain(&[(at(HDR), 8, 0), (at(STATUS), 1, F_WRITE)]),
            )),
            Outcome::IoErr,
        ),
        (
            "status-only",
            one_region(chain(&[(at(STATUS), 1, F_WRITE)])),
            Outcome::IoErr,
        ),
        (
            "status-readable",
            one_region(with(
                vec![header(0, 0)],
                chain(&[
                    (at(HDR), 16, 0),
                    (at(DATA), 512, F_WRITE),
                    (at(STATUS), 1, 0),
                ]),
            )),
            Outcome::NoStatus,
        ),
        (
            "status-outside-memory",
            one_region(with(
                vec![header(0, 0)],
                chain(&[(at(HDR), 16, 0), (Addr::Raw(1 << 40), 1, F_WRITE)]),
            )),
            Outcome::NoStatus,
        ),
        (
            "status-length-wraps",
            one_region(with(
                vec![header(0, 0)],
                chain(&[(at(HDR), 16, 0), (Addr::Raw(u64::MAX - 7), 64, F_WRITE)]),
            )),
            Outcome::NoStatus,
        ),
        (
            "data-wraps-around",
            one_region(with(
                vec![header(1, 0)],
                chain(&[
                    (at(HDR), 16, 0),
                    (Addr::Raw(u64::MAX - 255), 512, 0),
                    (at(STATUS), 1, F_WRITE),
                ]),
            )),
            Outcome::IoErr,
        ),
    ];

    // A loop: slot 2 points back to slot 0.
    let mut looped = one_region(std3(0, 512, F_WRITE));
    looped.ops.push(Op::Slot {
        slot: 2,
        desc: d(STATUS, 1, F_WRITE | F_NEXT, 0),
    });
    out.push(("loop", looped, Outcome::NoStatus));
    // The last NEXT points past the table.
    let mut past = one_region(std3(0, 512, F_WRITE));
    past.ops.push(Op::Slot {
        slot: 2,
        desc: d(STATUS, 1, F_WRITE | F_NEXT, 16),
    });
    out.push(("next-past-table", past, Outcome::NoStatus));
    // The head index past the queue.
    let mut head_past = one_region(std3(0, 512, F_WRITE));
    head_past.head = 16;
    out.push(("head-past-queue", head_past, Outcome::NoStatus));
    // A chain as long as the queue, in a queue of one.
    let mut tiny = one_region(with(
        vec![header(4, 0)],
        chain(&[(at(HDR), 16, 0), (at(STATUS), 1, F_WRITE)]),
    ));
    tiny.qsize_log2 = 0;
    out.push(("queue-of-one", tiny, Outcome::NoStatus));

    // Indirect: slot 0 refers to a table at 0x3000 holding the chain.
    let indirect = |table_len: u32, entries: &[Desc], also_next: bool| {
        let mut ops = vec![header(1, 2)];
        ops.push(Op::Slot {
            slot: 0,
            desc: d(
                0x3000,
                table_len,
                F_INDIRECT | if also_next { F_NEXT } else { 0 },
                1,
            ),
        });
        for (i, e) in entries.iter().enumerate() {
            ops.push(Op::Table {
                at: at(0x3000),
                index: u8::try_from(i).unwrap_or(0),
                desc: *e,
            });
        }
        one_region(ops)
    };
    let entries = [
        d(HDR, 16, F_NEXT, 1),
        d(DATA, 1024, F_NEXT, 2),
        d(STATUS, 1, F_WRITE, 0),
    ];
    out.push((
        "indirect",
        indirect(48, &entries, false),
        Outcome::Ok(RequestType::Out),
    ));
    out.push((
        "indirect-with-next",
        indirect(48, &entries, true),
        Outcome::Ok(RequestType::Out),
    ));
    out.push((
        "indirect-misaligned",
        indirect(40, &entries, false),
        Outcome::NoStatus,
    ));
    out.push((
        "indirect-empty",
        indirect(0, &entries, false),
        Outcome::NoStatus,
    ));
    out.push((
        "indirect-short",
        indirect(32, &entries, false),
        Outcome::NoStatus,
    ));
    let mut nested = entries;
    nested[1].flags |= F_INDIRECT;
    out.push((
        "indirect-nested",
        indirect(48, &nested, false),
        Outcome::NoStatus,
    ));
    let mut iloop = entries;
    iloop[2] = d(STATUS, 1, F_WRITE | F_NEXT, 0);
    out.push((
        "indirect-loop",
        indirect(48, &iloop, false),
        Outcome::NoStatus,
    ));
    // Indirect after a direct descriptor.
    let mut mixed = one_region(vec![header(0, 0)]);
    mixed.ops.push(Op::Slot {
        slot: 0,
        desc: d(HDR, 16, F_NEXT, 5),
    });
    mixed.ops.push(Op::Slot {
        slot: 5,
        desc: d(0x3000, 32, F_INDIRECT, 0),
    });
    mixed.ops.push(Op::Table {
        at: at(0x3000),
        index: 0,
        desc: d(DATA, 512, F_WRITE | F_NEXT, 1),
    });
    mixed.ops.push(Op::Table {
        at: at(0x3000),
        index: 1,
        desc: d(STATUS, 1, F_WRITE, 0),
    });
    out.push(("direct-then-indirect", mixed, Outcome::Ok(RequestType::In)));

    // Two adjacent regions: data straddles the boundary; then a hole.
    let two = |gap: u8| {
        let r0 = Addr::FromEnd {
            region: 0,
            back: 256,
        };
        let mut ops = vec![header(0, 0)];
        ops.extend(chain(&[
            (at(HDR), 16, 0),
            (r0, 512, F_WRITE),
            (
                Addr::In {
                    region: 1,
                    offset: 0x100,
                },
                1,
                F_WRITE,
            ),
        ]));
        Case {
            base: Base::Low(3),
            regions: vec![Region { gap: 0, pages: 7 }, Region { gap, pages: 0 }],
            qsize_log2: 8,
            table: Addr::FromEnd {
                region: 1,
                back: 0x800,
            },
            head: 0,
            capacity: 1,
            ops,
        }
    };
    out.push((
        "across-adjacent-regions",
        two(0),
        Outcome::Ok(RequestType::In),
    ));
    out.push(("across-a-hole", two(1), Outcome::IoErr));
    // The descriptor table straddles two adjacent regions.
    let mut straddle = two(0);
    straddle.table = Addr::FromEnd {
        region: 0,
        back: 16,
    };
    out.push((
        "table-across-regions",
        straddle,
        Outcome::Ok(RequestType::In),
    ));

    // Memory just below 2^64: a header at the very top, data wrapping.
    let top = Case {
        base: Base::High(0),
        regions: vec![Region { gap: 2, pages: 1 }],
        qsize_log2: 2,
        table: at(0),
        head: 0,
        capacity: u64::MAX,
        ops: with(
            vec![Op::Header {
                at: Addr::FromEnd {
                    region: 0,
                    back: 16,
                },
                ty: 1,
                ioprio: 0,
                sector: u64::MAX,
            }],
            chain(&[
                (
                    Addr::FromEnd {
                        region: 0,
                        back: 16,
                    },
                    16,
                    0,
                ),
                (at(0x1000), 512, 0),
                (Addr::FromEnd { region: 0, back: 1 }, 1, F_WRITE),
            ]),
        ),
    };
    out.push(("top-of-memory", top, Outcome::Ok(RequestType::Out)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_to_themselves_and_end_as_named() {
        for (name, case, outcome) in seeds() {
            assert_eq!(Case::decode(&case.encode()), case, "{name}");
            assert_eq!(check(&case), outcome, "{name}");
        }
    }

    #[test]
    fn any_bytes_decode() {
        for data in [&[][..], &[0xff; 3], &[7; 200]] {
            check(&Case::decode(data));
        }
    }
}
