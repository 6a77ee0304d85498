//! The synchronous engine: each request runs to completion inside `submit`.
//!
//! It is the fallback where io_uring is unavailable and the reference the
//! asynchronous engines are tested against.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::{Backing, Completion, Engine, IoBuf, Op, Request, SubmitError};

/// Runs requests with `preadv`/`pwritev`/`fdatasync`/`fallocate` on the
/// calling thread.
#[derive(Debug)]
pub struct SyncEngine {
    backing: Arc<Backing>,
    done: VecDeque<Completion>,
    capacity: usize,
}

impl SyncEngine {
    /// An engine over `backing` holding at most `capacity` uncollected completions.
    pub fn new(backing: Arc<Backing>, capacity: usize) -> Self {
        Self {
            backing,
            done: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    fn run(&mut self, req: &Request<'_>) -> Result<u32, i32> {
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        match req.op {
            Op::Read | Op::Write => {
                let total: usize = req.bufs.iter().map(|b| b.len).sum();
                let total32 = u32::try_from(total).map_err(|_| libc::EINVAL)?;
                let fd = self.backing.fd_for(req.offset, req.bufs);
                rw_vectored(fd, req.op, req.offset, req.bufs, total)?;
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

impl Engine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.done.len() >= self.capacity {
            return Err(SubmitError::Full);
        }
        let result = self.run(req);
        self.done.push_back(Completion { user_data, result });
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// `preadv`/`pwritev` until all `total` bytes moved, resuming after short transfers.
fn rw_vectored(fd: RawFd, op: Op, offset: u64, bufs: &[IoBuf], total: usize) -> Result<(), i32> {
    let mut iov: Vec<libc::iovec> = bufs.iter().map(IoBuf::as_iovec).collect();
    let mut done = 0usize;
    let mut first = 0usize;
    while done < total {
        let off = libc::off_t::try_from(offset + done as u64).map_err(|_| libc::EINVAL)?;
        let cnt = libc::c_int::try_from((iov.len() - first).min(1024)).map_err(|_| libc::EINVAL)?;
        let ptr = iov[first..].as_ptr();
        // SAFETY: `iov[first..]` describes memory the submitter keeps valid
        // for the whole request (see `Engine::submit`); `cnt` is within it.
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
        let mut n = usize::try_from(n).map_err(|_| libc::EIO)?;
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n;
        while n > 0 && first < iov.len() {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same iovec, by less than its length.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;

    fn engine(len: u64, direct: bool) -> (tempfile::TempDir, SyncEngine) {
        // O_DIRECT is exercised where the temp dir supports it (disk or tmpfs on 6.6+).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        let b = Backing::open(
            &p,
            OpenOptions {
                read_only: false,
                direct,
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

    #[test]
    fn write_then_read_scattered_buffers() {
        for direct in [false, true] {
            let (_d, mut e) = engine(1 << 20, direct);
            let mut w = vec![vec![1u8; 4096], vec![2u8; 8192], vec![3u8; 100]];
            let c = run(&mut e, Op::Write, 4096, &mut w);
            assert_eq!(
                c,
                Completion {
                    user_data: 7,
                    result: Ok(12388)
                }
            );
            let mut r = vec![vec![0u8; 100], vec![0u8; 12288]];
            let c = run(&mut e, Op::Read, 4096, &mut r);
            assert_eq!(c.result, Ok(12388));
            assert!(r[0].iter().all(|&x| x == 1));
            assert!(r[1][..3996].iter().all(|&x| x == 1));
            assert!(r[1][3996..12188].iter().all(|&x| x == 2));
            assert!(r[1][12188..].iter().all(|&x| x == 3));
        }
    }

    #[test]
    fn unaligned_offset_with_direct_io_goes_through_the_page_cache() {
        let (_d, mut e) = engine(1 << 20, true);
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
}
