//! Real processes for the uri tests: QEMU with a QMP client, qemu-nbd,
//! qemu-storage-daemon, loop devices and a throwaway Ceph cluster. Every
//! helper owns what it starts and stops it by pid in `Drop`.

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// How long to wait for a process to get ready before declaring it hung.
/// This is a hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A temporary directory whose own name is hostile: commas, colons, spaces,
/// `@`, `=`, a backslash and unicode.
pub fn hostile_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("uri-{tag}-a,b: c@d=e\\é-"))
        .tempdir()
        .expect("create temp dir")
}

/// A plain temporary directory (unix socket paths must stay short).
pub fn short_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("u{tag}"))
        .tempdir_in("/tmp")
        .expect("create temp dir")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw image of `size` bytes with `byte` written at `[offset, offset+len)`.
pub fn make_image(path: &Path, size: u64, offset: u64, len: usize, byte: u8) {
    let f = fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    write_pattern(path, offset, len, byte);
}

pub fn write_pattern(path: &Path, offset: u64, len: usize, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.write_all_at(&vec![byte; len], offset)
        .expect("write pattern");
    f.sync_all().expect("sync image");
}

pub fn read_back(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).expect("open image");
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).expect("read image");
    buf
}

/// A TCP port on 127.0.0.1 that nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn qemu_version() -> extstorage_uri::QemuVersion {
    let out = run_ok(Command::new("qemu-system-x86_64").arg("--version"));
    extstorage_uri::QemuVersion::from_version_output(&out).expect("parse QEMU version")
}

fn kill_and_reap(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while kill(pid, None).is_ok() && start.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < HANG_GUARD, "{what} did not become ready");
        sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ QEMU

/// A paused `qemu-system-x86_64 -accel tcg -S` with a QMP connection.
pub struct Qemu {
    child: Child,
    stdout: PathBuf,
    stdout_seen: usize,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    _dir: tempfile::TempDir,
}

/// QEMU refused to start: its exit status and stderr.
#[derive(Debug)]
pub struct QemuFailed {
    pub stderr: String,
}

impl Qemu {
    /// Starts QEMU paused with `args` added; `Err` carries stderr if QEMU
    /// exits before answering QMP (e.g. it could not open a drive).
    pub fn start<I, S>(args: I) -> Result<Qemu, QemuFailed>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = short_dir("q");
        let qmp = dir.path().join("qmp.sock");
        let errlog = dir.path().join("stderr");
        let outlog = dir.path().join("stdout");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-S",
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
        ])
        .args(["-m", "256"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&outlog).expect("stdout file"))
        .stderr(fs::File::create(&errlog).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let start = Instant::now();
        let stream = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let stderr = fs::read_to_string(&errlog).unwrap_or_default();
                assert!(!status.success() || !stderr.is_empty(), "QEMU exited early");
                return Err(QemuFailed { stderr });
            }
            if let Ok(s) = UnixStream::connect(&qmp) {
                break s;
            }
            assert!(start.elapsed() < HANG_GUARD, "QEMU did not open QMP");
            sleep(Duration::from_millis(20));
        };
        stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        let mut q = Qemu {
            child,
            stdout: outlog,
            stdout_seen: 0,
            reader: BufReader::new(stream),
            writer,
            _dir: dir,
        };
        // The greeting arrives once QEMU reached its main loop; EOF means it
        // failed during start-up.
        match q.read_msg() {
            Some(g) if g.get("QMP").is_some() => {}
            _ => {
                let status = q.child.wait().expect("wait");
                let stderr = fs::read_to_string(errlog).unwrap_or_default();
                assert!(!status.success(), "QMP closed but QEMU succeeded");
                return Err(QemuFailed { stderr });
            }
        }
        q.execute("qmp_capabilities", &json!({}))
            .expect("qmp_capabilities");
        Ok(q)
    }

    fn read_msg(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: Value = serde_json::from_str(&line).expect("QMP sent invalid JSON");
            if v.get("event").is_none() {
                return Some(v);
            }
        }
    }

    /// Sends a full QMP command object; `Ok(return)` or `Err(error)`.
    pub fn send(&mut self, cmd: &Value) -> Result<Value, Value> {
        let mut text = cmd.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).expect("QMP write");
        let reply = self.read_msg().expect("QEMU closed QMP");
        match reply.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(reply["error"].clone()),
        }
    }

    pub fn execute(&mut self, name: &str, args: &Value) -> Result<Value, Value> {
        self.send(&json!({"execute": name, "arguments": args}))
    }

    /// Runs an HMP command (e.g. `qemu-io`) and returns its output: the
    /// reply text plus what QEMU printed on stdout meanwhile (QEMU 10's
    /// `qemu-io` prints there).
    pub fn hmp(&mut self, line: &str) -> String {
        let r = self
            .execute("human-monitor-command", &json!({"command-line": line}))
            .expect("human-monitor-command");
        let printed = fs::read(&self.stdout).unwrap_or_default();
        let new =
            String::from_utf8_lossy(&printed[self.stdout_seen.min(printed.len())..]).into_owned();
        self.stdout_seen = printed.len();
        format!("{}{new}", r.as_str().unwrap_or_default())
    }

    /// Reads `len` bytes at `offset` of a node or drive through QEMU's block
    /// layer and checks they all equal `byte`.
    pub fn assert_pattern(&mut self, device: &str, offset: u64, len: u64, byte: u8) {
        let out = self.hmp(&format!(
            "qemu-io {device} \"read -P 0x{byte:02x} {offset} {len}\""
        ));
        assert!(
            out.contains(&format!("read {len}/{len} bytes")) && !out.contains("failed"),
            "reading {device} through QEMU: {out}"
        );
    }

    /// Writes `byte` over `[offset, offset+len)` through QEMU; returns the
    /// HMP output (an error message for read-only devices).
    pub fn write_pattern(&mut self, device: &str, offset: u64, len: u64, byte: u8) -> String {
        self.hmp(&format!(
            "qemu-io {device} \"write -P 0x{byte:02x} {offset} {len}\""
        ))
    }

    /// The node of `query-named-block-nodes` called `name`.
    pub fn node(&mut self, name: &str) -> Value {
        let nodes = self
            .execute("query-named-block-nodes", &json!({"flat": true}))
            .expect("query-named-block-nodes");
        nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["node-name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no block node {name} in {nodes:#}"))
    }

    /// Kills QEMU with SIGKILL and reaps it, as a node dying would: nothing
    /// is closed or flushed; its Ceph clients' watches and locks stay behind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `inserted` part of `query-block` for drive `id`.
    pub fn drive(&mut self, id: &str) -> Value {
        let blocks = self
            .execute("query-block", &json!({}))
            .expect("query-block");
        blocks
            .as_array()
            .and_then(|a| a.iter().find(|b| b["device"] == id))
            .map(|b| b["inserted"].clone())
            .unwrap_or_else(|| panic!("no drive {id} in {blocks:#}"))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.writer.write_all(b"{\"execute\":\"quit\"}\n");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts QEMU and panics with its stderr if it refuses the arguments.
pub fn qemu_ok<I, S>(args: I) -> Qemu
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    match Qemu::start(&args) {
        Ok(q) => q,
        Err(e) => panic!("QEMU refused {args:?}:\n{}", e.stderr),
    }
}

// ------------------------------------------------------------------ servers

/// A `qemu-nbd` serving a raw file, stopped by pid.
pub struct NbdServer {
    pid: i32,
    _dir: tempfile::TempDir,
}

impl NbdServer {
    /// Serves `image` as `export` on `listen` (`["-k", sock]` or `["-b", host, "-p", port]`).
    pub fn start(image: &Path, export: &str, listen: &[&str]) -> NbdServer {
        let dir = short_dir("n");
        let pidfile = dir.path().join("pid");
        run_ok(
            Command::new("qemu-nbd")
                .arg("--fork")
                .arg("--pid-file")
                .arg(&pidfile)
                .args(["-f", "raw", "--persistent", "--shared=8", "-x", export])
                .args(listen)
                .arg(image),
        );
        let pid = fs::read_to_string(&pidfile)
            .expect("qemu-nbd pid file")
            .trim()
            .parse()
            .expect("pid");
        NbdServer { pid, _dir: dir }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

/// A `qemu-storage-daemon` exporting a raw file as vhost-user-blk.
pub struct VhostExport {
    child: Child,
}

impl VhostExport {
    pub fn start(image: &Path, socket: &Path, num_queues: u16) -> VhostExport {
        use extstorage_uri::escape_opt_value;
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f0,filename={}",
                escape_opt_value(image.to_str().expect("utf-8"))
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
                escape_opt_value(socket.to_str().expect("utf-8"))
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu-storage-daemon");
        wait_for("qemu-storage-daemon socket", || socket.exists());
        VhostExport { child }
    }
}

impl Drop for VhostExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let out = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(file));
        LoopDevice {
            path: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A single-node Ceph cluster from `scripts/ceph-cluster.sh`, stopped on drop.
pub struct CephCluster {
    dir: tempfile::TempDir,
    pub conf: PathBuf,
}

impl CephCluster {
    /// Starts a cluster or returns why it could not (script output).
    pub fn start() -> Result<CephCluster, String> {
        let dir = short_dir("ceph");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh");
        let out = run(Command::new(&script).arg("start").arg(dir.path()));
        let cluster = CephCluster {
            conf: dir.path().join("ceph.conf"),
            dir,
        };
        if !out.status.success() {
            return Err(format!(
                "scripts/ceph-cluster.sh start failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(cluster)
    }

    /// The monitor's port from ceph.conf (`mon host = v2:127.0.0.1:PORT`).
    pub fn mon_port(&self) -> u16 {
        let conf = fs::read_to_string(&self.conf).expect("read ceph.conf");
        conf.lines()
            .find_map(|l| l.strip_prefix("mon host = v2:127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("mon host line in ceph.conf")
    }

    pub fn rbd(&self) -> Command {
        let mut c = Command::new("rbd");
        c.arg("-c").arg(&self.conf);
        c
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

pub fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}
