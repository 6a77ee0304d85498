//! Helpers for the vhost-user-blk integration tests: the real daemon binary
//! in a temp dir, and a libblkio client.
#![allow(dead_code)]

use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, MemoryRegion, ReqFlags};

/// The daemon binary, built and up to date.
pub fn bin() -> PathBuf {
    extstorage_testbins::path(extstorage_testbins::DAEMON)
}

/// How long to wait for the daemon to create its socket or exit. Generous:
/// a deadline for a hang, not a speed assertion.
const WAIT: Duration = Duration::from_secs(30);

/// A running daemon serving an image in its own temp dir.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub sock: PathBuf,
    pub ctl: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Creates a `size`-byte image and serves it with `extra` options.
    pub fn start(size: u64, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        Self::start_in(dir, img, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, img: PathBuf, extra: &[&str]) -> Daemon {
        let source = [std::ffi::OsString::from("--path"), img.clone().into()];
        Self::start_source(dir, img, &source, extra)
    }

    /// Serves what `source` names (`--path P`, `--rbd POOL/IMAGE ...`);
    /// `img` is the file [`file_bytes`](Self::file_bytes) reads, if any.
    pub fn start_source(
        dir: tempfile::TempDir,
        img: PathBuf,
        source: &[std::ffi::OsString],
        extra: &[&str],
    ) -> Daemon {
        let mut d = Self::spawn(dir, img, source, extra);
        d.wait_for_socket();
        d
    }

    /// Starts the daemon without waiting for its socket.
    pub fn spawn(
        dir: tempfile::TempDir,
        img: PathBuf,
        source: &[std::ffi::OsString],
        extra: &[&str],
    ) -> Daemon {
        let sock = dir.path().join("vhost.sock");
        let ctl = dir.path().join("control.sock");
        let log = dir.path().join("daemon.log");
        let child = Command::new(bin())
            .arg("serve")
            .args(source)
            .arg("--socket")
            .arg(&sock)
            .arg("--control-socket")
            .arg(&ctl)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the daemon");
        Daemon {
            child: Some(child),
            dir,
            img,
            sock,
            ctl,
            log,
        }
    }

    fn wait_for_socket(&mut self) {
        let start = Instant::now();
        while !(self.sock.exists() && self.ctl.exists()) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {st}: {}", self.log());
            }
            assert!(
                start.elapsed() < WAIT,
                "no socket after {WAIT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `n` frontend connections have been torn down.
    pub fn wait_disconnects(&self, n: usize) {
        let start = Instant::now();
        loop {
            let log = self.log();
            let done = log.matches("frontend disconnected").count()
                + log.matches("frontend connection ended").count();
            if done >= n {
                return;
            }
            assert!(start.elapsed() < WAIT, "{done} of {n} disconnects: {log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Open descriptors of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        wait_exit(self.child.as_mut().unwrap(), &self.log)
    }

    /// Reads `len` bytes of the image file directly.
    pub fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.img).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// Runs `extstorage-vhost-user-blk resize` against this daemon.
    pub fn resize_cmd(&self) -> std::process::Output {
        Command::new(bin())
            .arg("resize")
            .arg("--control-socket")
            .arg(&self.ctl)
            .output()
            .unwrap()
    }
}

/// Waits until `path` exists, polling every 20 ms; fails with `what` once
/// `secs` seconds have passed.
pub fn wait_until_exists(path: &Path, secs: u64, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed().as_secs() < secs, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_exit(child: &mut Child, log: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < WAIT,
            "daemon did not exit: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// Bytes of client memory per queue.
pub const QUEUE_MEM: usize = 1 << 20;

/// A libblkio virtio-blk-vhost-user client with one memory region split
/// evenly between its queues.
pub struct Client {
    pub queues: Vec<Blkioq>,
    pub region: MemoryRegion,
    pub blkio: Blkio,
}

impl Client {
    pub fn connect(sock: &Path, num_queues: i32, read_only: bool) -> Result<Client, blkio::Error> {
        Self::connect_with(sock, num_queues, read_only, None)
    }

    /// Like `connect`, with a queue size (it must not exceed the daemon's).
    pub fn connect_with(
        sock: &Path,
        num_queues: i32,
        read_only: bool,
        queue_size: Option<i32>,
    ) -> Result<Client, blkio::Error> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", sock.to_str().unwrap())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", num_queues)?;
        if let Some(qs) = queue_size {
            blkio.set_i32("queue-size", qs)?;
        }
        let out = blkio.start()?;
        let len = QUEUE_MEM * usize::try_from(num_queues).unwrap();
        let region = blkio.alloc_mem_region(len)?;
        blkio.map_mem_region(&region)?;
        Ok(Client {
            queues: out.queues,
            region,
            blkio,
        })
    }

    /// The memory of queue `q`.
    pub fn mem(&self, q: usize) -> *mut u8 {
        (self.region.addr + q * QUEUE_MEM) as *mut u8
    }

    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }
}

/// Waits for exactly one completion and returns its `ret` (0 or -errno).
pub fn wait_one(q: &mut Blkioq) -> i32 {
    let mut c = [MaybeUninit::uninit()];
    let mut timeout = WAIT;
    let n = q.do_io(&mut c, 1, Some(&mut timeout), None).unwrap();
    assert_eq!(n, 1, "no completion within {WAIT:?}");
    // SAFETY: do_io initialised the first `n` completions.
    unsafe { c[0].assume_init_read() }.ret
}

/// Per-queue memory as a byte slice.
///
/// # Safety
/// `mem` is `QUEUE_MEM` bytes of the client's mapped region, used by one
/// thread, with no request in flight on it while the slice lives.
pub unsafe fn slice<'a>(mem: *mut u8) -> &'a mut [u8] {
    // SAFETY: per the function contract.
    unsafe { std::slice::from_raw_parts_mut(mem, QUEUE_MEM) }
}

pub fn write(q: &mut Blkioq, mem: *mut u8, offset: u64, data: &[u8]) -> i32 {
    assert!(data.len() <= QUEUE_MEM);
    // SAFETY: nothing is in flight on this queue's memory.
    let s = unsafe { slice(mem) };
    s[..data.len()].copy_from_slice(data);
    q.write(offset, mem, data.len(), 1, ReqFlags::empty());
    wait_one(q)
}

pub fn read(q: &mut Blkioq, mem: *mut u8, offset: u64, len: usize) -> (i32, Vec<u8>) {
    assert!(len <= QUEUE_MEM);
    // SAFETY: nothing is in flight on this queue's memory.
    let s = unsafe { slice(mem) };
    s[..len].fill(0x5a);
    q.read(offset, mem, len, 2, ReqFlags::empty());
    let ret = wait_one(q);
    // SAFETY: the read completed.
    (ret, unsafe { slice(mem) }[..len].to_vec())
}

pub fn flush(q: &mut Blkioq) -> i32 {
    q.flush(3, ReqFlags::empty());
    wait_one(q)
}

/// A recognisable pattern: byte i is a function of the seed and i.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}
