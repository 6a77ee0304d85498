//! Harness for the real-guest end-to-end test (`tests/guest_e2e.rs`).
//!
//! Builds the guest with `scripts/build-guest.sh`, starts a vhost-user-blk
//! backend on a backing file, boots `qemu-system-x86_64` (TCG) with a
//! `vhost-user-blk-pci` device on the backend's socket, follows the guest's
//! serial console line by line, grows the disk when the guest asks for it,
//! and finally checks the backing file from the host side. Every child
//! process sits in a [`ChildGuard`] that kills it on drop, so a failed or
//! timed-out test leaves nothing running.
//!
//! `tests/guest_serve.rs` uses the same pieces with `extstorage serve` and
//! the argv `extstorage kvm-args` prints; each test binary uses a part of
//! this module.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use extstorage_testbins::splitmix64;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Exit code of `scripts/build-guest.sh` meaning "a prerequisite is missing".
const BUILD_SKIP: i32 = 77;
/// Set to 1 to turn every skip into a failure (for CI, where it must run).
const REQUIRE_ENV: &str = "EXTSTORAGE_GUEST_E2E_REQUIRE";
/// Overall limit for one boot, in seconds (default [`DEFAULT_TIMEOUT`]).
const TIMEOUT_ENV: &str = "EXTSTORAGE_GUEST_TIMEOUT_SECS";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);
/// Initial disk size and the size the host grows it to while the guest runs.
pub const INITIAL_SIZE: u64 = 64 << 20;
/// The size the disk is grown to when the guest asks (`E2E-WAIT-RESIZE`).
pub const GROWN_SIZE: u64 = 96 << 20;
/// Bytes per sector in the guest's sysfs sizes and `e2e.*` parameters.
pub const SECTOR: u64 = 512;
/// Guest RAM (`-m`), also the size of the shared memory backend.
pub const GUEST_MEMORY_MIB: u64 = 512;

/// Which vhost-user-blk backend serves the guest's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// qemu-storage-daemon's vhost-user-blk export: the reference.
    QemuStorageDaemon,
    /// qemu-storage-daemon with `discard=ignore`: discards succeed but
    /// leave the data in place. A negative control: the guest's discard
    /// check must catch it.
    QemuStorageDaemonIgnoringDiscard,
    /// qemu-storage-daemon exporting a `null-co` node with `read-zeroes=on`
    /// the size of the image: writes succeed and are lost, reads return
    /// zeroes. A negative control: the churn verifier must catch it.
    QemuStorageDaemonDroppingWrites,
    /// This project's `extstorage-vhost-user-blk serve`.
    Ours,
}

impl BackendKind {
    fn is_qsd(self) -> bool {
        matches!(
            self,
            Self::QemuStorageDaemon
                | Self::QemuStorageDaemonIgnoringDiscard
                | Self::QemuStorageDaemonDroppingWrites
        )
    }
}

/// Kernel and initramfs produced by `scripts/build-guest.sh`.
#[derive(Debug, Clone)]
pub struct GuestImages {
    /// The guest kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs with busybox, modules, /init and the test program.
    pub initrd: PathBuf,
}

/// Outcome of a setup step that may legitimately be impossible here.
#[derive(Debug, Clone)]
pub enum Prepared<T> {
    /// Ready to use.
    Ready(T),
    /// Cannot run on this machine; the message says why and what to install.
    Skip(String),
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Builds (or reuses) the guest once per test process.
pub fn guest_images() -> Prepared<GuestImages> {
    static BUILT: OnceLock<Prepared<GuestImages>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = repo_root().join(".work/guest");
            let script = repo_root().join("scripts/build-guest.sh");
            let res = Command::new("bash")
                .arg(&script)
                .arg(&out)
                .stdin(Stdio::null())
                .output();
            let output = match res {
                Ok(o) => o,
                Err(e) => {
                    return Prepared::Skip(format!("cannot run bash {}: {e}", script.display()));
                }
            };
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            eprint!("{text}");
            match output.status.code() {
                Some(0) => Prepared::Ready(GuestImages {
                    vmlinuz: out.join("vmlinuz"),
                    initrd: out.join("initramfs.cpio.gz"),
                }),
                Some(BUILD_SKIP) => Prepared::Skip(format!(
                    "scripts/build-guest.sh cannot build the guest here:\n{text}"
                )),
                _ => panic!(
                    "scripts/build-guest.sh failed ({}); fix the script or the machine:\n{text}",
                    output.status
                ),
            }
        })
        .clone()
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Prints why the test is skipped or, with
/// `EXTSTORAGE_GUEST_E2E_REQUIRE=1`, fails.
pub fn skip_or_fail(reason: &str) {
    assert!(
        !require(),
        "{REQUIRE_ENV}=1 but the guest test cannot run: {reason}"
    );
    eprintln!("SKIPPED guest end-to-end test: {reason}");
}

/// A child process killed (SIGKILL) and reaped when dropped, unless it has
/// already been waited for.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`, named `name` in messages.
    pub fn new(name: &str, child: Child) -> Self {
        Self {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    /// Returns the exit status if the process has exited.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name)),
            None => bail!("{} was already reaped", self.name),
        }
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_for(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGTERM).with_context(|| format!("SIGTERM to {}", self.name))?;
        }
        self.wait_for(limit)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes the child get SIGKILL when the thread that spawned it dies, so even
/// a test process killed from outside (no destructors run) leaves no QEMU or
/// backend behind. The spawning thread outlives its children here: each
/// test reaps them before returning.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// True once a Unix socket is listening on `path` (from /proc/net/unix, so
/// no probe connection steals the backend's frontend slot).
fn unix_listening(path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTCON != 0)
    })
}

/// A running backend exporting `image` on `socket`.
#[derive(Debug)]
pub struct Backend {
    kind: BackendKind,
    guard: ChildGuard,
    image: PathBuf,
    qmp: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

/// How [`Backend::start_opts`] starts a backend, beyond the common
/// arguments.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Another backend serves the same image at the same time (live
    /// migration: the source's and the target's), so qemu-storage-daemon
    /// takes no image lock (`locking=off`). Our daemon takes none anyway.
    pub shared: bool,
    /// Arguments appended to our daemon's `serve` command (e.g.
    /// `--poll-us`); none for qemu-storage-daemon.
    pub daemon_args: Vec<OsString>,
}

impl Backend {
    /// Starts the backend and waits (bounded) until its socket listens.
    pub fn start(
        kind: BackendKind,
        dir: &Path,
        image: &Path,
        socket: &Path,
        num_queues: u32,
        serial: &str,
    ) -> Result<Self> {
        Self::start_opts(
            kind,
            dir,
            image,
            socket,
            num_queues,
            serial,
            &StartOptions::default(),
        )
    }

    /// Like [`start`](Self::start), with [`StartOptions`].
    pub fn start_opts(
        kind: BackendKind,
        dir: &Path,
        image: &Path,
        socket: &Path,
        num_queues: u32,
        serial: &str,
        opts: &StartOptions,
    ) -> Result<Self> {
        let shared = opts.shared;
        ensure!(
            opts.daemon_args.is_empty() || kind == BackendKind::Ours,
            "daemon arguments {:?} are for our daemon, not {kind:?}",
            opts.daemon_args
        );
        let log = dir.join("backend.log");
        let qmp = dir.join("qmp.sock");
        let control = dir.join("control.sock");
        let mut cmd = match kind {
            BackendKind::QemuStorageDaemon
            | BackendKind::QemuStorageDaemonIgnoringDiscard
            | BackendKind::QemuStorageDaemonDroppingWrites => {
                let discard = if kind == BackendKind::QemuStorageDaemon {
                    "unmap"
                } else {
                    "ignore"
                };
                // A block device (a loop device of a provider) needs
                // host_device; a regular file needs file.
                let driver = match fs::metadata(image) {
                    Ok(m) if m.file_type().is_block_device() => "host_device",
                    _ => "file",
                };
                let node = if kind == BackendKind::QemuStorageDaemonDroppingWrites {
                    let size = fs::metadata(image)
                        .with_context(|| format!("sizing {}", image.display()))?
                        .len();
                    format!("driver=null-co,node-name=f0,read-zeroes=on,size={size}")
                } else {
                    format!(
                        "driver={driver},node-name=f0,filename={},discard={discard}{}",
                        image.display(),
                        if shared { ",locking=off" } else { "" }
                    )
                };
                let mut c = Command::new("qemu-storage-daemon");
                c.arg("--blockdev")
                    .arg(node)
                    .arg("--export")
                    .arg(format!(
                        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
                        socket.display()
                    ))
                    .arg("--chardev")
                    .arg(format!(
                        "socket,id=m,path={},server=on,wait=off",
                        qmp.display()
                    ))
                    .arg("--monitor")
                    .arg("chardev=m");
                c
            }
            BackendKind::Ours => {
                let mut c = Command::new(extstorage_testbins::path(extstorage_testbins::DAEMON));
                c.arg("serve")
                    .arg("--path")
                    .arg(image)
                    .arg("--socket")
                    .arg(socket)
                    .arg("--num-queues")
                    .arg(num_queues.to_string())
                    .arg("--control-socket")
                    .arg(&control)
                    .arg("--serial")
                    .arg(serial)
                    .args(&opts.daemon_args);
                if std::env::var_os("RUST_LOG").is_none() {
                    c.env("RUST_LOG", "info");
                }
                c
            }
        };
        let logf = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        die_with_parent(&mut cmd);
        eprintln!("starting backend: {cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        let mut backend = Self {
            kind,
            guard: ChildGuard::new(&format!("{kind:?} backend"), child),
            image: image.to_owned(),
            qmp,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !unix_listening(socket) {
            if let Some(st) = backend.guard.try_wait()? {
                bail!(
                    "backend exited ({st}) before listening on {}:\n{}",
                    socket.display(),
                    backend.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "backend did not listen on {} within 30 s:\n{}",
                socket.display(),
                backend.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(backend)
    }

    /// The backend's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Grows the backing store to `new_size` bytes and makes the backend
    /// notify the frontend (config change). For qemu-storage-daemon on a
    /// block device, the device must already have that size (QMP
    /// `block_resize` cannot grow a device, only make the export re-read it).
    pub fn resize(&self, new_size: u64) -> Result<()> {
        match self.kind {
            BackendKind::QemuStorageDaemon
            | BackendKind::QemuStorageDaemonIgnoringDiscard
            | BackendKind::QemuStorageDaemonDroppingWrites => {
                let mut qmp = Qmp::connect(&self.qmp)?;
                qmp.execute(
                    "block_resize",
                    &serde_json::json!({"node-name": "f0", "size": new_size}),
                )?;
            }
            BackendKind::Ours => {
                OpenOptions::new()
                    .write(true)
                    .open(&self.image)
                    .and_then(|f| f.set_len(new_size))
                    .with_context(|| format!("growing {}", self.image.display()))?;
                let out = Command::new(extstorage_testbins::path(extstorage_testbins::DAEMON))
                    .arg("resize")
                    .arg("--control-socket")
                    .arg(&self.control)
                    .stdin(Stdio::null())
                    .output()
                    .context("running extstorage-vhost-user-blk resize")?;
                ensure!(
                    out.status.success(),
                    "extstorage-vhost-user-blk resize failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!(
                    "resize: {}",
                    String::from_utf8_lossy(&out.stdout).trim_end()
                );
            }
        }
        Ok(())
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.guard.terminate(Duration::from_secs(30))
    }
}

/// A minimal QMP client (one command at a time, events skipped).
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path` and leaves negotiation mode.
    pub fn connect(path: &Path) -> Result<Self> {
        let s = UnixStream::connect(path).with_context(|| format!("QMP {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let greeting = q.read_msg()?;
        ensure!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        q.execute("qmp_capabilities", &serde_json::json!({}))?;
        Ok(q)
    }

    fn read_msg(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("reading QMP")?;
        ensure!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).with_context(|| format!("bad QMP message {line:?}"))
    }

    /// Runs `cmd` with `args`; its `return` value, or its error.
    pub fn execute(&mut self, cmd: &str, args: &serde_json::Value) -> Result<serde_json::Value> {
        let msg = serde_json::json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{msg}").context("writing QMP")?;
        loop {
            let v = self.read_msg()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd} failed: {e}");
            }
        }
    }
}

/// One `E2E-RESULT` line: `name`, `status` and the other key=value fields.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// `ok` or `fail`.
    pub status: String,
    /// Every key=value field of the line.
    pub fields: BTreeMap<String, String>,
}

/// What the guest reported.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// The `E2E-RESULT` lines by check name.
    pub results: BTreeMap<String, CheckResult>,
    /// The word after `E2E-DONE` (`ok` or `fail`), if the guest got there.
    pub done: Option<String>,
    /// The whole serial console output.
    pub console: String,
}

/// The `E2E-...` part of a console line (SeaBIOS escape codes may precede it).
fn e2e_part(line: &str) -> Option<&str> {
    line.find("E2E-").map(|i| line[i..].trim_end())
}

fn parse_fields(rest: &str) -> BTreeMap<String, String> {
    rest.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Parameters of one boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Backend under test.
    pub kind: BackendKind,
    /// Number of virtqueues (and guest vCPUs).
    pub num_queues: u32,
    /// Boot a second guest on the same backend process afterwards.
    pub reconnect: bool,
}

/// Every check the guest must report as `ok`.
pub const REQUIRED_CHECKS: &[&str] = &[
    "size",
    "queues",
    "serial",
    "pattern",
    "discard",
    "write_zeroes",
    "parallel",
    "queue_irqs",
    "resize",
];

/// The overall limit for one test's boots ([`TIMEOUT_ENV`] or 240 s).
pub fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// A fresh odd pattern seed (time and pid), so stale data cannot pass.
pub fn new_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32
        | 1
}

fn parse_ranges(list: &str) -> Result<Vec<(u64, u64)>> {
    list.split(',')
        .filter(|s| !s.is_empty() && *s != "none")
        .map(|r| {
            let (o, l) = r
                .split_once('+')
                .ok_or_else(|| anyhow!("bad range {r:?}"))?;
            Ok((o.parse()?, l.parse()?))
        })
        .collect()
}

/// `r` with only the pattern ranges that no check of `later` wrote over.
fn not_overwritten(r: &CheckResult, later: &GuestReport) -> CheckResult {
    let written: Vec<(u64, u64)> = later
        .results
        .values()
        .flat_map(|c| ["ranges", "zero_ranges"].map(|k| c.fields.get(k)))
        .flatten()
        .filter_map(|l| parse_ranges(l).ok())
        .flatten()
        .collect();
    let kept: Vec<String> = r
        .fields
        .get("ranges")
        .and_then(|l| parse_ranges(l).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(o, n)| written.iter().all(|(wo, wn)| o + n <= *wo || wo + wn <= *o))
        .map(|(o, n)| format!("{o}+{n}"))
        .collect();
    let mut fields = BTreeMap::new();
    fields.insert("ranges".to_owned(), kept.join(","));
    CheckResult {
        name: format!("{} (earlier guest)", r.name),
        status: r.status.clone(),
        fields,
    }
}

/// Checks the backing file from the host: it has `size` bytes, each
/// check's `ranges=` hold the pattern of the given seed and its
/// `zero_ranges=` hold zeroes.
pub fn verify_image(image: &Path, size: u64, expect: &[(u64, &CheckResult)]) -> Result<()> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = f.metadata()?.len();
    ensure!(
        len == size,
        "backing file is {len} bytes, expected the grown size {size}"
    );
    let mut checked = 0u64;
    for (seed, r) in expect {
        for (key, zero) in [("ranges", false), ("zero_ranges", true)] {
            let Some(list) = r.fields.get(key) else {
                continue;
            };
            for (off, n) in parse_ranges(list)? {
                ensure!(
                    off % 8 == 0 && n % 8 == 0,
                    "unaligned range {off}+{n} in {}",
                    r.name
                );
                let mut buf = vec![0u8; usize::try_from(n)?];
                f.read_exact_at(&mut buf, off)
                    .with_context(|| format!("reading {off}+{n} of the image"))?;
                for (i, chunk) in buf.chunks_exact(8).enumerate() {
                    let at = off + 8 * u64::try_from(i)?;
                    let want = if zero { 0 } else { splitmix64(seed ^ (at / 8)) };
                    let got = u64::from_le_bytes(chunk.try_into()?);
                    ensure!(
                        got == want,
                        "image word at byte {at} ({} {key}) is {got:#018x}, expected {want:#018x}",
                        r.name
                    );
                }
                checked += n;
            }
        }
    }
    ensure!(checked > 0, "the guest reported no ranges to check");
    eprintln!("host verified {checked} bytes of the backing file");
    Ok(())
}

/// What one boot found.
#[derive(Debug)]
pub struct BootOutcome {
    /// Everything that went wrong; empty when the backend passed.
    pub problems: Vec<String>,
    /// What the (first) guest printed.
    pub report: GuestReport,
    /// What the second guest printed (with `reconnect`).
    pub second: Option<GuestReport>,
    /// Console, backend log and QEMU stderr, for failure messages.
    pub diagnostics: String,
}

/// Boots the guest against a fresh backend, and panics (with the console and
/// backend logs) on any failure; returns early with a message when it must
/// skip.
pub fn run_boot(cfg: &BootConfig) {
    let Some(outcome) = boot(cfg) else {
        return;
    };
    assert!(
        outcome.problems.is_empty(),
        "guest end-to-end test with {:?}, {} queue(s) failed:\n  {}\n{}",
        cfg.kind,
        cfg.num_queues,
        outcome.problems.join("\n  "),
        outcome.diagnostics
    );
    for r in outcome
        .report
        .results
        .values()
        .chain(outcome.second.iter().flat_map(|s| s.results.values()))
    {
        eprintln!("guest check {} ok: {:?}", r.name, r.fields);
    }
}

/// One QEMU run against a running backend.
#[derive(Debug)]
pub struct GuestRun<'a> {
    /// Kernel and initramfs.
    pub images: &'a GuestImages,
    /// vCPUs (`-smp`).
    pub smp: u32,
    /// The disk's arguments, appended after the VM-wide ones: the shared
    /// memory backend vhost-user needs, `-chardev` and `-device`.
    pub disk_args: Vec<OsString>,
    /// The kernel command line (`e2e.*` parameters).
    pub append: String,
    /// Where QEMU's stderr goes.
    pub log: PathBuf,
}

/// The disk arguments the harness itself writes for a backend on `socket`:
/// a shared memfd memory backend of [`GUEST_MEMORY_MIB`], the socket
/// chardev and a `vhost-user-blk-pci` with `num_queues` queues.
pub fn harness_disk_args(socket: &Path, num_queues: u32) -> Vec<OsString> {
    [
        "-object".to_owned(),
        format!("memory-backend-memfd,id=mem,size={GUEST_MEMORY_MIB}M,share=on"),
        "-numa".to_owned(),
        "node,memdev=mem".to_owned(),
        "-chardev".to_owned(),
        format!("socket,id=c0,path={}", socket.display()),
        "-device".to_owned(),
        format!("vhost-user-blk-pci,chardev=c0,num-queues={num_queues}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Serialises guest boots within a test process: TCG on a shared 2-core
/// machine. Hold the guard for the whole test (backend, boots, checks).
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the guest tells the host while it runs, for the host to act on.
#[derive(Debug)]
pub enum GuestEvent<'a> {
    /// `E2E-WAIT-RESIZE`: the guest waits (bounded) for the disk to grow.
    WaitResize,
    /// `E2E-CHURN-START`: the churn writers are running.
    ChurnStart(&'a BTreeMap<String, String>),
    /// `E2E-CHURN-PROGRESS`, once a second while churning: `secs`,
    /// `writes`, `reads`, `errors`, `mismatches` so far.
    ChurnProgress(&'a BTreeMap<String, String>),
}

/// An event handler that grows the disk with `grow` when the guest asks
/// and ignores the rest.
pub fn on_resize(mut grow: impl FnMut() -> Result<()>) -> impl FnMut(GuestEvent<'_>) -> Result<()> {
    move |ev| match ev {
        GuestEvent::WaitResize => grow(),
        _ => Ok(()),
    }
}

/// Boots QEMU with the VM-wide arguments (TCG, [`GUEST_MEMORY_MIB`] of RAM,
/// `run.smp` vCPUs, kernel, initrd, serial console, no reboot) followed by
/// `run.disk_args`, follows the console until the guest powers off (or the
/// deadline passes: then QEMU is killed), and hands each [`GuestEvent`] to
/// `on_event` (an error from it ends the run as a failure). Returns the
/// report and what went wrong at the QEMU level.
pub fn run_guest(
    run: &GuestRun,
    on_event: &mut dyn FnMut(GuestEvent<'_>) -> Result<()>,
    deadline: Instant,
) -> (GuestReport, Vec<String>) {
    let mut report = GuestReport::default();
    let mut problems = Vec::new();
    let mut cmd = qemu_command(run);
    match File::create(&run.log) {
        Ok(f) => cmd.stderr(f),
        Err(e) => {
            problems.push(format!("creating {}: {e}", run.log.display()));
            return (report, problems);
        }
    };
    die_with_parent(&mut cmd);
    eprintln!("booting: {cmd:?}");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("spawning qemu-system-x86_64: {e}"));
            return (report, problems);
        }
    };
    let Some(stdout) = child.stdout.take() else {
        problems.push("qemu-system-x86_64 has no stdout pipe".to_owned());
        return (report, problems);
    };
    let mut qemu = ChildGuard::new("qemu-system-x86_64", child);
    let (rx, reader) = console_lines(stdout);

    let mut failure: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                failure = Some(format!(
                    "timed out (overall limit {:?}, {TIMEOUT_ENV})",
                    timeout()
                ));
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Err(f) = follow_line(&mut report, &line, on_event) {
            failure = Some(f);
            break;
        }
    }

    if let Some(f) = failure {
        problems.push(f);
    } else {
        match qemu.wait_for(Duration::from_secs(30)) {
            Ok(st) if st.success() => {}
            Ok(st) => problems.push(format!("qemu-system-x86_64 exited with {st}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    drop(qemu);
    let _ = reader.join();
    if report.done.as_deref() != Some("ok") {
        problems.push(format!(
            "guest finished with E2E-DONE {:?}",
            report.done.as_deref().unwrap_or("(never printed)")
        ));
    }
    (report, problems)
}

/// The QEMU command of `run` (stdout piped for the serial console, stdin
/// null; stderr left to the caller): the VM-wide arguments (TCG,
/// [`GUEST_MEMORY_MIB`] of RAM, `run.smp` vCPUs, kernel, initrd, serial
/// console on stdout, no reboot), then `run.disk_args`.
pub fn qemu_command(run: &GuestRun) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m"])
        .arg(GUEST_MEMORY_MIB.to_string())
        .arg("-smp")
        .arg(run.smp.to_string())
        .arg("-kernel")
        .arg(&run.images.vmlinuz)
        .arg("-initrd")
        .arg(&run.images.initrd)
        .arg("-append")
        .arg(&run.append)
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(&run.disk_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// A thread reading QEMU's serial console (`stdout`) line by line into a
/// channel, so QEMU never blocks on a full pipe whatever the reader does.
pub fn console_lines(
    stdout: std::process::ChildStdout,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (rx, reader)
}

/// Takes one console line into `report` (results, `E2E-DONE`) and hands
/// the guest's events to `on_event`; `Err` says why the run must end.
pub fn follow_line(
    report: &mut GuestReport,
    line: &str,
    on_event: &mut dyn FnMut(GuestEvent<'_>) -> Result<()>,
) -> std::result::Result<(), String> {
    report.console.push_str(line);
    let Some(e2e) = e2e_part(line) else {
        return Ok(());
    };
    if let Some(rest) = e2e.strip_prefix("E2E-RESULT ") {
        let mut fields = parse_fields(rest);
        let name = fields.remove("name").unwrap_or_default();
        let status = fields.remove("status").unwrap_or_default();
        report.results.insert(
            name.clone(),
            CheckResult {
                name,
                status,
                fields,
            },
        );
    } else if e2e.starts_with("E2E-WAIT-RESIZE") {
        eprintln!("guest waits for the resize: growing the disk");
        if let Err(e) = on_event(GuestEvent::WaitResize) {
            return Err(format!("resize failed: {e:#}"));
        }
    } else if let Some((start, rest)) = e2e
        .strip_prefix("E2E-CHURN-START")
        .map(|r| (true, r))
        .or_else(|| e2e.strip_prefix("E2E-CHURN-PROGRESS").map(|r| (false, r)))
    {
        let fields = parse_fields(rest);
        let ev = if start {
            GuestEvent::ChurnStart(&fields)
        } else {
            GuestEvent::ChurnProgress(&fields)
        };
        if let Err(e) = on_event(ev) {
            return Err(format!("the host's action during the churn failed: {e:#}"));
        }
    } else if let Some(rest) = e2e.strip_prefix("E2E-DONE") {
        report.done = rest.split_whitespace().next().map(str::to_owned);
    }
    Ok(())
}

/// Adds a problem for every check in `names` that is missing or not ok.
pub fn require_checks(report: &GuestReport, names: &[&str], problems: &mut Vec<String>) {
    for name in names {
        match report.results.get(*name) {
            Some(r) if r.status == "ok" => {}
            Some(r) => problems.push(format!("check {name} failed: {:?}", r.fields)),
            None => problems.push(format!("check {name} was not reported")),
        }
    }
}

/// QEMU's stderr log, or nothing.
pub fn qemu_log_text(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}

/// The guest images and the QEMU programs a boot against `kind` needs;
/// `None` (after [`skip_or_fail`]) when this machine lacks them.
pub fn prerequisites(kind: BackendKind) -> Option<GuestImages> {
    let images = match guest_images() {
        Prepared::Ready(i) => i,
        Prepared::Skip(why) => {
            skip_or_fail(&why);
            return None;
        }
    };
    for prog in ["qemu-system-x86_64", "qemu-storage-daemon"] {
        if (prog == "qemu-system-x86_64" || kind.is_qsd()) && which(prog).is_none() {
            skip_or_fail(&format!("{prog} not found; run scripts/install-deps.sh"));
            return None;
        }
    }
    Some(images)
}

/// Boots the guest against a fresh backend, then checks the guest's report
/// and the backing file. With `cfg.reconnect`, a second guest then connects
/// to the same backend process and checks the first one's data is there.
/// `None` when the test must be skipped here.
pub fn boot(cfg: &BootConfig) -> Option<BootOutcome> {
    let _one = one_guest_at_a_time();
    let images = prerequisites(cfg.kind)?;

    let dir = tempfile::Builder::new()
        .prefix("guest-e2e-")
        .tempdir()
        .expect("creating a temporary directory");
    let image = dir.path().join("disk.img");
    let socket = dir.path().join("vhost.sock");
    File::create(&image)
        .and_then(|f| f.set_len(INITIAL_SIZE))
        .expect("creating the backing file");
    let seed = new_seed();
    let serial = if cfg.kind.is_qsd() {
        // qemu-storage-daemon answers GET_ID with a fixed string.
        "vhost_user_blk".to_owned()
    } else {
        format!("e2e-{:08x}", seed as u32)
    };

    let mut backend = Backend::start(
        cfg.kind,
        dir.path(),
        &image,
        &socket,
        cfg.num_queues,
        &serial,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + timeout();
    let common = |seed: u64, size: u64| {
        format!(
            "console=ttyS0 quiet panic=-1 e2e.seed={seed} e2e.expect_size={} e2e.queues={} \
             e2e.serial={serial} e2e.discard_zeroes=1",
            size / SECTOR,
            cfg.num_queues,
        )
    };

    // First guest: all checks, and the disk grows while it runs.
    let first_log = dir.path().join("qemu-1.log");
    let (first, mut problems) = run_guest(
        &GuestRun {
            images: &images,
            smp: cfg.num_queues,
            disk_args: harness_disk_args(&socket, cfg.num_queues),
            append: format!(
                "{} e2e.resize_to={} e2e.resize_timeout=60",
                common(seed, INITIAL_SIZE),
                GROWN_SIZE / SECTOR
            ),
            log: first_log.clone(),
        },
        &mut on_resize(|| backend.resize(GROWN_SIZE)),
        deadline,
    );
    require_checks(&first, REQUIRED_CHECKS, &mut problems);
    if let Some(r) = first.results.get("resize") {
        let want = (GROWN_SIZE / SECTOR).to_string();
        if r.fields.get("new") != Some(&want) {
            problems.push(format!(
                "guest saw new size {:?}, expected {want}",
                r.fields.get("new")
            ));
        }
    }

    // Second guest on the same backend process: the backend must serve the
    // next connection, with the grown size and the first guest's data.
    let second_seed = splitmix64(seed) | 1;
    let second_log = dir.path().join("qemu-2.log");
    let mut second = None;
    if cfg.reconnect && problems.is_empty() {
        let prior = first
            .results
            .get("resize")
            .and_then(|r| r.fields.get("ranges"))
            .cloned()
            .unwrap_or_default();
        let (report, p) = run_guest(
            &GuestRun {
                images: &images,
                smp: cfg.num_queues,
                disk_args: harness_disk_args(&socket, cfg.num_queues),
                append: format!(
                    "{} e2e.prior_seed={seed} e2e.prior_ranges={prior}",
                    common(second_seed, GROWN_SIZE)
                ),
                log: second_log.clone(),
            },
            &mut on_resize(|| backend.resize(GROWN_SIZE)),
            deadline,
        );
        problems.extend(p.into_iter().map(|p| format!("second guest: {p}")));
        let mut names: Vec<&str> = REQUIRED_CHECKS
            .iter()
            .copied()
            .filter(|n| *n != "resize")
            .collect();
        names.push("prior");
        let mut p = Vec::new();
        require_checks(&report, &names, &mut p);
        problems.extend(p.into_iter().map(|p| format!("second guest: {p}")));
        second = Some(report);
    }

    match backend.stop() {
        Ok(st) if st.success() => {}
        Ok(st) => problems.push(format!("backend exited with {st} on SIGTERM, expected 0")),
        Err(e) => problems.push(format!("stopping the backend: {e:#}")),
    }
    if problems.is_empty() {
        // What the host must find in the file: the last guest's ranges, and
        // of the first guest (when a second ran) the grown tail only.
        let kept_tail = second
            .as_ref()
            .and_then(|s| first.results.get("resize").map(|r| not_overwritten(r, s)));
        let mut expect: Vec<(u64, &CheckResult)> = Vec::new();
        match &second {
            Some(s) => {
                expect.extend(kept_tail.as_ref().map(|r| (seed, r)));
                expect.extend(s.results.values().map(|r| (second_seed, r)));
            }
            None => expect.extend(first.results.values().map(|r| (seed, r))),
        }
        if let Err(e) = verify_image(&image, GROWN_SIZE, &expect) {
            problems.push(format!("host check of the backing file: {e:#}"));
        }
    }

    let mut diagnostics = format!(
        "--- serial console ---\n{}\n--- qemu stderr ---\n{}\n",
        first.console,
        qemu_log_text(&first_log)
    );
    if let Some(s) = &second {
        diagnostics.push_str(&format!(
            "--- second guest's serial console ---\n{}\n--- second qemu stderr ---\n{}\n",
            s.console,
            qemu_log_text(&second_log)
        ));
    }
    diagnostics.push_str(&format!("--- backend log ---\n{}", backend.log_text()));
    Some(BootOutcome {
        problems,
        report: first,
        second,
        diagnostics,
    })
}

/// The churn workload's knobs (`e2e.mode=churn` in tests/guest/e2e-guest.c).
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// How long the guest's writers write.
    pub secs: u64,
    /// Writer processes: the queue depth the disk sees.
    pub jobs: u32,
    /// The area written, from offset 0.
    pub bytes: u64,
    /// I/O errors are expected (fault tests): only wrong data fails.
    pub errors_ok: bool,
    /// Where the backing file lives (a small tmpfs for ENOSPC); the test's
    /// temporary directory by default.
    pub backing_dir: Option<PathBuf>,
    /// More QEMU arguments (a QMP socket, memory slots for hotplug).
    pub qemu_args: Vec<OsString>,
}

impl ChurnConfig {
    /// The kernel command-line parameters that select the workload.
    pub fn append(&self) -> String {
        format!(
            "e2e.mode=churn e2e.churn_secs={} e2e.churn_jobs={} e2e.churn_bytes={} \
             e2e.churn_errors_ok={}",
            self.secs,
            self.jobs,
            self.bytes,
            u8::from(self.errors_ok)
        )
    }
}

/// A number the churn check reported (`writes`, `io_errors`, ...); 0 when
/// absent.
pub fn churn_count(report: &GuestReport, key: &str) -> u64 {
    report
        .results
        .get("churn")
        .and_then(|r| r.fields.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Adds a problem unless the guest's churn check passed having written and
/// verified something.
pub fn require_churn(report: &GuestReport, problems: &mut Vec<String>) {
    require_checks(report, &["churn"], problems);
    let Some(r) = report.results.get("churn") else {
        return;
    };
    for key in ["writes", "verified_blocks"] {
        if churn_count(report, key) == 0 {
            problems.push(format!("churn reported {key}=0: {:?}", r.fields));
        }
    }
}

/// Boots a guest running the churn workload on a fresh `kind` backend over
/// a [`INITIAL_SIZE`] file, with `num_queues` queues and vCPUs, handing
/// each [`GuestEvent`] and the backend to `on_event` (which may act on
/// the backend: kill it, restart it, resize it). `None` when the test must
/// be skipped here.
pub fn boot_churn(
    kind: BackendKind,
    num_queues: u32,
    churn: &ChurnConfig,
    on_event: &mut dyn FnMut(&mut Backend, GuestEvent<'_>) -> Result<()>,
) -> Option<BootOutcome> {
    boot_churn_opts(kind, num_queues, churn, &StartOptions::default(), on_event)
}

/// [`boot_churn`] with the backend started with `opts`.
pub fn boot_churn_opts(
    kind: BackendKind,
    num_queues: u32,
    churn: &ChurnConfig,
    opts: &StartOptions,
    on_event: &mut dyn FnMut(&mut Backend, GuestEvent<'_>) -> Result<()>,
) -> Option<BootOutcome> {
    let _one = one_guest_at_a_time();
    let images = prerequisites(kind)?;
    let dir = tempfile::Builder::new()
        .prefix("guest-churn-")
        .tempdir()
        .expect("creating a temporary directory");
    let image = churn
        .backing_dir
        .as_deref()
        .unwrap_or(dir.path())
        .join("disk.img");
    let socket = dir.path().join("vhost.sock");
    File::create(&image)
        .and_then(|f| f.set_len(INITIAL_SIZE))
        .expect("creating the backing file");
    let seed = new_seed();
    let mut backend =
        Backend::start_opts(kind, dir.path(), &image, &socket, num_queues, "churn", opts)
            .unwrap_or_else(|e| panic!("{e:#}"));
    let log = dir.path().join("qemu.log");
    let (report, mut problems) = run_guest(
        &GuestRun {
            images: &images,
            smp: num_queues,
            disk_args: harness_disk_args(&socket, num_queues)
                .into_iter()
                .chain(churn.qemu_args.iter().cloned())
                .collect(),
            // Hot-added memory comes online in the guest by itself.
            append: format!(
                "console=ttyS0 quiet panic=-1 memhp_default_state=online e2e.seed={seed} {}",
                churn.append()
            ),
            log: log.clone(),
        },
        &mut |ev| on_event(&mut backend, ev),
        Instant::now() + timeout() + Duration::from_secs(churn.secs),
    );
    require_churn(&report, &mut problems);
    match backend.stop() {
        Ok(st) if st.success() => {}
        Ok(st) => problems.push(format!("backend exited with {st} on SIGTERM, expected 0")),
        Err(e) => problems.push(format!("stopping the backend: {e:#}")),
    }
    let diagnostics = format!(
        "--- guest console ---\n{}\n--- backend log ---\n{}\n--- qemu stderr ---\n{}",
        report.console,
        backend.log_text(),
        qemu_log_text(&log)
    );
    Some(BootOutcome {
        problems,
        report,
        second: None,
        diagnostics,
    })
}
