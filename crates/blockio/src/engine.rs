//! The engine interface shared by every I/O engine.

use std::os::fd::RawFd;

/// One contiguous piece of caller memory that a request reads into or writes from.
///
/// This is a raw `iovec`: the engine does not own the memory. Whoever submits
/// a request guarantees the memory stays valid until its completion (see
/// [`Engine::submit`]). Its layout is `struct iovec`, so a slice of them can
/// be handed to `preadv`/`pwritev` or io_uring as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct IoBuf {
    /// Start address.
    pub addr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

const _: () = assert!(std::mem::size_of::<IoBuf>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<IoBuf>() == std::mem::align_of::<libc::iovec>());

impl Op {
    /// Whether it moves data from `bufs` to the backing store.
    pub fn is_write(self) -> bool {
        matches!(self, Self::Write | Self::WriteThrough)
    }

    /// Whether it moves data at all (a read or a write).
    pub fn moves_data(self) -> bool {
        matches!(self, Self::Read | Self::Write | Self::WriteThrough)
    }
}

impl IoBuf {
    /// Views this buffer as an `iovec`.
    pub fn as_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.addr.cast(),
            iov_len: self.len,
        }
    }
}

// SAFETY: an IoBuf is only an address and a length; the submitter of a
// request guarantees the memory outlives the request, whichever thread runs it.
unsafe impl Send for IoBuf {}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `bufs` from `offset`.
    Read,
    /// Write `bufs` at `offset`.
    Write,
    /// Write `bufs` at `offset` and make them durable (`fdatasync`) before
    /// completing: a write under a write-through cache.
    WriteThrough,
    /// Make earlier completed writes durable.
    Flush,
    /// Deallocate `len` bytes at `offset`; they may read back as anything (zeroes here).
    Discard,
    /// Make `len` bytes at `offset` read back as zeroes; `unmap` allows deallocating them.
    WriteZeroes {
        /// The range may be deallocated rather than written.
        unmap: bool,
    },
}

/// A request handed to an engine. Borrowed: the engine copies what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The operation.
    pub op: Op,
    /// Byte offset into the backing store (ignored by flush).
    pub offset: u64,
    /// Byte length for discard and write-zeroes (ignored otherwise).
    pub len: u64,
    /// Memory for reads and writes (empty otherwise).
    pub bufs: &'a [IoBuf],
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The value given to [`Engine::submit`].
    pub user_data: u64,
    /// Bytes transferred, or the errno that failed the request.
    pub result: Result<u32, i32>,
}

/// Why a request could not be submitted. The request was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every slot is in flight: collect completions, then retry.
    #[error("the I/O engine is full: collect completions and retry")]
    Full,
}

/// A completion-oriented I/O engine owned by one queue worker.
///
/// Calling pattern: [`submit`](Engine::submit) each available request, then
/// [`commit`](Engine::commit) once (this is where batching happens), then
/// drain [`pop_completion`](Engine::pop_completion) until it returns `None`.
/// Completions that arrive later signal [`completion_fd`](Engine::completion_fd)
/// (an eventfd: read it, then drain again).
pub trait Engine: Send {
    /// A short name for logs ("sync", "io_uring").
    fn name(&self) -> &'static str;

    /// Queues a request; it may not start before [`commit`](Engine::commit).
    ///
    /// # Safety
    /// The memory behind every [`IoBuf`] in `req.bufs` must stay valid (and,
    /// for reads, not be accessed by anyone else) until the completion
    /// carrying `user_data` has been returned by `pop_completion`.
    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError>;

    /// Starts everything queued since the last commit. Write-through
    /// writes complete only once durable: the sync engine makes all of a
    /// batch's durable here with one `fdatasync`.
    fn commit(&mut self) -> std::io::Result<()>;

    /// Returns one finished request, if any.
    fn pop_completion(&mut self) -> Option<Completion>;

    /// An fd that becomes readable when completions arrive after `commit`
    /// returned; `None` when the engine always completes within `commit`.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Requests submitted and not yet returned by `pop_completion`.
    fn in_flight(&self) -> usize;

    /// The engine's event loop, if it can wait for its completions and for
    /// other file descriptors in one system call (io_uring).
    fn event_loop(&mut self) -> Option<&mut dyn EventLoop> {
        None
    }

    /// Which paths it takes where the kernel or the backing decides (for
    /// the logs).
    fn paths(&self) -> EnginePaths;
}

/// How an engine carries out what depends on the kernel and the backing:
/// short names for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnginePaths {
    /// The io_uring setup in force: `coop_taskrun` (completions never
    /// interrupt a running worker), `plain`, or `none` without a ring.
    pub ring: &'static str,
    /// Whether it can run a queue's event loop (see [`EventLoop`]).
    pub event_loop: bool,
    /// Discards: `uring_cmd` (the block device's io_uring command),
    /// `uring_fallocate` (fallocate on io_uring's workers), `ioctl` or
    /// `fallocate` (blocking, on the calling thread).
    pub discard: &'static str,
    /// Write-zeroes: `uring_fallocate`, `ioctl` or `fallocate`.
    pub write_zeroes: &'static str,
    /// Write-through writes: `uring_group_fdatasync` (one fdatasync in the
    /// ring at a time makes every write written before it durable) or
    /// `group_fdatasync` (blocking, once per committed batch).
    pub write_through: &'static str,
}

/// Watches an [`EventLoop`] reports besides I/O completions, as bits of a
/// mask (watch `n` is bit `1 << n`, `n < 32`).
pub type Watches = u32;

/// An engine that sleeps for its own completions and for other file
/// descriptors (a queue's kick eventfd, stop events) in one system call,
/// so the caller needs no epoll round trip per request.
///
/// A watch fires when its file descriptor becomes readable and is reported
/// once by [`take_fired`](EventLoop::take_fired); a one-shot watch must
/// then be armed again, a multishot one stays armed. Watches never read
/// their file descriptor.
pub trait EventLoop {
    /// Fires `watch` once `fd` is readable, without reading it.
    fn watch_readable(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()>;

    /// Fires `watch` at once if the eventfd `fd` has a value, then again
    /// after every write to it, without ever reading it; stays armed across
    /// firings (check [`armed`](EventLoop::armed) and arm it again should
    /// the kernel have ended it). No submission per event, at the price of
    /// leaving the eventfd's count to whoever reads it next.
    fn watch_writes(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()>;

    /// Submits everything queued (requests and watches) and, unless a
    /// completion or a fired watch is already waiting, sleeps until one is
    /// (io_uring: until a quarter of the reads and writes in flight, at
    /// least one, completed, counting watches that fire).
    fn wait(&mut self) -> std::io::Result<()>;

    /// While on, [`commit`](Engine::commit) leaves requests queued for the
    /// next [`wait`](EventLoop::wait) or [`poll`](EventLoop::poll), which
    /// submit them in the same system call, and completions do not raise
    /// the [`completion_fd`](Engine::completion_fd): the caller waits in
    /// the loop. Completions that arrived meanwhile stay for
    /// [`pop_completion`](Engine::pop_completion): take them (or wait in
    /// the loop) before waiting on the eventfd again.
    fn defer_submission(&mut self, on: bool);

    /// Gathers finished requests without sleeping (for callers that spin):
    /// enters the kernel only when it has completions to hand over.
    fn poll(&mut self) -> std::io::Result<()>;

    /// The watches that fired and were not taken yet (without taking them).
    fn fired(&self) -> Watches;

    /// The watches that fired since the last call. Completions are sorted
    /// from watches by [`pop_completion`](Engine::pop_completion): drain it
    /// first.
    fn take_fired(&mut self) -> Watches;

    /// Watches whose read or poll failed (other than by cancellation) since
    /// the last call; a failed watch is not armed any more.
    fn take_failed(&mut self) -> Watches;

    /// Watches armed and not yet fired.
    fn armed(&self) -> Watches;

    /// Cancels every armed watch and waits until the kernel has let go of
    /// them. Watches that fired meanwhile are reported by
    /// [`take_fired`](EventLoop::take_fired) as usual; completions that
    /// arrived meanwhile by [`pop_completion`](Engine::pop_completion).
    fn unwatch_all(&mut self) -> std::io::Result<()>;
}
