//! Test-only behaviour, selected by environment variables that nothing in
//! production sets (they are not options: `--help` does not list them).
//! The restart tests use them to force what a real disk does only
//! sometimes:
//!
//! - `EXTSTORAGE_TEST_ONLY_HOLD_WRITES=EVERY:MILLIS`: every EVERY-th write
//!   of each queue completes MILLIS milliseconds late, after the writes
//!   submitted behind it ([`HoldEngine`]): completions out of order, and
//!   requests in flight at a chosen moment.
//! - `EXTSTORAGE_TEST_ONLY_NO_INFLIGHT=1`: the backend does not offer
//!   `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD` (the negative control of the
//!   restart tests).
//! - `EXTSTORAGE_TEST_ONLY_FAULT=eio:EVERY` or `short:EVERY`: every
//!   EVERY-th read or write of each queue completes with EIO once the
//!   backing has done it, or moves only the first half of its bytes and
//!   reports that ([`FaultEngine`]): a failing disk, and a transfer that
//!   stops short, for the fault tests.
//!
//! Each one in force is logged as a warning when the device opens.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use extstorage_blockio::{
    Completion, Engine, EnginePaths, EventLoop, IoBuf, Op, Request, SubmitError, Watches,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::Error;

/// The variable that turns on [`HoldEngine`].
pub const HOLD_WRITES_ENV: &str = "EXTSTORAGE_TEST_ONLY_HOLD_WRITES";
/// The variable that masks in-flight tracking.
pub const NO_INFLIGHT_ENV: &str = "EXTSTORAGE_TEST_ONLY_NO_INFLIGHT";
/// The variable that turns on [`FaultEngine`].
pub const FAULT_ENV: &str = "EXTSTORAGE_TEST_ONLY_FAULT";

/// What [`FaultEngine`] makes of a chosen request's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Fails it with EIO.
    Eio,
    /// Moves only the first half of its bytes (whole sectors), and says
    /// so in its completion.
    Short,
}

/// Which reads and writes [`FaultEngine`] spoils, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    /// What happens to them.
    pub kind: FaultKind,
    /// Every `every`-th read or write of a queue.
    pub every: u64,
}

/// Which writes [`HoldEngine`] holds back, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    /// Every `every`-th write of a queue.
    pub every: u64,
    /// How long its completion is held.
    pub hold: Duration,
}

/// The test-only settings in force (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TestOptions {
    /// Hold some write completions back.
    pub hold: Option<Hold>,
    /// Do not offer INFLIGHT_SHMFD.
    pub no_inflight: bool,
    /// Spoil some reads and writes.
    pub fault: Option<Fault>,
}

impl TestOptions {
    /// Reads the `EXTSTORAGE_TEST_ONLY_*` variables; a malformed value is
    /// an error naming it.
    pub(crate) fn from_env() -> Result<Self, Error> {
        Self::parse(
            std::env::var(HOLD_WRITES_ENV).ok().as_deref(),
            std::env::var(NO_INFLIGHT_ENV).ok().as_deref(),
            std::env::var(FAULT_ENV).ok().as_deref(),
        )
    }

    fn parse(
        hold: Option<&str>,
        no_inflight: Option<&str>,
        fault: Option<&str>,
    ) -> Result<Self, Error> {
        let bad = |var: &'static str, value: &str, expected: &'static str| Error::TestOption {
            var,
            value: value.to_owned(),
            expected,
        };
        let hold = match hold {
            None | Some("") => None,
            Some(v) => {
                const WANT: &str = "EVERY:MILLIS, two positive integers (e.g. 8:30000)";
                let (every, ms) = v
                    .split_once(':')
                    .ok_or_else(|| bad(HOLD_WRITES_ENV, v, WANT))?;
                let every: u64 = every
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(HOLD_WRITES_ENV, v, WANT))?;
                let ms: u64 = ms
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(HOLD_WRITES_ENV, v, WANT))?;
                Some(Hold {
                    every,
                    hold: Duration::from_millis(ms),
                })
            }
        };
        let no_inflight = match no_inflight {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(v) => return Err(bad(NO_INFLIGHT_ENV, v, "0 or 1")),
        };
        let fault = match fault {
            None | Some("") => None,
            Some(v) => {
                const WANT: &str =
                    "eio:EVERY or short:EVERY, EVERY a positive integer (e.g. eio:50)";
                let (kind, every) = v.split_once(':').ok_or_else(|| bad(FAULT_ENV, v, WANT))?;
                let kind = match kind {
                    "eio" => FaultKind::Eio,
                    "short" => FaultKind::Short,
                    _ => return Err(bad(FAULT_ENV, v, WANT)),
                };
                let every: u64 = every
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(FAULT_ENV, v, WANT))?;
                Some(Fault { kind, every })
            }
        };
        let opts = Self {
            hold,
            no_inflight,
            fault,
        };
        if let Some(f) = opts.fault {
            tracing::warn!(
                kind = ?f.kind,
                every = f.every,
                "TEST-ONLY: {FAULT_ENV} set: some reads and writes are made to fail"
            );
        }
        if let Some(h) = opts.hold {
            tracing::warn!(
                every = h.every,
                hold_ms = h.hold.as_millis(),
                "TEST-ONLY: {HOLD_WRITES_ENV} set: some write completions are held back"
            );
        }
        if opts.no_inflight {
            tracing::warn!("TEST-ONLY: {NO_INFLIGHT_ENV} set: in-flight tracking is not offered");
        }
        Ok(opts)
    }
}

/// An engine wrapper that holds the completion of every `every`-th write
/// back for `hold` (then returns it, so nothing waits forever), while the
/// requests submitted after it complete: completions out of order, as a
/// disk may give them, at a chosen rate.
///
/// A timer expires when the oldest held completion is due. The queue keeps
/// the path it runs in production: over io_uring, the engine's event loop,
/// in which the hold engine watches its timer ([`TIMER_WATCH`]); on the
/// epoll path, its completion fd is an epoll fd over the inner engine's and
/// the timer.
pub(crate) struct HoldEngine {
    inner: Box<dyn Engine>,
    spec: Hold,
    queue: usize,
    writes: u64,
    to_hold: HashSet<u64>,
    /// Held completions and when they are due, oldest first.
    held: VecDeque<(Instant, Completion)>,
    timer: TimerFd,
    wake: Epoll,
    /// The caller's watches that fired, failed or are armed in the inner
    /// event loop, the timer's sorted out.
    fired: Watches,
    failed: Watches,
    armed: Watches,
}

/// The event-loop watch the hold engine keeps on its timer: the last one
/// io_uring has, so the queue worker's (0-2) keep their numbers.
pub(crate) const TIMER_WATCH: u32 = 31;
const TIMER_BIT: Watches = 1 << TIMER_WATCH;

impl std::fmt::Debug for HoldEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldEngine")
            .field("inner", &self.inner.name())
            .field("spec", &self.spec)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl HoldEngine {
    /// Wraps `inner`, the engine of queue `queue`.
    pub(crate) fn new(inner: Box<dyn Engine>, spec: Hold, queue: usize) -> std::io::Result<Self> {
        let timer = TimerFd::new()?;
        let wake = Epoll::new()?;
        let mut fds = vec![timer.as_raw_fd()];
        fds.extend(inner.completion_fd());
        for fd in fds {
            let data = u64::try_from(fd).unwrap_or(0);
            wake.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )?;
        }
        Ok(Self {
            inner,
            spec,
            queue,
            writes: 0,
            to_hold: HashSet::new(),
            held: VecDeque::new(),
            timer,
            wake,
            fired: 0,
            failed: 0,
            armed: 0,
        })
    }

    /// Takes what fired and failed from the inner event loop: the caller's
    /// watches are kept for it, the timer's handled here (a fired timer is
    /// set again, which clears its expiry: its watch may be armed again
    /// without firing at once).
    fn sort_watches(&mut self) {
        let Some(el) = self.inner.event_loop() else {
            return;
        };
        let (fired, failed, armed) = (el.take_fired(), el.take_failed(), el.armed());
        self.fired |= fired & !TIMER_BIT;
        self.failed |= failed & !TIMER_BIT;
        self.armed = armed & !TIMER_BIT;
        if failed & TIMER_BIT != 0 {
            tracing::warn!(
                queue = self.queue,
                "test-only hold engine: its timer watch failed; armed again at the next wait"
            );
        }
        if fired & TIMER_BIT != 0 {
            self.arm();
        }
    }

    /// Arms the timer for the oldest held completion (or disarms it);
    /// either also clears an expiry already signalled.
    fn arm(&mut self) {
        let res = match self.held.front() {
            Some(&(due, _)) => {
                // A zero duration would disarm: at least a microsecond.
                let left = due
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                self.timer.reset(left, None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            tracing::error!(queue = self.queue, error = %e, "test-only hold engine: cannot set its timer");
        }
    }

    /// Consumes the inner engine's completion signal (the epoll path's
    /// reader reads our epoll fd, which has nothing to read).
    fn drain_inner_signal(&self) {
        if let Some(fd) = self.inner.completion_fd() {
            let mut buf = [0u8; 8];
            let _ = nix::unistd::read(fd, &mut buf);
        }
    }
}

impl Engine for HoldEngine {
    fn name(&self) -> &'static str {
        "test-only-hold"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        // SAFETY: the caller's guarantee for `req`'s buffers holds until
        // the completion carrying `user_data` is returned, which this
        // wrapper only delays: it returns every completion it takes from
        // the inner engine.
        unsafe { self.inner.submit(req, user_data) }?;
        if req.op.is_write() {
            self.writes += 1;
            if self.writes.is_multiple_of(self.spec.every) {
                self.to_hold.insert(user_data);
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        self.inner.commit()
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.drain_inner_signal();
        let now = Instant::now();
        if self.held.front().is_some_and(|&(due, _)| due <= now) {
            let (_, c) = self.held.pop_front()?;
            self.arm();
            tracing::info!(
                queue = self.queue,
                held = self.held.len(),
                "test-only hold engine: released a held write"
            );
            return Some(c);
        }
        loop {
            let c = self.inner.pop_completion()?;
            if !self.to_hold.remove(&c.user_data) {
                return Some(c);
            }
            self.held.push_back((now + self.spec.hold, c));
            if self.held.len() == 1 {
                self.arm();
            }
            tracing::info!(
                queue = self.queue,
                held = self.held.len(),
                "test-only hold engine: holding a write"
            );
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }

    fn event_loop(&mut self) -> Option<&mut dyn EventLoop> {
        if self.inner.event_loop().is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn paths(&self) -> EnginePaths {
        self.inner.paths()
    }
}

/// The inner engine's event loop, with the timer of the held completions
/// watched in it: a held completion falling due wakes the loop's wait as a
/// completion would.
impl EventLoop for HoldEngine {
    fn watch_readable(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()> {
        if watch == TIMER_WATCH {
            return Err(timer_watch_taken());
        }
        inner_loop(&mut self.inner)?.watch_readable(fd, watch)?;
        self.armed |= 1 << watch;
        Ok(())
    }

    fn watch_writes(&mut self, fd: RawFd, watch: u32) -> std::io::Result<()> {
        if watch == TIMER_WATCH {
            return Err(timer_watch_taken());
        }
        inner_loop(&mut self.inner)?.watch_writes(fd, watch)?;
        self.armed |= 1 << watch;
        Ok(())
    }

    fn wait(&mut self) -> std::io::Result<()> {
        self.sort_watches();
        let due = self
            .held
            .front()
            .is_some_and(|&(due, _)| due <= Instant::now());
        let waiting = !self.held.is_empty();
        let timer = self.timer.as_raw_fd();
        let wake_now = due || self.fired | self.failed != 0;
        let el = inner_loop(&mut self.inner)?;
        if wake_now {
            // Something to hand over already: submit, do not sleep.
            return el.poll();
        }
        if waiting && el.armed() & TIMER_BIT == 0 {
            el.watch_readable(timer, TIMER_WATCH)?;
        }
        let res = el.wait();
        self.sort_watches();
        res
    }

    fn defer_submission(&mut self, on: bool) {
        if let Some(el) = self.inner.event_loop() {
            el.defer_submission(on);
        }
    }

    fn poll(&mut self) -> std::io::Result<()> {
        inner_loop(&mut self.inner)?.poll()
    }

    fn fired(&self) -> Watches {
        self.fired
    }

    fn take_fired(&mut self) -> Watches {
        self.sort_watches();
        std::mem::take(&mut self.fired)
    }

    fn take_failed(&mut self) -> Watches {
        self.sort_watches();
        std::mem::take(&mut self.failed)
    }

    fn armed(&self) -> Watches {
        self.armed
    }

    fn unwatch_all(&mut self) -> std::io::Result<()> {
        let res = inner_loop(&mut self.inner)?.unwatch_all();
        self.sort_watches();
        res
    }
}

/// The event loop of `inner`, which [`HoldEngine::event_loop`] checked.
fn inner_loop(inner: &mut Box<dyn Engine>) -> std::io::Result<&mut dyn EventLoop> {
    inner.event_loop().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the test-only hold engine's inner engine has no event loop",
        )
    })
}

fn timer_watch_taken() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("event-loop watch {TIMER_WATCH} is the test-only hold engine's timer"),
    )
}

/// An engine wrapper that spoils every `every`-th read or write: EIO after
/// the backing did it, or a transfer cut to its first half.
/// Everything else passes through, the inner engine's event loop included,
/// so the queue runs its normal path.
pub(crate) struct FaultEngine {
    inner: Box<dyn Engine>,
    spec: Fault,
    queue: usize,
    data_ops: u64,
    to_spoil: HashSet<u64>,
}

impl std::fmt::Debug for FaultEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultEngine")
            .field("inner", &self.inner.name())
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl FaultEngine {
    /// Wraps `inner`, the engine of queue `queue`.
    pub(crate) fn new(inner: Box<dyn Engine>, spec: Fault, queue: usize) -> Self {
        Self {
            inner,
            spec,
            queue,
            data_ops: 0,
            to_spoil: HashSet::new(),
        }
    }
}

impl Engine for FaultEngine {
    fn name(&self) -> &'static str {
        "test-only-fault"
    }

    unsafe fn submit(&mut self, req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        // The caller's guarantee for `req`'s buffers holds until the
        // completion carrying `user_data` is returned; this wrapper returns
        // every completion of the inner engine (an EIO one altered).
        let data = matches!(req.op, Op::Read) || req.op.is_write();
        let spoil = data && (self.data_ops + 1).is_multiple_of(self.spec.every);
        let total: usize = req.bufs.iter().map(|b| b.len).sum();
        if spoil && self.spec.kind == FaultKind::Short && total >= 1024 {
            // The first half, in whole sectors: the buffers cut there.
            let mut left = total / 2 / 512 * 512;
            let bufs: Vec<IoBuf> = req
                .bufs
                .iter()
                .map_while(|b| {
                    let len = b.len.min(left);
                    left -= len;
                    (len > 0).then_some(IoBuf { addr: b.addr, len })
                })
                .collect();
            let half = Request {
                bufs: &bufs,
                ..*req
            };
            // SAFETY: `half` names a prefix of `req`'s buffers, which the
            // caller keeps valid until the completion is returned.
            unsafe { self.inner.submit(&half, user_data) }?;
        } else {
            // SAFETY: as above, for all of `req`'s buffers.
            unsafe { self.inner.submit(req, user_data) }?;
        }
        if data {
            self.data_ops += 1;
            if spoil {
                self.to_spoil.insert(user_data);
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        self.inner.commit()
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        let mut c = self.inner.pop_completion()?;
        if self.to_spoil.remove(&c.user_data) {
            if self.spec.kind == FaultKind::Eio {
                c.result = Err(libc::EIO);
            }
            tracing::info!(queue = self.queue, result = ?c.result, "test-only fault engine: spoiled a completion");
        }
        Some(c)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn event_loop(&mut self) -> Option<&mut dyn extstorage_blockio::EventLoop> {
        self.inner.event_loop()
    }

    fn paths(&self) -> EnginePaths {
        self.inner.paths()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use extstorage_blockio::{Backing, IoBuf, Op, OpenOptions, SyncEngine};
    use std::sync::Arc;

    /// The hold the hold-engine tests use: every second write, for 50 ms.
    const EVERY_SECOND_HELD: Hold = Hold {
        every: 2,
        hold: Duration::from_millis(50),
    };

    /// A 1 MiB scratch file and its backing (keep the file while the
    /// backing is used).
    fn scratch_backing() -> (tempfile::NamedTempFile, Arc<Backing>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Arc::new(Backing::open(f.path(), OpenOptions::default()).unwrap());
        (f, b)
    }

    /// Submits four 512-byte writes of `data` (user data 0 to 3, at
    /// offsets 0, 512, 1024, 1536) and commits them.
    ///
    /// # Safety
    ///
    /// `data` must outlive every completion of these writes.
    unsafe fn submit_four_writes(e: &mut dyn Engine, data: &mut [u8]) {
        let bufs = [IoBuf {
            addr: data.as_mut_ptr(),
            len: 512,
        }];
        for ud in 0..4u64 {
            let req = Request {
                op: Op::Write,
                offset: ud * 512,
                len: 512,
                bufs: &bufs,
            };
            // SAFETY: the caller keeps `data` alive past the completions.
            unsafe { e.submit(&req, ud) }.unwrap();
        }
        e.commit().unwrap();
    }

    #[test]
    fn options_parse_and_bad_values_say_what_is_expected() {
        assert_eq!(
            TestOptions::parse(None, None, None).unwrap(),
            TestOptions::default()
        );
        let o = TestOptions::parse(Some("4:250"), Some("1"), None).unwrap();
        assert_eq!(
            o.hold,
            Some(Hold {
                every: 4,
                hold: Duration::from_millis(250)
            })
        );
        assert!(o.no_inflight);
        for bad in ["4", "0:10", "4:0", "x:1", "4:-1"] {
            let e = TestOptions::parse(Some(bad), None, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(HOLD_WRITES_ENV) && e.contains("EVERY:MILLIS"),
                "{e}"
            );
        }
        let o = TestOptions::parse(None, None, Some("short:7")).unwrap();
        assert_eq!(
            o.fault,
            Some(Fault {
                kind: FaultKind::Short,
                every: 7
            })
        );
        for bad in ["eio", "eio:0", "lost:3", "eio:x", "eio:-2"] {
            let e = TestOptions::parse(None, None, Some(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(FAULT_ENV) && e.contains("eio:EVERY"), "{e}");
        }
        let e = TestOptions::parse(None, Some("yes"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(NO_INFLIGHT_ENV) && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn the_fault_engine_fails_or_halves_every_nth_data_request() {
        let (_f, b) = scratch_backing();
        for kind in [FaultKind::Eio, FaultKind::Short] {
            let spec = Fault { kind, every: 2 };
            let mut e = FaultEngine::new(Box::new(SyncEngine::new(Arc::clone(&b), 8)), spec, 0);
            let mut data = vec![9u8; 4096];
            let bufs = [
                IoBuf {
                    addr: data.as_mut_ptr(),
                    len: 1536,
                },
                IoBuf {
                    // SAFETY: 1536 is within `data`.
                    addr: unsafe { data.as_mut_ptr().add(1536) },
                    len: 2560,
                },
            ];
            let mut results = Vec::new();
            for ud in 0..4u64 {
                let op = if ud == 2 { Op::Flush } else { Op::Write };
                let req = Request {
                    op,
                    offset: ud * 4096,
                    len: 4096,
                    bufs: if op == Op::Flush { &[] } else { &bufs },
                };
                // SAFETY: `data` outlives every completion popped below.
                unsafe { e.submit(&req, ud) }.unwrap();
                e.commit().unwrap();
                while let Some(c) = e.pop_completion() {
                    results.push((c.user_data, c.result));
                }
            }
            // Writes 0, 1 and 3: the second data request (1) is spoiled;
            // the flush (2) does not count.
            let want_1 = match kind {
                FaultKind::Eio => Err(libc::EIO),
                FaultKind::Short => Ok(2048),
            };
            assert_eq!(
                results,
                vec![(0, Ok(4096)), (1, want_1), (2, Ok(0)), (3, Ok(4096))],
                "{kind:?}"
            );
        }
    }

    fn wait_readable(fd: RawFd) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 10_000) };
    }

    #[test]
    fn every_nth_write_completes_after_the_later_ones() {
        let (_f, b) = scratch_backing();
        let spec = EVERY_SECOND_HELD;
        let mut e = HoldEngine::new(Box::new(SyncEngine::new(b, 8)), spec, 0).unwrap();
        let mut data = vec![7u8; 512];
        // SAFETY: `data` outlives every completion popped below.
        unsafe { submit_four_writes(&mut e, &mut data) };
        let mut order = Vec::new();
        while let Some(c) = e.pop_completion() {
            order.push(c.user_data);
        }
        // Writes 2 and 4 (user data 1 and 3) are held.
        assert_eq!(order, [0, 2]);
        assert_eq!(e.in_flight(), 2);
        while order.len() < 4 {
            wait_readable(e.completion_fd().unwrap());
            while let Some(c) = e.pop_completion() {
                order.push(c.user_data);
            }
        }
        assert_eq!(order, [0, 2, 1, 3]);
        assert_eq!(e.in_flight(), 0);
        drop(data);
    }

    /// Over io_uring the hold engine keeps the engine's event loop (the
    /// queue runs the path production runs, not the epoll one): a held
    /// completion falling due wakes the loop's wait through the timer
    /// watch, the caller's watches fire as they would without it, and the
    /// timer's never reaches the caller.
    #[test]
    fn held_writes_keep_the_io_uring_event_loop() {
        use extstorage_blockio::UringEngine;
        use std::io::Write;
        if !UringEngine::event_loop_supported() {
            extstorage_testbins::skip_or_fail(
                extstorage_testbins::Facility::Uring,
                "io_uring event loop unavailable here",
            );
            return;
        }
        let (_f, b) = scratch_backing();
        let spec = EVERY_SECOND_HELD;
        let inner = Box::new(UringEngine::new(b, 8).unwrap());
        let mut e = HoldEngine::new(inner, spec, 0).unwrap();
        assert!(e.paths().event_loop, "{:?}", e.paths());
        let el = e
            .event_loop()
            .expect("the hold engine keeps io_uring's event loop");
        let err = el.watch_readable(0, TIMER_WATCH).unwrap_err();
        assert!(err.to_string().contains("hold engine's timer"), "{err}");
        el.defer_submission(true);
        let mut kick = std::fs::File::from(std::os::fd::OwnedFd::from(
            nix::sys::eventfd::EventFd::from_value_and_flags(
                0,
                nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .unwrap(),
        ));
        el.watch_readable(kick.as_raw_fd(), 0).unwrap();
        assert_eq!(el.armed(), 1);
        let mut data = vec![7u8; 512];
        // SAFETY: `data` outlives every completion popped below.
        unsafe { submit_four_writes(&mut e, &mut data) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut order = Vec::new();
        while order.len() < 4 {
            assert!(Instant::now() < deadline, "stuck at {order:?}");
            let el = e.event_loop().unwrap();
            el.wait().unwrap();
            assert_eq!(el.take_fired(), 0, "nothing of the caller's fired");
            assert_eq!(el.take_failed(), 0);
            while let Some(c) = e.pop_completion() {
                assert_eq!(c.result, Ok(512));
                order.push(c.user_data);
            }
        }
        // Writes 2 and 4 (user data 1 and 3) were held, and released
        // through the loop's own wait (io_uring completes the others in
        // its own order).
        let (mut first, mut last) = (order[..2].to_vec(), order[2..].to_vec());
        first.sort_unstable();
        last.sort_unstable();
        assert_eq!((first, last), (vec![0, 2], vec![1, 3]), "{order:?}");
        assert_eq!(e.in_flight(), 0);
        // The caller's watch fires as it would without the hold engine
        // (sorted from the completions as they are drained).
        kick.write_all(&1u64.to_ne_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut fired = 0;
        while fired == 0 {
            assert!(Instant::now() < deadline, "the kick watch never fired");
            e.event_loop().unwrap().wait().unwrap();
            assert!(e.pop_completion().is_none());
            fired = e.event_loop().unwrap().take_fired();
        }
        assert_eq!(fired, 1, "the caller's watch, not the timer's");
        let el = e.event_loop().unwrap();
        el.unwatch_all().unwrap();
        assert_eq!(el.armed(), 0);
        drop(data);
    }
}
