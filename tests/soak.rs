//! Soak: several volumes, each served by its own daemon with different
//! options, driven at once by libblkio clients with a random mix of reads,
//! writes, flushes, discards, write-zeroes, online resizes and reconnects
//! over several queues. Every read is checked against a model of what the
//! volume must hold, and after the run every daemon must hold no more
//! descriptors, threads or memory than after its first reconnect.
//!
//! About 45 s by default; `EXTSTORAGE_SOAK_SECS=N` runs longer.

mod vhost_support;

use std::time::{Duration, Instant};

use blkio::{Blkioq, ReqFlags};
use extstorage_testbins::splitmix64;
use vhost_support::*;

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
const INITIAL: u64 = 16 * MIB;
/// Growth per online resize; the volume grows at most `MAX_GROWS` times.
const GROW: u64 = MIB;
const MAX_GROWS: u64 = 8;
/// RSS a daemon may gain between the first reconnect and the end
/// (allocator slack); a leak per request or connection exceeds it.
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn soak_secs() -> u64 {
    std::env::var("EXTSTORAGE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45)
}

/// The content of block `b` at generation `gen` (0: zeroes).
fn block_content(vol: u64, b: usize, generation: u64, out: &mut [u8]) {
    if generation == 0 {
        out.fill(0);
        return;
    }
    let mut x = splitmix64(vol ^ (b as u64) << 20 ^ generation << 40);
    for w in out.chunks_exact_mut(8) {
        x = splitmix64(x);
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// What a daemon holds: open fds, threads and resident memory.
#[derive(Debug, Clone, Copy)]
struct Resources {
    fds: usize,
    threads: u64,
    rss_kib: u64,
}

/// [`sample`] once the daemon is idle again: after a disconnect it tears the
/// connection down and sets up for the next one, so two samples 200 ms
/// apart must agree (bounded).
fn resources(d: &Daemon) -> Resources {
    let mut last = sample(d);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = sample(d);
        if (now.fds, now.threads) == (last.fds, last.threads) {
            return now;
        }
        last = now;
    }
    last
}

fn sample(d: &Daemon) -> Resources {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Resources {
        fds: d.fd_count(),
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}

#[derive(Debug, Default)]
struct Counts {
    writes: u64,
    reads: u64,
    flushes: u64,
    discards: u64,
    zeroes: u64,
    grows: u64,
    reconnects: u64,
    /// Sessions ended by dropping the client with writes in flight.
    abandoned: u64,
    /// Of those writes' blocks, how many were found with the new content
    /// and how many with the old.
    abandoned_landed: u64,
    abandoned_not_landed: u64,
}

/// One volume's soak: its daemon, the model of its blocks, a client.
struct Volume {
    id: u64,
    queues: i32,
    daemon: Daemon,
    model: Vec<u64>,
    /// Per block, the generation a write in flight when its client went
    /// away would have left (0: none): the block holds that or `model`.
    maybe: Vec<Option<u64>>,
    next_gen: u64,
    rng: u64,
    counts: Counts,
}

impl Volume {
    fn new(id: u64, queues: i32, args: &[&str]) -> Self {
        let daemon = Daemon::start(INITIAL, args);
        Self {
            id,
            queues,
            daemon,
            model: vec![0; (INITIAL as usize) / BLOCK],
            maybe: vec![None; (INITIAL as usize) / BLOCK],
            next_gen: 1,
            rng: splitmix64(id),
            counts: Counts::default(),
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng = splitmix64(self.rng);
        self.rng % n
    }

    fn connect(&self) -> Client {
        Client::connect(&self.daemon.sock, self.queues, false)
            .unwrap_or_else(|e| panic!("volume {}: connect: {e}\n{}", self.id, self.daemon.log()))
    }

    /// A random run of up to `max` blocks inside the volume.
    fn run(&mut self, max: u64) -> (usize, usize) {
        let n = 1 + self.rand(max) as usize;
        let first = self.rand((self.model.len() - n) as u64) as usize;
        (first, n)
    }

    fn check(&self, what: &str, ret: i32) {
        assert_eq!(
            ret,
            0,
            "volume {}: {what} failed\n{}",
            self.id,
            self.daemon.log()
        );
    }

    fn verify(&mut self, q: &mut Blkioq, mem: *mut u8, first: usize, n: usize) {
        let (ret, back) = read(q, mem, (first * BLOCK) as u64, n * BLOCK);
        self.check("read", ret);
        self.counts.reads += 1;
        let mut want = vec![0u8; BLOCK];
        for (i, got) in back.chunks_exact(BLOCK).enumerate() {
            let b = first + i;
            block_content(self.id, b, self.model[b], &mut want);
            if got == want.as_slice() {
                if self.maybe[b].take().is_some() {
                    self.counts.abandoned_not_landed += 1;
                }
                continue;
            }
            if let Some(g) = self.maybe[b] {
                block_content(self.id, b, g, &mut want);
                if got == want.as_slice() {
                    self.model[b] = g;
                    self.maybe[b] = None;
                    self.counts.abandoned_landed += 1;
                    continue;
                }
            }
            panic!(
                "volume {}: block {b} holds neither generation {} nor {:?} ({:?})",
                self.id, self.model[b], self.maybe[b], self.counts
            );
        }
    }

    fn verify_all(&mut self, c: &mut Client) {
        let per = QUEUE_MEM / BLOCK;
        let mem = c.mem(0);
        let mut first = 0;
        while first < self.model.len() {
            let n = per.min(self.model.len() - first);
            self.verify(&mut c.queues[0], mem, first, n);
            first += n;
        }
    }

    /// One random operation on a random queue.
    fn step(&mut self, c: &mut Client) {
        let qi = self.rand(self.queues as u64) as usize;
        let mem = c.mem(qi);
        let q = &mut c.queues[qi];
        match self.rand(100) {
            0..50 => {
                let (first, n) = self.run(8);
                let mut data = vec![0u8; n * BLOCK];
                for (i, chunk) in data.chunks_exact_mut(BLOCK).enumerate() {
                    block_content(self.id, first + i, self.next_gen, chunk);
                    self.model[first + i] = self.next_gen;
                    self.maybe[first + i] = None;
                    self.next_gen += 1;
                }
                let ret = write(q, mem, (first * BLOCK) as u64, &data);
                self.check("write", ret);
                self.counts.writes += 1;
            }
            50..80 => {
                let (first, n) = self.run(8);
                self.verify(q, mem, first, n);
            }
            80..88 => {
                let ret = flush(q);
                self.check("flush", ret);
                self.counts.flushes += 1;
            }
            r => {
                let (first, n) = self.run(16);
                let (offset, len) = ((first * BLOCK) as u64, (n * BLOCK) as u64);
                if r < 94 {
                    q.discard(offset, len, 4, ReqFlags::empty());
                    self.counts.discards += 1;
                } else {
                    q.write_zeroes(offset, len, 5, ReqFlags::empty());
                    self.counts.zeroes += 1;
                }
                let ret = wait_one(q);
                self.check("discard/write-zeroes", ret);
                self.model[first..first + n].fill(0);
                self.maybe[first..first + n].fill(None);
            }
        }
    }

    /// Submits a write of one block on every queue slot it can without
    /// waiting: the session then ends with them in flight. Each block
    /// keeps its old generation or takes the new one.
    fn write_without_waiting(&mut self, c: &mut Client) {
        for qi in 0..self.queues as usize {
            let mem = c.mem(qi);
            // SAFETY: nothing is in flight on this queue's memory yet; the
            // client (and so the region) outlives the requests until drop.
            let slots = unsafe { slice(mem) };
            let mut used = std::collections::BTreeSet::new();
            for k in 0..16 {
                let (b, _) = self.run(1);
                if !used.insert(b) || self.maybe[b].is_some() {
                    continue;
                }
                let at = k * BLOCK;
                block_content(self.id, b, self.next_gen, &mut slots[at..at + BLOCK]);
                self.maybe[b] = Some(self.next_gen);
                self.next_gen += 1;
                c.queues[qi].write(
                    (b * BLOCK) as u64,
                    mem.wrapping_add(at),
                    BLOCK,
                    100 + k,
                    ReqFlags::empty(),
                );
            }
            // Submit them, collecting nothing.
            let mut none = [];
            let mut zero = Duration::ZERO;
            c.queues[qi]
                .do_io(&mut none, 0, Some(&mut zero), None)
                .unwrap_or_else(|e| panic!("volume {}: submitting: {e}", self.id));
        }
        self.counts.abandoned += 1;
    }

    /// Grows the file by [`GROW`] and tells the daemon; the connected
    /// client must see the new capacity.
    fn grow(&mut self, c: &Client) {
        let size = INITIAL + (self.counts.grows + 1) * GROW;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.daemon.img)
            .and_then(|f| f.set_len(size))
            .unwrap();
        let out = self.daemon.resize_cmd();
        assert!(
            out.status.success(),
            "volume {}: resize: {}",
            self.id,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            c.capacity(),
            size,
            "volume {}: capacity after grow",
            self.id
        );
        self.model.resize(size as usize / BLOCK, 0);
        self.maybe.resize(size as usize / BLOCK, None);
        self.counts.grows += 1;
    }

    /// Runs until `until`; returns the daemon's resources after its first
    /// reconnect and at the end, both with no client connected.
    fn soak(&mut self, until: Instant) -> (Resources, Resources) {
        let mut warm = None;
        let mut connections = 0usize;
        while Instant::now() < until {
            let mut c = self.connect();
            connections += 1;
            self.verify_all(&mut c);
            let session = Instant::now() + Duration::from_millis(1500 + self.rand(2000));
            let mut grown = false;
            while Instant::now() < session.min(until) {
                for _ in 0..64 {
                    self.step(&mut c);
                }
                if !grown && self.counts.grows < MAX_GROWS && self.rand(4) == 0 {
                    self.grow(&c);
                    grown = true;
                }
            }
            if self.rand(2) == 0 {
                self.write_without_waiting(&mut c);
            } else {
                self.verify_all(&mut c);
            }
            drop(c);
            self.daemon.wait_disconnects(connections);
            self.counts.reconnects += 1;
            if warm.is_none() {
                warm = Some(resources(&self.daemon));
            }
        }
        (
            warm.expect("at least one session ran"),
            resources(&self.daemon),
        )
    }
}

#[test]
fn volumes_survive_a_random_mix_of_io_resizes_and_reconnects() {
    let secs = soak_secs();
    let until = Instant::now() + Duration::from_secs(secs);
    let specs: [(i32, &[&str]); 3] = [
        (2, &["--num-queues", "2", "--engine", "uring"]),
        (1, &["--num-queues", "1", "--engine", "sync"]),
        (
            2,
            &[
                "--num-queues",
                "2",
                "--engine",
                "uring",
                "--write-cache",
                "writethrough",
                "--direct-io",
                "off",
            ],
        ),
    ];
    let threads: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, &(queues, args))| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut v = Volume::new(i as u64 + 1, queues, &args);
                let (warm, end) = v.soak(until);
                (v.id, args.join(" "), v.counts, warm, end, v.daemon)
            })
        })
        .collect();
    let mut problems = Vec::new();
    for t in threads {
        let (id, args, counts, warm, end, daemon) = t.join().expect("a volume's soak panicked");
        eprintln!(
            "volume {id} ({args}): {counts:?}; resources after the first session {warm:?}, at the end {end:?}"
        );
        if counts.reconnects < 2 || counts.writes == 0 || counts.discards == 0 {
            problems.push(format!(
                "volume {id}: too little ran in {secs} s: {counts:?}"
            ));
        }
        if end.fds > warm.fds || end.threads > warm.threads {
            problems.push(format!(
                "volume {id}: descriptors or threads grew: {warm:?} -> {end:?}\n{}",
                daemon.log()
            ));
        }
        if end.rss_kib > warm.rss_kib + RSS_SLACK_KIB {
            problems.push(format!(
                "volume {id}: resident memory grew by more than {RSS_SLACK_KIB} KiB: {warm:?} -> {end:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
