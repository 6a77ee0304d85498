//! Shared by the benches: a vhost-user-blk load generator built on the
//! `blkio` crate (libblkio's `virtio-blk-vhost-user` driver), the backends
//! it is pointed at (qemu-storage-daemon, our daemon) and fio on the raw file.
//!
//! Every backend is a real process serving a real socket; nothing is mocked.
#![allow(dead_code)] // each bench uses a different part of this module

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The libblkio driver for a vhost-user-blk socket.
pub const DRIVER: &str = "virtio-blk-vhost-user";

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Read requests.
    Read,
    /// Write requests.
    Write,
}

/// Where successive requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Uniformly random block-aligned offsets (with replacement).
    Random,
    /// Consecutive blocks, wrapping at the end; each queue starts at its own slice.
    Sequential,
}

/// One workload: what every queue does, and how many queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Short name used in tables and on the command line.
    pub name: &'static str,
    /// Read or write.
    pub dir: Dir,
    /// Random or sequential.
    pub pattern: Pattern,
    /// Request size in bytes.
    pub bs: usize,
    /// Requests kept in flight per queue.
    pub depth: usize,
    /// Queues, one client thread each.
    pub queues: usize,
}

impl Workload {
    /// `bs`-byte `dir` requests in `pattern`, `depth` in flight, on one
    /// queue.
    pub const fn new(
        name: &'static str,
        dir: Dir,
        pattern: Pattern,
        bs: usize,
        depth: usize,
    ) -> Workload {
        Workload {
            name,
            dir,
            pattern,
            bs,
            depth,
            queues: 1,
        }
    }

    /// The same workload on `queues` queues.
    pub const fn on_queues(self, queues: usize) -> Workload {
        Workload { queues, ..self }
    }
}

/// The workloads of issue 4, in table order.
pub const WORKLOADS: [Workload; 5] = [
    Workload::new("randread-4k-qd32", Dir::Read, Pattern::Random, 4096, 32),
    Workload::new("randwrite-4k-qd32", Dir::Write, Pattern::Random, 4096, 32),
    Workload::new("randread-4k-qd1", Dir::Read, Pattern::Random, 4096, 1),
    Workload::new("randread-4k-qd32-2q", Dir::Read, Pattern::Random, 4096, 32).on_queues(2),
    Workload::new(
        "seqread-128k-qd8",
        Dir::Read,
        Pattern::Sequential,
        128 * 1024,
        8,
    ),
];

/// When a queue's run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many completed requests (criterion's `iter_custom`).
    Count(u64),
    /// Unmeasured warm-up, then a measured time window.
    Time {
        /// Not counted.
        warmup: Duration,
        /// Counted.
        measure: Duration,
    },
}

/// Requests completed in the measured window and how long it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Requests completed.
    pub ops: u64,
    /// Measured time.
    pub elapsed: Duration,
}

impl Tally {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// A started blkio connection with its queues and a mapped buffer region.
pub struct Client {
    // Queues before the instance: they must drop first.
    queues: Vec<blkio::Blkioq>,
    blkio: blkio::Blkio,
    region: blkio::MemoryRegion,
    /// Bytes of buffer each queue owns, at `region.addr + i * per_queue`.
    per_queue: usize,
    capacity: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("queues", &self.queues.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn blkio_err(what: &str) -> impl FnOnce(blkio::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("blkio {what}: {e} (errno {})", e.errno().raw_os_error())
}

impl Client {
    /// Connects to `socket` with `queues` queues of `queue_size` entries and
    /// room for `depth` buffers of `bs` bytes per queue. Retries while the
    /// socket is not accepting yet, up to `timeout`.
    pub fn connect(
        socket: &Path,
        queues: usize,
        queue_size: usize,
        depth: usize,
        bs: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut blkio = loop {
            let mut b = blkio::Blkio::new(DRIVER).map_err(blkio_err("new"))?;
            b.set_str("path", &socket.to_string_lossy())
                .map_err(blkio_err("set path"))?;
            match b.connect() {
                Ok(()) => break b,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(blkio_err("connect")(e)),
            }
        };
        blkio
            .set_i32("num-queues", i32::try_from(queues)?)
            .map_err(blkio_err("set num-queues"))?;
        blkio
            .set_i32("queue-size", i32::try_from(queue_size)?)
            .map_err(blkio_err("set queue-size"))?;
        let started = blkio.start().map_err(blkio_err("start"))?;
        let capacity = blkio.get_u64("capacity").map_err(blkio_err("capacity"))?;
        let align = usize::try_from(
            blkio
                .get_u64("mem-region-alignment")
                .map_err(blkio_err("mem-region-alignment"))?,
        )?
        .max(4096);
        let per_queue = (depth * bs).next_multiple_of(align);
        let region = blkio
            .alloc_mem_region(per_queue * queues)
            .map_err(blkio_err("alloc_mem_region"))?;
        blkio
            .map_mem_region(&region)
            .map_err(blkio_err("map_mem_region"))?;
        // SAFETY: the region is `per_queue * queues` bytes of fresh,
        // writable memory that nobody else uses yet.
        unsafe { std::ptr::write_bytes(region.addr as *mut u8, 0xa5, per_queue * queues) };
        Ok(Self {
            queues: started.queues,
            blkio,
            region,
            per_queue,
            capacity,
        })
    }

    /// Device size in bytes, as the backend reports it.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Runs `w` on every queue at once, one thread per queue, and sums the
    /// queues' rates into one tally (ops over the longest window).
    pub fn run(&mut self, w: &Workload, stop: Stop, seed: u64) -> Result<Tally> {
        let capacity = self.capacity;
        let base = self.region.addr;
        let per_queue = self.per_queue;
        let n = self.queues.len().min(w.queues);
        if n == 0 {
            bail!("the connection has no queue");
        }
        let results: Vec<Result<Tally>> = std::thread::scope(|s| {
            let handles: Vec<_> = self.queues[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, q)| {
                    let buf = base + i * per_queue;
                    let start_block = (capacity / w.bs as u64) / n as u64 * i as u64;
                    s.spawn(move || {
                        drive(
                            q,
                            buf,
                            capacity,
                            w,
                            stop,
                            seed ^ (i as u64 + 1),
                            start_block,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("client thread panicked")))
                })
                .collect()
        });
        let mut iops = 0.0;
        let mut total = Tally::default();
        for r in results {
            let t = r?;
            iops += t.iops();
            total.ops += t.ops;
            total.elapsed = total.elapsed.max(t.elapsed);
        }
        // Report the summed rate: scale ops to the longest window.
        total.ops = (iops * total.elapsed.as_secs_f64()).round() as u64;
        Ok(total)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.queues.clear();
        self.blkio.unmap_mem_region(&self.region);
    }
}

/// xorshift64*: cheap offsets, no dependency.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Keeps `w.depth` requests in flight on one queue until `stop`.
fn drive(
    q: &mut blkio::Blkioq,
    buf_base: usize,
    capacity: u64,
    w: &Workload,
    stop: Stop,
    seed: u64,
    start_block: u64,
) -> Result<Tally> {
    let blocks = capacity / w.bs as u64;
    if blocks == 0 {
        bail!(
            "device of {capacity} bytes is smaller than one {}-byte request",
            w.bs
        );
    }
    let mut rng = seed.max(1);
    let mut seq = start_block % blocks;
    let mut next_offset = || match w.pattern {
        Pattern::Random => (next_rand(&mut rng) % blocks) * w.bs as u64,
        Pattern::Sequential => {
            let o = seq * w.bs as u64;
            seq = (seq + 1) % blocks;
            o
        }
    };
    let mut submit = |q: &mut blkio::Blkioq, slot: usize| {
        let addr = buf_base + slot * w.bs;
        let off = next_offset();
        let flags = blkio::ReqFlags::empty();
        match w.dir {
            Dir::Read => q.read(off, addr as *mut u8, w.bs, slot, flags),
            Dir::Write => q.write(off, addr as *const u8, w.bs, slot, flags),
        }
    };
    let depth = w.depth.max(1);
    let mut completions: Vec<MaybeUninit<blkio::Completion>> =
        (0..depth).map(|_| MaybeUninit::uninit()).collect();
    for slot in 0..depth {
        submit(q, slot);
    }
    let mut in_flight = depth;
    let begin = Instant::now();
    let (measure_from, deadline) = match stop {
        Stop::Count(_) => (begin, None),
        Stop::Time { warmup, measure } => (begin + warmup, Some(begin + warmup + measure)),
    };
    let mut measuring = matches!(stop, Stop::Count(_));
    let mut started_at = begin;
    let mut ops = 0u64;
    let mut elapsed = None;
    while in_flight > 0 {
        let n = q
            .do_io(&mut completions, 1, None, None)
            .map_err(blkio_err("do_io"))?;
        for c in &completions[..n] {
            // SAFETY: do_io initialised the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            in_flight -= 1;
            if c.ret != 0 {
                bail!(
                    "a {:?} request failed with errno {}: is the backend writable and big enough?",
                    w.dir,
                    -c.ret
                );
            }
            if measuring && elapsed.is_none() {
                ops += 1;
            }
            let done = match (stop, elapsed) {
                (_, Some(_)) => true,
                (Stop::Count(n), None) => ops + in_flight as u64 >= n,
                (Stop::Time { .. }, None) => false,
            };
            if !done {
                submit(q, c.user_data);
                in_flight += 1;
            }
        }
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            started_at = now;
        }
        if elapsed.is_none() {
            let over = match (stop, deadline) {
                (Stop::Count(n), _) => ops >= n,
                (_, Some(d)) => now >= d,
                _ => false,
            };
            if over {
                elapsed = Some(now - started_at);
            }
        }
    }
    Ok(Tally {
        ops,
        elapsed: elapsed.unwrap_or_else(|| started_at.elapsed()),
    })
}

/// A backing image filled with non-zero data (holes read faster than data on
/// tmpfs, which would flatter every backend). Removed on drop.
#[derive(Debug)]
pub struct Image {
    /// Where it is.
    pub path: PathBuf,
}

impl Image {
    /// Creates `size` bytes at `path`.
    pub fn create(path: PathBuf, size: u64) -> Result<Self> {
        use std::io::Write;
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create the bench image {}", path.display()))?;
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(Self { path })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A backend daemon we started; stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    /// The command line, for the report.
    pub command: String,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `argv` and waits until `socket` exists. Fails, with the
    /// daemon's own output, if it exits first or the socket never appears.
    pub fn spawn(argv: &[String], socket: &Path, timeout: Duration) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let stderr = socket.with_extension("log");
        let log = std::fs::File::create(&stderr)?;
        use std::os::unix::process::CommandExt;
        // A process group of its own: stopping the group also stops what a
        // wrapper (strace, perf, taskset) started in `$EXTSTORAGE_VHOST_USER_BLK`.
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", argv[0]))?;
        cleanup::add_pid(child.id());
        let mut d = Self {
            child,
            socket: socket.to_path_buf(),
            command: argv.join(" "),
            stderr,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if socket.exists() {
                return Ok(d);
            }
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "{} exited ({status}) without creating {}: {}",
                    argv[0],
                    socket.display(),
                    d.output_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not create {} within {timeout:?}: {}",
                    argv[0],
                    socket.display(),
                    d.output_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the daemon wrote (stdout and stderr).
    pub fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(no output)".to_owned()
        } else {
            tail
        }
    }

    /// CPU time the daemon has used so far (user + system, all threads),
    /// from /proc/PID/stat.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid())
    }

    /// VmRSS and VmHWM of the daemon in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| anyhow!("no {name} in /proc/{}/status", self.pid()))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow!("malformed {line}"))?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Sends `sig` to the process group led by `pid` (every daemon leads one).
pub fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        signal_group(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever is left of the group (the leader, or a wrapper's child).
        signal_group(self.child.id(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        cleanup::remove_pid(self.child.id());
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// What a backend is, and so how it is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// fio with io_uring and O_DIRECT on the backing itself: the ceiling,
    /// no virtualisation, not a daemon.
    Fio,
    /// qemu-storage-daemon; `opts` are appended to its `--blockdev`
    /// (empty: the documented command, page cache and `aio=threads`).
    Qsd {
        /// E.g. `,cache.direct=on,aio=native`.
        opts: &'static str,
    },
    /// Our daemon: `serve --path … --socket … --num-queues N --queue-size
    /// 256` followed by `args`.
    Ours {
        /// The binary; None: [`our_daemon`].
        bin: Option<PathBuf>,
        /// Extra command-line arguments (the variant's levers).
        args: Vec<String>,
    },
}

/// One backend the harness can measure: a name (tables, command line, JSON)
/// and how to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Short name.
    pub name: String,
    /// How it is started.
    pub kind: Kind,
}

/// The `--poll-us` of the `ours-poll` backend: the spin ends after this
/// long without progress, so it must outlast the device's latency and the
/// guest's reaction to a completion (each 20-40 µs on a loop device here:
/// at 4k QD1, 50 µs still slept 0.63 times per request, 200 µs never).
pub const POLL_US: &str = "200";

/// Our daemon's built-in variants: name and the arguments appended to the
/// common `serve` command. To measure a new lever, add a row here (or pass
/// `--variant NAME=ARGS` to the comparison, `EXTSTORAGE_BENCH_VARIANTS` to
/// the criterion bench; see [`Backend::parse_variant`]).
pub const OURS_VARIANTS: &[(&str, &[&str])] = &[
    // The default a user gets: no engine or polling flags at all.
    ("ours", &[]),
    ("ours-uring", &["--engine", "uring"]),
    ("ours-sync", &["--engine", "sync"]),
    ("ours-poll", &["--poll-us", POLL_US]),
];

/// qemu-storage-daemon's variants: the documented command, then direct I/O
/// with each of its native AIO engines.
pub const QSD_VARIANTS: &[(&str, &str)] = &[
    ("qsd", ""),
    ("qsd-native", ",cache.direct=on,aio=native"),
    ("qsd-uring", ",cache.direct=on,aio=io_uring"),
];

impl Backend {
    /// Every built-in backend, in table order: fio, the qsd variants, ours.
    pub fn builtin() -> Vec<Backend> {
        let mut v = vec![Backend {
            name: "fio".into(),
            kind: Kind::Fio,
        }];
        v.extend(QSD_VARIANTS.iter().map(|&(name, opts)| Backend {
            name: name.into(),
            kind: Kind::Qsd { opts },
        }));
        v.extend(OURS_VARIANTS.iter().map(|&(name, args)| Backend {
            name: name.into(),
            kind: Kind::Ours {
                bin: None,
                args: args.iter().map(|&a| a.to_owned()).collect(),
            },
        }));
        v
    }

    /// Finds a built-in backend by name.
    pub fn named(name: &str) -> Option<Backend> {
        Self::builtin().into_iter().find(|b| b.name == name)
    }

    /// Parses an extra variant of our daemon, `NAME=ARGS` or
    /// `NAME@BINARY=ARGS` (ARGS split at whitespace, may be empty), e.g.
    /// `ours-fixed=--fixed-buffers on` or
    /// `main@/work/main/target/release/extstorage-vhost-user-blk=`.
    pub fn parse_variant(spec: &str) -> Result<Backend> {
        let (head, args) = spec.split_once('=').with_context(|| {
            format!("variant {spec:?} is not NAME=ARGS or NAME@BINARY=ARGS (ARGS may be empty)")
        })?;
        let (name, bin) = match head.split_once('@') {
            Some((n, b)) => (n, Some(PathBuf::from(b))),
            None => (head, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bail!("variant name {name:?} must be letters, digits, '-', '_' or '.'");
        }
        if let Some(b) = &bin
            && !b.is_file()
        {
            bail!(
                "variant {name}: binary {} does not exist (build it first)",
                b.display()
            );
        }
        Ok(Backend {
            name: name.into(),
            kind: Kind::Ours {
                bin,
                args: args.split_whitespace().map(String::from).collect(),
            },
        })
    }

    /// Whether this is a daemon (everything but fio).
    pub fn is_daemon(&self) -> bool {
        self.kind != Kind::Fio
    }

    /// Whether this is one of qemu-storage-daemon's variants.
    pub fn is_qsd(&self) -> bool {
        matches!(self.kind, Kind::Qsd { .. })
    }

    /// Whether this is our daemon.
    pub fn is_ours(&self) -> bool {
        matches!(self.kind, Kind::Ours { .. })
    }

    /// The command line serving `target` on `socket` with `queues` queues
    /// (None for fio, which is run by [`fio`]).
    pub fn argv(&self, target: &Path, socket: &Path, queues: usize) -> Option<Vec<String>> {
        let img = target.display().to_string();
        let sock = socket.display().to_string();
        match &self.kind {
            Kind::Fio => None,
            Kind::Qsd { opts } => {
                // A block device takes host_device (it refuses `file`'s
                // regular-file assumptions); a file takes `file`.
                let driver = if is_block_device(target) {
                    "host_device"
                } else {
                    "file"
                };
                Some(vec![
                    "qemu-storage-daemon".into(),
                    "--blockdev".into(),
                    format!("driver={driver},node-name=f0,filename={img}{opts}"),
                    "--export".into(),
                    format!(
                        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={sock},writable=on,num-queues={queues}"
                    ),
                ])
            }
            Kind::Ours { bin, args } => {
                let mut v = vec![
                    bin.clone().unwrap_or_else(our_daemon).display().to_string(),
                    "serve".into(),
                    "--path".into(),
                    img,
                    "--socket".into(),
                    sock,
                    "--num-queues".into(),
                    queues.to_string(),
                    "--queue-size".into(),
                    "256".into(),
                ];
                v.extend(args.iter().cloned());
                Some(v)
            }
        }
    }

    /// The command, for the report: [`argv`](Self::argv) on placeholders,
    /// or fio's options.
    pub fn describe(&self) -> String {
        match self.argv(Path::new("TARGET"), Path::new("SOCK"), 1) {
            // host_device on the loop device, file on the tmpfs file.
            Some(v) => v
                .join(" ")
                .replace("driver=file,", "driver=host_device|file,")
                .replace("num-queues=1", "num-queues=N")
                .replace("--num-queues 1 ", "--num-queues N "),
            None => "fio --ioengine=io_uring --direct=1 --randrepeat=0 --norandommap \
--time_based --filename=TARGET --rw=… --bs=… --iodepth=… --numjobs=<queues>"
                .into(),
        }
    }
}

/// Our daemon binary: `$EXTSTORAGE_VHOST_USER_BLK`, else the one cargo
/// built for this bench (target/release for `cargo bench`).
pub fn our_daemon() -> PathBuf {
    std::env::var_os("EXTSTORAGE_VHOST_USER_BLK")
        .map(PathBuf::from)
        .unwrap_or_else(|| extstorage_testbins::path(extstorage_testbins::DAEMON))
}

/// Whether `path` is a block device.
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Runs `w` with fio's io_uring engine directly on `image` (no
/// virtualisation) for `warmup` + `measure`, and returns its IOPS.
pub fn fio(image: &Path, w: &Workload, warmup: Duration, measure: Duration) -> Result<f64> {
    let rw = match (w.dir, w.pattern) {
        (Dir::Read, Pattern::Random) => "randread",
        (Dir::Write, Pattern::Random) => "randwrite",
        (Dir::Read, Pattern::Sequential) => "read",
        (Dir::Write, Pattern::Sequential) => "write",
    };
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--ioengine=io_uring",
        "--direct=1",
        "--randrepeat=0",
        "--norandommap",
        "--group_reporting",
        "--time_based",
        "--output-format=json",
    ])
    .arg(format!("--filename={}", image.display()))
    .arg(format!("--rw={rw}"))
    .arg(format!("--bs={}", w.bs))
    .arg(format!("--iodepth={}", w.depth))
    .arg(format!("--numjobs={}", w.queues))
    .arg(format!("--ramp_time={}", ms(warmup)))
    .arg(format!("--runtime={}", ms(measure)));
    let out = cmd.output().context("cannot run fio: is it installed?")?;
    if !out.status.success() {
        bail!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // fio may print warnings before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json_start = text
        .find('{')
        .ok_or_else(|| anyhow!("fio printed no JSON: {text}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text[json_start..]).context("cannot parse fio's JSON output")?;
    let job = &v["jobs"][0];
    let side = match w.dir {
        Dir::Read => &job["read"],
        Dir::Write => &job["write"],
    };
    side["iops"]
        .as_f64()
        .ok_or_else(|| anyhow!("fio's JSON has no jobs[0].{:?}.iops", w.dir))
}

/// CPU time process `pid` has used (utime + stime of /proc/PID/stat).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields resume after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        Ok(fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Voluntary plus involuntary context switches of every thread of `pid` so
/// far, from /proc/PID/task/*/status (threads that already exited are not
/// counted; the daemons keep theirs for the whole connection).
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = match std::fs::read_to_string(task?.path().join("status")) {
            Ok(s) => s,
            // The thread ended between the listing and the read.
            Err(_) => continue,
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>()?;
            }
        }
    }
    Ok(total)
}

/// Counts from `perf stat` attached to a daemon for one window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PerfCounts {
    /// System calls entered (`raw_syscalls:sys_enter`).
    pub syscalls: f64,
    /// Context switches (`context-switches`).
    pub context_switches: f64,
    /// CPU migrations (`cpu-migrations`).
    pub cpu_migrations: f64,
}

/// Runs `perf stat` on every thread of `pid` for `window` and returns its
/// counts. Fails with perf's own words when perf or the tracepoint is
/// missing.
pub fn perf_stat(pid: u32, window: Duration) -> Result<PerfCounts> {
    let out = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter,context-switches,cpu-migrations",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(format!("{:.3}", window.as_secs_f64()))
        .stdin(Stdio::null())
        .output()
        .context("cannot run perf: is it installed (apt-get install linux-perf)?")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("perf stat failed ({}): {}", out.status, text.trim());
    }
    let mut c = PerfCounts::default();
    for line in text.lines() {
        // value,unit,event,run-time,percentage,...
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(v) = f[0].parse::<f64>() else { continue };
        match f[2] {
            "raw_syscalls:sys_enter" => c.syscalls = v,
            "context-switches" => c.context_switches = v,
            "cpu-migrations" => c.cpu_migrations = v,
            _ => {}
        }
    }
    Ok(c)
}

/// Everything a run must undo even when it is interrupted: daemons to stop,
/// loop devices to detach, directories to remove. The signal thread of
/// [`install_cleanup_on_signals`] undoes it all on SIGINT/SIGTERM/SIGHUP;
/// normal drops unregister what they undid themselves.
pub mod cleanup {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[derive(Debug, Default)]
    struct Registry {
        pids: Vec<u32>,
        loops: Vec<PathBuf>,
        dirs: Vec<PathBuf>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        pids: Vec::new(),
        loops: Vec::new(),
        dirs: Vec::new(),
    });

    fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut g = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A process to stop if the run is interrupted.
    pub fn add_pid(pid: u32) {
        with(|r| r.pids.push(pid));
    }

    /// It was stopped normally.
    pub fn remove_pid(pid: u32) {
        with(|r| r.pids.retain(|&p| p != pid));
    }

    /// A loop device to detach if the run is interrupted.
    pub fn add_loop(dev: PathBuf) {
        with(|r| r.loops.push(dev));
    }

    /// It was detached normally.
    pub fn remove_loop(dev: &std::path::Path) {
        with(|r| r.loops.retain(|d| d != dev));
    }

    /// A directory to remove if the run is interrupted.
    pub fn add_dir(dir: PathBuf) {
        with(|r| r.dirs.push(dir));
    }

    /// Stops every registered process group (SIGTERM, then SIGKILL after 3 s),
    /// detaches every loop device and removes every directory.
    pub fn run_all() {
        let (pids, loops, dirs) = with(|r| {
            (
                std::mem::take(&mut r.pids),
                std::mem::take(&mut r.loops),
                std::mem::take(&mut r.dirs),
            )
        });
        let pid = |p: u32| nix::unistd::Pid::from_raw(i32::try_from(p).unwrap_or(i32::MAX));
        for &p in &pids {
            super::signal_group(p, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for &p in &pids {
            // Our own children: reap them, so they are gone, not zombies.
            loop {
                use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
                match waitpid(pid(p), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(WaitStatus::StillAlive) => {
                        super::signal_group(p, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(pid(p), None);
                        break;
                    }
                    _ => break,
                }
            }
            super::signal_group(p, nix::sys::signal::Signal::SIGKILL);
        }
        for dev in &loops {
            super::detach_loop(dev);
        }
        for dir in &dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP undo the run ([`cleanup::run_all`])
/// and exit with 128 + the signal. Call it before starting any thread: it
/// blocks the signals in the calling thread (every later thread inherits
/// that) and waits for them on a thread of its own. Child processes start
/// with an empty mask (std resets it), so daemons still get SIGTERM.
pub fn install_cleanup_on_signals() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .context("cannot block SIGINT/SIGTERM/SIGHUP")?;
    std::thread::Builder::new()
        .name("cleanup-on-signal".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!(
                    "{sig}: stopping the daemons, detaching the loop devices, removing the images"
                );
                cleanup::run_all();
                std::process::exit(128 + sig as i32);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// `losetup -d DEV`, quietly: the device may already be gone (autoclear).
pub fn detach_loop(dev: &Path) {
    let _ = Command::new("losetup")
        .arg("-d")
        .arg(dev)
        .stderr(Stdio::null())
        .status();
}

/// A loop device with direct I/O over a filled file in `dir` (a tmpfs, so
/// it behaves like a fast local disk). The file is unlinked as soon as the
/// device holds it, and the device is marked autoclear while this process
/// keeps it open: even a SIGKILL leaves neither behind. Dropping it (or
/// [`cleanup::run_all`]) detaches it.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub dev: PathBuf,
    /// Keeps the device attached while autoclear is set.
    holder: Option<std::fs::File>,
    /// Whether the kernel confirmed direct I/O (`/sys/block/loopN/loop/dio`).
    pub direct_io: bool,
}

// The loop ioctls and their status struct (linux/loop.h); libc lacks them.
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

impl LoopDevice {
    /// Fills `size` bytes at `file`, attaches it with
    /// `losetup --find --show --direct-io=on`, and unlinks it.
    pub fn create(file: &Path, size: u64) -> Result<Self> {
        let image = Image::create(file.to_path_buf(), size)?;
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&image.path)
            .output()
            .context("cannot run losetup (util-linux): is it installed?")?;
        if !out.status.success() {
            bail!(
                "losetup --find --show --direct-io=on {} failed: {} (loop devices need root and the loop module)",
                image.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        cleanup::add_loop(dev.clone());
        let mut d = Self {
            dev,
            holder: None,
            direct_io: false,
        };
        // The device holds the file now; tmpfs frees it when the device goes.
        drop(image);
        let name = d
            .dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match d.set_autoclear() {
            Ok(f) => d.holder = Some(f),
            Err(e) => eprintln!(
                "warning: {} not marked autoclear ({e:#}); it is still detached at the end of the run",
                d.dev.display()
            ),
        }
        d.direct_io = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
            .is_ok_and(|s| s.trim() == "1");
        Ok(d)
    }

    /// Opens the device and sets LO_FLAGS_AUTOCLEAR; the returned file keeps
    /// it attached.
    fn set_autoclear(&self) -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().read(true).open(&self.dev)?;
        let mut info = MaybeUninit::<LoopInfo64>::zeroed();
        // SAFETY: LOOP_GET_STATUS64 fills a struct loop_info64, which
        // `LoopInfo64` mirrors field for field; `f` is an open loop device.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("LOOP_GET_STATUS64");
        }
        // SAFETY: zero-initialised, then filled by the kernel: every field
        // is a plain integer or byte array, valid for any bits.
        let mut info = unsafe { info.assume_init() };
        info.lo_flags |= LO_FLAGS_AUTOCLEAR;
        // SAFETY: as above; the kernel only reads the struct.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_SET_STATUS64, &raw const info) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("LOOP_SET_STATUS64");
        }
        Ok(f)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Closing the holder detaches an autoclear device with no other
        // user; losetup -d covers the rest.
        self.holder.take();
        detach_loop(&self.dev);
        cleanup::remove_loop(&self.dev);
    }
}
