//! A hostile guest that breaks the ring protocol and kicks over and over:
//! avail entries naming heads past the queue size, an avail index further
//! ahead than the queue holds. The queue stops at the first violation and
//! says so once (log and status); the log stays bounded however many
//! kicks follow; the other queue keeps serving; the stopped queue serves
//! again once the frontend starts its ring again.
//!
//! Two queues over real vrings in real guest memory and a real file; the
//! daemon's log lines (its `tracing` events and the `log` records of the
//! rust-vmm crates, as the daemon forwards them) are captured at the
//! daemon's default level, info.

use std::io::Write;
use std::sync::Once;

use vm_memory::Address;

use super::*;

/// Where queue 1's rings live (queue 0's start at 0).
const Q1_BASE: u64 = 0xa0_0000;
/// Queue 0's used ring, clear of its avail ring.
const Q0_USED: u64 = 0x9000;
/// Kicks the hostile guest sends.
const KICKS: u16 = 100;

/// The log lines written while `f` runs on this thread, at info and above.
fn captured<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    static LOG_RECORDS: Once = Once::new();
    // `log` records go to the thread's current subscriber, as in the daemon.
    LOG_RECORDS.call_once(|| {
        let _ = tracing_log::LogTracer::init();
    });
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let buf = Arc::clone(&buf);
        move || Sink(Arc::clone(&buf))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    (r, text.lines().map(str::to_owned).collect())
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A device with two queues; queue 0 is the Rig's own vring, queue 1 a
/// second one at `Q1_BASE`.
struct TwoQueues {
    r: Rig,
    q1: Vring,
    q1_mock_used: GuestAddress,
}

impl TwoQueues {
    fn new() -> TwoQueues {
        let mut r = Rig::new(false);
        // Rebuilt with two queues over the same file and memory.
        let mut cfg = Config::new(&r.file);
        cfg.device.queue_size = QSIZE;
        cfg.device.engine = crate::Engine::Sync;
        cfg.device.num_queues = 2;
        let dev = Device::open(cfg).unwrap();
        r.backend = BlkBackend::new(dev, r.gm.clone()).unwrap();
        // The mock lays the used ring over the avail ring's second half;
        // a full avail ring needs its own room.
        r.used_addr = GuestAddress(Q0_USED);
        r.vring
            .set_queue_info(0, 16 * u64::from(QSIZE), Q0_USED)
            .unwrap();
        let q1 = Vring::new(r.gm.clone(), QSIZE).unwrap();
        let guard = r.gm.memory();
        let mq = MockSplitQueue::create(&*guard, GuestAddress(Q1_BASE), QSIZE);
        q1.set_queue_info(mq.desc_table_addr().0, mq.avail_addr().0, mq.used_addr().0)
            .unwrap();
        q1.set_queue_size(QSIZE);
        q1.set_queue_ready(true);
        q1.set_enabled(true);
        let q1_mock_used = mq.used_addr();
        drop(guard);
        TwoQueues {
            r,
            q1,
            q1_mock_used,
        }
    }

    /// One kick of queue `q`, handled as the epoll loop would.
    fn kick(&self, q: usize) {
        let vring = if q == 0 { &self.r.vring } else { &self.q1 };
        self.r
            .backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(vring), q)
            .unwrap();
    }

    fn stopped(&self, q: usize) -> Option<String> {
        self.r
            .backend
            .inner
            .dev
            .stats()
            .queue(q)
            .snapshot(0)
            .stopped
    }

    /// Puts a one-sector read into queue `q`'s ring (descriptors from
    /// `desc`), publishes it and kicks; returns the used index afterwards
    /// and the status byte.
    fn read(&self, q: usize, desc: u16) -> (u16, u8) {
        let base = if q == 0 { 0 } else { Q1_BASE };
        let used = if q == 0 {
            self.r.used_addr
        } else {
            self.q1_mock_used
        };
        let mem = self.r.gm.memory();
        let hdr = 0x1000 + 0x100 * q as u64;
        let status = GuestAddress(st(8 + q as u64));
        self.r.header(hdr, 0, 0);
        mem.write_obj(0xffu8, status).unwrap();
        let chain = [
            (hdr, 16u32, false, F_NEXT),
            (0x30_0000 + 0x1000 * q as u64, 512, true, F_NEXT),
            (status.0, 1, true, 0),
        ];
        for (i, &(addr, len, w, flags)) in chain.iter().enumerate() {
            let index = desc + i as u16;
            let flags = flags | if w { F_WRITE } else { 0 };
            let next = if flags & F_NEXT != 0 { index + 1 } else { 0 };
            mem.write_obj(
                RawDescriptor::from(Descriptor::new(addr, len, flags, next)),
                GuestAddress(base + 16 * u64::from(index)),
            )
            .unwrap();
        }
        let avail = GuestAddress(base + 16 * u64::from(QSIZE));
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(desc, avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.kick(q);
        let used_idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        (used_idx, mem.read_obj(status).unwrap())
    }

    /// The hostile guest's move on queue 0: a ring full of heads past the
    /// queue size, published.
    fn fill_with_bad_heads(&self) {
        let mem = self.r.gm.memory();
        let avail = GuestAddress(16 * u64::from(QSIZE));
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        for i in 0..QSIZE {
            let slot = u64::from(idx.wrapping_add(i) % QSIZE);
            mem.write_obj(QSIZE + i * 7, avail.unchecked_add(4 + 2 * slot))
                .unwrap();
        }
        mem.write_obj(idx.wrapping_add(QSIZE), avail.unchecked_add(2))
            .unwrap();
    }

    /// What the frontend does when the guest resets the device: stop the
    /// ring (GET_VRING_BASE), set it up from scratch and start it again.
    fn restart_queue_0(&self) {
        self.r.backend.stop_vring(0).unwrap();
        let mem = self.r.gm.memory();
        let avail = GuestAddress(16 * u64::from(QSIZE));
        mem.write_obj(0u16, avail.unchecked_add(2)).unwrap();
        mem.write_obj(0u16, self.r.used_addr.unchecked_add(2))
            .unwrap();
        self.r.vring.set_queue_next_avail(0);
        self.r.vring.set_queue_next_used(0);
        self.r.backend.start_vring(0, &self.r.vring).unwrap();
    }
}

#[test]
fn bad_heads_stop_the_queue_and_the_log_stays_bounded() {
    let t = TwoQueues::new();
    let ((), lines) = captured(|| {
        for _ in 0..KICKS {
            t.fill_with_bad_heads();
            t.kick(0);
        }
    });
    assert!(
        lines.len() <= 2,
        "{} log lines for {KICKS} kicks of a ring full of bad heads (want at most 2):\n{}",
        lines.len(),
        lines[..lines.len().min(10)].join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("broke the virtio ring protocol")),
        "the stop is logged: {lines:?}"
    );
    let why = t.stopped(0).expect("the status reports queue 0 stopped");
    assert!(why.contains("names head 64"), "{why}");
    assert_eq!(t.stopped(1), None);

    // The other queue serves; the stopped one takes nothing more.
    assert_eq!(t.read(1, 0), (1, Status::Ok.as_u8()), "queue 1 serves");
    let used0: u16 =
        t.r.gm
            .memory()
            .read_obj(t.r.used_addr.unchecked_add(2))
            .unwrap();
    assert_eq!(used0, 0, "no bad head was returned");

    // Until the frontend starts the ring again.
    t.restart_queue_0();
    assert_eq!(t.stopped(0), None, "the status clears on restart");
    assert_eq!(
        t.read(0, 0),
        (1, Status::Ok.as_u8()),
        "queue 0 serves again"
    );
}

#[test]
fn a_bogus_avail_index_stops_the_queue_once() {
    let t = TwoQueues::new();
    let avail = GuestAddress(16 * u64::from(QSIZE));
    let ((), lines) = captured(|| {
        for k in 0..KICKS {
            // Each time further ahead than the queue holds.
            t.r.gm
                .memory()
                .write_obj(QSIZE + 1 + k, avail.unchecked_add(2))
                .unwrap();
            t.kick(0);
        }
    });
    assert!(
        lines.len() <= 2,
        "{} log lines for {KICKS} kicks with a bogus avail index (want at most 2):\n{}",
        lines.len(),
        lines[..lines.len().min(10)].join("\n")
    );
    let why = t.stopped(0).expect("the status reports queue 0 stopped");
    assert!(why.contains("avail index 65"), "{why}");
    assert_eq!(t.read(1, 0), (1, Status::Ok.as_u8()), "queue 1 serves");
    t.restart_queue_0();
    assert_eq!(
        t.read(0, 0),
        (1, Status::Ok.as_u8()),
        "queue 0 serves again"
    );
}

/// The rate limit: five lines, then a count of the rest when flushed.
#[test]
fn error_lines_are_rate_limited_with_a_count() {
    let mut limit = LogLimit::default();
    let (allowed, lines) = captured(|| {
        let allowed = (0..50).filter(|_| limit.allow(3)).count();
        limit.flush(3);
        limit.flush(3);
        allowed
    });
    assert_eq!(allowed, 5);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("suppressed=45") && lines[0].contains("queue=3"),
        "{lines:?}"
    );
}

/// The same through the io_uring event loop, on a worker thread of its
/// own kicked through a real eventfd: one valid request is served, then
/// the guest keeps adding bad heads and kicking; the loop stops taking
/// them, logs the stop once and keeps running until `stop_vring`.
#[test]
fn the_event_loop_stops_the_queue_too() {
    assert!(
        extstorage_blockio::UringEngine::event_loop_supported(),
        "this test needs io_uring's event loop (kernel 6.0 or later, io_uring not disabled)"
    );
    let mut l = super::event_loop::Looped::with(crate::Engine::Uring, false, 0);
    l.r.used_addr = GuestAddress(Q0_USED);
    l.r.vring
        .set_queue_info(0, 16 * u64::from(QSIZE), Q0_USED)
        .unwrap();
    let (backend, vring) = (l.r.backend.clone(), l.r.vring.clone());
    let worker = std::thread::spawn(move || {
        captured(|| {
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();
        })
        .1
    });
    let (head, status) = l.request(0, false, 0, 0x10_0000, 4096);
    l.publish(&[head]);
    l.wait_used(1);
    assert_eq!(l.status(status), Status::Ok.as_u8());
    // Fewer than the queue holds, so the first violation is the head.
    for k in 0..10 {
        l.publish(&[QSIZE + k]);
    }
    let stats = || l.r.backend.inner.dev.stats().queue(0).snapshot(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats().stopped.is_none() {
        assert!(Instant::now() < deadline, "the queue never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    // More kicks after the stop: consumed and ignored.
    for k in 0..KICKS {
        l.publish(&[QSIZE + k]);
    }
    std::thread::sleep(Duration::from_millis(200));
    l.r.vring.set_queue_ready(false);
    l.r.backend.stop_vring(0).unwrap();
    let lines = worker.join().unwrap();
    assert!(
        lines.len() <= 3,
        "{} log lines for {} kicks with bad heads through the event loop (want at most 3):\n{}",
        lines.len(),
        10 + KICKS,
        lines[..lines.len().min(10)].join("\n")
    );
    assert!(
        stats().stopped.unwrap().contains("names head 64"),
        "{:?}",
        stats().stopped
    );
    assert_eq!(l.used_idx(), 1, "no bad head was returned");
}
