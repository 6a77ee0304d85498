//! The `VhostUserBackend` implementation: one worker thread per queue, each
//! owning its engine and in-flight table.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use extstorage_blockio::{Completion, Engine, IoBuf, Op, Request as IoRequest, SubmitError};
use extstorage_virtio_blk::{
    DiscardSegment, Request, RequestType, SERIAL_LEN, Segment, Status, WCE_OFFSET,
};
use vhost::vhost_user::Backend;
use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::EventFd;

use crate::Device;
use crate::channel;
use crate::dirty_log::{self, LogBitmap};
use crate::inflight::{self, QueueInflight};
use crate::stats::Kind;

/// Guest memory with a dirty-page bitmap per region: the frontend's log
/// (SET_LOG_BASE) during live migration, nothing before it. Writes through
/// vm-memory (status bytes, the used ring, GET_ID) mark it themselves.
pub(crate) type Mem = GuestMemoryMmap<LogBitmap>;
pub(crate) type Gm = GuestMemoryAtomic<Mem>;
type Vring = VringRwLock<Gm>;

/// What a request needs when its completion arrives.
#[derive(Debug)]
struct InFlight {
    head: u16,
    status: GuestAddress,
    used_len: u32,
    /// What it is, for the counters.
    kind: Kind,
    /// Bytes moved on success, for the counters.
    bytes: u64,
    /// When it was taken off the ring, for the latency histogram.
    started: Instant,
    /// Keeps the guest memory the engine reads or writes mapped until the
    /// completion, even if the frontend replaces the memory table meanwhile.
    mem: Arc<Mem>,
}

/// The vring state as the worker holds it: the write lock is taken once per
/// event, not once per request.
type VState = vhost_user_backend::VringState<Gm>;

/// One queue's private state, touched only by its worker thread (and by
/// `stop_vring` while the worker is idle).
struct QueueWorker {
    index: usize,
    engine: Box<dyn Engine>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    segs: Vec<Segment>,
    /// Per slot: the guest ranges a read in flight fills (written by the
    /// engine outside vm-memory, so marked dirty here on completion while
    /// the frontend logs). The vectors are reused: no allocation per request.
    read_segs: Vec<Vec<Segment>>,
    /// The frontend acked VHOST_F_LOG_ALL: live migration is logging dirty
    /// pages. Shared by the connection's workers.
    logging: Arc<AtomicBool>,
    iobufs: Vec<IoBuf>,
    vring: Option<Vring>,
    /// Used entries added since the last notification decision.
    pending_signal: bool,
    /// The longest spin for more work after a batch (zero: never).
    poll: Duration,
    /// The next spin: halved after each spin that found nothing (down to
    /// 1/64 of `poll`), back to `poll` after one that found work, so a
    /// queue whose guest has gone quiet stops burning CPU.
    poll_window: Duration,
    /// The loop's path was logged for this connection.
    loop_logged: bool,
    /// The event loop failed once: this connection stays on the epoll path.
    loop_failed: bool,
    /// The queue's in-flight record (INFLIGHT_SHMFD), from the ring's start.
    inflight: Option<QueueInflight>,
    /// Heads in flight when a previous backend stopped, newest first: they
    /// are served (from the end) before anything new is popped.
    resubmit: Vec<u16>,
    /// When the batch being parsed was taken off the ring: the start time
    /// of its requests' latencies (one clock read per batch, not per
    /// request; cleared at the start of each batch).
    batch_clock: Option<Instant>,
    /// The guest's driver broke the ring protocol: nothing more is taken
    /// off the ring until the frontend starts it again (`start_vring`).
    stopped: Option<RingViolation>,
    /// Rate limit of the queue's warning and error lines (error paths only).
    log_limit: LogLimit,
    /// Tests only: runs once right after the memory table is loaded for a
    /// run of requests, so a test can act as a frontend racing the worker
    /// there.
    #[cfg(test)]
    after_memory_load: Option<Box<dyn FnOnce() + Send>>,
}

/// Watch numbers of a queue's io_uring event loop.
const WATCH_KICK: u32 = 0;
const WATCH_EXIT: u32 = 1;
const WATCH_STOP: u32 = 2;

/// What a queue's event loop watches besides the kick and its requests.
#[derive(Debug, Clone, Copy)]
struct LoopFds {
    /// The worker thread's exit event (polled, never read: the epoll loop
    /// reads it once the event loop has returned). None outside a daemon.
    exit: Option<RawFd>,
    /// The queue's stop event, raised by `stop_vring`.
    stop: RawFd,
}

/// Why a queue's event loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    /// `stop_vring`: the frontend stops the ring.
    Stopped,
    /// The worker thread is told to exit (disconnect, shutdown).
    Exit,
    /// The ring is not ready or not enabled any more, or has no kick.
    Disabled,
    /// The frontend replaced the kick eventfd: the loop starts again on the new one.
    NewKick,
    /// A watch or the wait failed: back to the epoll path.
    Failed,
}

// SAFETY: the raw pointers in `iobufs` are scratch space, only meaningful
// during one submission on the thread that holds the worker's mutex.
unsafe impl Send for QueueWorker {}

impl std::fmt::Debug for QueueWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWorker")
            .field("index", &self.index)
            .field("engine", &self.engine.name())
            .field("in_flight", &self.engine.in_flight())
            .finish_non_exhaustive()
    }
}

/// What to do with a parsed request.
enum Action {
    /// Reply now with this status and used length.
    Reply(Status, u32),
    /// Hand to the engine.
    Submit {
        op: Op,
        offset: u64,
        len: u64,
        used_len: u32,
    },
}

/// A breach of the split-ring protocol by the guest's driver, after which
/// the ring's contents cannot be trusted: the queue stops (what virtio's
/// DEVICE_NEEDS_RESET is for; vhost-user has no message for a backend to
/// set the device status, so the queue just stays stopped until the
/// frontend starts the ring again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RingViolation {
    /// The avail index claims more requests than the ring holds.
    #[error(
        "the avail index {avail} is {ahead} entries past the next entry to take ({next}), more than the queue size {size}"
    )]
    AvailIndex {
        /// The avail index read.
        avail: u16,
        /// The next avail entry the device takes.
        next: u16,
        /// How far the first is past the second.
        ahead: u16,
        /// The queue size.
        size: u16,
    },
    /// An avail ring entry names a descriptor head past the table.
    #[error("avail ring entry {position} names head {head}, past the queue size {size}")]
    HeadOutOfRange {
        /// Position of the entry (free-running avail counter).
        position: u16,
        /// The head it names.
        head: u16,
        /// The queue size.
        size: u16,
    },
}

/// Rate limit of a queue's warning and error lines, so a guest cannot make
/// the daemon flood its log: the first [`LogLimit::BURST`] lines of each
/// [`LogLimit::INTERVAL`] are written, the rest counted, and the count is
/// written with the next line let through (or when the queue is drained).
/// Consulted on error paths only.
#[derive(Debug, Default)]
struct LogLimit {
    window: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl LogLimit {
    const BURST: u32 = 5;
    const INTERVAL: Duration = Duration::from_secs(10);

    /// Whether a line may be written now (counts it either way).
    #[cold]
    fn allow(&mut self, queue: usize) -> bool {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Self::INTERVAL)
        {
            self.flush(queue);
            self.window = Some(now);
            self.written = 0;
        }
        if self.written < Self::BURST {
            self.written += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Writes the count of the lines left out, if any.
    #[cold]
    fn flush(&mut self, queue: usize) {
        if self.suppressed > 0 {
            tracing::warn!(
                queue,
                suppressed = self.suppressed,
                interval_secs = Self::INTERVAL.as_secs(),
                "warning and error lines of this queue left out (rate limit)"
            );
            self.suppressed = 0;
        }
    }
}

/// A warning or error line of queue worker `$w`, subject to its rate limit.
macro_rules! limited {
    ($w:expr, $level:ident, $($arg:tt)+) => {
        if $w.log_limit.allow($w.index) {
            tracing::$level!(queue = $w.index, $($arg)+);
        }
    };
}

#[cold]
fn ioerr(queue: usize, reason: &'static str) -> Action {
    tracing::debug!(queue, reason, "request failed");
    Action::Reply(Status::IoErr, 1)
}

impl QueueWorker {
    fn new(
        index: usize,
        engine: Box<dyn Engine>,
        queue_size: usize,
        poll: Duration,
        logging: Arc<AtomicBool>,
    ) -> Self {
        Self {
            index,
            engine,
            slots: Vec::with_capacity(queue_size),
            free: Vec::with_capacity(queue_size),
            segs: Vec::with_capacity(queue_size),
            read_segs: Vec::with_capacity(queue_size),
            logging,
            iobufs: Vec::with_capacity(queue_size),
            vring: None,
            pending_signal: false,
            poll,
            poll_window: poll,
            loop_logged: false,
            loop_failed: false,
            inflight: None,
            resubmit: Vec::new(),
            batch_clock: None,
            stopped: None,
            log_limit: LogLimit::default(),
            #[cfg(test)]
            after_memory_load: None,
        }
    }

    /// Serves the queue from its engine's io_uring until the ring is
    /// stopped or disabled or the worker must exit: the kick eventfd, the
    /// stop and exit events and the requests' completions are all waited
    /// for in one `io_uring_enter`, so a request costs no epoll round trip.
    /// Runs on the worker thread, called for a kick the epoll loop already
    /// consumed; returns with nothing in flight and no watch armed, so the
    /// epoll loop takes over exactly as before.
    fn run_loop(&mut self, dev: &Device, gm: &Gm, vring: &Vring, event_idx: bool, fds: LoopFds) {
        loop {
            let end = self.loop_once(dev, gm, vring, event_idx, fds);
            if let Some(el) = self.engine.event_loop() {
                el.defer_submission(false);
            }
            self.finish_loop(dev, gm, vring);
            tracing::debug!(queue = self.index, end = ?end, "queue event loop returned");
            if end == LoopEnd::Failed {
                self.loop_failed = true;
            }
            if end != LoopEnd::NewKick {
                return;
            }
        }
    }

    /// One run of the event loop on the vring's current kick eventfd.
    ///
    /// Kicks are watched by a multishot poll and never read: the kick
    /// eventfd's count is left for the epoll loop, which reads it when the
    /// loop has returned (with a blocking read, for a readiness event it may
    /// have collected before the loop ran: the count must still be there).
    fn loop_once(
        &mut self,
        dev: &Device,
        gm: &Gm,
        vring: &Vring,
        event_idx: bool,
        fds: LoopFds,
    ) -> LoopEnd {
        // A clone of the kick eventfd: the number handed to the kernel
        // stays ours even if the frontend replaces the vring's.
        let (kick, kick_raw) = {
            let st = vring.get_ref();
            if !st.get_queue().ready() || !st.is_enabled() {
                return LoopEnd::Disabled;
            }
            match st
                .get_kick()
                .as_ref()
                .map(|k| (k.try_clone(), k.as_raw_fd()))
            {
                Some((Ok(k), raw)) => (k, raw),
                Some((Err(e), _)) => {
                    tracing::warn!(queue = self.index, error = %e, "cannot clone the kick eventfd; using the epoll path");
                    return LoopEnd::Failed;
                }
                None => return LoopEnd::Disabled,
            }
        };
        let Some(el) = self.engine.event_loop() else {
            return LoopEnd::Failed;
        };
        let mut armed = el.watch_readable(fds.stop, WATCH_STOP);
        if let (Ok(()), Some(exit)) = (&armed, fds.exit) {
            armed = el.watch_readable(exit, WATCH_EXIT);
        }
        if let Err(e) = armed {
            tracing::warn!(queue = self.index, error = %e, "cannot arm the io_uring event loop; using the epoll path");
            return LoopEnd::Failed;
        }
        if !self.loop_logged {
            self.loop_logged = true;
            tracing::info!(
                queue = self.index,
                engine = self.engine.name(),
                event_loop = "io_uring",
                "queue event loop"
            );
        }
        if let Some(el) = self.engine.event_loop() {
            el.defer_submission(true);
        }
        // The kick that brought us here was read by the epoll loop (or,
        // after a new kick eventfd, requests may wait unannounced).
        let mut kicked = true;
        loop {
            {
                let mut st = vring.get_mut();
                if !st.get_queue().ready() || !st.is_enabled() {
                    return LoopEnd::Disabled;
                }
                if st.get_kick().as_ref().map(AsRawFd::as_raw_fd) != Some(kick_raw) {
                    return LoopEnd::NewKick;
                }
                self.reap(dev, &mut st);
                let Some(el) = self.engine.event_loop() else {
                    return LoopEnd::Failed;
                };
                let (fired, failed) = (el.take_fired(), el.take_failed());
                if failed != 0 {
                    tracing::warn!(
                        queue = self.index,
                        watches = failed,
                        "an io_uring event loop watch failed; using the epoll path"
                    );
                    return LoopEnd::Failed;
                }
                if fired & (1 << WATCH_STOP) != 0 {
                    return LoopEnd::Stopped;
                }
                if fired & (1 << WATCH_EXIT) != 0 {
                    return LoopEnd::Exit;
                }
                // The memory table is loaded only now, after the kick was
                // seen: the requests it announces may use memory the
                // frontend added just before kicking.
                let mem = if kicked || fired & (1 << WATCH_KICK) != 0 {
                    self.process_ring(dev, &mut st, gm, event_idx)
                } else {
                    gm.memory().into_inner()
                };
                self.signal(&mut st, &mem);
            }
            let Some(el) = self.engine.event_loop() else {
                return LoopEnd::Failed;
            };
            // Armed once; again only if the kernel ended the multishot poll.
            if let Err(e) = el.watch_writes(kick.as_raw_fd(), WATCH_KICK) {
                tracing::warn!(queue = self.index, error = %e, "cannot arm the kick watch; using the epoll path");
                return LoopEnd::Failed;
            }
            kicked = false;
            // Sleeps unless a watch fired while requests were processed.
            if el.fired() == 0
                && let Err(e) = el.wait()
            {
                tracing::error!(queue = self.index, error = %e, "io_uring wait failed; using the epoll path");
                return LoopEnd::Failed;
            }
        }
    }

    /// Ends a run of the event loop: completes everything in flight, then
    /// cancels the watches, so nothing of the loop outlives it.
    fn finish_loop(&mut self, dev: &Device, gm: &Gm, vring: &Vring) {
        let mem: Arc<Mem> = gm.memory().into_inner();
        loop {
            let mut st = vring.get_mut();
            self.reap(dev, &mut st);
            self.signal(&mut st, &mem);
            drop(st);
            if self.engine.in_flight() == 0 {
                break;
            }
            self.wait_for_completion();
        }
        if let Some(el) = self.engine.event_loop() {
            if let Err(e) = el.unwatch_all() {
                tracing::error!(queue = self.index, error = %e, "cannot cancel the io_uring event loop's watches");
            }
            // Kicks seen while leaving were not consumed: the epoll loop
            // finds the kick eventfd readable and calls us again.
            let _ = (el.take_failed(), el.take_fired());
        }
    }

    /// Handles a kick. The EVENT_IDX drain loop: with notifications off,
    /// process everything available; optionally spin for more (poll mode);
    /// turn notifications back on; go again if more arrived meanwhile.
    /// The vring is locked once for all of it, the guest memory loaded
    /// after each read of the avail index (see [`more_available`]), and
    /// the guest is signalled at most once per batch.
    fn process_queue(&mut self, dev: &Device, gm: &Gm, vring: &Vring, event_idx: bool) {
        let mut st = vring.get_mut();
        let mem = self.process_ring(dev, &mut st, gm, event_idx);
        self.signal(&mut st, &mem);
    }

    /// The drain loop of [`process_queue`](Self::process_queue), on a
    /// locked vring, without the final notification. The memory table is
    /// loaded afresh whenever more requests are found: they may use memory
    /// the frontend added since the last were parsed. Returns the table
    /// the last requests were parsed with.
    fn process_ring(
        &mut self,
        dev: &Device,
        st: &mut VState,
        gm: &Gm,
        event_idx: bool,
    ) -> Arc<Mem> {
        loop {
            let loaded: Arc<Mem> = gm.memory().into_inner();
            if self.stopped.is_some() {
                // Kicks of a stopped queue are consumed and ignored.
                return loaded;
            }
            if event_idx && let Err(e) = st.get_queue_mut().disable_notification(&*loaded) {
                limited!(self, warn, error = %e, "cannot disable notifications");
            }
            let mem = self.process_available(dev, st, gm, loaded);
            if self.stopped.is_some() {
                return mem;
            }
            if !self.poll.is_zero() {
                // Let the guest see this batch before spinning for the next.
                self.signal(st, &mem);
                if self.poll_for_work(dev, st, &mem) {
                    continue;
                }
            }
            if !event_idx {
                return mem;
            }
            match st.get_queue_mut().enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return mem,
                Err(e) => {
                    limited!(self, warn, error = %e, "cannot enable notifications");
                    return mem;
                }
            }
        }
    }

    /// Handles the engine's completion eventfd.
    fn process_completions(&mut self, dev: &Device, gm: &Gm, vring: &Vring) {
        if let Some(fd) = self.engine.completion_fd() {
            drain_eventfd(fd);
        }
        let mem: Arc<Mem> = gm.memory().into_inner();
        let mut st = vring.get_mut();
        self.reap(dev, &mut st);
        self.signal(&mut st, &mem);
    }

    /// Poll mode: spins until new requests are available (true), or the
    /// poll time is up (false). Completions that arrive meanwhile are
    /// returned to the guest at once.
    fn poll_for_work(&mut self, dev: &Device, st: &mut VState, mem: &Arc<Mem>) -> bool {
        // The window counts from the last progress: a completion handed
        // to the guest restarts it, since the guest's next request mostly
        // follows one (at low depth it always does). So the spin covers the
        // device's latency and the guest's round trip one after the other,
        // and ends only after `poll_window` with nothing happening.
        let mut deadline = Instant::now() + self.poll_window;
        let mut progressed = false;
        loop {
            let q = st.get_queue();
            match q.avail_idx(&**mem, Ordering::Acquire) {
                Ok(idx) if idx != Wrapping(q.next_avail()) => {
                    self.poll_window = self.poll;
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
            if self.engine.in_flight() > 0 {
                if let Some(el) = self.engine.event_loop()
                    && let Err(e) = el.poll()
                {
                    tracing::warn!(queue = self.index, error = %e, "io_uring poll failed");
                }
                if self.reap(dev, st) > 0 {
                    self.signal(st, mem);
                    progressed = true;
                    deadline = Instant::now() + self.poll;
                }
            }
            if Instant::now() >= deadline {
                if !progressed {
                    self.poll_window = (self.poll_window / 2).max(self.poll / 64);
                }
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Serves what a previous backend left in flight, then everything
    /// available, `mem` being the table loaded at the start of the pass.
    /// Returns the table the last requests were parsed with: it is loaded
    /// again whenever the avail index is (see [`more_available`]).
    fn process_available(
        &mut self,
        dev: &Device,
        st: &mut VState,
        gm: &Gm,
        mut mem: Arc<Mem>,
    ) -> Arc<Mem> {
        self.batch_clock = None;
        // What a previous backend took and never returned comes first, in
        // the order it was taken (see `inflight`).
        while let Some(head) = self.resubmit.pop() {
            let q = st.get_queue();
            let chain = DescriptorChain::new(&*mem, GuestAddress(q.desc_table()), q.size(), head);
            tracing::debug!(
                queue = self.index,
                head,
                "resubmitting an in-flight request"
            );
            self.serve_chain(dev, st, &mem, &chain);
        }
        let mut end = Wrapping(st.get_queue().next_avail());
        loop {
            if Wrapping(st.get_queue().next_avail()) == end {
                let Some((idx, fresh)) = more_available(gm, st, &mem, end) else {
                    break;
                };
                // A driver has at most a queue's worth of requests out:
                // an index further ahead than that past the next entry to
                // take (itself past every returned one) is bogus. (Not
                // measured from the used index: SET_VRING_BASE without an
                // in-flight region moves only the next entry to take.)
                let q = st.get_queue();
                let ahead = (idx - Wrapping(q.next_avail())).0;
                if ahead > q.size() {
                    self.stop(
                        dev,
                        RingViolation::AvailIndex {
                            avail: idx.0,
                            next: q.next_avail(),
                            ahead,
                            size: q.size(),
                        },
                    );
                    break;
                }
                (end, mem) = (idx, fresh);
                #[cfg(test)]
                if let Some(hook) = self.after_memory_load.take() {
                    hook();
                }
            }
            // Popped here, not by virtio-queue's iterator: that reads the
            // avail index again (a request announced after the memory
            // table was loaded must wait for the next run) and logs each
            // bad index itself, unlimited.
            let chain = match pop_chain(st, &mem) {
                Ok(chain) => chain,
                Err(Some(v)) => {
                    self.stop(dev, v);
                    break;
                }
                Err(None) => break,
            };
            if let Some(inflight) = self.inflight.as_mut() {
                inflight.get(chain.head_index());
            }
            self.serve_chain(dev, st, &mem, &chain);
        }
        // In the event loop the ring defers the submission to the next
        // wait: one `io_uring_enter` submits the batch and sleeps.
        if let Err(e) = self.engine.commit() {
            limited!(self, error, error = %e, "engine commit failed");
        }
        self.reap(dev, st);
        mem
    }

    /// Stops serving the queue after the guest broke the ring protocol; says
    /// so once (within the rate limit), and in the queue's status.
    #[cold]
    fn stop(&mut self, dev: &Device, v: RingViolation) {
        if self.stopped.is_some() {
            return;
        }
        self.stopped = Some(v);
        dev.stats()
            .queue(self.index)
            .set_stopped(Some(v.to_string()));
        if self.log_limit.allow(self.index) {
            tracing::error!(
                queue = self.index,
                violation = %v,
                "the guest's driver broke the virtio ring protocol: the queue is stopped until the frontend starts the ring again (a device reset or a new connection)"
            );
        }
    }

    /// Parses a chain taken off the ring and answers or submits it.
    fn serve_chain(
        &mut self,
        dev: &Device,
        st: &mut VState,
        mem: &Arc<Mem>,
        chain: &DescriptorChain<&Mem>,
    ) {
        let head = chain.head_index();
        match Request::parse(chain, &mut self.segs) {
            Ok(req) => match self.decide(dev, mem, &req) {
                Action::Reply(status, used) => {
                    dev.stats()
                        .queue(self.index)
                        .answered(Kind::from(req.ty), status, 0);
                    self.reply(st, mem, head, req.status_addr, status, used)
                }
                Action::Submit {
                    op,
                    offset,
                    len,
                    used_len,
                } => self.submit(dev, st, mem, &req, op, offset, len, used_len),
            },
            Err(e) => self.reject(dev, st, mem, head, e),
        }
    }

    #[cold]
    fn reject(
        &mut self,
        dev: &Device,
        st: &mut VState,
        mem: &Mem,
        head: u16,
        e: extstorage_virtio_blk::ParseError,
    ) {
        tracing::debug!(queue = self.index, head, error = %e, "malformed request");
        dev.stats()
            .queue(self.index)
            .answered(Kind::Other, Status::IoErr, 0);
        match e.status_addr() {
            Some(status) => self.reply(st, mem, head, status, Status::IoErr, 1),
            None => {
                // Nowhere to put a status: return the chain unanswered so
                // the ring keeps moving.
                self.put_used(st, mem, head, 0);
            }
        }
    }
    /// Checks a parsed request against the device and turns it into an action.
    fn decide(&mut self, dev: &Device, mem: &Mem, req: &Request) -> Action {
        let cap = dev.capacity_sectors();
        let ro = dev.config().device.read_only;
        match req.ty {
            RequestType::In | RequestType::Out => {
                let is_write = req.ty == RequestType::Out;
                if is_write && ro {
                    return ioerr(self.index, "write to a read-only device");
                }
                let Some((offset, len)) = req.byte_range(cap) else {
                    return ioerr(self.index, "sector range beyond capacity");
                };
                let data = if is_write { 0 } else { len };
                let Some(used_len) = data.checked_add(1).and_then(|u| u32::try_from(u).ok()) else {
                    return ioerr(self.index, "request too long");
                };
                // Under a write-through cache each write is made durable
                // before it completes: the engine links an fdatasync to it.
                let op = match (is_write, dev.writeback()) {
                    (false, _) => Op::Read,
                    (true, true) => Op::Write,
                    (true, false) => Op::WriteThrough,
                };
                Action::Submit {
                    op,
                    offset,
                    len,
                    used_len,
                }
            }
            RequestType::Flush => Action::Submit {
                op: Op::Flush,
                offset: 0,
                len: 0,
                used_len: 1,
            },
            RequestType::GetId => self.get_id(dev, mem),
            RequestType::Discard | RequestType::WriteZeroes => {
                if ro {
                    return ioerr(self.index, "discard/write-zeroes on a read-only device");
                }
                if req.data_len > extstorage_virtio_blk::DISCARD_SEGMENT_SIZE as u64 {
                    // As QEMU's virtio-blk and its vhost-user-blk export:
                    // more segments than max_*_seg (1) is unsupported.
                    tracing::debug!(
                        queue = self.index,
                        bytes = req.data_len,
                        "discard/write-zeroes with more than one segment"
                    );
                    return Action::Reply(Status::Unsupp, 1);
                }
                let Some(seg) = DiscardSegment::read_first(mem, &self.segs) else {
                    return ioerr(self.index, "unreadable discard segment");
                };
                let unmap = seg.flags & DiscardSegment::FLAG_UNMAP != 0;
                let allowed = if req.ty == RequestType::Discard {
                    0
                } else {
                    DiscardSegment::FLAG_UNMAP
                };
                if seg.flags & !allowed != 0 {
                    return Action::Reply(Status::Unsupp, 1);
                }
                let max = dev.blk_config().max_discard_sectors;
                if seg.num_sectors > max {
                    return ioerr(self.index, "segment longer than max_*_sectors");
                }
                let Some((offset, len)) = seg.byte_range(cap) else {
                    return ioerr(self.index, "discard range beyond capacity");
                };
                let op = if req.ty == RequestType::Discard {
                    Op::Discard
                } else {
                    Op::WriteZeroes { unmap }
                };
                Action::Submit {
                    op,
                    offset,
                    len,
                    used_len: 1,
                }
            }
            RequestType::Unsupported(t) => {
                tracing::debug!(
                    queue = self.index,
                    request_type = t,
                    "unsupported request type"
                );
                Action::Reply(Status::Unsupp, 1)
            }
        }
    }

    /// Writes the serial into the request's buffers.
    fn get_id(&self, dev: &Device, mem: &Mem) -> Action {
        let mut id = [0u8; SERIAL_LEN];
        let serial = dev.config().device.serial.as_bytes();
        let n = serial.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&serial[..n]);
        let mut written = 0usize;
        for seg in &self.segs {
            if written == SERIAL_LEN {
                break;
            }
            let n = (SERIAL_LEN - written).min(usize::try_from(seg.len).unwrap_or(0));
            if mem
                .write_slice(&id[written..written + n], seg.addr)
                .is_err()
            {
                return ioerr(self.index, "GET_ID buffer outside guest memory");
            }
            written += n;
        }
        let used = u32::try_from(written).unwrap_or(0).saturating_add(1);
        Action::Reply(Status::Ok, used)
    }

    /// Writes the status byte and returns the chain to the guest (the
    /// notification comes later, once per batch).
    fn reply(
        &mut self,
        st: &mut VState,
        mem: &Mem,
        head: u16,
        status_addr: GuestAddress,
        status: Status,
        used_len: u32,
    ) {
        if let Err(e) = mem.write_obj(status.as_u8(), status_addr) {
            limited!(self, warn, error = %e, "cannot write the status byte");
        }
        self.put_used(st, mem, head, used_len);
    }

    /// Returns a chain to the guest (used entry and index), recording it in
    /// the in-flight region around the publication (see `inflight`).
    fn put_used(&mut self, st: &mut VState, mem: &Mem, head: u16, used_len: u32) {
        if let Some(inflight) = &self.inflight {
            inflight.pre_put(head);
        }
        let q = st.get_queue_mut();
        match q.add_used(mem, head, used_len) {
            Ok(()) => {
                if let Some(inflight) = &self.inflight {
                    inflight.post_put(head, q.next_used());
                }
            }
            Err(e) => limited!(self, warn, error = %e, "add_used failed"),
        }
        self.pending_signal = true;
    }

    /// Maps the data segments to host buffers and submits to the engine.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        dev: &Device,
        st: &mut VState,
        mem: &Arc<Mem>,
        req: &Request,
        op: Op,
        offset: u64,
        len: u64,
        used_len: u32,
    ) {
        let mut iobufs = std::mem::take(&mut self.iobufs);
        iobufs.clear();
        if op.moves_data() && !map_segments(mem, &self.segs, &mut iobufs) {
            self.iobufs = iobufs;
            tracing::debug!(
                queue = self.index,
                reason = "data segment not mapped",
                "request failed"
            );
            dev.stats()
                .queue(self.index)
                .answered(Kind::from(req.ty), Status::IoErr, 0);
            self.reply(st, mem, req.head_index, req.status_addr, Status::IoErr, 1);
            return;
        }
        let started = *self.batch_clock.get_or_insert_with(Instant::now);
        let slot = self.alloc_slot(InFlight {
            head: req.head_index,
            status: req.status_addr,
            used_len,
            kind: Kind::from(req.ty),
            bytes: len,
            started,
            mem: Arc::clone(mem),
        });
        if op == Op::Read {
            // Kept whether or not the frontend logs now: logging may start
            // before this read completes.
            if self.read_segs.len() <= slot {
                self.read_segs.resize_with(slot + 1, Vec::new);
            }
            let ranges = &mut self.read_segs[slot];
            ranges.clear();
            ranges.extend_from_slice(&self.segs);
        }
        dev.stats().queue(self.index).submitted();
        let io = IoRequest {
            op,
            offset,
            len,
            bufs: &iobufs,
        };
        loop {
            // SAFETY: every IoBuf points into a region of `mem`, which the
            // in-flight entry in `slot` keeps mapped until the completion is
            // popped in `reap`; the guest does not touch a buffer it has made
            // available until we return it with add_used.
            match unsafe { self.engine.submit(&io, slot as u64) } {
                Ok(()) => break,
                Err(SubmitError::Full) => {
                    if let Err(e) = self.engine.commit() {
                        limited!(self, error, error = %e, "engine commit failed");
                    }
                    if self.reap(dev, st) == 0 {
                        self.wait_for_completion();
                    }
                }
            }
        }
        self.iobufs = iobufs;
    }

    fn alloc_slot(&mut self, entry: InFlight) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }

    /// Blocks until a completion is ready (async engines): in the
    /// engine's own wait where it has one, else on its completion fd.
    fn wait_for_completion(&mut self) {
        if let Some(el) = self.engine.event_loop() {
            if let Err(e) = el.wait() {
                tracing::error!(queue = self.index, error = %e, "io_uring wait failed");
            } else {
                return;
            }
        }
        let Some(fd) = self.engine.completion_fd() else {
            return;
        };
        wait_readable(fd);
        drain_eventfd(fd);
    }

    /// Completes every finished request; returns how many.
    fn reap(&mut self, dev: &Device, st: &mut VState) -> usize {
        let mut n = 0;
        // One clock read for every completion gathered at once.
        let mut now = None;
        while let Some(c) = self.engine.pop_completion() {
            n += 1;
            let now = *now.get_or_insert_with(Instant::now);
            self.complete(dev, st, c, now);
        }
        n
    }

    /// Answers the request `c` completes; `now` is when it was gathered.
    fn complete(&mut self, dev: &Device, st: &mut VState, c: Completion, now: Instant) {
        let Some((slot, entry)) = usize::try_from(c.user_data)
            .ok()
            .and_then(|i| Some((i, self.slots.get_mut(i)?.take()?)))
        else {
            limited!(
                self,
                error,
                user_data = c.user_data,
                "completion for an unknown request"
            );
            return;
        };
        self.free.push(slot);
        // The engine wrote a read's data into guest memory behind
        // vm-memory's back (io_uring, readv, bounce copies): log those pages
        // before the used ring says the request is done.
        if self.logging.load(Ordering::Acquire)
            && let Some(ranges) = self.read_segs.get(slot)
            && entry.kind == Kind::Read
        {
            for seg in ranges {
                dirty_log::mark(&entry.mem, seg.addr, u64::from(seg.len));
            }
        }
        let status = match c.result {
            // Engines finish a read or write in full or fail it; a short
            // count would leave guest data unread or unwritten behind an
            // OK status, so it is an error, never a success.
            Ok(n)
                if matches!(entry.kind, Kind::Read | Kind::Write)
                    && u64::from(n) != entry.bytes =>
            {
                limited!(
                    self,
                    error,
                    transferred = n,
                    expected = entry.bytes,
                    "the I/O engine reported a short transfer; failing the request"
                );
                Status::IoErr
            }
            Ok(_) => Status::Ok,
            Err(errno) => {
                tracing::debug!(queue = self.index, errno, "I/O failed");
                Status::IoErr
            }
        };
        dev.stats().queue(self.index).completed(
            entry.kind,
            status,
            entry.bytes,
            now.saturating_duration_since(entry.started),
        );
        self.reply(
            st,
            &entry.mem,
            entry.head,
            entry.status,
            status,
            entry.used_len,
        );
    }

    /// One notification for everything added since the last one, if the
    /// guest asked for it (EVENT_IDX `used_event`, or no NO_INTERRUPT flag).
    fn signal(&mut self, st: &mut VState, mem: &Mem) {
        if !self.pending_signal {
            return;
        }
        self.pending_signal = false;
        match st.get_queue_mut().needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = st.signal_used_queue() {
                    limited!(self, warn, error = %e, "cannot signal the guest");
                }
            }
            Ok(false) => {}
            Err(e) => limited!(self, warn, error = %e, "needs_notification failed"),
        }
    }

    /// Completes everything in flight (blocking), then signals.
    fn drain(&mut self, dev: &Device, gm: &Gm) {
        self.log_limit.flush(self.index);
        let Some(vring) = self.vring.clone() else {
            return;
        };
        if self.engine.in_flight() == 0 && !self.pending_signal {
            return;
        }
        let mem: Arc<Mem> = gm.memory().into_inner();
        let mut st = vring.get_mut();
        // Whatever was queued and not yet started goes first: a queued
        // request completes only after a commit, and an engine with nothing
        // to wait on (the sync engine) would otherwise be waited for forever.
        if let Err(e) = self.engine.commit() {
            tracing::error!(queue = self.index, error = %e, "engine commit failed");
        }
        while self.engine.in_flight() > 0 {
            if self.reap(dev, &mut st) == 0 {
                if self.engine.event_loop().is_none() && self.engine.completion_fd().is_none() {
                    // Nothing to wait on and nothing completed: waiting
                    // would spin for ever. (No engine leaves requests so.)
                    tracing::error!(
                        queue = self.index,
                        in_flight = self.engine.in_flight(),
                        engine = self.engine.name(),
                        "requests still in flight after a commit, with nothing to wait on; leaving them"
                    );
                    break;
                }
                self.wait_for_completion();
            }
        }
        self.signal(&mut st, &mem);
    }
}

/// Whether requests beyond `end` are available, and if so the avail
/// index and the guest memory to parse the requests before it with. A
/// frontend adds memory (ADD_MEM_REG, acknowledged) before it puts
/// requests using it on the ring, so a table loaded after reading the
/// avail index (an acquire) maps every request that index reveals. A
/// table loaded before may predate a region they use: parsing them
/// against it would fail them as "outside guest memory". So the index is
/// read, and the table loaded, once per run of requests, and popping
/// (which reads the index again) never goes past the index read here.
fn more_available(
    gm: &Gm,
    st: &VState,
    current: &Mem,
    end: Wrapping<u16>,
) -> Option<(Wrapping<u16>, Arc<Mem>)> {
    // The rings themselves are in `current`: they do not move while the
    // vring runs.
    let idx = st.get_queue().avail_idx(current, Ordering::Acquire).ok()?;
    (idx != end).then(|| (idx, gm.memory().into_inner()))
}

/// Takes the next available chain off the ring (the caller knows one is
/// available: it read the avail index). `Err(Some(_))` if the entry names
/// a head past the queue size (the ring is not advanced), `Err(None)` if
/// the avail ring cannot be read.
fn pop_chain<'m>(
    st: &mut VState,
    mem: &'m Mem,
) -> Result<DescriptorChain<&'m Mem>, Option<RingViolation>> {
    let q = st.get_queue_mut();
    let (position, size) = (q.next_avail(), q.size());
    let slot = u64::from(position.checked_rem(size).ok_or(None)?);
    // flags (2 bytes), idx (2 bytes), then the entries.
    let addr = GuestAddress(q.avail_ring())
        .checked_add(4 + 2 * slot)
        .ok_or(None)?;
    let head = u16::from_le(mem.load::<u16>(addr, Ordering::Acquire).map_err(|_| None)?);
    if head >= size {
        return Err(Some(RingViolation::HeadOutOfRange {
            position,
            head,
            size,
        }));
    }
    q.set_next_avail(position.wrapping_add(1));
    Ok(DescriptorChain::new(
        mem,
        GuestAddress(q.desc_table()),
        size,
        head,
    ))
}

thread_local! {
    /// The CPU `pin_this_thread` pinned this thread to.
    static PINNED_TO: std::cell::Cell<Option<u16>> = const { std::cell::Cell::new(None) };
}

/// Pins the calling thread, queue `queue`'s worker, to `cpu` (`--queue-cpus`),
/// once per thread: a new connection's workers are new threads. The CPUs
/// were checked against the daemon's allowed set at start; if the set
/// shrank since, the worker runs unpinned and says so.
fn pin_this_thread(queue: usize, cpu: u16) {
    if PINNED_TO.get() == Some(cpu) {
        return;
    }
    PINNED_TO.set(Some(cpu));
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(usize::from(cpu))
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::info!(queue, cpu, "queue worker pinned"),
        Err(e) => {
            tracing::warn!(queue, cpu, error = %e, "cannot pin the queue worker; it runs where the scheduler puts it")
        }
    }
}

/// Host buffers for `segs`, split where a segment crosses memory regions.
/// False if any part is outside guest memory.
fn map_segments(mem: &Mem, segs: &[Segment], out: &mut Vec<IoBuf>) -> bool {
    for seg in segs {
        let Ok(len) = usize::try_from(seg.len) else {
            return false;
        };
        // Fast path: the whole segment lies in one region (nearly always).
        if let Some(region) = mem.find_region(seg.addr)
            && let Some(start) = region.to_region_addr(seg.addr)
            && start
                .raw_value()
                .checked_add(u64::from(seg.len))
                .is_some_and(|end| end <= region.len())
            && let Ok(addr) = region.get_host_address(start)
        {
            out.push(IoBuf { addr, len });
            continue;
        }
        let mut covered = 0usize;
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, len) {
            let Ok(slice) = slice else { return false };
            covered += slice.len();
            out.push(IoBuf {
                addr: slice.ptr_guard_mut().as_ptr(),
                len: slice.len(),
            });
        }
        if covered != len {
            return false;
        }
    }
    true
}

fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, -1) };
}

fn drain_eventfd(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a valid u64; the fd is the engine's eventfd.
    unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
}

/// One connection's backend. Cheap to clone; every worker thread holds one.
#[derive(Debug, Clone)]
pub(crate) struct BlkBackend {
    inner: Arc<Inner>,
}

struct Inner {
    dev: Arc<Device>,
    mem: Gm,
    event_idx: AtomicBool,
    /// VHOST_F_LOG_ALL is acked: the workers mark what the engines write.
    logging: Arc<AtomicBool>,
    queues: Vec<Mutex<QueueWorker>>,
    /// Exit-event consumers handed to the worker epolls (by thread index),
    /// which take them as raw fds and never close them; closed in
    /// `close_exit_events`. A queue's event loop polls its thread's.
    exit_fds: Mutex<Vec<(usize, RawFd)>>,
    /// Per queue: raised by `stop_vring` to end the queue's event loop,
    /// which holds the worker's lock while it runs.
    stops: Vec<EventFd>,
    /// The in-flight region the frontend passed (SET_INFLIGHT_FD); each
    /// queue takes its part when its ring starts.
    inflight: Mutex<Option<Arc<inflight::Region>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("dev", &self.dev)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl BlkBackend {
    pub(crate) fn new(dev: Arc<Device>, mem: Gm) -> std::io::Result<Self> {
        let n = usize::from(dev.config().device.num_queues);
        let qs = usize::from(dev.config().device.queue_size);
        let poll = Duration::from_micros(u64::from(dev.config().device.poll_us));
        let logging = Arc::new(AtomicBool::new(false));
        let queues = (0..n)
            .map(|i| {
                Mutex::new(QueueWorker::new(
                    i,
                    dev.new_engine(i),
                    qs,
                    poll,
                    Arc::clone(&logging),
                ))
            })
            .collect();
        let stops = (0..n)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                dev,
                mem,
                event_idx: AtomicBool::new(false),
                logging,
                queues,
                exit_fds: Mutex::new(Vec::new()),
                stops,
                inflight: Mutex::new(None),
            }),
        })
    }

    /// The exit-event fd of worker thread `thread`, once its epoll exists.
    fn exit_fd(&self, thread: usize) -> Option<RawFd> {
        self.inner
            .exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, _)| *t == thread)
            .map(|&(_, fd)| fd)
    }

    fn worker(&self, q: usize) -> Option<MutexGuard<'_, QueueWorker>> {
        self.inner
            .queues
            .get(q)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The completion fd of queue `q`'s engine, if it has one.
    pub(crate) fn completion_fd(&self, q: usize) -> Option<RawFd> {
        self.worker(q)?.engine.completion_fd()
    }

    /// The epoll data value of engine completion events.
    pub(crate) fn completion_event(&self) -> u64 {
        self.inner.queues.len() as u64 + 1
    }

    /// Closes the exit-event fds the worker epolls leaked. Call only after
    /// the daemon (and so every worker and epoll) is gone.
    pub(crate) fn close_exit_events(&self) {
        let fds = std::mem::take(
            &mut *self
                .inner
                .exit_fds
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (_, fd) in fds {
            // SAFETY: `fd` came from an EventConsumer that vhost-user-backend
            // turned into a raw fd for its epoll and never closes; the epoll
            // and its worker are gone, so nothing else owns or uses it.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Completes everything still in flight on every queue.
    pub(crate) fn drain(&self) {
        for q in 0..self.inner.queues.len() {
            if let Some(mut w) = self.worker(q) {
                w.drain(&self.inner.dev, &self.inner.mem);
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = LogBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.inner.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.inner.dev.config().device.queue_size)
    }

    fn features(&self) -> u64 {
        self.inner.dev.virtio_features()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn acked_features(&self, features: u64) {
        tracing::debug!(features = format_args!("{features:#x}"), "features acked");
        let log = features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        // The regions' bitmaps keep marking into the installed log until
        // told otherwise: a migration that was cancelled drops LOG_ALL
        // without unsetting the log.
        dirty_log::set_marking(&self.inner.mem.memory(), log);
        if self.inner.logging.swap(log, Ordering::AcqRel) != log {
            tracing::info!(
                logging = log,
                "dirty-page logging (live migration) {}",
                if log { "started" } else { "stopped" }
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let f = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD;
        if self.inner.dev.offers_inflight() {
            f | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        } else {
            f
        }
    }

    fn get_inflight_fd(
        &self,
        req: &VhostUserInflight,
    ) -> std::io::Result<(VhostUserInflight, std::fs::File)> {
        inflight::create(req, self.inner.queues.len()).map_err(|e| {
            tracing::warn!(error = %e, "GET_INFLIGHT_FD refused");
            e.into()
        })
    }

    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: std::fs::File) -> std::io::Result<()> {
        let region = inflight::Region::map(msg, file, self.inner.queues.len()).map_err(|e| {
            tracing::warn!(error = %e, "SET_INFLIGHT_FD refused");
            std::io::Error::from(e)
        })?;
        *self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(region);
        Ok(())
    }

    fn start_vring(&self, queue_index: u32, vring: &Vring) -> std::io::Result<()> {
        let q = usize::try_from(queue_index).unwrap_or(usize::MAX);
        let region = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(mut w) = self.worker(q) else {
            return Ok(());
        };
        w.inflight = None;
        w.resubmit.clear();
        // The frontend starts the ring afresh: a queue stopped for a
        // protocol violation serves again.
        // (The counters outlive connections: cleared on every start.)
        self.inner.dev.stats().queue(q).set_stopped(None);
        if let Some(v) = w.stopped.take() {
            tracing::info!(queue = q, previous = %v, "queue started again after a ring protocol violation");
        }
        let Some(region) = region else {
            return Ok(());
        };
        let start = || -> std::io::Result<(QueueInflight, Vec<u16>, u16)> {
            let mut record = region.queue(q)?;
            let mem = self.inner.mem.memory();
            let (used, size) = {
                let st = vring.get_ref();
                let queue = st.get_queue();
                let used = queue.used_idx(&*mem, Ordering::Acquire).map_err(|e| {
                    std::io::Error::other(format!("cannot read the used index: {e}"))
                })?;
                (used.0, queue.size())
            };
            let heads = record.start(used, size)?;
            Ok((record, heads, used))
        };
        let (record, heads, used) = start().inspect_err(|e| {
            tracing::error!(queue = q, error = %e, "cannot start the ring from its in-flight record");
        })?;
        // Everything popped before is either returned (the used index) or
        // still in flight: the next request to pop comes after both.
        let in_flight = u16::try_from(heads.len()).unwrap_or(u16::MAX);
        vring.set_queue_next_used(used);
        vring.set_queue_next_avail(used.wrapping_add(in_flight));
        if !heads.is_empty() {
            tracing::info!(
                queue = q,
                used_idx = used,
                in_flight,
                heads = ?heads,
                "resubmitting the requests a previous backend left in flight"
            );
            // Served at the first kick; the guest waits for these and may
            // never kick again, so kick ourselves (as libvhost-user does).
            let st = vring.get_ref();
            if let Some(kick) = st.get_kick() {
                // SAFETY: the fd is the vring's kick eventfd, owned by the
                // EventConsumer that the read guard `st` keeps in place
                // (not replaced or closed) while the borrow lives.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(kick.as_raw_fd()) };
                if let Err(e) = nix::unistd::write(fd, &1u64.to_ne_bytes()) {
                    tracing::warn!(queue = q, error = %e, "cannot kick the ring to resubmit");
                }
            }
        }
        w.inflight = Some(record);
        w.resubmit = heads.into_iter().rev().collect();
        Ok(())
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.inner.dev.blk_config();
        tracing::debug!(offset, size, capacity = cfg.capacity, "GET_CONFIG");
        cfg.read(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        let wce = u32::try_from(WCE_OFFSET).unwrap_or(u32::MAX);
        if let Some(i) = wce.checked_sub(offset)
            && let Some(&v) = usize::try_from(i).ok().and_then(|i| buf.get(i))
        {
            self.inner.dev.set_writeback(v != 0);
        }
        Ok(())
    }

    fn update_memory(&self, mem: Gm) -> std::io::Result<()> {
        // The handler replaced the table in the GuestMemoryAtomic we share;
        // in-flight requests keep the old one alive through their Arc.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let table = mem.memory();
            let regions: Vec<String> = table
                .iter()
                .map(|r| {
                    let start = r.start_addr().raw_value();
                    format!("{start:#x}+{:#x}", r.len())
                })
                .collect();
            tracing::debug!(regions = ?regions, "guest memory table updated");
        }
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        match channel::ConfigChannel::new(&backend) {
            Ok(ch) => {
                tracing::debug!("backend channel received: resize notifications enabled");
                self.inner.dev.set_channel(Some(ch));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the backend channel: resizes will not be notified");
                self.inner.dev.set_channel(None);
            }
        }
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.inner.queues.len()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .inspect_err(|e| tracing::error!(error = %e, "cannot create a worker exit event"))
                .ok()?;
        self.inner
            .exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((thread_index, consumer.as_raw_fd()));
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        let q = usize::try_from(queue_index).unwrap_or(usize::MAX);
        // A running event loop holds the worker: make it return (it drains
        // everything in flight first), then take the worker.
        let stop = self.inner.stops.get(q);
        if let Some(stop) = stop
            && let Err(e) = stop.write(1)
        {
            tracing::error!(queue = q, error = %e, "cannot raise the queue's stop event");
        }
        if let Some(mut w) = self.worker(q) {
            w.drain(&self.inner.dev, &self.inner.mem);
        }
        if let Some(stop) = stop {
            // Lowered again for the next start of the ring (EAGAIN if the
            // loop never ran to see it: nothing to lower then either).
            let _ = stop.read();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        // One queue per thread: the thread index is the queue index and
        // `vrings` holds just that queue.
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        let Some(mut w) = self.worker(thread_id) else {
            return Ok(());
        };
        if let Some(cpus) = &self.inner.dev.config().device.queue_cpus {
            pin_this_thread(thread_id, cpus.for_queue(thread_id));
        }
        if w.vring.is_none() {
            w.vring = Some(vring.clone());
        }
        let dev = &self.inner.dev;
        if device_event == 0 {
            let event_idx = self.inner.event_idx.load(Ordering::Acquire);
            let kick = vring.get_ref().get_kick().is_some();
            match self.inner.stops.get(thread_id) {
                Some(stop) if kick && !w.loop_failed && w.engine.event_loop().is_some() => {
                    let fds = LoopFds {
                        exit: self.exit_fd(thread_id),
                        stop: stop.as_raw_fd(),
                    };
                    w.run_loop(dev, &self.inner.mem, vring, event_idx, fds);
                }
                _ => w.process_queue(dev, &self.inner.mem, vring, event_idx),
            }
        } else if u64::from(device_event) == self.completion_event() {
            w.process_completions(dev, &self.inner.mem, vring);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The queue worker fed hand-made (and malformed) descriptor chains
    //! through a real vring over real guest memory and a real file.

    use super::*;
    use crate::Config;
    use std::os::unix::fs::FileExt;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const QSIZE: u16 = 64;
    const MEM_SIZE: u64 = 16 << 20;
    const STATUS_BASE: u64 = 0x80_0000;

    struct Rig {
        _dir: tempfile::TempDir,
        file: std::path::PathBuf,
        gm: Gm,
        backend: BlkBackend,
        vring: Vring,
        used_addr: GuestAddress,
        descs: Vec<RawDescriptor>,
        heads: Vec<u16>,
    }

    /// One descriptor: (address, length, device-writable).
    type D = (u64, u32, bool);

    impl Rig {
        fn new(read_only: bool) -> Rig {
            Rig::with_engine(read_only, crate::Engine::Sync)
        }

        fn with_engine(read_only: bool, engine: crate::Engine) -> Rig {
            Rig::build(read_only, engine, false, 1 << 20)
        }

        /// A rig over a `size`-byte file, opened `O_DIRECT` if `direct`.
        fn build(read_only: bool, engine: crate::Engine, direct: bool, size: u64) -> Rig {
            Rig::build_polling(read_only, engine, direct, size, 0)
        }

        /// Like `build`, with `--poll-us poll_us`.
        fn build_polling(
            read_only: bool,
            engine: crate::Engine,
            direct: bool,
            size: u64,
            poll_us: u32,
        ) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("img");
            std::fs::File::create(&file).unwrap().set_len(size).unwrap();
            let mut cfg = Config::new(&file);
            cfg.device.read_only = read_only;
            cfg.device.direct_io = direct;
            cfg.device.queue_size = QSIZE;
            cfg.device.engine = engine;
            cfg.device.serial = "serial-0123".into();
            cfg.device.poll_us = poll_us;
            let dev = Device::open(cfg).unwrap();
            let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
            let gm = GuestMemoryAtomic::new(mem);
            let backend = BlkBackend::new(dev, gm.clone()).unwrap();
            let vring = Vring::new(gm.clone(), QSIZE).unwrap();
            let guard = gm.memory();
            let mq = MockSplitQueue::new(&*guard, QSIZE);
            vring
                .set_queue_info(mq.desc_table_addr().0, mq.avail_addr().0, mq.used_addr().0)
                .unwrap();
            vring.set_queue_size(QSIZE);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let used_addr = mq.used_addr();
            Rig {
                _dir: dir,
                file,
                gm,
                backend,
                vring,
                used_addr,
                descs: Vec::new(),
                heads: Vec::new(),
            }
        }

        /// Queues a chain; returns its status address (last byte of the last descriptor).
        fn chain(&mut self, ds: &[D]) -> GuestAddress {
            let start = u16::try_from(self.descs.len()).unwrap();
            self.heads.push(start);
            for (i, &(addr, len, w)) in ds.iter().enumerate() {
                let last = i + 1 == ds.len();
                let mut flags = if w { F_WRITE } else { 0 };
                if !last {
                    flags |= F_NEXT;
                }
                let next = if last { 0 } else { start + i as u16 + 1 };
                self.descs
                    .push(RawDescriptor::from(Descriptor::new(addr, len, flags, next)));
            }
            let (a, l, _) = *ds.last().unwrap();
            GuestAddress(a + u64::from(l) - 1)
        }

        fn header(&self, at: u64, ty: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.gm.memory().write_slice(&h, GuestAddress(at)).unwrap();
        }

        /// Makes the queued chains available and runs the worker once.
        /// Returns (head, used len) of every used element.
        fn run(&mut self) -> Vec<(u32, u32)> {
            let guard = self.gm.memory();
            let mq = MockSplitQueue::new(&*guard, QSIZE);
            mq.add_desc_chains(&self.descs, 0).unwrap();
            self.backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0)
                .unwrap();
            // An asynchronous engine completes later: wait for its eventfd
            // and deliver the completion event as the epoll loop would.
            while self.backend.worker(0).unwrap().engine.in_flight() > 0 {
                wait_readable(self.backend.completion_fd(0).unwrap());
                self.backend
                    .handle_event(
                        u16::try_from(self.backend.completion_event()).unwrap(),
                        EventSet::IN,
                        std::slice::from_ref(&self.vring),
                        0,
                    )
                    .unwrap();
            }
            let idx: u16 = guard.read_obj(self.used_addr.unchecked_add(2)).unwrap();
            (0..u64::from(idx))
                .map(|i| {
                    let e = self.used_addr.unchecked_add(4 + 8 * i);
                    let id: u32 = guard.read_obj(e).unwrap();
                    let len: u32 = guard.read_obj(e.unchecked_add(4)).unwrap();
                    (id, len)
                })
                .collect()
        }

        fn status(&self, at: GuestAddress) -> u8 {
            self.gm.memory().read_obj(at).unwrap()
        }

        /// Writes `data` into the backing file at `offset`, past the daemon.
        fn write_file(&self, offset: u64, data: &[u8]) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.file)
                .unwrap()
                .write_all_at(data, offset)
                .unwrap();
        }
    }

    fn st(n: u64) -> u64 {
        STATUS_BASE + n * 0x100
    }

    #[test]
    fn good_and_bad_requests_in_one_batch() {
        good_and_bad_requests(crate::Engine::Sync);
    }

    #[test]
    fn good_and_bad_requests_in_one_batch_io_uring() {
        if !extstorage_blockio::UringEngine::is_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring unavailable here",
            );
            return;
        }
        good_and_bad_requests(crate::Engine::Uring);
    }

    fn good_and_bad_requests(engine: crate::Engine) {
        let mut r = Rig::with_engine(false, engine);
        let (data, data2) = (0x10_0000u64, 0x20_0000u64);
        r.gm.memory()
            .write_slice(&[0xc3u8; 1024], GuestAddress(data))
            .unwrap();
        // 0: a good write of 2 sectors at sector 4.
        r.header(0x1000, 1, 4);
        let s0 = r.chain(&[(0x1000, 16, false), (data, 1024, false), (st(0), 1, true)]);
        // 1: a read past the end of the 1 MiB disk.
        r.header(0x1100, 0, 2048);
        let s1 = r.chain(&[(0x1100, 16, false), (data2, 512, true), (st(1), 1, true)]);
        // 2: an unknown request type.
        r.header(0x1200, 0x77, 0);
        let s2 = r.chain(&[(0x1200, 16, false), (st(2), 1, true)]);
        // 3: GET_ID into a 32-byte buffer.
        r.header(0x1300, 8, 0);
        let s3 = r.chain(&[
            (0x1300, 16, false),
            (data2 + 0x1000, 32, true),
            (st(3), 1, true),
        ]);
        // 4: no status byte (last descriptor device-readable).
        r.header(0x1400, 0, 0);
        let _ = r.chain(&[(0x1400, 16, false), (data2, 512, false)]);
        // 5: the header in a device-writable descriptor.
        let s5 = r.chain(&[(0x1500, 16, true), (st(5), 1, true)]);
        // 6: data outside guest memory.
        r.header(0x1600, 0, 0);
        let s6 = r.chain(&[
            (0x1600, 16, false),
            (MEM_SIZE - 256, 512, true),
            (st(6), 1, true),
        ]);
        // 7: a read with data descriptors in the wrong direction.
        r.header(0x1700, 0, 0);
        let s7 = r.chain(&[(0x1700, 16, false), (data2, 512, false), (st(7), 1, true)]);
        // 8: discard with the UNMAP flag (only valid for write zeroes).
        r.header(0x1800, 11, 0);
        let mut seg = [0u8; 16];
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        seg[12..16].copy_from_slice(&1u32.to_le_bytes());
        r.gm.memory()
            .write_slice(&seg, GuestAddress(0x1900))
            .unwrap();
        let s8 = r.chain(&[(0x1800, 16, false), (0x1900, 16, false), (st(8), 1, true)]);
        // 9: a good read of data already in the file (requests of one batch
        // may complete in any order, so not of what chain 0 writes).
        r.write_file(16 * 512, &[0xa5u8; 1024]);
        r.header(0x1a00, 0, 16);
        let s9 = r.chain(&[
            (0x1a00, 16, false),
            (data2 + 0x4000, 1024, true),
            (st(9), 1, true),
        ]);

        let used = r.run();
        assert_eq!(used.len(), 10, "every chain is returned: {used:?}");
        let len_of = |head: u16| {
            used.iter()
                .find(|(id, _)| *id == u32::from(head))
                .map(|&(_, l)| l)
                .unwrap()
        };
        assert_eq!(r.status(s0), Status::Ok.as_u8());
        assert_eq!(len_of(r.heads[0]), 1);
        assert_eq!(r.status(s1), Status::IoErr.as_u8());
        assert_eq!(r.status(s2), Status::Unsupp.as_u8());
        assert_eq!(r.status(s3), Status::Ok.as_u8());
        assert_eq!(len_of(r.heads[3]), 21);
        let mut id = [0u8; 20];
        r.gm.memory()
            .read_slice(&mut id, GuestAddress(data2 + 0x1000))
            .unwrap();
        assert_eq!(&id[..11], b"serial-0123");
        assert!(id[11..].iter().all(|&b| b == 0));
        assert_eq!(len_of(r.heads[4]), 0, "no status: returned unanswered");
        assert_eq!(r.status(s5), Status::IoErr.as_u8());
        assert_eq!(r.status(s6), Status::IoErr.as_u8());
        assert_eq!(r.status(s7), Status::IoErr.as_u8());
        assert_eq!(r.status(s8), Status::Unsupp.as_u8());
        assert_eq!(r.status(s9), Status::Ok.as_u8());
        assert_eq!(len_of(r.heads[9]), 1025);
        let mut back = [0u8; 1024];
        r.gm.memory()
            .read_slice(&mut back, GuestAddress(data2 + 0x4000))
            .unwrap();
        assert!(back.iter().all(|&b| b == 0xa5));
        let mut file = [0u8; 1024];
        std::fs::File::open(&r.file)
            .unwrap()
            .read_exact_at(&mut file, 4 * 512)
            .unwrap();
        assert!(file.iter().all(|&b| b == 0xc3), "chain 0's write landed");
    }

    #[test]
    fn read_only_device_fails_writes_discards_and_write_zeroes() {
        let mut r = Rig::new(true);
        let data = 0x10_0000u64;
        r.header(0x1000, 1, 0);
        let s0 = r.chain(&[(0x1000, 16, false), (data, 512, false), (st(0), 1, true)]);
        let mut seg = [0u8; 16];
        seg[8..12].copy_from_slice(&1u32.to_le_bytes());
        r.gm.memory()
            .write_slice(&seg, GuestAddress(0x1900))
            .unwrap();
        r.header(0x1100, 11, 0);
        let s1 = r.chain(&[(0x1100, 16, false), (0x1900, 16, false), (st(1), 1, true)]);
        r.header(0x1200, 13, 0);
        let s2 = r.chain(&[(0x1200, 16, false), (0x1900, 16, false), (st(2), 1, true)]);
        r.header(0x1300, 0, 0);
        let s3 = r.chain(&[(0x1300, 16, false), (data, 512, true), (st(3), 1, true)]);
        assert_eq!(r.run().len(), 4);
        assert_eq!(r.status(s0), Status::IoErr.as_u8());
        assert_eq!(r.status(s1), Status::IoErr.as_u8());
        assert_eq!(r.status(s2), Status::IoErr.as_u8());
        assert_eq!(r.status(s3), Status::Ok.as_u8());
        let mut file = [0u8; 512];
        std::fs::File::open(&r.file)
            .unwrap()
            .read_exact_at(&mut file, 0)
            .unwrap();
        assert_eq!(file, [0u8; 512]);
    }

    #[test]
    fn discard_and_write_zeroes_with_two_segments_are_unsupported() {
        let mut r = Rig::new(false);
        // Two segments of 8 sectors at sector 0 and 64.
        let mut segs = [0u8; 32];
        segs[8..12].copy_from_slice(&8u32.to_le_bytes());
        segs[16..24].copy_from_slice(&64u64.to_le_bytes());
        segs[24..28].copy_from_slice(&8u32.to_le_bytes());
        r.gm.memory()
            .write_slice(&segs, GuestAddress(0x1900))
            .unwrap();
        r.header(0x1100, 11, 0);
        let s0 = r.chain(&[(0x1100, 16, false), (0x1900, 32, false), (st(0), 1, true)]);
        r.header(0x1200, 13, 0);
        let s1 = r.chain(&[(0x1200, 16, false), (0x1900, 32, false), (st(1), 1, true)]);
        // The first segment alone is fine.
        r.header(0x1300, 13, 0);
        let s2 = r.chain(&[(0x1300, 16, false), (0x1900, 16, false), (st(2), 1, true)]);
        assert_eq!(r.run().len(), 3);
        assert_eq!(r.status(s0), Status::Unsupp.as_u8());
        assert_eq!(r.status(s1), Status::Unsupp.as_u8());
        assert_eq!(r.status(s2), Status::Ok.as_u8());
    }

    #[test]
    fn config_write_switches_the_cache_mode() {
        let r = Rig::new(false);
        assert_eq!(r.backend.get_config(32, 1), vec![1]);
        r.backend.set_config(32, &[0]).unwrap();
        assert_eq!(r.backend.get_config(32, 1), vec![0]);
        assert!(!r.backend.inner.dev.writeback());
        // Writes elsewhere in the config space are ignored.
        r.backend.set_config(0, &[9; 8]).unwrap();
        assert_eq!(r.backend.get_config(0, 8), (2048u64).to_le_bytes().to_vec());
    }

    mod crate_pins;
    mod drain;
    mod event_loop;
    mod flood;
    mod hostile;
    mod protocol;
    mod restart;
}
