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

/// The workloads of issue 4, in table order.
pub const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "randread-4k-qd32",
        dir: Dir::Read,
        pattern: Pattern::Random,
        bs: 4096,
        depth: 32,
        queues: 1,
    },
    Workload {
        name: "randwrite-4k-qd32",
        dir: Dir::Write,
        pattern: Pattern::Random,
        bs: 4096,
        depth: 32,
        queues: 1,
    },
    Workload {
        name: "randread-4k-qd1",
        dir: Dir::Read,
        pattern: Pattern::Random,
        bs: 4096,
        depth: 1,
        queues: 1,
    },
    Workload {
        name: "randread-4k-qd32-2q",
        dir: Dir::Read,
        pattern: Pattern::Random,
        bs: 4096,
        depth: 32,
        queues: 2,
    },
    Workload {
        name: "seqread-128k-qd8",
        dir: Dir::Read,
        pattern: Pattern::Sequential,
        bs: 128 * 1024,
        depth: 8,
        queues: 1,
    },
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
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", argv[0]))?;
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

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// The vhost-user-blk backends the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// qemu-storage-daemon, the documented command (buffered, aio=threads).
    Qsd,
    /// qemu-storage-daemon with `cache.direct=on,aio=io_uring`.
    QsdDirect,
    /// Our daemon with its default engine choice (`--engine auto`).
    Ours,
    /// Our daemon forced to the io_uring engine.
    OursUring,
    /// Our daemon forced to the synchronous engine.
    OursSync,
    /// Our daemon (`--engine auto`) with adaptive polling (`--poll-us`
    /// [`POLL_US`]): burns CPU, reported separately.
    OursPoll,
}

/// The `--poll-us` of the `ours-poll` backend.
pub const POLL_US: u32 = 50;

impl Backend {
    /// Every daemon backend, in table order.
    pub const ALL: [Backend; 6] = [
        Self::Qsd,
        Self::QsdDirect,
        Self::Ours,
        Self::OursUring,
        Self::OursSync,
        Self::OursPoll,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qsd => "qsd",
            Self::QsdDirect => "qsd-direct",
            Self::Ours => "ours",
            Self::OursUring => "ours-uring",
            Self::OursSync => "ours-sync",
            Self::OursPoll => "ours-poll",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == s)
    }

    /// The command line serving `image` on `socket` with `queues` queues.
    pub fn argv(self, image: &Path, socket: &Path, queues: usize) -> Vec<String> {
        let img = image.display().to_string();
        let sock = socket.display().to_string();
        match self {
            Self::Qsd | Self::QsdDirect => {
                let extra = if self == Self::QsdDirect {
                    ",cache.direct=on,aio=io_uring"
                } else {
                    ""
                };
                vec![
                    "qemu-storage-daemon".into(),
                    "--blockdev".into(),
                    format!("driver=file,node-name=f0,filename={img}{extra}"),
                    "--export".into(),
                    format!(
                        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={sock},writable=on,num-queues={queues}"
                    ),
                ]
            }
            Self::Ours | Self::OursUring | Self::OursSync | Self::OursPoll => {
                let mut v = vec![
                    our_daemon().display().to_string(),
                    "serve".into(),
                    "--path".into(),
                    img,
                    "--socket".into(),
                    sock,
                    "--num-queues".into(),
                    queues.to_string(),
                    "--queue-size".into(),
                    "256".into(),
                    "--engine".into(),
                    match self {
                        Self::OursUring => "uring",
                        Self::OursSync => "sync",
                        _ => "auto",
                    }
                    .into(),
                ];
                if self == Self::OursPoll {
                    v.extend(["--poll-us".into(), POLL_US.to_string()]);
                }
                v
            }
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
