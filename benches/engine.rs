//! The blockio engines on their own (no virtio, no daemon): 4 KiB reads and
//! writes at queue depth 1 and 32, per engine, on a loop device with direct
//! I/O over a file in /dev/shm (a block device, as users serve), on a file
//! in /dev/shm opened with O_DIRECT and on a page-cached file on the temp
//! dir's filesystem.
//!
//! Each iteration is one completed request, so criterion's throughput is
//! IOPS. Completions are awaited the way the daemon will: poll the engine's
//! completion fd when nothing is ready.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use extstorage_blockio::{
    Backing, Engine, EngineKind, IoBuf, Op, OpenOptions, Request, UringEngine, open_engine,
};

const BS: usize = 4096;

/// Keeps `depth` requests of `op` in flight until `iters` completed; returns
/// the time taken.
fn run(
    e: &mut dyn Engine,
    op: Op,
    depth: usize,
    iters: u64,
    mem: &mut [u8],
    blocks: u64,
    rng: &mut u64,
) -> Duration {
    let base = mem.as_mut_ptr();
    let mut next_offset = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        (*rng % blocks) * BS as u64
    };
    let submit = |e: &mut dyn Engine, slot: usize, offset: u64| {
        let buf = IoBuf {
            addr: base.wrapping_add(slot * BS),
            len: BS,
        };
        let req = Request {
            op,
            offset,
            len: 0,
            bufs: std::slice::from_ref(&buf),
        };
        // SAFETY: `mem` outlives this function, which collects every
        // completion before returning; each slot has one request at a time.
        unsafe { e.submit(&req, slot as u64) }.expect("engine has room for `depth` requests");
    };
    let start = Instant::now();
    let mut submitted = 0u64;
    let mut done = 0u64;
    for slot in 0..depth.min(usize::try_from(iters).unwrap_or(usize::MAX)) {
        submit(e, slot, next_offset());
        submitted += 1;
    }
    e.commit().expect("commit");
    while done < submitted {
        let mut progressed = false;
        while let Some(c) = e.pop_completion() {
            assert!(c.result.is_ok(), "bench request failed: {:?}", c.result);
            done += 1;
            progressed = true;
            if submitted < iters {
                submit(e, c.user_data as usize, next_offset());
                submitted += 1;
            }
        }
        e.commit().expect("commit");
        if !progressed && let Some(fd) = e.completion_fd() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let mut v = 0u64;
            // SAFETY: reading 8 bytes from an eventfd into a u64 we own.
            unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
        }
    }
    start.elapsed()
}

/// Where a bench image lives; keeps its directory and loop device alive.
struct Place {
    _dir: tempfile::TempDir,
    _loop: Option<common::LoopDevice>,
    backing: Arc<Backing>,
}

/// A 64 MiB image filled with data in `dir`, opened direct or buffered,
/// or behind a loop device with direct I/O (`on_loop`).
fn image(dir: &std::path::Path, direct: bool, on_loop: bool) -> Place {
    let dir = tempfile::tempdir_in(dir).expect("temp dir");
    common::cleanup::add_dir(dir.path().to_path_buf());
    let file = dir.path().join("img");
    let (path, lo) = if on_loop {
        let lo = common::LoopDevice::create(&file, SIZE)
            .unwrap_or_else(|e| panic!("engine bench needs a loop device: {e:#}"));
        (lo.dev.clone(), Some(lo))
    } else {
        std::fs::write(&file, vec![0x5au8; SIZE as usize]).expect("write the bench image");
        (file, None)
    };
    let opts = OpenOptions {
        read_only: false,
        direct,
        ..OpenOptions::default()
    };
    Place {
        backing: Arc::new(Backing::open(&path, opts).expect("open image")),
        _loop: lo,
        _dir: dir,
    }
}

const SIZE: u64 = 64 << 20;

fn engines(c: &mut Criterion) {
    let mut mem = vec![0u8; 32 * BS + BS];
    let start = mem.as_ptr().align_offset(BS);
    let mem = &mut mem[start..start + 32 * BS];
    let mut rng = 0x1234_5678_9abc_def1u64;

    // tmpfs with O_DIRECT (the daemon's default and the comparison's setup),
    // and a disk filesystem's page cache, where io_uring completes inline.
    let shm = std::path::Path::new("/dev/shm");
    let mut places = vec![("disk-buffered", std::env::temp_dir(), false, false)];
    if shm.is_dir() {
        places.insert(0, ("shm-direct", shm.to_path_buf(), true, false));
        places.insert(0, ("loop-direct", shm.to_path_buf(), true, true));
    }
    let mut kinds = vec![EngineKind::Sync];
    if UringEngine::is_supported() {
        kinds.push(EngineKind::Uring);
    } else {
        eprintln!("engine bench: io_uring unavailable here, benchmarking the sync engine only");
    }
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    for (place, dir, direct, on_loop) in places {
        let here = image(&dir, direct, on_loop);
        let backing = &here.backing;
        for &kind in &kinds {
            for (op, name) in [(Op::Read, "read4k"), (Op::Write, "write4k")] {
                for depth in [1usize, 32] {
                    let mut e = open_engine(kind, Arc::clone(backing), depth).expect("open engine");
                    let id =
                        BenchmarkId::new(format!("{place}/{kind}/{name}"), format!("qd{depth}"));
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            run(&mut *e, op, depth, iters, mem, SIZE / BS as u64, &mut rng)
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn main() {
    common::install_cleanup_on_signals().expect("signal thread");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .noise_threshold(0.05)
        .configure_from_args();
    engines(&mut c);
    c.final_summary();
    common::cleanup::run_all();
}
