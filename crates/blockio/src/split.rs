//! The split engine: small requests on the calling thread, large ones on io_uring.
//!
//! On a backing without non-blocking I/O (tmpfs), io_uring hands every
//! request to a kernel worker thread. For a 4 KiB request that hop costs more
//! than the copy, so the sync engine wins; for a large read or write the copy
//! dominates, and letting io_uring's workers copy on other cores while this
//! thread parses the next requests is what keeps sequential throughput up.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::{
    Backing, Completion, Engine, EnginePaths, Error, EventLoop, Request, SubmitError, SyncEngine,
    UringEngine,
};

/// Requests moving at least this many bytes go to io_uring.
pub const DEFAULT_SPLIT_BYTES: usize = 64 * 1024;

/// Routes reads and writes of at least a threshold size to a [`UringEngine`]
/// and everything else to a [`SyncEngine`].
#[derive(Debug)]
pub struct SplitEngine {
    sync: SyncEngine,
    uring: UringEngine,
    threshold: usize,
}

impl SplitEngine {
    /// Both engines over `backing`, each with room for `depth` requests.
    pub fn new(backing: Arc<Backing>, depth: usize, threshold: usize) -> Result<Self, Error> {
        Ok(Self {
            uring: UringEngine::new(Arc::clone(&backing), depth)?,
            sync: SyncEngine::new(backing, depth),
            threshold,
        })
    }

    fn is_large(&self, req: &Request<'_>) -> bool {
        req.op.moves_data() && req.bufs.iter().map(|b| b.len).sum::<usize>() >= self.threshold
    }
}

impl Engine for SplitEngine {
    fn name(&self) -> &'static str {
        "sync+io_uring"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.is_large(req) {
            // SAFETY: the caller's guarantee for `req` is passed on unchanged.
            unsafe { self.uring.submit(req, user_data) }
        } else {
            // SAFETY: as above.
            unsafe { self.sync.submit(req, user_data) }
        }
    }

    fn commit(&mut self) -> std::io::Result<()> {
        self.sync.commit()?;
        self.uring.commit()
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.sync
            .pop_completion()
            .or_else(|| self.uring.pop_completion())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.uring.completion_fd()
    }

    fn in_flight(&self) -> usize {
        self.sync.in_flight() + self.uring.in_flight()
    }

    fn event_loop(&mut self) -> Option<&mut dyn EventLoop> {
        self.uring.event_loop()
    }

    fn paths(&self) -> EnginePaths {
        // Discards and write-zeroes carry no data: the sync engine's.
        EnginePaths {
            event_loop: UringEngine::event_loop_supported(),
            ring: self.uring.paths().ring,
            ..self.sync.paths()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoBuf, Op, OpenOptions};

    fn wait_all(e: &mut SplitEngine, n: usize) -> Vec<Completion> {
        let mut done = crate::testutil::wait(e, n);
        done.sort_by_key(|c| c.user_data);
        done
    }

    #[test]
    fn small_and_large_requests_both_complete_with_the_right_data() {
        if !UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return;
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Arc::new(
            Backing::open(
                f.path(),
                OpenOptions {
                    direct: false,
                    ..OpenOptions::default()
                },
            )
            .unwrap(),
        );
        let mut e = SplitEngine::new(b, 8, DEFAULT_SPLIT_BYTES).unwrap();
        let mut small = vec![0x11u8; 4096];
        let mut large = vec![0x22u8; 128 * 1024];
        let ws = [IoBuf {
            addr: small.as_mut_ptr(),
            len: small.len(),
        }];
        let wl = [IoBuf {
            addr: large.as_mut_ptr(),
            len: large.len(),
        }];
        // SAFETY: both buffers outlive their completions, awaited below.
        unsafe {
            e.submit(
                &Request {
                    op: Op::Write,
                    offset: 0,
                    len: 0,
                    bufs: &ws,
                },
                1,
            )
            .unwrap();
            e.submit(
                &Request {
                    op: Op::Write,
                    offset: 65536,
                    len: 0,
                    bufs: &wl,
                },
                2,
            )
            .unwrap();
        }
        e.commit().unwrap();
        let done = wait_all(&mut e, 2);
        assert_eq!(
            done[0],
            Completion {
                user_data: 1,
                result: Ok(4096)
            }
        );
        assert_eq!(
            done[1],
            Completion {
                user_data: 2,
                result: Ok(128 * 1024)
            }
        );
        assert_eq!(e.in_flight(), 0);

        let mut back = vec![0u8; 192 * 1024];
        let rb = [IoBuf {
            addr: back.as_mut_ptr(),
            len: back.len(),
        }];
        // SAFETY: `back` outlives the completion, awaited below.
        unsafe {
            e.submit(
                &Request {
                    op: Op::Read,
                    offset: 0,
                    len: 0,
                    bufs: &rb,
                },
                3,
            )
        }
        .unwrap();
        e.commit().unwrap();
        assert_eq!(wait_all(&mut e, 1)[0].result, Ok(192 * 1024));
        assert!(back[..4096].iter().all(|&x| x == 0x11));
        assert!(back[4096..65536].iter().all(|&x| x == 0));
        assert!(back[65536..].iter().all(|&x| x == 0x22));
    }
}
