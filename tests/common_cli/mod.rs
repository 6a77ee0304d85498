//! Helpers for the CLI integration tests: a private temp tree per test with
//! a search path, log and lock directories, and guards that clean up loop
//! devices and qemu-nbd daemons even when a test fails.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One test's world: `<tmp>/providers`, `<tmp>/log`, `<tmp>/lock`,
/// `<tmp>/vols`, `<tmp>/out`.
pub struct World {
    pub tmp: tempfile::TempDir,
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit {code}, got {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Copies a provider directory, setting executable bits on everything but
/// `parameters.list`.
pub fn copy_provider(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        fs::copy(entry.path(), &dest).unwrap();
        let mode = if entry.file_name() == "parameters.list" {
            0o644
        } else {
            0o755
        };
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).unwrap();
    }
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("es-cli-")
            .tempdir()
            .unwrap();
        for d in ["providers", "vols", "out"] {
            fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        World { tmp }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn providers(&self) -> PathBuf {
        self.path("providers")
    }

    pub fn vols(&self) -> PathBuf {
        self.path("vols")
    }

    pub fn out(&self) -> PathBuf {
        self.path("out")
    }

    pub fn logs(&self) -> PathBuf {
        self.path("log")
    }

    /// Installs a reference provider from `providers/`.
    pub fn install(&self, name: &str) -> PathBuf {
        let dest = self.providers().join(name);
        copy_provider(&repo().join("providers").join(name), &dest);
        dest
    }

    /// Installs a test provider from `tests/providers/`, as `as_name`.
    pub fn install_test(&self, name: &str, as_name: &str) -> PathBuf {
        let dest = self.providers().join(as_name);
        copy_provider(&repo().join("tests/providers").join(name), &dest);
        dest
    }

    /// The CLI with this world's search path, log and lock directories.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(extstorage_testbins::path(extstorage_testbins::CLI));
        c.env_remove("EXTSTORAGE_SEARCH_PATH")
            .env_remove("EXTSTORAGE_TIMEOUT")
            .env_remove("EXTSTORAGE_LOCK_TIMEOUT")
            .env_remove("RUST_LOG")
            .arg("--search-path")
            .arg(self.providers())
            .arg("--log-dir")
            .arg(self.logs())
            .arg("--lock-dir")
            .arg(self.path("lock"))
            .arg("--run-dir")
            .arg(self.run_dir());
        c
    }

    /// The run directory (serve claims, control sockets, default sockets).
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// Starts `extstorage --json serve ARGS` and waits until it is ready
    /// (its first stdout line), or returns how it failed.
    pub fn serve(&self, args: &[&str]) -> Result<Served, Run> {
        let stderr = self.path(&format!(
            "serve-{}.err",
            SERVES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = self
            .cmd()
            .arg("--json")
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(120)).ok().flatten();
        let ready: Option<serde_json::Value> = match first.map(|l| (serde_json::from_str(&l), l)) {
            Some((Ok(v), _)) => Some(v),
            Some((Err(e), line)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ready line is not JSON ({e}): {line}");
            }
            None => None,
        };
        match ready {
            Some(ready) if ready["ok"] == true => Ok(Served {
                ready,
                child,
                stderr,
            }),
            other => {
                if other.is_none() {
                    let _ = child.kill();
                }
                let status = child.wait().unwrap();
                Err(Run {
                    code: status.code().unwrap_or(-1),
                    stdout: other.map(|v| v.to_string()).unwrap_or_default(),
                    stderr: fs::read_to_string(&stderr).unwrap_or_default(),
                })
            }
        }
    }

    /// Runs the CLI with `args` after the world's options.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().unwrap().into()
    }

    /// The log files whose name starts with `prefix`.
    pub fn log_files(&self, prefix: &str) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(self.logs()) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        v.sort();
        v
    }
}

impl Drop for World {
    /// Detaches every loop device backed by a file of this world and stops
    /// every qemu-nbd whose pid file is here, even when the test failed.
    fn drop(&mut self) {
        let Ok(rd) = fs::read_dir(self.vols()) else {
            return;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".pid") {
                if let Ok(pid) = fs::read_to_string(&path) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            } else if path.is_file() {
                for dev in loop_devices_of(&path) {
                    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
                }
            }
        }
    }
}

static SERVES: AtomicUsize = AtomicUsize::new(0);

/// A running `extstorage serve`; stopped with SIGTERM (then killed) on drop.
pub struct Served {
    pub child: Child,
    /// The JSON object printed when ready.
    pub ready: serde_json::Value,
    pub stderr: PathBuf,
}

impl Served {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.ready["socket"].as_str().unwrap())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `sig` and waits (at most 120 s) for the exit code.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Option<i32> {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "serve did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = std::time::Instant::now();
            while self.child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- serve log ---\n{}", self.log());
        }
    }
}

/// The loop devices backed by `file`.
pub fn loop_devices_of(file: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME", "--associated"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A loop device over a fresh file, detached on drop.
pub struct LoopDev {
    pub dev: String,
    pub file: PathBuf,
}

impl LoopDev {
    pub fn new(file: PathBuf, size: u64) -> LoopDev {
        let f = fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup failed: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        LoopDev { dev, file }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for dev in loop_devices_of(&self.file) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
    }
}

/// Reads `KEY=VALUE` lines written by `env`.
pub fn read_env(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Whether a process is gone (no /proc entry, or a zombie nobody reaped).
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        }
    }
}
