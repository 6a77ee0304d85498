//! The synchronous engine: each request runs to completion inside `submit`.
//!
//! It is the fallback where io_uring is unavailable and the reference the
//! asynchronous engines are tested against.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::backing::Transfer;
use crate::bounce::{self, BouncePool};
use crate::{Backing, Completion, Engine, EnginePaths, IoBuf, Op, Request, SubmitError};

/// Runs requests with `preadv`/`pwritev`/`fdatasync`/`fallocate` on the
/// calling thread.
///
/// With `O_DIRECT`, requests whose memory breaks the alignment are copied
/// through a pooled, aligned bounce buffer (see [`Backing::mem_alignment`]).
#[derive(Debug)]
pub struct SyncEngine {
    backing: Arc<Backing>,
    done: VecDeque<Completion>,
    capacity: usize,
    /// The request's iovecs, advanced after short transfers; reused so the
    /// hot path does not allocate.
    iov: Vec<IoBuf>,
    pool: BouncePool,
    /// Write-through writes written since the last commit, waiting for the
    /// one `fdatasync` the commit makes for all of them.
    wt_pending: Vec<(u64, u32)>,
}

impl SyncEngine {
    /// An engine over `backing` holding at most `capacity` uncollected completions.
    pub fn new(backing: Arc<Backing>, capacity: usize) -> Self {
        let pool = BouncePool::new(backing.mem_alignment());
        Self {
            backing,
            done: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            iov: Vec::new(),
            pool,
            wt_pending: Vec::with_capacity(capacity),
        }
    }

    fn run(&mut self, req: &Request<'_>) -> Result<u32, i32> {
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        match req.op {
            Op::Read | Op::Write | Op::WriteThrough => {
                let total: usize = req.bufs.iter().map(|b| b.len).sum();
                let total32 = u32::try_from(total).map_err(|_| libc::EINVAL)?;
                let fd = self.backing.fd();
                self.iov.clear();
                self.iov.extend_from_slice(req.bufs);
                match self.backing.transfer(req.offset, total, req.bufs)? {
                    Transfer::Direct => rw_vectored(fd, req.op, req.offset, &mut self.iov, total)?,
                    Transfer::Bounce => self.bounced(req.op, req.offset, total)?,
                }
                Ok(total32)
            }
            Op::Flush => self.backing.flush().map(|()| 0).map_err(errno),
            Op::Discard => self
                .backing
                .discard(req.offset, req.len)
                .map(|()| 0)
                .map_err(errno),
            Op::WriteZeroes { unmap } => self
                .backing
                .write_zeroes(req.offset, req.len, unmap)
                .map(|()| 0)
                .map_err(errno),
        }
    }
}

impl SyncEngine {
    /// Moves `total` bytes between `self.iov` and the backing through
    /// aligned bounce buffers, one chunk at a time.
    #[cold]
    fn bounced(&mut self, op: Op, offset: u64, total: usize) -> Result<(), i32> {
        let fd = self.backing.fd();
        let mut buf = self.pool.get(total).ok_or(libc::ENOMEM)?;
        let mut first = 0;
        let mut done = 0;
        let mut result = Ok(());
        while done < total {
            let n = (total - done).min(buf.len());
            let mut chunk = [IoBuf {
                addr: buf.as_mut_ptr(),
                len: n,
            }];
            let at = offset + done as u64;
            if op.is_write() {
                // SAFETY: the submitter keeps `iov`'s memory valid for the
                // whole request (see `Engine::submit`).
                unsafe { bounce::gather(&self.iov[first..], buf.slice_mut(n)) };
            }
            result = rw_vectored(fd, op, at, &mut chunk, n);
            if result.is_err() {
                break;
            }
            if op == Op::Read {
                // SAFETY: as above, and for reads nobody else touches it.
                unsafe { bounce::scatter(buf.slice(n), &self.iov[first..]) };
            }
            bounce::advance(&mut self.iov, &mut first, n);
            done += n;
        }
        self.pool.put(buf);
        result
    }
}

impl Engine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.done.len() + self.wt_pending.len() >= self.capacity {
            return Err(SubmitError::Full);
        }
        let result = self.run(req);
        match result {
            // Durable with the commit's flush.
            Ok(n) if req.op == Op::WriteThrough => self.wt_pending.push((user_data, n)),
            _ => self.done.push_back(Completion { user_data, result }),
        }
        Ok(())
    }

    /// Makes the batch's write-through writes durable with one `fdatasync`.
    fn commit(&mut self) -> std::io::Result<()> {
        if self.wt_pending.is_empty() {
            return Ok(());
        }
        let flushed = self
            .backing
            .flush()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        for (user_data, n) in self.wt_pending.drain(..) {
            let result = flushed.map(|()| n);
            self.done.push_back(Completion { user_data, result });
        }
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len() + self.wt_pending.len()
    }

    fn paths(&self) -> EnginePaths {
        let blockdev = self.backing.kind() == crate::BackingKind::BlockDevice;
        let space = if blockdev { "ioctl" } else { "fallocate" };
        EnginePaths {
            ring: "none",
            event_loop: false,
            discard: space,
            write_zeroes: space,
            write_through: "group_fdatasync",
        }
    }
}

/// `preadv`/`pwritev` until all `total` bytes moved, resuming after short
/// transfers (`iov` is advanced in place).
fn rw_vectored(fd: RawFd, op: Op, offset: u64, iov: &mut [IoBuf], total: usize) -> Result<(), i32> {
    let mut done = 0usize;
    let mut first = 0usize;
    while done < total {
        let off = libc::off_t::try_from(offset + done as u64).map_err(|_| libc::EINVAL)?;
        let cnt = libc::c_int::try_from((iov.len() - first).min(1024)).map_err(|_| libc::EINVAL)?;
        // IoBuf has the layout of `struct iovec` (asserted in engine.rs).
        let ptr = iov[first..].as_ptr().cast::<libc::iovec>();
        // SAFETY: `iov[first..]` describes memory the submitter keeps valid
        // for the whole request (see `Engine::submit`), or an engine-owned
        // bounce buffer; `cnt` is within it.
        let n = unsafe {
            match op {
                Op::Read => libc::preadv(fd, ptr, cnt, off),
                _ => libc::pwritev(fd, ptr, cnt, off),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        // A zero transfer means the store shrank under us: fail rather than spin.
        let n = usize::try_from(n).map_err(|_| libc::EIO)?;
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n;
        bounce::advance(iov, &mut first, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;
    use std::os::fd::AsRawFd;

    fn engine(len: u64, direct: bool) -> (tempfile::TempDir, SyncEngine) {
        // O_DIRECT is exercised where the temp dir supports it (disk or tmpfs on 6.6+).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        let b = Backing::open(
            &p,
            OpenOptions {
                direct,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        (dir, SyncEngine::new(Arc::new(b), 8))
    }

    fn run(e: &mut SyncEngine, op: Op, offset: u64, bufs: &mut [Vec<u8>]) -> Completion {
        let io: Vec<IoBuf> = bufs
            .iter_mut()
            .map(|b| IoBuf {
                addr: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect();
        let req = Request {
            op,
            offset,
            len: 0,
            bufs: &io,
        };
        // SAFETY: `bufs` outlives the completion, collected below.
        unsafe { e.submit(&req, 7) }.unwrap();
        e.commit().unwrap();
        e.pop_completion().unwrap()
    }

    /// Write-through writes complete at the commit, all made durable by
    /// one fdatasync there; a failed one completes at once with its errno.
    #[test]
    fn write_through_writes_complete_durable_at_the_commit() {
        let (d, mut e) = engine(1 << 20, false);
        let f = std::fs::File::open(d.path().join("img")).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8 + 1; 4096]).collect();
        let io: Vec<IoBuf> = bufs
            .iter_mut()
            .map(|b| IoBuf {
                addr: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect();
        for (i, b) in io.iter().enumerate() {
            let req = Request {
                op: Op::WriteThrough,
                offset: 4096 * i as u64,
                len: 0,
                bufs: std::slice::from_ref(b),
            };
            // SAFETY: `bufs` outlives the completions, collected below.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        assert_eq!(e.in_flight(), 4);
        assert!(
            e.pop_completion().is_none(),
            "not durable before the commit"
        );
        match crate::testutil::dirty_pages(f.as_raw_fd()) {
            Some(dirty) => assert!(dirty > 0, "written, not yet flushed"),
            None => extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Cachestat,
                "no cachestat here: the dirty-page checks",
            ),
        }
        e.commit().unwrap();
        let done: Vec<_> = std::iter::from_fn(|| e.pop_completion()).collect();
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
        if let Some(dirty) = crate::testutil::dirty_pages(f.as_raw_fd()) {
            assert_eq!(dirty, 0);
        }
        // Past the end of a read-only backing: fails at once.
        let ro = Arc::new(
            Backing::open(
                &d.path().join("img"),
                crate::OpenOptions {
                    read_only: true,
                    direct: false,
                    ..crate::OpenOptions::default()
                },
            )
            .unwrap(),
        );
        let mut e = SyncEngine::new(ro, 4);
        let mut w = vec![vec![1u8; 512]];
        assert_eq!(
            run(&mut e, Op::WriteThrough, 0, &mut w).result,
            Err(libc::EBADF)
        );
    }

    #[test]
    fn write_then_read_scattered_buffers() {
        // Odd segment lengths (so bounced under O_DIRECT), aligned total.
        for direct in [false, true] {
            let (_d, mut e) = engine(1 << 20, direct);
            assert_eq!(e.backing.is_direct(), direct);
            let mut w = vec![
                vec![1u8; 4096],
                vec![2u8; 8192],
                vec![3u8; 100],
                vec![4u8; 412],
            ];
            let c = run(&mut e, Op::Write, 4096, &mut w);
            assert_eq!(
                c,
                Completion {
                    user_data: 7,
                    result: Ok(12800)
                }
            );
            let mut r = vec![vec![0u8; 100], vec![0u8; 12700]];
            let c = run(&mut e, Op::Read, 4096, &mut r);
            assert_eq!(c.result, Ok(12800));
            assert!(r[0].iter().all(|&x| x == 1));
            assert!(r[1][..3996].iter().all(|&x| x == 1));
            assert!(r[1][3996..12188].iter().all(|&x| x == 2));
            assert!(r[1][12188..12288].iter().all(|&x| x == 3));
            assert!(r[1][12288..].iter().all(|&x| x == 4));
        }
    }

    #[test]
    fn bounced_requests_larger_than_a_chunk_move_every_byte() {
        let (_d, mut e) = engine(4 << 20, true);
        let total = 3 * bounce::MAX_CHUNK + 4096;
        // One odd-length segment first, so the whole request is bounced.
        let mut w = vec![vec![0u8; 1], vec![0u8; total - 1]];
        let pattern = |i: usize| (i % 251) as u8 ^ (i / 4096) as u8;
        w[0][0] = pattern(0);
        for (i, b) in w[1].iter_mut().enumerate() {
            *b = pattern(i + 1);
        }
        assert_eq!(
            run(&mut e, Op::Write, 8192, &mut w).result,
            Ok(total as u32)
        );
        let mut r = vec![vec![0u8; 777], vec![0u8; total - 777]];
        assert_eq!(run(&mut e, Op::Read, 8192, &mut r).result, Ok(total as u32));
        let got: Vec<u8> = r.concat();
        assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
        assert_eq!(run(&mut e, Op::Flush, 0, &mut []).result, Ok(0));
    }

    #[test]
    fn misaligned_offset_or_length_with_direct_io_fails_with_einval() {
        let (_d, mut e) = engine(1 << 20, true);
        assert_eq!(e.backing.alignment(), 512);
        for (offset, len) in [(512 + 7, 512), (512, 513), (100, 100)] {
            let mut w = vec![vec![9u8; len]];
            assert_eq!(
                run(&mut e, Op::Write, offset, &mut w).result,
                Err(libc::EINVAL)
            );
            let mut r = vec![vec![0u8; len]];
            assert_eq!(
                run(&mut e, Op::Read, offset, &mut r).result,
                Err(libc::EINVAL)
            );
        }
        // Nothing was written, and the file is healthy.
        let mut r = vec![vec![1u8; 4096]];
        assert_eq!(run(&mut e, Op::Read, 0, &mut r).result, Ok(4096));
        assert!(r[0].iter().all(|&x| x == 0));
        assert_eq!(run(&mut e, Op::Flush, 0, &mut []).result, Ok(0));
    }

    #[test]
    fn buffered_io_takes_any_offset_and_length() {
        let (_d, mut e) = engine(1 << 20, false);
        let mut w = vec![vec![9u8; 513]];
        assert_eq!(run(&mut e, Op::Write, 512 + 7, &mut w).result, Ok(513));
        let mut r = vec![vec![0u8; 513]];
        assert_eq!(run(&mut e, Op::Read, 512 + 7, &mut r).result, Ok(513));
        assert!(r[0].iter().all(|&x| x == 9));
    }

    #[test]
    fn read_past_end_fails_with_eio_instead_of_spinning() {
        let (_d, mut e) = engine(4096, false);
        let mut r = vec![vec![0u8; 8192]];
        assert_eq!(run(&mut e, Op::Read, 0, &mut r).result, Err(libc::EIO));
    }

    #[test]
    fn full_engine_refuses_until_drained() {
        let (_d, mut e) = engine(4096, false);
        let req = Request {
            op: Op::Flush,
            offset: 0,
            len: 0,
            bufs: &[],
        };
        for i in 0..8 {
            // SAFETY: a flush carries no memory.
            unsafe { e.submit(&req, i) }.unwrap();
        }
        // SAFETY: as above.
        assert_eq!(unsafe { e.submit(&req, 9) }, Err(SubmitError::Full));
        assert_eq!(e.in_flight(), 8);
        while e.pop_completion().is_some() {}
        // SAFETY: as above.
        assert_eq!(unsafe { e.submit(&req, 9) }, Ok(()));
    }

    #[test]
    fn unaligned_memory_mixed_with_aligned_on_shared_pages_from_two_queues() {
        let d = tempfile::tempdir().unwrap();
        crate::testutil::mixed_alignment_on_shared_pages(
            d.path(),
            |b| Box::new(SyncEngine::new(b, 8)),
            8,
        );
    }
}
