//! Restarting the daemon under a writing guest (issue 11): `kill -9` of
//! `extstorage-vhost-user-blk serve` while a real Linux guest writes
//! checksummed blocks with O_DIRECT from many writers over two queues
//! (the churn workload of tests/guest/e2e-guest.c), a new daemon on the
//! same socket, QEMU reconnecting (`reconnect-ms=500`) and, through the
//! in-flight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), resubmitting
//! what the dead daemon had taken and not returned. The guest must carry
//! on without an I/O error and find every acknowledged block intact.
//!
//! Completions out of order are forced with the test-only hold engine
//! (`EXTSTORAGE_TEST_ONLY_HOLD_WRITES`, which keeps the io_uring event
//! loop; the daemon is built with feature `test-hooks` by
//! extstorage-testbins); the negative control masks the
//! feature (`EXTSTORAGE_TEST_ONLY_NO_INFLIGHT`) and must fail.

mod guest_support;

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use guest_support::{
    ChurnConfig, GUEST_MEMORY_MIB, GuestEvent, GuestReport, GuestRun, INITIAL_SIZE,
    die_with_parent, new_seed, one_guest_at_a_time, qemu_log_text, require_churn, run_guest,
    timeout,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const QUEUES: u32 = 2;
/// Every 8th write of a queue completes a minute late (longer than the
/// test keeps the daemon alive): held when the daemon is killed.
const HOLD: &str = "8:60000";

/// One restart scenario.
struct Scenario {
    churn: ChurnConfig,
    /// Churn seconds (as the guest reports them) after which the daemon
    /// is killed and restarted, in order.
    kill_at: Vec<u64>,
    /// The first daemon holds writes back (`HOLD`); the restarted ones do
    /// not.
    hold: bool,
    /// Every daemon masks INFLIGHT_SHMFD.
    no_inflight: bool,
    /// Stop each daemon with SIGTERM (it drains and must exit 0) instead
    /// of SIGKILL.
    sigterm: bool,
    /// `EXTSTORAGE_TEST_ONLY_FAULT` for every daemon (EIO or short
    /// transfers from the test-only fault engine).
    fault: Option<&'static str>,
}

struct Outcome {
    problems: Vec<String>,
    report: GuestReport,
    /// How many daemons resubmitted requests a dead one left in flight.
    resubmitted: usize,
    /// Their log lines saying what they resubmitted (queue, used index,
    /// heads).
    resubmit_lines: Vec<String>,
    /// The first daemon's log lines saying a queue entered the io_uring
    /// event loop.
    first_loop_lines: Vec<String>,
    diagnostics: String,
}

/// A daemon process on the test's socket.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(
        dir: &Path,
        generation: usize,
        hold: bool,
        no_inflight: bool,
        fault: Option<&str>,
    ) -> Result<Daemon> {
        let log = dir.join(format!("daemon-{generation}.log"));
        let logf = File::create(&log)?;
        let mut cmd = Command::new(extstorage_testbins::path(extstorage_testbins::DAEMON));
        cmd.arg("serve")
            .arg("--path")
            .arg(dir.join("disk.img"))
            .arg("--socket")
            .arg(dir.join("vhost.sock"))
            .arg("--num-queues")
            .arg(QUEUES.to_string())
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            // io_uring, whatever the temporary directory's filesystem:
            // completions in the kernel's order, not the submission order.
            .arg("--engine")
            .arg("uring")
            .env("RUST_LOG", "info")
            .env_remove("EXTSTORAGE_TEST_ONLY_HOLD_WRITES")
            .env_remove("EXTSTORAGE_TEST_ONLY_NO_INFLIGHT")
            .env_remove("EXTSTORAGE_TEST_ONLY_FAULT")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        if hold {
            cmd.env("EXTSTORAGE_TEST_ONLY_HOLD_WRITES", HOLD);
        }
        if no_inflight {
            cmd.env("EXTSTORAGE_TEST_ONLY_NO_INFLIGHT", "1");
        }
        if let Some(f) = fault {
            cmd.env("EXTSTORAGE_TEST_ONLY_FAULT", f);
        }
        die_with_parent(&mut cmd);
        eprintln!("starting daemon {generation}: {cmd:?}");
        let child = cmd.spawn().context("spawning the daemon")?;
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let socket = dir.join("vhost.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(&socket) {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("daemon exited ({st}) before listening:\n{}", d.log_text());
            }
            ensure!(
                Instant::now() < deadline,
                "daemon not listening within 30 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log shows `what`.
    fn wait_for_log(&self, what: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(what) {
            ensure!(
                Instant::now() < deadline,
                "the daemon never logged {what:?} within {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL, and reap it.
    fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("SIGKILL to the daemon")?;
            c.wait().context("reaping the daemon")?;
        }
        Ok(())
    }

    /// SIGTERM; Ok if it drains and exits 0 (bounded).
    fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        kill(Pid::from_raw(i32::try_from(c.id())?), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                ensure!(st.success(), "daemon exited with {st} on SIGTERM");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("daemon did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// True once a Unix socket listens on `path` (from /proc/net/unix: no
/// probe connection takes the daemon's frontend slot).
fn listening(path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTCON != 0)
    })
}

/// The disk as the harness gives it, with a chardev that reconnects.
fn disk_args(socket: &Path) -> Vec<OsString> {
    [
        "-object".to_owned(),
        format!("memory-backend-memfd,id=mem,size={GUEST_MEMORY_MIB}M,share=on"),
        "-numa".to_owned(),
        "node,memdev=mem".to_owned(),
        "-chardev".to_owned(),
        format!("socket,id=c0,path={},reconnect-ms=500", socket.display()),
        "-device".to_owned(),
        format!("vhost-user-blk-pci,chardev=c0,num-queues={QUEUES}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

fn run(sc: &Scenario) -> Option<Outcome> {
    let _one = one_guest_at_a_time();
    let images = guest_support::prerequisites(guest_support::BackendKind::Ours)?;
    let dir = tempfile::Builder::new()
        .prefix("guest-restart-")
        .tempdir()
        .expect("creating a temporary directory");
    File::create(dir.path().join("disk.img"))
        .and_then(|f| f.set_len(INITIAL_SIZE))
        .expect("creating the backing file");
    let mut daemons = vec![
        Daemon::start(dir.path(), 0, sc.hold, sc.no_inflight, sc.fault)
            .unwrap_or_else(|e| panic!("{e:#}")),
    ];
    let mut kills = sc.kill_at.iter().copied().peekable();
    let log = dir.path().join("qemu.log");
    let seed = new_seed();
    let (report, mut problems) = run_guest(
        &GuestRun {
            images: &images,
            smp: QUEUES,
            disk_args: disk_args(&dir.path().join("vhost.sock")),
            append: format!(
                "console=ttyS0 quiet panic=-1 e2e.seed={seed} {}",
                sc.churn.append()
            ),
            log: log.clone(),
        },
        &mut |ev| {
            let GuestEvent::ChurnProgress(fields) = ev else {
                return Ok(());
            };
            let secs: u64 = fields.get("secs").and_then(|s| s.parse().ok()).unwrap_or(0);
            if kills.next_if(|&at| at <= secs).is_none() {
                return Ok(());
            }
            let n = daemons.len();
            let current = daemons.last_mut().context("no daemon")?;
            if sc.hold && n == 1 {
                // Kill while writes are held and later ones have completed.
                current.wait_for_log("holding a write", Duration::from_secs(60))?;
                std::thread::sleep(Duration::from_millis(500));
            }
            if sc.sigterm {
                eprintln!("churn second {secs}: SIGTERM to daemon {}", n - 1);
                current.stop()?;
            } else {
                eprintln!("churn second {secs}: kill -9 of daemon {}", n - 1);
                current.kill9()?;
            }
            daemons.push(Daemon::start(
                dir.path(),
                n,
                false,
                sc.no_inflight,
                sc.fault,
            )?);
            Ok(())
        },
        Instant::now() + timeout() + Duration::from_secs(sc.churn.secs),
    );
    require_churn(&report, &mut problems);
    if let Some(at) = kills.next() {
        problems.push(format!(
            "the guest finished before churn second {at}: {} of {} kills done",
            daemons.len() - 1,
            sc.kill_at.len()
        ));
    }
    if let Some(last) = daemons.last_mut()
        && let Err(e) = last.stop()
    {
        problems.push(format!("stopping the last daemon: {e:#}"));
    }
    let resubmitted = daemons
        .iter()
        .filter(|d| d.log_text().contains("resubmitting the requests"))
        .count();
    let resubmit_lines = daemons
        .iter()
        .flat_map(|d| {
            d.log_text()
                .lines()
                .filter(|l| l.contains("resubmitting the requests"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let first_loop_lines = daemons
        .first()
        .map(|d| {
            d.log_text()
                .lines()
                .filter(|l| l.contains("queue event loop") && l.contains("io_uring"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut diagnostics = format!(
        "--- guest console ---\n{}\n--- qemu stderr ---\n{}\n",
        report.console,
        qemu_log_text(&log)
    );
    for (i, d) in daemons.iter().enumerate() {
        diagnostics.push_str(&format!("--- daemon {i} log ---\n{}\n", d.log_text()));
    }
    Some(Outcome {
        problems,
        report,
        resubmitted,
        resubmit_lines,
        first_loop_lines,
        diagnostics,
    })
}

fn held_scenario(no_inflight: bool) -> Scenario {
    Scenario {
        churn: ChurnConfig {
            secs: 12,
            jobs: 16,
            bytes: 32 << 20,
            errors_ok: false,
            backing_dir: None,
            qemu_args: Vec::new(),
        },
        kill_at: vec![3],
        hold: true,
        no_inflight,
        sigterm: false,
        fault: None,
    }
}

/// The daemon is killed while some writes are held back and writes
/// submitted after them have completed (out of order); the next daemon
/// resubmits the held ones from the in-flight region and the guest
/// carries on with no I/O error and every acknowledged block intact.
#[test]
fn kill_with_writes_completed_out_of_order_resubmits_the_held_ones() {
    let Some(o) = run(&held_scenario(false)) else {
        return;
    };
    let mut problems = o.problems;
    if o.resubmitted == 0 {
        problems.push("no restarted daemon resubmitted anything".to_owned());
    }
    // The held writes go through the path production runs: the queues
    // of the daemon that holds them run the io_uring event loop (the hold
    // engine used to turn it off, leaving them on the epoll path).
    if !o
        .first_loop_lines
        .iter()
        .any(|l| l.contains("test-only-hold"))
    {
        problems.push(format!(
            "the holding daemon's queues never ran the io_uring event loop (log lines: {:?})",
            o.first_loop_lines
        ));
    }
    assert!(
        problems.is_empty(),
        "restart with held writes failed:\n  {}\n{}",
        problems.join("\n  "),
        o.diagnostics
    );
    eprintln!("churn: {:?}", o.report.results["churn"].fields);
    for l in o.first_loop_lines.iter().chain(&o.resubmit_lines) {
        eprintln!("{l}");
    }
}

/// The negative control: the same run with INFLIGHT_SHMFD masked (QEMU
/// then restarts the ring from the used index) must fail: the held
/// writes are lost and returned writes run again. Slow (the guest waits
/// for the lost writes until the harness's deadline), so not run by
/// default: `cargo test --test guest_restart -- --ignored`.
#[test]
#[ignore = "negative control, waits for the harness deadline; run with --ignored"]
fn without_inflight_tracking_the_same_kill_fails() {
    let Some(o) = run(&held_scenario(true)) else {
        return;
    };
    assert!(
        !o.problems.is_empty(),
        "the run passed without in-flight tracking: the scenario does not test it\n{}",
        o.diagnostics
    );
    eprintln!("failed as expected:\n  {}", o.problems.join("\n  "));
    // What the guest said besides the once-a-second progress, and the
    // last progress line.
    let console: Vec<&str> = o.report.console.lines().collect();
    let said: Vec<&str> = console
        .iter()
        .copied()
        .filter(|l| !l.contains("E2E-CHURN-PROGRESS"))
        .chain(
            console
                .iter()
                .rev()
                .copied()
                .find(|l| l.contains("PROGRESS")),
        )
        .collect();
    eprintln!("guest console:\n{}", said.join("\n"));
    for l in o.diagnostics.lines().filter(|l| l.contains("resubmitting")) {
        eprintln!("{l}");
    }
}

/// Four `kill -9` and restarts at churn seconds 3, 6, 9 and 12 under 32
/// writers (queue depth 32 over two queues), io_uring completing in
/// whatever order it does: every acknowledged block is intact and the
/// guest saw no I/O error.
#[test]
fn repeated_kill_and_restart_under_load_loses_no_acknowledged_write() {
    let Some(o) = run(&Scenario {
        churn: ChurnConfig {
            secs: 16,
            jobs: 32,
            bytes: 32 << 20,
            errors_ok: false,
            backing_dir: None,
            qemu_args: Vec::new(),
        },
        kill_at: vec![3, 6, 9, 12],
        hold: false,
        no_inflight: false,
        sigterm: false,
        fault: None,
    }) else {
        return;
    };
    assert!(
        o.problems.is_empty(),
        "repeated restarts failed:\n  {}\n{}",
        o.problems.join("\n  "),
        o.diagnostics
    );
    eprintln!(
        "churn: {:?}; {} restarted daemon(s) resubmitted requests",
        o.report.results["churn"].fields, o.resubmitted
    );
    for l in &o.resubmit_lines {
        eprintln!("{l}");
    }
}

/// SIGTERM under load, twice: each daemon completes what it took from the
/// rings, exits 0, and the next one serves the reconnected guest with no
/// I/O error and every acknowledged block intact.
#[test]
fn sigterm_under_load_drains_exits_zero_and_loses_nothing() {
    let Some(o) = run(&Scenario {
        churn: churn(14, false),
        kill_at: vec![3, 8],
        hold: false,
        no_inflight: false,
        sigterm: true,
        fault: None,
    }) else {
        return;
    };
    assert!(
        o.problems.is_empty(),
        "SIGTERM and restart failed:\n  {}\n{}",
        o.problems.join("\n  "),
        o.diagnostics
    );
    eprintln!("churn: {:?}", o.report.results["churn"].fields);
}

fn churn(secs: u64, errors_ok: bool) -> ChurnConfig {
    ChurnConfig {
        secs,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok,
        backing_dir: None,
        qemu_args: Vec::new(),
    }
}

/// A failing backing (`fault`: every Nth read or write fails or stops
/// short) with a restart under way: the guest gets I/O errors for those,
/// never a wrong success (no mismatch), and the daemons keep serving.
fn faulty_backing(fault: &'static str) {
    let Some(o) = run(&Scenario {
        churn: churn(10, true),
        kill_at: vec![5],
        hold: false,
        no_inflight: false,
        sigterm: false,
        fault: Some(fault),
    }) else {
        return;
    };
    let mut problems = o.problems;
    if guest_support::churn_count(&o.report, "io_errors") == 0 {
        problems.push(format!("the guest saw no I/O error with {fault}"));
    }
    assert!(
        problems.is_empty(),
        "{fault} under churn failed:\n  {}\n{}",
        problems.join("\n  "),
        o.diagnostics
    );
    eprintln!("{fault}: churn {:?}", o.report.results["churn"].fields);
}

/// Every 50th read or write fails with EIO (after the backing did it).
#[test]
fn backing_eio_reaches_the_guest_as_an_error_and_nothing_else_breaks() {
    faulty_backing("eio:50");
}

/// Every 50th read or write moves only its first half: the daemon must
/// answer IOERR (an OK would hand the guest stale data or leave half a
/// write unwritten, which the churn verifier catches).
#[test]
fn short_transfers_reach_the_guest_as_errors_never_as_success() {
    faulty_backing("short:50");
}
