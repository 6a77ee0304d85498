//! Test helpers shared by the engines' unit tests.

use std::sync::Arc;

use crate::{Backing, Completion, Engine, IoBuf, Op, Request};

/// xorshift64*: deterministic test data without a dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Collects `n` completions, blocking on the completion fd of an
/// asynchronous engine; panics (instead of hanging the test run) if none
/// comes for a long time.
pub(crate) fn wait(e: &mut dyn Engine, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(c) = e.pop_completion() {
            out.push(c);
            continue;
        }
        let fd = e
            .completion_fd()
            .expect("a synchronous engine completes within submit");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, 60_000) };
        assert!(rc > 0, "no completion arrived: the engine hangs");
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from an eventfd into a u64 we own.
        unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
    }
    out
}

/// Dirty page-cache pages of `fd` (cachestat, Linux 6.5+), or None
/// where the kernel lacks it.
pub(crate) fn dirty_pages(fd: std::os::fd::RawFd) -> Option<u64> {
    // The syscall number is the same on every architecture (451); the
    // libc crate does not name it for x86_64 glibc yet.
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = [0u64, 0u64];
    let mut stat = [0u64; 5];
    // SAFETY: `range` (struct cachestat_range) and `stat` (struct
    // cachestat: five u64) are valid for the kernel to read and write.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, fd, range.as_ptr(), stat.as_mut_ptr(), 0) };
    (rc == 0).then_some(stat[1] + stat[2])
}

/// Whether the kernel log mentions a page cache invalidation failure on a
/// file under `dir` (None when the log cannot be read).
pub(crate) fn kernel_flagged(dir: &std::path::Path) -> Option<bool> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let log = String::from_utf8_lossy(&out.stdout);
    let dir = dir.to_string_lossy();
    let mut flagged = false;
    let mut lines = log.lines().peekable();
    while let Some(l) = lines.next() {
        if l.contains("Page cache invalidation failure")
            && lines.peek().is_some_and(|next| next.contains(&*dir))
        {
            flagged = true;
        }
    }
    Some(flagged)
}

const SECTOR: usize = 512;
const PAGE: usize = 4096;

/// Two queues (threads, one engine each, `depth` requests in flight) write
/// and read 512-byte sectors of the same 4 KiB pages of a direct-I/O
/// backing: queue 0 owns the even sectors, queue 1 the odd ones. Each
/// request's memory is, at random, aligned or deliberately misaligned (odd
/// addresses, segment lengths that are not multiples of 512). Reads check
/// the queue's own sectors; at the end a flush must succeed and the file
/// must hold exactly what was written.
pub(crate) fn mixed_alignment_on_shared_pages(
    dir: &std::path::Path,
    open: impl Fn(Arc<Backing>) -> Box<dyn Engine>,
    depth: usize,
) {
    const PAGES: usize = 64;
    const SIZE: usize = PAGES * PAGE;
    let path = dir.join("img");
    std::fs::write(&path, vec![0u8; SIZE]).unwrap();
    let backing = Arc::new(Backing::open(&path, crate::OpenOptions::default()).unwrap());
    assert!(backing.is_direct(), "the test needs O_DIRECT to work here");
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|q| {
                let mut e = open(Arc::clone(&backing));
                s.spawn(move || hammer(&mut *e, q, depth, SIZE))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut e = open(Arc::clone(&backing));
    let flush = Request {
        op: Op::Flush,
        offset: 0,
        len: 0,
        bufs: &[],
    };
    // SAFETY: a flush carries no memory.
    unsafe { e.submit(&flush, 1) }.unwrap();
    e.commit().unwrap();
    let c = if e.completion_fd().is_some() {
        wait(&mut *e, 1).remove(0)
    } else {
        e.pop_completion().unwrap()
    };
    assert_eq!(c.result, Ok(0), "flush after mixed-alignment I/O");
    drop(e);
    let data = std::fs::read(&path).unwrap();
    for (i, sector) in data.chunks(SECTOR).enumerate() {
        let want = &models[i % 2][i * SECTOR..(i + 1) * SECTOR];
        assert!(sector == want, "sector {i} holds other data");
    }
    if let Some(flagged) = kernel_flagged(dir) {
        assert!(
            !flagged,
            "the kernel logged a page cache invalidation failure"
        );
    }
}

/// One queue's part of [`mixed_alignment_on_shared_pages`]; returns the
/// model of the whole file (only this queue's sectors are meaningful).
fn hammer(e: &mut dyn Engine, q: u64, depth: usize, size: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed ^ (q + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut model = vec![0u8; size];
    let sectors = size / SECTOR;
    for _round in 0..300 {
        // Distinct sectors within a batch: racing on the same bytes has no
        // defined result. Pages are shared with the other queue throughout.
        let mut picked: Vec<usize> = Vec::new();
        while picked.len() < depth {
            let s = (rng.below(sectors as u64 / 2) as usize) * 2 + q as usize;
            if !picked.contains(&s) {
                picked.push(s);
            }
        }
        let mut arenas: Vec<Vec<u8>> = Vec::new();
        let mut reqs: Vec<(Op, usize, Vec<IoBuf>)> = Vec::new();
        for &s in &picked {
            let op = if rng.below(2) == 0 {
                Op::Read
            } else {
                Op::Write
            };
            let aligned = rng.below(2) == 0;
            let lens: Vec<usize> = if aligned {
                vec![SECTOR]
            } else {
                let a = 1 + rng.below(SECTOR as u64 - 1) as usize;
                vec![a, SECTOR - a]
            };
            let mut bufs = Vec::new();
            let mut at = s * SECTOR;
            for len in lens {
                let mut arena = vec![0u8; len + 2 * PAGE];
                let start = arena.as_ptr().align_offset(PAGE) + if aligned { 0 } else { 1 };
                if op == Op::Write {
                    for (i, b) in arena[start..start + len].iter_mut().enumerate() {
                        *b = (rng.next() as u8) ^ (i as u8);
                    }
                    model[at..at + len].copy_from_slice(&arena[start..start + len]);
                }
                at += len;
                bufs.push(IoBuf {
                    addr: arena[start..].as_mut_ptr(),
                    len,
                });
                arenas.push(arena);
            }
            reqs.push((op, s, bufs));
        }
        for (i, (op, s, bufs)) in reqs.iter().enumerate() {
            let req = Request {
                op: *op,
                offset: (s * SECTOR) as u64,
                len: 0,
                bufs,
            };
            // SAFETY: `arenas` outlives every completion, collected below.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        e.commit().unwrap();
        let done = if e.completion_fd().is_some() {
            wait(e, reqs.len())
        } else {
            std::iter::from_fn(|| e.pop_completion()).collect()
        };
        assert_eq!(done.len(), reqs.len());
        for c in done {
            assert_eq!(c.result, Ok(SECTOR as u32), "queue {q} request {c:?}");
        }
        for (op, s, bufs) in &reqs {
            if *op == Op::Read {
                let mut got = Vec::new();
                for b in bufs {
                    // SAFETY: the read completed; `b` points into a live arena.
                    got.extend_from_slice(unsafe { std::slice::from_raw_parts(b.addr, b.len) });
                }
                assert!(
                    got == model[s * SECTOR..(s + 1) * SECTOR],
                    "queue {q}: sector {s} read back other data"
                );
            }
        }
    }
    model
}
