//! The io_uring engine: requests go to the kernel as submission entries and
//! complete asynchronously, signalled through an eventfd.
//!
//! Every `unsafe` line that talks to io_uring lives in this module. The
//! invariant they all rest on: an entry pushed to the submission queue
//! points at memory that stays valid until its completion is reaped. Caller
//! memory (the request's buffers) is covered by [`Engine::submit`]'s
//! contract; the iovec array itself, and the bounce buffer of a request
//! whose memory breaks direct-I/O alignment, are kept in an in-flight slot
//! owned by the engine, which is neither moved nor reused until the
//! completion for that slot arrives (and [`Drop`] waits for outstanding
//! completions).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use vmm_sys_util::eventfd::EventFd;

use crate::backing::Transfer;
use crate::bounce::{self, AlignedBuf, BouncePool};
use crate::{
    Backing, BackingKind, Completion, Engine, EnginePaths, Error, EventLoop, IoBuf, Op, Request,
    SubmitError, Watches,
};

/// Most iovecs one readv/writev accepts (`IOV_MAX`); longer requests are
/// issued in pieces, like a short transfer.
const IOV_MAX: usize = 1024;

/// Largest queue depth accepted; the kernel caps rings at 32768 entries anyway.
const MAX_DEPTH: usize = 4096;

/// The event loop's wait sleeps until this fraction of the reads and
/// writes in flight completed (measured on a loop device at QD32: a
/// quarter or a half both 1.13x the IOPS of waking for each, an eighth no
/// gain).
const WAIT_FRACTION: usize = 4;

/// The most completions one wait waits for.
const MAX_WAIT_BATCH: usize = 16;

/// Event-loop watches an engine can hold (bits of a [`Watches`] mask).
const MAX_WATCHES: usize = 32;

/// Submission entries kept free for watches and their cancellations.
const WATCH_ENTRIES: usize = 2 * MAX_WATCHES;

/// `user_data` of a watch's entry: this bit plus the watch number. Request
/// entries carry their slot index, always below [`MAX_DEPTH`].
const WATCH_TAG: u64 = 1 << 63;

/// `user_data` of a cancellation entry (its completion carries nothing).
const CANCEL_TAG: u64 = 1 << 62;

/// `user_data` of the `fdatasync` that makes a group of write-through
/// writes durable.
const GROUP_FLUSH_TAG: u64 = 1 << 61;

/// What an in-flight slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotOp {
    Read,
    Write,
    Flush,
    /// `fallocate(mode)`; on `EOPNOTSUPP` once more with `retry` (if not 0).
    Fallocate {
        mode: i32,
        len: u64,
        retry: i32,
    },
    /// A block device's discard as an io_uring command (Linux 6.12+).
    DiscardCmd {
        len: u64,
    },
}

/// `BLOCK_URING_CMD_DISCARD` (`_IO(0x12, 0)`): discard on a block device
/// through `IORING_OP_URING_CMD`, start in `addr`, length in `addr3`.
const BLOCK_URING_CMD_DISCARD: u32 = 0x12 << 8;

/// Write-zeroes on a block device of at least this many bytes run on
/// io_uring's workers; smaller ones on the calling thread.
const ASYNC_ZEROES_BYTES: u64 = 1 << 20;

/// `FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE`: on a file, deallocate;
/// on a block device, zero out and allow unmapping (no fallback to
/// writing zeroes: `EOPNOTSUPP` if the device cannot).
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// `FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE`: zero a range; on a block
/// device without unmapping (writing zeroes if need be).
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// One in-flight request, found again by its index (the entry's `user_data`).
#[derive(Debug)]
struct Slot {
    /// The caller's `user_data`.
    user_data: u64,
    op: SlotOp,
    fd: RawFd,
    offset: u64,
    /// The request's iovecs, advanced in place after a short transfer. The
    /// kernel reads this array, so it must not move while in flight: the
    /// `Vec` is only touched between completions.
    bufs: Vec<IoBuf>,
    /// First iovec not yet fully transferred.
    first: usize,
    done: usize,
    total: usize,
    /// The aligned buffer a bounced request moves its data through, and
    /// the length of the piece currently in flight. Owned by the slot
    /// until its completion is reaped; the kernel reads or writes it.
    bounce: Option<AlignedBuf>,
    chunk: usize,
    /// A write-through write: once written it waits for a group flush.
    sync: bool,
}

impl Slot {
    fn empty() -> Self {
        Self {
            user_data: 0,
            op: SlotOp::Flush,
            fd: -1,
            offset: 0,
            bufs: Vec::new(),
            first: 0,
            done: 0,
            total: 0,
            bounce: None,
            chunk: 0,
            sync: false,
        }
    }

    /// Drops `n` transferred bytes from the front of the remaining iovecs.
    fn advance(&mut self, n: usize) {
        self.done += n;
        bounce::advance(&mut self.bufs, &mut self.first, n);
    }

    /// Sizes the next piece of a bounced request and, for a write, copies
    /// it from the caller's memory into the bounce buffer.
    fn prepare_chunk(&mut self) {
        let Some(buf) = self.bounce.as_mut() else {
            return;
        };
        self.chunk = (self.total - self.done).min(buf.len());
        if self.op == SlotOp::Write {
            // SAFETY: the caller's memory stays valid until this slot's
            // completion is returned (`Engine::submit`'s contract).
            unsafe { bounce::gather(&self.bufs[self.first..], buf.slice_mut(self.chunk)) };
        }
    }
}

/// Runs requests through an io_uring instance owned by one queue worker.
///
/// `submit` only fills submission entries; `commit` hands them all to the
/// kernel with one `io_uring_enter`. Completions raise the eventfd returned
/// by [`completion_fd`](Engine::completion_fd). Discard and write-zeroes on
/// block devices, which io_uring has no opcode for, run synchronously and
/// complete immediately.
pub struct UringEngine {
    ring: IoUring,
    eventfd: EventFd,
    backing: Arc<Backing>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Completions that never went through the ring (or failed before it).
    ready: VecDeque<Completion>,
    capacity: usize,
    /// The filesystem refused `FALLOC_FL_ZERO_RANGE` once: punch holes instead.
    no_zero_range: bool,
    /// The block device refused an unmapping zero-out once: zero it
    /// without unmapping from now on.
    no_unmap_zeroes: bool,
    /// Discards on this block device go through the io_uring discard
    /// command (probed at creation); else the blocking ioctl.
    discard_cmd: bool,
    /// Bounce buffers for requests whose memory breaks direct-I/O alignment.
    pool: BouncePool,
    /// The ring was set up with cooperative task running.
    coop: bool,
    /// Watches submitted (or queued) and not yet completed.
    armed: Watches,
    /// Watches completed successfully and not yet taken.
    fired: Watches,
    /// Watches that completed with an error and not yet taken.
    failed: Watches,
    /// Armed watches that stay armed across firings (multishot polls).
    multishot: Watches,
    /// Write-through writes whose data is written, waiting for the next
    /// group flush (slot indices; the slots stay taken).
    wt_waiting: Vec<usize>,
    /// Those the group flush in flight makes durable.
    wt_flushing: Vec<usize>,
    /// A group flush is in flight.
    flushing: bool,
    /// `commit` leaves entries queued for the next `wait` (event loop).
    defer: bool,
    /// Fallocates (discard and write-zeroes but the discard command) run
    /// one at a time: on io_uring's workers many at once only contend for
    /// the file's invalidate lock (measured: half the throughput, five
    /// times the CPU of one at a time). Slots waiting their turn:
    space_waiting: VecDeque<usize>,
    /// A fallocate is in flight.
    space_busy: bool,
    /// Reads and writes whose completion is due from the ring (one per
    /// slot while its data moves; not write-through writes waiting for a
    /// group flush, nor anything but reads and writes).
    data_in_ring: usize,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("eventfd", &self.eventfd.as_raw_fd())
            .field("capacity", &self.capacity)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl UringEngine {
    /// Whether io_uring works here with every opcode this engine uses.
    ///
    /// False where the kernel is too old, io_uring is disabled by the
    /// `kernel.io_uring_disabled` sysctl, or a seccomp filter refuses it.
    /// The answer is probed once per process.
    pub fn is_supported() -> bool {
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| match probe() {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable");
                false
            }
        })
    }

    /// Whether io_uring can start requests on `backing` without handing each
    /// one to a kernel worker thread.
    ///
    /// Files whose filesystem lacks non-blocking I/O (tmpfs, for one) make
    /// io_uring punt every request to its io-wq threads: a context switch per
    /// request, several times slower than plain `preadv`. The probe is a
    /// `preadv2(RWF_NOWAIT)`, which fails with `EOPNOTSUPP` exactly there.
    pub fn is_efficient_for(backing: &Backing) -> bool {
        let mut page = vec![0u8; 8192];
        let start = page.as_ptr().align_offset(4096);
        let iov = libc::iovec {
            iov_base: page[start..].as_mut_ptr().cast(),
            iov_len: 4096,
        };
        // SAFETY: `iov` describes 4096 bytes of `page`, which we own and
        // which outlives the call; the fd is owned by `backing`.
        let n = unsafe { libc::preadv2(backing.fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
        n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP)
    }

    /// An engine over `backing` with at most `depth` requests in flight.
    pub fn new(backing: Arc<Backing>, depth: usize) -> Result<Self, Error> {
        let err = |source| Error::Engine {
            engine: "io_uring",
            source,
        };
        let capacity = depth.clamp(1, MAX_DEPTH);
        let entries = u32::try_from((capacity + WATCH_ENTRIES).next_power_of_two()).unwrap_or(8192);
        // Cooperative task running: completions never interrupt the worker
        // with an IPI while it runs; they are run when it next enters the
        // kernel (and flagged for a spinning caller). Kernels before 5.19
        // refuse the flags: plain ring there.
        let (mut ring, coop) = match IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(r) => (r, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (IoUring::new(entries).map_err(err)?, false)
            }
            Err(e) => return Err(err(e)),
        };
        // Probed before the eventfd is registered, so the probe's
        // completion does not raise it.
        let discard_cmd = backing.kind() == BackingKind::BlockDevice
            && !backing.is_read_only()
            && probe_discard_cmd(&mut ring, backing.fd());
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(err)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(err)?;
        Ok(Self {
            ring,
            eventfd,
            slots: (0..capacity).map(|_| Slot::empty()).collect(),
            free: (0..capacity).rev().collect(),
            ready: VecDeque::with_capacity(capacity),
            capacity,
            no_zero_range: false,
            no_unmap_zeroes: false,
            discard_cmd,
            pool: BouncePool::new(backing.mem_alignment()),
            coop,
            backing,
            armed: 0,
            fired: 0,
            failed: 0,
            multishot: 0,
            wt_waiting: Vec::with_capacity(capacity),
            wt_flushing: Vec::with_capacity(capacity),
            flushing: false,
            defer: false,
            space_waiting: VecDeque::new(),
            space_busy: false,
            data_in_ring: 0,
        })
    }

    /// Whether this kernel's io_uring has what the event loop needs: polls,
    /// multishot polls (Linux 5.13) and cancellation. Probed once per
    /// process, the multishot poll by arming one on an eventfd.
    pub fn event_loop_supported() -> bool {
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            Self::is_supported()
                && match probe_opcodes(&[
                    ("poll_add", opcode::PollAdd::CODE),
                    ("async_cancel", opcode::AsyncCancel::CODE),
                ])
                .and_then(|()| probe_multishot_poll())
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(error = %e, "io_uring event loop unavailable");
                        false
                    }
                }
        })
    }

    /// The next finished request from the completion queue, sorting watch
    /// completions out on the way (short transfers are resubmitted).
    fn next_from_ring(&mut self) -> Option<Completion> {
        loop {
            let cqe = self.ring.completion().next()?;
            let ud = cqe.user_data();
            if ud & WATCH_TAG != 0 {
                self.watch_done(ud, cqe.result(), cqueue::more(cqe.flags()));
                continue;
            }
            if ud & CANCEL_TAG != 0 {
                continue;
            }
            if ud == GROUP_FLUSH_TAG {
                self.group_flush_done(cqe.result());
                if let Some(c) = self.ready.pop_front() {
                    return Some(c);
                }
                continue;
            }
            let Ok(idx) = usize::try_from(ud) else {
                continue;
            };
            if idx >= self.slots.len() {
                tracing::warn!(user_data = ud, "unknown io_uring completion");
                continue;
            }
            if matches!(self.slots[idx].op, SlotOp::Read | SlotOp::Write) {
                self.data_in_ring = self.data_in_ring.saturating_sub(1);
            }
            if let Some(c) = self.reap(idx, cqe.result()) {
                return Some(c);
            }
        }
    }

    fn watch_done(&mut self, ud: u64, res: i32, more: bool) {
        let Some(bit) = watch_bit(ud & !WATCH_TAG) else {
            return;
        };
        if self.armed & bit == 0 {
            return;
        }
        // A multishot poll stays armed while its completions say more follow.
        if !(more && self.multishot & bit != 0) {
            self.armed &= !bit;
            self.multishot &= !bit;
        }
        if res >= 0 {
            self.fired |= bit;
        } else if res != -libc::ECANCELED {
            tracing::debug!(
                watch = ud & !WATCH_TAG,
                errno = -res,
                "event loop watch failed"
            );
            self.failed |= bit;
        }
    }

    /// Write-through writes are made durable in groups: one `fdatasync`
    /// in flight at a time covers every write whose data was written
    /// before it was submitted. Starts the next one if writes wait.
    fn start_group_flush(&mut self) {
        if self.flushing || self.wt_waiting.is_empty() {
            return;
        }
        let entry = opcode::Fsync::new(types::Fd(self.backing.fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(GROUP_FLUSH_TAG);
        std::mem::swap(&mut self.wt_waiting, &mut self.wt_flushing);
        self.flushing = true;
        let pushed = self.push_watch(&entry);
        let sent = pushed.and_then(|()| {
            if self.defer {
                Ok(())
            } else {
                submit_all(&self.ring)
            }
        });
        if let Err(e) = sent {
            tracing::error!(error = %e, "cannot submit a write-through flush");
            self.group_flush_done(-libc::EIO);
        }
    }

    /// A group flush finished with `res`: its writes complete with it.
    fn group_flush_done(&mut self, res: i32) {
        self.flushing = false;
        let mut group = std::mem::take(&mut self.wt_flushing);
        for &idx in &group {
            let s = &self.slots[idx];
            let result = if res < 0 {
                Err(-res)
            } else {
                u32::try_from(s.total).map_err(|_| libc::EINVAL)
            };
            let user_data = s.user_data;
            self.release(idx);
            self.ready.push_back(Completion { user_data, result });
        }
        group.clear();
        self.wt_flushing = group;
        self.start_group_flush();
    }

    /// The fallocate in flight finished: starts the next one waiting.
    fn space_done(&mut self) {
        self.space_busy = false;
        while let Some(idx) = self.space_waiting.pop_front() {
            let sent = self.push(idx).is_ok() && (self.defer || submit_all(&self.ring).is_ok());
            if sent {
                self.space_busy = true;
                return;
            }
            let user_data = self.slots[idx].user_data;
            self.release(idx);
            self.ready.push_back(Completion {
                user_data,
                result: Err(libc::EIO),
            });
        }
    }

    /// Queues an entry that points at no memory (a watch, a cancellation,
    /// a flush), making room in the submission queue if needed.
    fn push_watch(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        // SAFETY: a watch entry (a poll or a cancellation) or a group flush
        // points at no memory.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        submit_all(&self.ring)?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| std::io::Error::other("io_uring submission queue full"))
    }

    fn busy(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// Queues a completion that needs no kernel round trip, and raises the
    /// eventfd so a caller waiting on it drains the queue.
    fn complete_now(&mut self, user_data: u64, result: Result<u32, i32>) {
        self.ready.push_back(Completion { user_data, result });
        if let Err(e) = self.eventfd.write(1) {
            tracing::warn!(error = %e, "cannot signal the io_uring completion eventfd");
        }
    }

    /// Builds the submission entry for slot `idx` from its current state.
    fn entry(&self, idx: usize) -> squeue::Entry {
        let s = &self.slots[idx];
        let fd = types::Fd(s.fd);
        let offset = s.offset.saturating_add(s.done as u64);
        let entry = match s.op {
            SlotOp::Read | SlotOp::Write if s.bounce.is_some() => {
                let addr = s
                    .bounce
                    .as_ref()
                    .map_or(std::ptr::null_mut(), AlignedBuf::as_mut_ptr);
                let len = u32::try_from(s.chunk).unwrap_or(u32::MAX);
                if s.op == SlotOp::Read {
                    opcode::Read::new(fd, addr, len).offset(offset).build()
                } else {
                    opcode::Write::new(fd, addr, len).offset(offset).build()
                }
            }
            SlotOp::Read | SlotOp::Write => {
                let rest = &s.bufs[s.first..];
                let cnt = rest.len().min(IOV_MAX);
                if cnt == 1 {
                    // A single buffer needs no iovec array.
                    let len = u32::try_from(rest[0].len).unwrap_or(u32::MAX);
                    if s.op == SlotOp::Read {
                        opcode::Read::new(fd, rest[0].addr, len)
                            .offset(offset)
                            .build()
                    } else {
                        opcode::Write::new(fd, rest[0].addr, len)
                            .offset(offset)
                            .build()
                    }
                } else {
                    // IoBuf has the layout of `struct iovec` (asserted in engine.rs).
                    let iov = rest.as_ptr().cast::<libc::iovec>();
                    let cnt = u32::try_from(cnt).unwrap_or(1);
                    if s.op == SlotOp::Read {
                        opcode::Readv::new(fd, iov, cnt).offset(offset).build()
                    } else {
                        opcode::Writev::new(fd, iov, cnt).offset(offset).build()
                    }
                }
            }
            SlotOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            SlotOp::Fallocate { mode, len, .. } => opcode::Fallocate::new(fd, len)
                .offset(s.offset)
                .mode(mode)
                .build(),
            SlotOp::DiscardCmd { len } => {
                let mut cmd = [0u8; 16];
                cmd[..8].copy_from_slice(&len.to_ne_bytes());
                opcode::UringCmd16::new(fd, BLOCK_URING_CMD_DISCARD)
                    .addr(Some(s.offset))
                    .cmd(cmd)
                    .build()
            }
        };
        entry.user_data(idx as u64)
    }

    /// Pushes slot `idx` to the submission queue.
    fn push(&mut self, idx: usize) -> Result<(), SubmitError> {
        let entry = self.entry(idx);
        // SAFETY: the entry points at (a) the caller's buffers, valid until
        // this slot's completion by `Engine::submit`'s contract, or (b) the
        // iovec array in `self.slots[idx].bufs`, or (c) the slot's bounce
        // buffer, which this engine neither moves nor frees until the slot's
        // completion is reaped (slots are only reused from `free`, and `Drop`
        // waits for in-flight slots).
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| SubmitError::Full)?;
        if matches!(self.slots[idx].op, SlotOp::Read | SlotOp::Write) {
            self.data_in_ring += 1;
        }
        Ok(())
    }

    fn release(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        s.bufs.clear();
        if let Some(b) = s.bounce.take() {
            self.pool.put(b);
        }
        self.free.push(idx);
    }

    /// Turns one completion queue entry into a finished request, or
    /// resubmits the rest of a short transfer and returns `None`.
    fn reap(&mut self, idx: usize, res: i32) -> Option<Completion> {
        let s = &mut self.slots[idx];
        let user_data = s.user_data;
        let result = if res < 0 {
            let errno = -res;
            // tmpfs and others lack ZERO_RANGE (a punched hole reads back
            // as zeroes too); block devices may lack unmapping zero-outs.
            if let SlotOp::Fallocate { mode, len, retry } = s.op
                && errno == libc::EOPNOTSUPP
                && retry != 0
            {
                if mode == ZERO_RANGE {
                    self.no_zero_range = true;
                } else {
                    self.no_unmap_zeroes = true;
                }
                s.op = SlotOp::Fallocate {
                    mode: retry,
                    len,
                    retry: 0,
                };
                return self.resubmit(idx);
            }
            Err(errno)
        } else {
            match s.op {
                SlotOp::Read | SlotOp::Write => {
                    let n = usize::try_from(res).unwrap_or(0);
                    if n == 0 {
                        // The store ended before the request did: fail, never spin.
                        Err(libc::EIO)
                    } else {
                        if let Some(b) = &s.bounce
                            && s.op == SlotOp::Read
                        {
                            // SAFETY: the caller's memory stays valid, and
                            // untouched by others, until this completion is
                            // returned (`Engine::submit`'s contract).
                            unsafe { bounce::scatter(b.slice(n.min(s.chunk)), &s.bufs[s.first..]) };
                        }
                        s.advance(n);
                        if s.done < s.total {
                            s.prepare_chunk();
                            return self.resubmit(idx);
                        }
                        if s.sync {
                            // Written; durable with the next group flush.
                            if let Some(b) = s.bounce.take() {
                                self.pool.put(b);
                            }
                            self.wt_waiting.push(idx);
                            self.start_group_flush();
                            return None;
                        }
                        u32::try_from(s.total).map_err(|_| libc::EINVAL)
                    }
                }
                SlotOp::Flush | SlotOp::Fallocate { .. } | SlotOp::DiscardCmd { .. } => Ok(0),
            }
        };
        let space = matches!(s.op, SlotOp::Fallocate { .. });
        self.release(idx);
        if space {
            self.space_done();
        }
        Some(Completion { user_data, result })
    }

    /// Sends slot `idx` to the kernel again (the rest of a short transfer,
    /// or a fallback operation).
    #[cold]
    fn resubmit(&mut self, idx: usize) -> Option<Completion> {
        let user_data = self.slots[idx].user_data;
        let sent = self.push(idx).is_ok() && submit_all(&self.ring).is_ok();
        if sent {
            None
        } else {
            let space = matches!(self.slots[idx].op, SlotOp::Fallocate { .. });
            self.release(idx);
            if space {
                self.space_done();
            }
            Some(Completion {
                user_data,
                result: Err(libc::EIO),
            })
        }
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.busy() + self.ready.len() >= self.capacity {
            return Err(SubmitError::Full);
        }
        let file = self.backing.kind() == BackingKind::File;
        let mut bounced = false;
        let (op, fd) = match req.op {
            Op::Read | Op::Write | Op::WriteThrough => {
                let total: usize = req.bufs.iter().map(|b| b.len).sum();
                if u32::try_from(total).is_err() {
                    self.complete_now(user_data, Err(libc::EINVAL));
                    return Ok(());
                }
                if total == 0 {
                    self.complete_now(user_data, Ok(0));
                    return Ok(());
                }
                match self.backing.transfer(req.offset, total, req.bufs) {
                    Ok(t) => bounced = t == Transfer::Bounce,
                    Err(errno) => {
                        self.complete_now(user_data, Err(errno));
                        return Ok(());
                    }
                }
                let op = if req.op == Op::Read {
                    SlotOp::Read
                } else {
                    SlotOp::Write
                };
                (op, self.backing.fd())
            }
            Op::Flush => (SlotOp::Flush, self.backing.fd()),
            Op::Discard if file => (
                SlotOp::Fallocate {
                    mode: PUNCH,
                    len: req.len,
                    retry: 0,
                },
                self.backing.fd(),
            ),
            Op::WriteZeroes { .. } if file => {
                let (mode, retry) = if self.no_zero_range {
                    (PUNCH, 0)
                } else {
                    (ZERO_RANGE, PUNCH)
                };
                (
                    SlotOp::Fallocate {
                        mode,
                        len: req.len,
                        retry,
                    },
                    self.backing.fd(),
                )
            }
            // Block devices, small ranges: on this thread, which beats a
            // round trip through io_uring's workers (measured: 64 KiB at
            // QD32, 1.8x); the queue stalls only briefly.
            Op::WriteZeroes { unmap } if req.len < ASYNC_ZEROES_BYTES => {
                let result = self
                    .backing
                    .write_zeroes(req.offset, req.len, unmap)
                    .map(|()| 0)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
                self.complete_now(user_data, result);
                return Ok(());
            }
            // Large ranges: fallocate on io_uring's workers, so the queue
            // keeps serving while the device zeroes, unmapping where
            // allowed and the device can.
            Op::WriteZeroes { unmap } => {
                let (mode, retry) = if unmap && !self.no_unmap_zeroes {
                    (PUNCH, ZERO_RANGE)
                } else {
                    (ZERO_RANGE, 0)
                };
                (
                    SlotOp::Fallocate {
                        mode,
                        len: req.len,
                        retry,
                    },
                    self.backing.fd(),
                )
            }
            Op::Discard if self.discard_cmd => {
                (SlotOp::DiscardCmd { len: req.len }, self.backing.fd())
            }
            // A kernel without the discard command: the blocking ioctl.
            Op::Discard => {
                let result = self
                    .backing
                    .discard(req.offset, req.len)
                    .map(|()| 0)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
                self.complete_now(user_data, result);
                return Ok(());
            }
        };
        let bounce = if bounced {
            let total = req.bufs.iter().map(|b| b.len).sum();
            match self.pool.get(total) {
                Some(b) => Some(b),
                None => {
                    self.complete_now(user_data, Err(libc::ENOMEM));
                    return Ok(());
                }
            }
        } else {
            None
        };
        let Some(idx) = self.free.pop() else {
            if let Some(b) = bounce {
                self.pool.put(b);
            }
            return Err(SubmitError::Full);
        };
        let s = &mut self.slots[idx];
        s.user_data = user_data;
        s.op = op;
        s.fd = fd;
        s.offset = req.offset;
        s.bufs.clear();
        s.bufs.extend_from_slice(req.bufs);
        s.first = 0;
        s.done = 0;
        s.total = req.bufs.iter().map(|b| b.len).sum();
        s.bounce = bounce;
        s.sync = req.op == Op::WriteThrough;
        s.prepare_chunk();
        if matches!(op, SlotOp::Fallocate { .. }) {
            if self.space_busy {
                self.space_waiting.push_back(idx);
                return Ok(());
            }
            self.space_busy = true;
        }
        if let Err(e) = self.push(idx) {
            if matches!(op, SlotOp::Fallocate { .. }) {
                self.space_busy = false;
            }
            self.release(idx);
            return Err(e);
        }
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        if self.defer || self.ring.submission().is_empty() {
            return Ok(());
        }
        submit_all(&self.ring)
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        if let Some(c) = self.ready.pop_front() {
            return Some(c);
        }
        self.next_from_ring()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.busy() + self.ready.len()
    }

    fn event_loop(&mut self) -> Option<&mut dyn EventLoop> {
        if Self::event_loop_supported() {
            Some(self)
        } else {
            None
        }
    }

    fn paths(&self) -> EnginePaths {
        let blockdev = self.backing.kind() == BackingKind::BlockDevice;
        EnginePaths {
            ring: if self.coop { "coop_taskrun" } else { "plain" },
            event_loop: Self::event_loop_supported(),
            discard: match (blockdev, self.discard_cmd) {
                (true, true) => "uring_cmd",
                (true, false) => "ioctl",
                (false, _) => "uring_fallocate",
            },
            write_zeroes: if blockdev {
                "ioctl_below_1m_else_uring_fallocate"
            } else {
                "uring_fallocate"
            },
            write_through: "uring_group_fdatasync",
        }
    }
}

/// The bit of watch number `n`, if it is one.
fn watch_bit(n: u64) -> Option<Watches> {
    (n < MAX_WATCHES as u64).then(|| 1 << n)
}

impl EventLoop for UringEngine {
    fn watch_readable(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()> {
        let bit = watch_bit(u64::from(watch)).ok_or_else(bad_watch)?;
        if self.armed & bit != 0 {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(WATCH_TAG | u64::from(watch));
        self.push_watch(&entry)?;
        self.armed |= bit;
        Ok(())
    }

    fn watch_writes(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()> {
        let bit = watch_bit(u64::from(watch)).ok_or_else(bad_watch)?;
        if self.armed & bit != 0 {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WATCH_TAG | u64::from(watch));
        self.push_watch(&entry)?;
        self.armed |= bit;
        self.multishot |= bit;
        Ok(())
    }

    fn wait(&mut self) -> std::io::Result<()> {
        if !self.ready.is_empty()
            || self.fired | self.failed != 0
            || !self.ring.completion().is_empty()
        {
            return submit_all(&self.ring);
        }
        // Woken for every single completion, a worker at depth signals the
        // guest per completion or two: small batches on both sides, more
        // wakeups and system calls per request. So it sleeps until a
        // quarter of the reads and writes in flight have completed (or a
        // watch fired): they all complete in bounded time, so the wait
        // does, and requests of one kind have similar latencies (flushes
        // and fallocates, which may take long, never count). At depth 1-7
        // it wakes for the first completion.
        debug_assert!(self.data_in_ring <= self.busy(), "data_in_ring drifted");
        let want = (self.data_in_ring / WAIT_FRACTION).clamp(1, MAX_WAIT_BATCH);
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            // A signal: the caller looks at what arrived and waits again.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn defer_submission(&mut self, on: bool) {
        self.defer = on;
        // The loop that defers waits in the ring itself: raising the
        // completion eventfd for it would only cost the kernel a wakeup
        // check per completion and leave a stale count for the epoll loop.
        if on {
            self.ring.completion().disable_eventfd();
        } else {
            self.ring.completion().enable_eventfd();
        }
    }

    fn poll(&mut self) -> std::io::Result<()> {
        let pending = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        };
        if pending {
            submit_all(&self.ring)?;
        }
        Ok(())
    }

    fn fired(&self) -> Watches {
        self.fired
    }

    fn take_fired(&mut self) -> Watches {
        std::mem::take(&mut self.fired)
    }

    fn take_failed(&mut self) -> Watches {
        std::mem::take(&mut self.failed)
    }

    fn armed(&self) -> Watches {
        self.armed
    }

    fn unwatch_all(&mut self) -> std::io::Result<()> {
        let mut left = self.armed;
        while left != 0 {
            let n = left.trailing_zeros();
            left &= left - 1;
            let entry = opcode::AsyncCancel::new(WATCH_TAG | u64::from(n))
                .build()
                .user_data(CANCEL_TAG);
            self.push_watch(&entry)?;
        }
        submit_all(&self.ring)?;
        while self.armed != 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            // Requests that finish meanwhile wait in `ready` for the caller.
            while let Some(c) = self.next_from_ring() {
                self.ready.push_back(c);
            }
        }
        Ok(())
    }
}

fn bad_watch() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("an io_uring watch number must be below {MAX_WATCHES}"),
    )
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Watches point at no memory; cancelled anyway so the kernel drops
        // its references to their files now.
        if self.armed != 0 {
            let _ = self.unwatch_all();
        }
        // Written write-through writes and fallocates waiting their turn
        // hold no kernel reference.
        let idle: Vec<usize> = self
            .wt_waiting
            .drain(..)
            .chain(self.space_waiting.drain(..))
            .collect();
        for idx in idle {
            self.release(idx);
        }
        // The kernel may still write into caller memory and read slot iovecs
        // until each entry completes: wait for them before freeing anything.
        let _ = submit_all(&self.ring);
        while self.busy() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, in_flight = self.busy(), "cannot drain io_uring on drop");
                    // Leak the slots' iovec arrays and bounce buffers rather
                    // than free memory the kernel may still use.
                    for s in &mut self.slots {
                        std::mem::forget(std::mem::take(&mut s.bufs));
                        std::mem::forget(s.bounce.take());
                    }
                    return;
                }
            }
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                if cqe.user_data() & (WATCH_TAG | CANCEL_TAG) != 0 {
                    continue;
                }
                if cqe.user_data() == GROUP_FLUSH_TAG {
                    for idx in std::mem::take(&mut self.wt_flushing) {
                        self.release(idx);
                    }
                    continue;
                }
                if let Ok(idx) = usize::try_from(cqe.user_data())
                    && idx < self.slots.len()
                {
                    self.release(idx);
                }
            }
        }
    }
}

/// `io_uring_enter` for everything queued, retrying on signals.
fn submit_all(ring: &IoUring) -> std::io::Result<()> {
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sets up a small ring and checks every opcode the engine uses.
fn probe() -> std::io::Result<()> {
    probe_opcodes(&[
        ("readv", opcode::Readv::CODE),
        ("writev", opcode::Writev::CODE),
        ("read", opcode::Read::CODE),
        ("write", opcode::Write::CODE),
        ("fsync", opcode::Fsync::CODE),
        ("fallocate", opcode::Fallocate::CODE),
    ])?;
    let ring = IoUring::new(4)?;
    let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    ring.submitter().register_eventfd(efd.as_raw_fd())?;
    Ok(())
}

/// Whether the block device `fd` takes discards as an io_uring command
/// (Linux 6.12+): a zero-length discard is refused with `EINVAL` by a
/// kernel that has the command (after checking the device can discard
/// and is open for writing), with `EOPNOTSUPP` by one that has not.
fn probe_discard_cmd(ring: &mut IoUring, fd: RawFd) -> bool {
    if probe_opcodes(&[("uring_cmd", opcode::UringCmd16::CODE)]).is_err() {
        return false;
    }
    let entry = opcode::UringCmd16::new(types::Fd(fd), BLOCK_URING_CMD_DISCARD)
        .addr(Some(0))
        .build()
        .user_data(CANCEL_TAG);
    // SAFETY: the entry points at no memory.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return false;
    }
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return false,
        }
    }
    let res = ring.completion().next().map_or(-libc::EIO, |c| c.result());
    res == -libc::EINVAL
}

/// Arms a multishot poll on an eventfd and writes it twice: the kernel
/// must report both writes, the first as "more to come".
fn probe_multishot_poll() -> std::io::Result<()> {
    let mut ring = IoUring::new(4)?;
    let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let entry = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(1);
    // SAFETY: a poll entry points at no memory.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| std::io::Error::other("probe ring full"))?;
    ring.submit()?;
    efd.write(1)?;
    ring.submit_and_wait(1)?;
    let first = ring.completion().next();
    match first {
        Some(c) if c.result() >= 0 && cqueue::more(c.flags()) => Ok(()),
        Some(c) if c.result() < 0 => Err(std::io::Error::from_raw_os_error(-c.result())),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the kernel's io_uring has no multishot poll",
        )),
    }
}

/// Checks that this kernel's io_uring knows every opcode in `needed`.
fn probe_opcodes(needed: &[(&str, u8)]) -> std::io::Result<()> {
    let ring = IoUring::new(4)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for &(name, code) in needed {
        if !probe.is_supported(code) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks the {name} opcode"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, wait};
    use crate::{OpenOptions, SyncEngine};
    use std::path::{Path, PathBuf};

    fn backing(path: &Path, direct: bool) -> Arc<Backing> {
        Arc::new(
            Backing::open(
                path,
                OpenOptions {
                    direct,
                    ..OpenOptions::default()
                },
            )
            .unwrap(),
        )
    }

    fn file(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        (dir, p)
    }

    fn engine(len: u64, direct: bool, depth: usize) -> Option<(tempfile::TempDir, UringEngine)> {
        if !UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return None;
        }
        let (d, p) = file(len);
        Some((d, UringEngine::new(backing(&p, direct), depth).unwrap()))
    }

    fn iobufs(bufs: &mut [Vec<u8>]) -> Vec<IoBuf> {
        bufs.iter_mut()
            .map(|b| IoBuf {
                addr: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect()
    }

    fn run(e: &mut UringEngine, op: Op, offset: u64, len: u64, bufs: &mut [Vec<u8>]) -> Completion {
        let io = iobufs(bufs);
        let req = Request {
            op,
            offset,
            len,
            bufs: &io,
        };
        // SAFETY: `bufs` outlives the completion, collected below.
        unsafe { e.submit(&req, 42) }.unwrap();
        e.commit().unwrap();
        let c = wait(e, 1).pop().unwrap();
        assert_eq!(c.user_data, 42);
        c
    }

    #[test]
    fn write_then_read_scattered_buffers() {
        for direct in [false, true] {
            let Some((_d, mut e)) = engine(1 << 20, direct, 8) else {
                return;
            };
            // Odd segment lengths (so bounced under O_DIRECT), aligned total.
            let mut w = vec![
                vec![1u8; 4096],
                vec![2u8; 8192],
                vec![3u8; 100],
                vec![4u8; 412],
            ];
            assert_eq!(run(&mut e, Op::Write, 4096, 0, &mut w).result, Ok(12800));
            let mut r = vec![vec![0u8; 100], vec![0u8; 12700]];
            assert_eq!(run(&mut e, Op::Read, 4096, 0, &mut r).result, Ok(12800));
            assert!(r[0].iter().all(|&x| x == 1));
            assert!(r[1][..3996].iter().all(|&x| x == 1));
            assert!(r[1][3996..12188].iter().all(|&x| x == 2));
            assert!(r[1][12188..12288].iter().all(|&x| x == 3));
            assert!(r[1][12288..].iter().all(|&x| x == 4));
            assert_eq!(e.in_flight(), 0);
        }
    }

    #[test]
    fn bounced_requests_larger_than_a_chunk_move_every_byte_at_depth() {
        let Some((_d, mut e)) = engine(8 << 20, true, 8) else {
            return;
        };
        let total = 3 * bounce::MAX_CHUNK + 4096;
        let pattern = |k: usize, i: usize| (i % 251) as u8 ^ (i / 4096) as u8 ^ (k as u8);
        // Two bounced writes in flight at once (odd first segment), each
        // going through several chunks.
        let mut w: Vec<Vec<u8>> = Vec::new();
        for k in 0..2 {
            w.push(vec![pattern(k, 0)]);
            w.push((1..total).map(|i| pattern(k, i)).collect());
        }
        let io = iobufs(&mut w);
        for k in 0..2 {
            let req = Request {
                op: Op::Write,
                offset: (k * (4 << 20)) as u64,
                len: 0,
                bufs: &io[2 * k..2 * k + 2],
            };
            // SAFETY: `w` outlives the completions collected below.
            unsafe { e.submit(&req, k as u64) }.unwrap();
        }
        e.commit().unwrap();
        assert!(wait(&mut e, 2).iter().all(|c| c.result == Ok(total as u32)));
        for k in 0..2 {
            let mut r = vec![vec![0u8; 777], vec![0u8; total - 777]];
            let off = (k * (4 << 20)) as u64;
            assert_eq!(
                run(&mut e, Op::Read, off, 0, &mut r).result,
                Ok(total as u32)
            );
            let got = r.concat();
            assert!(
                got.iter().enumerate().all(|(i, &b)| b == pattern(k, i)),
                "request {k}"
            );
        }
        assert_eq!(run(&mut e, Op::Flush, 0, 0, &mut []).result, Ok(0));
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn misaligned_offset_or_length_with_direct_io_fails_with_einval() {
        let Some((_d, mut e)) = engine(1 << 20, true, 4) else {
            return;
        };
        for (offset, len) in [(512 + 7, 512), (512, 513), (100, 100)] {
            let mut w = vec![vec![9u8; len]];
            let c = run(&mut e, Op::Write, offset, 0, &mut w);
            assert_eq!(c.result, Err(libc::EINVAL));
            let mut r = vec![vec![0u8; len]];
            let c = run(&mut e, Op::Read, offset, 0, &mut r);
            assert_eq!(c.result, Err(libc::EINVAL));
        }
        let mut r = vec![vec![1u8; 4096]];
        assert_eq!(run(&mut e, Op::Read, 0, 0, &mut r).result, Ok(4096));
        assert!(r[0].iter().all(|&x| x == 0), "nothing was written");
        assert_eq!(run(&mut e, Op::Flush, 0, 0, &mut []).result, Ok(0));
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn more_iovecs_than_iov_max_are_issued_in_pieces() {
        let Some((_d, mut e)) = engine(1 << 20, false, 4) else {
            return;
        };
        let mut w: Vec<Vec<u8>> = (0..1500u32).map(|i| vec![(i % 251) as u8; 512]).collect();
        assert_eq!(run(&mut e, Op::Write, 0, 0, &mut w).result, Ok(1500 * 512));
        let mut r = vec![vec![0u8; 1500 * 512]];
        assert_eq!(run(&mut e, Op::Read, 0, 0, &mut r).result, Ok(1500 * 512));
        for (i, chunk) in r[0].chunks(512).enumerate() {
            assert!(chunk.iter().all(|&x| x == (i % 251) as u8), "chunk {i}");
        }
    }

    #[test]
    fn flush_discard_and_write_zeroes_on_a_file() {
        let Some((d, mut e)) = engine(0, false, 4) else {
            return;
        };
        let mut w = vec![vec![0xabu8; 16384]];
        assert_eq!(run(&mut e, Op::Write, 0, 0, &mut w).result, Ok(16384));
        assert_eq!(run(&mut e, Op::Flush, 0, 0, &mut []).result, Ok(0));
        assert_eq!(run(&mut e, Op::Discard, 0, 4096, &mut []).result, Ok(0));
        for unmap in [false, true] {
            let off = if unmap { 12288 } else { 8192 };
            let c = run(&mut e, Op::WriteZeroes { unmap }, off, 2048, &mut []);
            assert_eq!(c.result, Ok(0));
        }
        let data = std::fs::read(d.path().join("img")).unwrap();
        assert_eq!(data.len(), 16384, "discard must keep the size");
        assert!(data[..4096].iter().all(|&x| x == 0));
        assert!(data[4096..8192].iter().all(|&x| x == 0xab));
        assert!(data[8192..10240].iter().all(|&x| x == 0));
        assert!(data[10240..12288].iter().all(|&x| x == 0xab));
        assert!(data[12288..14336].iter().all(|&x| x == 0));
        assert!(data[14336..].iter().all(|&x| x == 0xab));
    }

    #[test]
    fn many_requests_in_flight_complete_with_their_own_user_data() {
        let Some((_d, mut e)) = engine(1 << 20, true, 64) else {
            return;
        };
        let mut w: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 4096]).collect();
        let io = iobufs(&mut w);
        for (i, b) in io.iter().enumerate() {
            let req = Request {
                op: Op::Write,
                offset: i as u64 * 4096,
                len: 0,
                bufs: std::slice::from_ref(b),
            };
            // SAFETY: `w` outlives the completions collected below.
            unsafe { e.submit(&req, 1000 + i as u64) }.unwrap();
        }
        assert_eq!(e.in_flight(), 64);
        e.commit().unwrap();
        let mut done = wait(&mut e, 64);
        done.sort_by_key(|c| c.user_data);
        for (i, c) in done.iter().enumerate() {
            assert_eq!(
                *c,
                Completion {
                    user_data: 1000 + i as u64,
                    result: Ok(4096)
                }
            );
        }
        let mut r: Vec<Vec<u8>> = (0..64).map(|_| vec![0xffu8; 4096]).collect();
        let io = iobufs(&mut r);
        for (i, b) in io.iter().enumerate().rev() {
            let req = Request {
                op: Op::Read,
                offset: i as u64 * 4096,
                len: 0,
                bufs: std::slice::from_ref(b),
            };
            // SAFETY: `r` outlives the completions collected below.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        e.commit().unwrap();
        assert!(wait(&mut e, 64).iter().all(|c| c.result == Ok(4096)));
        for (i, b) in r.iter().enumerate() {
            assert!(b.iter().all(|&x| usize::from(x) == i), "block {i}");
        }
        assert_eq!(e.in_flight(), 0);
        assert!(e.pop_completion().is_none());
    }

    /// A one-shot watch fires once, a multishot watch after every write;
    /// neither reads its eventfd. Requests complete alongside them,
    /// cancellation leaves nothing armed, and a watch on a bad fd is
    /// reported as failed.
    #[test]
    fn event_loop_watches_fire_and_cancel_cleanly() {
        let Some((_d, mut e)) = engine(1 << 16, false, 4) else {
            return;
        };
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(e.event_loop().is_some(), "io_uring has an event loop");
        e.watch_writes(a.as_raw_fd(), 0).unwrap();
        e.watch_readable(b.as_raw_fd(), 1).unwrap();
        // Arming twice is a no-op.
        e.watch_writes(a.as_raw_fd(), 0).unwrap();
        assert_eq!(e.armed(), 0b11);
        let fire = |e: &mut UringEngine| {
            while e.fired() == 0 {
                e.wait().unwrap();
                assert!(e.pop_completion().is_none());
            }
            e.take_fired()
        };
        for round in 1..=3 {
            a.write(1).unwrap();
            assert_eq!(fire(&mut e), 0b01, "round {round}");
            assert_eq!(e.armed(), 0b11, "the multishot watch stays armed");
        }
        assert_eq!(a.read().unwrap(), 3, "never read by the watch");
        b.write(1).unwrap();
        assert_eq!(fire(&mut e), 0b10);
        assert_eq!(e.armed(), 0b01, "the one-shot watch is spent");
        assert_eq!(b.read().unwrap(), 1, "never read by the watch");
        // A request completes while a watch waits.
        let mut r = vec![vec![0u8; 4096]];
        let io = iobufs(&mut r);
        let req = Request {
            op: Op::Read,
            offset: 0,
            len: 0,
            bufs: &io,
        };
        // SAFETY: `r` outlives the completion, collected below.
        unsafe { e.submit(&req, 9) }.unwrap();
        let c = loop {
            e.wait().unwrap();
            if let Some(c) = e.pop_completion() {
                break c;
            }
        };
        assert_eq!((c.user_data, c.result), (9, Ok(4096)));
        assert_eq!((e.fired(), e.armed()), (0, 0b01));
        e.unwatch_all().unwrap();
        assert_eq!((e.take_fired(), e.armed()), (0, 0));
        // Once cancelled, writes fire nothing.
        a.write(1).unwrap();
        e.poll().unwrap();
        assert!(e.pop_completion().is_none());
        assert_eq!(e.take_fired(), 0);
        // A watch that cannot work fails, and is not armed any more.
        e.watch_readable(-1, 2).unwrap();
        while e.armed() != 0 {
            e.wait().unwrap();
            assert!(e.pop_completion().is_none());
        }
        assert_eq!((e.take_failed(), e.take_fired()), (0b100, 0));
        let err = e.watch_readable(a.as_raw_fd(), 32).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    /// A write-through write is durable when it completes: a group flush
    /// has written back every dirty page of the file (a plain write leaves
    /// its pages dirty, which shows the check can tell). Several in one
    /// batch complete together, in order or not.
    #[test]
    fn write_through_completes_after_a_group_fdatasync() {
        let Some((d, mut e)) = engine(1 << 20, false, 8) else {
            return;
        };
        let f = std::fs::File::open(d.path().join("img")).unwrap();
        let mut w = vec![vec![7u8; 8192]];
        assert_eq!(run(&mut e, Op::Write, 0, 0, &mut w).result, Ok(8192));
        let Some(dirty) = crate::testutil::dirty_pages(f.as_raw_fd()) else {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Cachestat,
                "no cachestat here",
            );
            return;
        };
        assert!(dirty > 0, "a plain write leaves dirty pages");
        let mut w = vec![vec![8u8; 4096], vec![9u8; 4096]];
        assert_eq!(
            run(&mut e, Op::WriteThrough, 65536, 0, &mut w).result,
            Ok(8192)
        );
        assert_eq!(crate::testutil::dirty_pages(f.as_raw_fd()), Some(0));
        // A batch of them, then a plain write that must not wait for them.
        let mut bufs: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 4096]).collect();
        let io = iobufs(&mut bufs);
        for (i, b) in io.iter().enumerate() {
            let req = Request {
                op: Op::WriteThrough,
                offset: 4096 * (20 + i as u64),
                len: 0,
                bufs: std::slice::from_ref(b),
            };
            // SAFETY: `bufs` outlives the completions, collected below.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        e.commit().unwrap();
        let done = wait(&mut e, 6);
        assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
        assert_eq!(crate::testutil::dirty_pages(f.as_raw_fd()), Some(0));
        assert_eq!(e.in_flight(), 0);
        // Under O_DIRECT with memory that needs bouncing, in several
        // pieces: same result.
        let (d2, p2) = file(4 << 20);
        let mut e2 = UringEngine::new(backing(&p2, true), 4).unwrap();
        let mut w = vec![vec![3u8; 700 * 1024 + 1], vec![4u8; 1023]];
        let c = run(&mut e2, Op::WriteThrough, 4096, 0, &mut w);
        assert_eq!(c.result, Ok(701 * 1024));
        let back = std::fs::read(&p2).unwrap();
        assert!(back[4096..4096 + 700 * 1024 + 1].iter().all(|&b| b == 3));
        drop(d2);
    }

    /// A write-through write that fails fails with the write's errno (no
    /// flush waited for), and the slot is free again.
    #[test]
    fn failed_write_through_reports_the_write_error() {
        let Some((d, _e)) = engine(4096, false, 1) else {
            return;
        };
        let b = Arc::new(
            Backing::open(
                &d.path().join("img"),
                OpenOptions {
                    read_only: true,
                    direct: false,
                    ..OpenOptions::default()
                },
            )
            .unwrap(),
        );
        let mut e = UringEngine::new(b, 1).unwrap();
        for _ in 0..3 {
            let mut w = vec![vec![1u8; 512]];
            assert_eq!(
                run(&mut e, Op::WriteThrough, 0, 0, &mut w).result,
                Err(libc::EBADF)
            );
            assert_eq!(e.in_flight(), 0);
        }
    }

    #[test]
    fn full_engine_refuses_until_drained() {
        let Some((_d, mut e)) = engine(1 << 16, false, 4) else {
            return;
        };
        let mut r: Vec<Vec<u8>> = (0..5).map(|_| vec![0u8; 4096]).collect();
        let io = iobufs(&mut r);
        let req = |i: usize| Request {
            op: Op::Read,
            offset: 0,
            len: 0,
            bufs: std::slice::from_ref(&io[i]),
        };
        for i in 0..4 {
            // SAFETY: `r` outlives every completion, collected below.
            unsafe { e.submit(&req(i), i as u64) }.unwrap();
        }
        // SAFETY: as above.
        assert_eq!(unsafe { e.submit(&req(4), 4) }, Err(SubmitError::Full));
        assert_eq!(e.in_flight(), 4);
        e.commit().unwrap();
        // Still full until the completions are collected, not merely finished.
        // SAFETY: as above.
        assert_eq!(unsafe { e.submit(&req(4), 4) }, Err(SubmitError::Full));
        assert_eq!(wait(&mut e, 4).len(), 4);
        // SAFETY: as above.
        assert_eq!(unsafe { e.submit(&req(4), 4) }, Ok(()));
        e.commit().unwrap();
        assert_eq!(wait(&mut e, 1)[0].result, Ok(4096));
    }

    #[test]
    fn read_past_end_fails_with_eio_instead_of_hanging() {
        let Some((_d, mut e)) = engine(4096, false, 4) else {
            return;
        };
        // Entirely past the end, then straddling it (a short read, then nothing).
        for offset in [8192, 0] {
            let mut r = vec![vec![0u8; 8192]];
            assert_eq!(
                run(&mut e, Op::Read, offset, 0, &mut r).result,
                Err(libc::EIO)
            );
        }
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn kernel_errors_come_back_as_errno() {
        let Some((d, _e)) = engine(4096, false, 4) else {
            return;
        };
        // A read-only backing: the kernel refuses the write with EBADF.
        let b = Arc::new(
            Backing::open(
                &d.path().join("img"),
                OpenOptions {
                    read_only: true,
                    direct: false,
                    ..OpenOptions::default()
                },
            )
            .unwrap(),
        );
        let mut e = UringEngine::new(b, 4).unwrap();
        let mut w = vec![vec![1u8; 512]];
        assert_eq!(
            run(&mut e, Op::Write, 0, 0, &mut w).result,
            Err(libc::EBADF)
        );
    }

    /// The completion eventfd is raised for a committed request, except
    /// while an event loop that defers submission waits in the ring.
    #[test]
    fn completion_fd_is_raised_unless_a_deferring_loop_waits() {
        let Some((_d, mut e)) = engine(1 << 16, false, 4) else {
            return;
        };
        let mut r = vec![vec![0u8; 4096]];
        let io = iobufs(&mut r);
        let req = Request {
            op: Op::Read,
            offset: 0,
            len: 4096,
            bufs: &io,
        };
        let efd = e.completion_fd().unwrap();
        let raised = || {
            let mut v = [0u8; 8];
            // SAFETY: reads 8 bytes into `v`, which lives across the call.
            unsafe { libc::read(efd, v.as_mut_ptr().cast(), 8) == 8 }
        };
        // SAFETY: `r` outlives the completion, collected below.
        unsafe { e.submit(&req, 5) }.unwrap();
        e.commit().unwrap();
        let mut pfd = libc::pollfd {
            fd: efd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, 60_000) };
        assert_eq!(rc, 1, "the eventfd was not signalled");
        assert!(raised());
        assert_eq!(e.pop_completion().unwrap().user_data, 5);

        e.defer_submission(true);
        // SAFETY: as above.
        unsafe { e.submit(&req, 6) }.unwrap();
        e.commit().unwrap();
        while e.in_flight() > 0 && e.pop_completion().is_none() {
            e.wait().unwrap();
        }
        assert!(!raised(), "raised while the loop waits in the ring");
        e.defer_submission(false);
        // SAFETY: as above.
        unsafe { e.submit(&req, 7) }.unwrap();
        e.commit().unwrap();
        assert_eq!(wait(&mut e, 1).pop().unwrap().user_data, 7);
        assert!(raised(), "raised again once the loop has handed back");
    }

    #[test]
    fn dropping_with_requests_in_flight_waits_for_them() {
        let Some((_d, mut e)) = engine(1 << 20, false, 32) else {
            return;
        };
        let mut r: Vec<Vec<u8>> = (0..32).map(|_| vec![1u8; 4096]).collect();
        let io = iobufs(&mut r);
        for (i, b) in io.iter().enumerate() {
            let req = Request {
                op: Op::Read,
                offset: i as u64 * 4096,
                len: 0,
                bufs: std::slice::from_ref(b),
            };
            // SAFETY: `r` outlives the engine, which waits for the reads on drop.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        e.commit().unwrap();
        drop(e);
        // Every read finished before drop returned: the zeroes are there.
        assert!(r.iter().all(|b| b.iter().all(|&x| x == 0)));
    }

    /// Discard and write-zeroes on a real block device (a loop device) go
    /// through the ring (the discard command where the kernel has it, the
    /// blocking ioctl where not; fallocate on io_uring's workers for
    /// write-zeroes, unmapping or not) and zero exactly their range.
    #[test]
    fn block_device_discard_and_write_zeroes() {
        if !UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return;
        }
        const MIB: usize = 1 << 20;
        let (d, p) = file(0);
        std::fs::write(&p, vec![0x5au8; 8 * MIB]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&p)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
            other => {
                extstorage_testbins::skip_or_fail(
                    extstorage_testbins::Facility::LoopDevices,
                    &format!("no loop device available ({other:?})"),
                );
                return;
            }
        };
        let detach = || {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &dev])
                .status();
        };
        let result = std::panic::catch_unwind(|| {
            let mut e = UringEngine::new(backing(Path::new(&dev), true), 8).unwrap();
            let paths = e.paths();
            eprintln!("paths: {paths:?}");
            assert!(["uring_cmd", "ioctl"].contains(&paths.discard));
            // Blocks 0, 2, 4 (4 KiB each) and the 1 MiB ranges from 2 and
            // 4 MiB (write-zeroes large enough for io_uring's workers) are
            // zeroed; the rest keeps its data.
            assert_eq!(run(&mut e, Op::Discard, 0, 4096, &mut []).result, Ok(0));
            for (at, len, unmap) in [
                (8192, 4096, false),
                (16384, 4096, true),
                (2 * MIB, MIB, false),
                (4 * MIB, MIB, true),
            ] {
                let c = run(
                    &mut e,
                    Op::WriteZeroes { unmap },
                    at as u64,
                    len as u64,
                    &mut [],
                );
                assert_eq!(c.result, Ok(0), "at {at} unmap {unmap}");
            }
            let mut r = vec![vec![0xffu8; 6 * MIB]];
            assert_eq!(
                run(&mut e, Op::Read, 0, 0, &mut r).result,
                Ok(6 * MIB as u32)
            );
            for (i, chunk) in r[0][..24576].chunks(4096).enumerate() {
                let want = if i % 2 == 0 { 0 } else { 0x5a };
                assert!(chunk.iter().all(|&x| x == want), "block {i}");
            }
            let zero = |a: usize, b: usize| r[0][a..b].iter().all(|&x| x == 0);
            let data = |a: usize, b: usize| r[0][a..b].iter().all(|&x| x == 0x5a);
            assert!(data(24576, 2 * MIB) && zero(2 * MIB, 3 * MIB));
            assert!(data(3 * MIB, 4 * MIB) && zero(4 * MIB, 5 * MIB));
            assert!(data(5 * MIB, 6 * MIB));
            // Out of range: refused by the kernel, reported as an errno.
            let end = 8 * MIB as u64;
            let c = run(&mut e, Op::Discard, end, 4096, &mut []);
            assert!(c.result.is_err(), "{c:?}");
            for len in [4096, 2 * MIB as u64] {
                let c = run(&mut e, Op::WriteZeroes { unmap: true }, end, len, &mut []);
                assert!(c.result.is_err(), "{c:?}");
            }
            assert_eq!(e.in_flight(), 0);
        });
        detach();
        drop(d);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    /// Fallocates wait their turn (one in flight at a time): a batch of
    /// large write-zeroes and discards on a file, with a read among them,
    /// all complete with the right result and bytes.
    #[test]
    fn queued_fallocates_all_complete() {
        let Some((d, mut e)) = engine(8 << 20, false, 16) else {
            return;
        };
        std::fs::write(d.path().join("img"), vec![0x77u8; 8 << 20]).unwrap();
        for i in 0..6u64 {
            let op = if i % 2 == 0 {
                Op::Discard
            } else {
                Op::WriteZeroes { unmap: i % 3 == 0 }
            };
            let req = Request {
                op,
                offset: i << 20,
                len: 1 << 20,
                bufs: &[],
            };
            // SAFETY: no memory is involved.
            unsafe { e.submit(&req, i) }.unwrap();
        }
        let mut r = vec![vec![0u8; 4096]];
        let io = iobufs(&mut r);
        let req = Request {
            op: Op::Read,
            offset: 7 << 20,
            len: 0,
            bufs: &io,
        };
        // SAFETY: `r` outlives the completion, collected below.
        unsafe { e.submit(&req, 99) }.unwrap();
        e.commit().unwrap();
        let mut done = wait(&mut e, 7);
        done.sort_by_key(|c| c.user_data);
        assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        assert_eq!(
            done[6],
            Completion {
                user_data: 99,
                result: Ok(4096)
            }
        );
        assert!(r[0].iter().all(|&b| b == 0x77));
        let back = std::fs::read(d.path().join("img")).unwrap();
        assert!(back[..6 << 20].iter().all(|&b| b == 0));
        assert!(back[6 << 20..].iter().all(|&b| b == 0x77));
        assert_eq!(e.in_flight(), 0);
    }

    #[derive(Debug, Clone)]
    struct TestOp {
        op: Op,
        offset: u64,
        len: u64,
        /// Buffer lengths (reads and writes).
        lens: Vec<usize>,
        /// Start each buffer 512-aligned, else one byte past (bounced under O_DIRECT).
        aligned: bool,
        data: Vec<u8>,
    }

    /// A random request. Reads and writes mostly have a 512-aligned offset
    /// and total length, with memory either aligned or not (odd addresses
    /// and segment lengths: bounced under O_DIRECT); one in eight has a
    /// byte-granular offset and length (refused with EINVAL under O_DIRECT).
    fn random_op(rng: &mut Rng, size: u64) -> TestOp {
        let aligned = rng.below(2) == 0;
        let odd_range = rng.below(8) == 0;
        let op = match rng.below(10) {
            0..=3 => Op::Read,
            4..=6 => Op::Write,
            7 => Op::WriteThrough,
            8 => Op::Flush,
            _ if rng.below(2) == 0 => Op::Discard,
            _ => Op::WriteZeroes {
                unmap: rng.below(2) == 0,
            },
        };
        let mut lens: Vec<usize> = match op {
            Op::Read | Op::Write | Op::WriteThrough => (0..=rng.below(4))
                .map(|_| {
                    if aligned {
                        512 * (1 + rng.below(16) as usize)
                    } else {
                        1 + rng.below(8192) as usize
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let pad = (512 - lens.iter().sum::<usize>() % 512) % 512;
        if !odd_range && let Some(last) = lens.last_mut() {
            *last += pad;
        }
        let total: u64 = match op {
            Op::Read | Op::Write | Op::WriteThrough => lens.iter().sum::<usize>() as u64,
            Op::Flush => 0,
            _ => 1 + rng.below(32768),
        };
        let mut offset = rng.below(size - total);
        if !odd_range {
            offset &= !511;
        }
        let data = (0..lens.iter().sum::<usize>())
            .map(|_| rng.next() as u8)
            .collect();
        TestOp {
            op,
            offset,
            len: total,
            lens,
            aligned,
            data,
        }
    }

    /// Applies a batch of non-overlapping requests all at once; returns each
    /// request's result and, for reads, the bytes read.
    fn apply(e: &mut dyn Engine, batch: &[TestOp]) -> Vec<(Result<u32, i32>, Vec<u8>)> {
        // Memory for every buffer, placed aligned or deliberately misaligned.
        let mut arenas: Vec<Vec<u8>> = Vec::new();
        let mut reqs: Vec<Vec<IoBuf>> = Vec::new();
        for t in batch {
            let mut bufs = Vec::new();
            let mut consumed = 0;
            for &len in &t.lens {
                let mut arena = vec![0u8; len + 4096];
                let start = arena.as_ptr().align_offset(512) + if t.aligned { 0 } else { 1 };
                if t.op.is_write() {
                    arena[start..start + len].copy_from_slice(&t.data[consumed..consumed + len]);
                }
                consumed += len;
                bufs.push(IoBuf {
                    addr: arena[start..].as_mut_ptr(),
                    len,
                });
                arenas.push(arena);
            }
            reqs.push(bufs);
        }
        for (i, (t, bufs)) in batch.iter().zip(&reqs).enumerate() {
            let req = Request {
                op: t.op,
                offset: t.offset,
                len: t.len,
                bufs,
            };
            // SAFETY: `arenas` outlives every completion, collected below.
            unsafe { e.submit(&req, i as u64) }.unwrap();
        }
        e.commit().unwrap();
        let mut results = vec![(Err(0), Vec::new()); batch.len()];
        let done = if e.completion_fd().is_some() {
            wait(e, batch.len())
        } else {
            std::iter::from_fn(|| e.pop_completion()).collect()
        };
        assert_eq!(done.len(), batch.len());
        for c in done {
            results[c.user_data as usize].0 = c.result;
        }
        for (i, (t, bufs)) in batch.iter().zip(&reqs).enumerate() {
            if t.op == Op::Read {
                for b in bufs {
                    // SAFETY: the read completed; `b` points into a live arena.
                    let s = unsafe { std::slice::from_raw_parts(b.addr, b.len) };
                    results[i].1.extend_from_slice(s);
                }
            }
        }
        results
    }

    #[test]
    fn random_requests_give_the_same_results_as_the_sync_engine() {
        if !UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return;
        }
        const SIZE: u64 = 512 * 1024;
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 12345, 2] {
            let (_d1, p1) = file(0);
            let (_d2, p2) = file(0);
            let mut rng = Rng(seed);
            let init: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
            std::fs::write(&p1, &init).unwrap();
            std::fs::write(&p2, &init).unwrap();
            let direct = seed % 2 == 1;
            let mut sync = SyncEngine::new(backing(&p1, direct), 16);
            let mut uring = UringEngine::new(backing(&p2, direct), 16).unwrap();
            for _ in 0..60 {
                let want = 1 + rng.below(16) as usize;
                let mut batch: Vec<TestOp> = Vec::new();
                while batch.len() < want {
                    let t = random_op(&mut rng, SIZE);
                    // Requests in one batch touch disjoint bytes (racing on
                    // the same bytes has no defined result) but freely share
                    // pages, aligned and bounced requests alike.
                    let (s0, e0) = (t.offset, t.offset + t.len);
                    if batch
                        .iter()
                        .all(|b| e0 <= b.offset || s0 >= b.offset + b.len)
                    {
                        batch.push(t);
                    }
                }
                let a = apply(&mut sync, &batch);
                let b = apply(&mut uring, &batch);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(x.0, y.0, "result of {:?}", batch[i]);
                    assert!(x.1 == y.1, "data read by {:?}", batch[i]);
                }
            }
            // Nothing flagged the files: a flush still succeeds.
            let flush = [TestOp {
                op: Op::Flush,
                offset: 0,
                len: 0,
                lens: Vec::new(),
                aligned: true,
                data: Vec::new(),
            }];
            assert_eq!(apply(&mut uring, &flush)[0].0, Ok(0), "seed {seed}");
            assert_eq!(apply(&mut sync, &flush)[0].0, Ok(0), "seed {seed}");
            for d in [&_d1, &_d2] {
                if let Some(flagged) = crate::testutil::kernel_flagged(d.path()) {
                    assert!(!flagged, "seed {seed}: page cache invalidation failure");
                }
            }
            drop(uring);
            assert!(
                std::fs::read(&p1).unwrap() == std::fs::read(&p2).unwrap(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn unaligned_memory_mixed_with_aligned_on_shared_pages_at_depth() {
        if !UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        crate::testutil::mixed_alignment_on_shared_pages(
            d.path(),
            |b| Box::new(UringEngine::new(b, 16).unwrap()),
            16,
        );
    }
}
