//! Request parsing: `Request::parse` over chains built with virtio-queue's
//! `MockSplitQueue` in real guest memory. No I/O, no vhost: this is the
//! per-request CPU cost the queue worker pays before submitting.
//!
//! `cargo bench --bench parse` (about 7 s once built, no plots); under `cargo test
//! --all-targets` criterion runs each case once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use extstorage_virtio_blk::{Request, RequestType, Segment};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x40_0000;
/// MockSplitQueue puts indirect tables here.
const INDIRECT: u64 = 0x3000_0000;

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x100_0000),
        (GuestAddress(INDIRECT), 0x10_0000),
    ])
    .expect("guest memory")
}

fn header(mem: &Mem, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).expect("header");
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// Publishes `ds` as one chain (NEXT links added) and pops it.
fn pop<'a>(mem: &'a Mem, ds: &[RawDescriptor]) -> DescriptorChain<&'a Mem> {
    let linked: Vec<RawDescriptor> = ds
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = Descriptor::from(*d);
            let (flags, next) = if i + 1 < ds.len() {
                (d.flags() | F_NEXT, i as u16 + 1)
            } else {
                (d.flags(), 0)
            };
            RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect();
    let mq = MockSplitQueue::new(mem, 256);
    mq.add_desc_chains(&linked, 0).expect("descriptor table");
    let mut queue: Queue = mq.create_queue().expect("queue");
    queue
        .iter(mem)
        .expect("avail ring")
        .next()
        .expect("chain popped")
}

/// Header, `n` data descriptors of `len` bytes, status.
fn chain(mem: &Mem, n: u64, len: u32, data_flags: u16) -> DescriptorChain<&Mem> {
    let mut ds = vec![desc(HDR, 16, 0)];
    ds.extend((0..n).map(|i| desc(DATA + i * 0x1_0000, len, data_flags)));
    ds.push(desc(STATUS, 1, F_WRITE));
    pop(mem, &ds)
}

/// Runs `parse` on `chain` in a loop; checks the first result.
fn bench_chain(
    c: &mut Criterion,
    name: &str,
    bytes: u64,
    chain: &DescriptorChain<&Mem>,
    expect: Option<RequestType>,
) {
    let mut segs: Vec<Segment> = Vec::with_capacity(256);
    let first = Request::parse(chain, &mut segs);
    assert_eq!(
        first.ok().map(|r| r.ty),
        expect,
        "{name}: unexpected parse result"
    );
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(name, |b| {
        b.iter(|| black_box(Request::parse(black_box(chain), &mut segs)))
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    // A 4 KiB read: header, one data descriptor, status.
    let mem = memory();
    header(&mem, 0, 8);
    let read_4k = chain(&mem, 1, 4096, F_WRITE);
    bench_chain(c, "read_4k", 4096, &read_4k, Some(RequestType::In));

    // A 128 KiB write in 32 segments of 4 KiB.
    let mem = memory();
    header(&mem, 1, 64);
    let write_128k = chain(&mem, 32, 4096, 0);
    bench_chain(
        c,
        "write_128k_32seg",
        128 << 10,
        &write_128k,
        Some(RequestType::Out),
    );

    // An indirect 16 KiB read: one ring descriptor, a 6-entry table.
    let mem = memory();
    header(&mem, 0, 0);
    let mut mq = MockSplitQueue::new(&mem, 256);
    mq.add_indirect_chain(6).expect("indirect chain");
    let mut table = vec![Descriptor::new(HDR, 16, F_NEXT, 1)];
    for i in 0..4u16 {
        table.push(Descriptor::new(
            DATA + u64::from(i) * 0x1_0000,
            4096,
            F_NEXT | F_WRITE,
            i + 2,
        ));
    }
    table.push(Descriptor::new(STATUS, 1, F_WRITE, 0));
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(
            RawDescriptor::from(*d),
            GuestAddress(INDIRECT + 16 * i as u64),
        )
        .expect("indirect table");
    }
    let mut queue: Queue = mq.create_queue().expect("queue");
    let indirect = queue
        .iter(&mem)
        .expect("avail ring")
        .next()
        .expect("indirect chain popped");
    bench_chain(
        c,
        "indirect_16k",
        16 << 10,
        &indirect,
        Some(RequestType::In),
    );

    // A malformed 8-segment read: the last data descriptor has the wrong
    // direction, found only after walking everything (IOERR).
    let mem = memory();
    header(&mem, 0, 0);
    let mut ds = vec![desc(HDR, 16, 0)];
    ds.extend((0..7).map(|i| desc(DATA + i * 0x1_0000, 4096, F_WRITE)));
    ds.push(desc(DATA + 7 * 0x1_0000, 4096, 0));
    ds.push(desc(STATUS, 1, F_WRITE));
    let bad = pop(&mem, &ds);
    bench_chain(c, "malformed_8seg", 32 << 10, &bad, None);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        // Plot rendering took 40 s of a 50 s run on this machine.
        .without_plots();
    targets = parse
}
criterion_main!(benches);
