//! Live migration of a running, writing guest between two QEMUs on this
//! machine, each with its own vhost-user-blk backend serving the same volume
//! (a loop device of the reference `loopfile` provider), wrapped in the
//! `open`/`close` sequence Ganeti runs for a migration on ext storage
//! (lib/cmdlib/instance_migration.py): `close` on the target, `open` shared
//! on the source and on the target, migrate, `close` on the source, `open`
//! exclusive on the target.
//!
//! The guest (2 vCPUs, 2 queues) runs the churn workload (many O_DIRECT
//! writers of self-describing blocks, tests/guest/e2e-guest.c); a few
//! seconds in, the source QEMU migrates to the target (started with
//! `-incoming`), the source QEMU quits and its backend stops, and the guest
//! carries on on the target until its writers finish and it reads back
//! every acknowledged block. Run against this project's daemon and, as the
//! proof that the test is fair, against two qemu-storage-daemons
//! (`locking=off`): both must pass. The `cancelled` variants cancel the
//! migration half way instead, revert the disks as Ganeti does after a
//! failed migration (`close` on the target, `open` exclusive on the
//! source), and let the guest finish on the source.

mod common_cli;
mod guest_support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common_cli::{Run, World};
use guest_support::{
    Backend, BackendKind, ChildGuard, ChurnConfig, GuestEvent, GuestImages, GuestReport, GuestRun,
    Prepared, Qmp, StartOptions, console_lines, die_with_parent, follow_line, guest_images,
    harness_disk_args, new_seed, one_guest_at_a_time, qemu_command, qemu_log_text, require_churn,
    skip_or_fail, timeout, which,
};

const PROVIDER: &str = "loopfile";
const VOLUME: &str = "mig.disk0";
const QUEUES: u32 = 2;
/// The guest's writers run this long; the migration starts
/// [`MIGRATE_AT_SECS`] in, so most of the run is left for the target.
const CHURN_SECS: u64 = 45;
const MIGRATE_AT_SECS: u64 = 5;

fn churn() -> ChurnConfig {
    ChurnConfig {
        secs: CHURN_SECS,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok: false,
        backing_dir: None,
        qemu_args: Vec::new(),
    }
}

/// `extstorage COMMAND --provider loopfile --volume mig.disk0 -p dir=... EXTRA`.
fn cli(w: &World, command: &[&str], extra: &[&str]) -> Run {
    let dir = format!("dir={}", w.vols().display());
    let mut args: Vec<&str> = command.to_vec();
    args.extend(["--provider", PROVIDER, "--volume", VOLUME, "-p", &dir]);
    args.extend_from_slice(extra);
    w.run(&args)
}

/// Runs a CLI step of the open/close sequence; an error names the step.
fn step(w: &World, what: &str, command: &[&str], extra: &[&str]) -> Result<()> {
    let r = cli(w, command, extra);
    ensure!(
        r.code == 0,
        "{what}: extstorage {} failed (exit {}): {}{}",
        command.join(" "),
        r.code,
        r.stdout,
        r.stderr
    );
    eprintln!(
        "{what}: extstorage {} {}",
        command.join(" "),
        extra.join(" ")
    );
    Ok(())
}

/// What the loopfile provider's `open` recorded (`exclusive=True|False`),
/// or `closed`.
fn open_state(w: &World) -> String {
    std::fs::read_to_string(w.vols().join(format!("{VOLUME}.img.open")))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "closed".to_owned())
}

fn expect_open_state(w: &World, want: &str, when: &str) -> Result<()> {
    let got = open_state(w);
    ensure!(
        got == want,
        "{when}: the provider's open state is {got:?}, expected {want:?}"
    );
    Ok(())
}

/// Closes and removes the volume (detaching its loop device) when the test
/// ends, however it ends.
struct VolumeCleanup<'a>(&'a World);

impl Drop for VolumeCleanup<'_> {
    fn drop(&mut self) {
        let _ = cli(self.0, &["close"], &[]);
        let r = cli(self.0, &["remove"], &[]);
        if r.code != 0 {
            eprintln!("cleanup: extstorage remove failed: {}", r.stderr);
        }
    }
}

/// One QEMU of the migration, its serial console followed line by line.
struct Vm {
    name: &'static str,
    guard: ChildGuard,
    lines: Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    qmp: PathBuf,
    log: PathBuf,
}

impl Vm {
    /// Starts QEMU with the harness's VM arguments, the disk on `socket`,
    /// a QMP socket in `dir` and `extra` arguments (`-incoming`).
    fn start(
        name: &'static str,
        images: &GuestImages,
        append: &str,
        dir: &Path,
        socket: &Path,
        extra: &[String],
    ) -> Result<Vm> {
        let qmp = dir.join(format!("qmp-{name}.sock"));
        let log = dir.join(format!("qemu-{name}.log"));
        let mut disk_args = harness_disk_args(socket, QUEUES);
        disk_args.push("-qmp".into());
        disk_args.push(format!("unix:{},server=on,wait=off", qmp.display()).into());
        disk_args.extend(extra.iter().map(Into::into));
        let mut cmd = qemu_command(&GuestRun {
            images,
            smp: QUEUES,
            disk_args,
            append: append.to_owned(),
            log: log.clone(),
        });
        cmd.stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        die_with_parent(&mut cmd);
        eprintln!("starting QEMU {name}: {cmd:?}");
        let mut child = cmd.spawn().context("spawning qemu-system-x86_64")?;
        let stdout = child.stdout.take().context("QEMU has no stdout pipe")?;
        let (lines, reader) = console_lines(stdout);
        Ok(Vm {
            name,
            guard: ChildGuard::new(&format!("QEMU {name}"), child),
            lines,
            reader: Some(reader),
            qmp,
            log,
        })
    }

    /// A QMP connection, once QEMU listens (bounded wait).
    fn qmp(&mut self) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.qmp.exists()
                && let Ok(q) = Qmp::connect(&self.qmp)
            {
                return Ok(q);
            }
            ensure!(
                Instant::now() < deadline,
                "QEMU {} opened no QMP socket in 60 s:\n{}",
                self.name,
                qemu_log_text(&self.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit on its own; its status must be success.
    fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        let st = self.guard.wait_for(limit)?;
        ensure!(st.success(), "QEMU {} exited with {st}", self.name);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(())
    }
}

/// `query-migrate`'s status (and error, if any) on the source.
fn migration_status(q: &mut Qmp) -> Result<(String, String)> {
    let r = q.execute("query-migrate", &serde_json::json!({}))?;
    let status = r["status"].as_str().unwrap_or("none").to_owned();
    let error = r["error-desc"].as_str().unwrap_or("").to_owned();
    Ok((status, error))
}

fn vm_status(q: &mut Qmp) -> Result<String> {
    let r = q.execute("query-status", &serde_json::json!({}))?;
    Ok(r["status"].as_str().unwrap_or("?").to_owned())
}

/// What the migration run saw, for the checks and the failure message.
#[derive(Default)]
struct Seen {
    report: GuestReport,
    /// Console lines of the source, then of the target.
    console_a: String,
    console_b: String,
    /// Guest writes reported when the migration started and when it
    /// completed (or was cancelled).
    writes_at_start: u64,
    writes_at_completion: u64,
    /// Whether the churn result was printed on the target's console.
    result_on_target: bool,
    /// Whether the churn result was printed on the source's console.
    result_on_source: bool,
    migration_secs: f64,
}

fn writes_of(fields: &BTreeMap<String, String>) -> Option<u64> {
    fields.get("writes").and_then(|v| v.parse().ok())
}

/// Follows `vm`'s console until `until` says stop (checked after each line
/// and every 200 ms) or the console closes; lines go to `seen.report` and
/// `console`. Returns false if the console closed.
fn follow(
    vm: &Vm,
    report: &mut GuestReport,
    console: &mut String,
    deadline: Instant,
    on_event: &mut dyn FnMut(GuestEvent<'_>) -> Result<()>,
    until: &mut dyn FnMut(&GuestReport) -> Result<bool>,
) -> Result<bool> {
    loop {
        if until(report)? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "timed out on QEMU {}'s console (overall limit {:?} + the churn)",
            vm.name,
            timeout()
        );
        match vm.lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                console.push_str(&line);
                follow_line(report, &line, on_event).map_err(anyhow::Error::msg)?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
    }
}

/// The whole migration against `kind` backends; `None` when skipped here.
/// With `cancel`, the migration is cancelled half way instead (QMP
/// `migrate_cancel`, the bandwidth kept low so it cannot finish first) and
/// the guest must finish on the source.
fn migrate(kind: BackendKind, cancel: bool) {
    let _one = one_guest_at_a_time();
    let images = match guest_images() {
        Prepared::Ready(i) => i,
        Prepared::Skip(why) => return skip_or_fail(&why),
    };
    for prog in ["qemu-system-x86_64", "qemu-storage-daemon", "losetup"] {
        let needed = prog != "qemu-storage-daemon" || kind == BackendKind::QemuStorageDaemon;
        if needed && which(prog).is_none() {
            return skip_or_fail(&format!("{prog} not found; run scripts/install-deps.sh"));
        }
    }
    let w = World::new();
    w.install(PROVIDER);
    // Declared before the backends, so dropped after them: the volume is
    // removed (and its loop device detached) once no daemon holds it.
    let _cleanup = VolumeCleanup(&w);
    let mut seen = Seen::default();
    let mut backends: Vec<(&str, Backend)> = Vec::new();
    let result = run_migration(&w, kind, &images, &mut seen, &mut backends, cancel);
    let mut problems = Vec::new();
    if let Err(e) = result {
        problems.push(format!("{e:#}"));
    }
    if problems.is_empty() {
        require_churn(&seen.report, &mut problems);
        // Where the guest finished, and the words for it.
        let (result_printed, no_result, wrote_where, migration_end) = if cancel {
            (
                seen.result_on_source,
                "the churn result was not printed by the source after the cancelled migration",
                "after the cancel",
                "was cancelled",
            )
        } else {
            (
                seen.result_on_target,
                "the churn result was not printed by the target: the guest did not finish \
                 its writes and its verification after the migration",
                "on the target",
                "completed",
            )
        };
        if !result_printed {
            problems.push(no_result.to_owned());
        }
        let final_writes = seen
            .report
            .results
            .get("churn")
            .and_then(|r| writes_of(&r.fields))
            .unwrap_or(0);
        if final_writes <= seen.writes_at_completion {
            problems.push(format!(
                "the guest wrote nothing {wrote_where}: {final_writes} writes in all, \
                 {} when the migration {migration_end}",
                seen.writes_at_completion
            ));
        }
    }
    let mut diagnostics = format!(
        "--- source console ---\n{}\n--- target console ---\n{}\n",
        seen.console_a, seen.console_b
    );
    for (name, b) in &backends {
        diagnostics.push_str(&format!("--- backend {name} log ---\n{}\n", b.log_text()));
    }
    for name in ["a", "b"] {
        diagnostics.push_str(&format!(
            "--- QEMU {name} stderr ---\n{}\n",
            qemu_log_text(&w.path(&format!("qemu-{name}.log")))
        ));
    }
    assert!(
        problems.is_empty(),
        "live migration (cancel={cancel}) with {kind:?} backends failed:\n  {}\n{diagnostics}",
        problems.join("\n  ")
    );
    eprintln!(
        "migration (cancel={cancel}) with {kind:?}: {:.1} s, guest writes {} at its start, {} at its end; churn: {:?}",
        seen.migration_secs,
        seen.writes_at_start,
        seen.writes_at_completion,
        seen.report.results["churn"].fields
    );
}

fn run_migration(
    w: &World,
    kind: BackendKind,
    images: &GuestImages,
    seen: &mut Seen,
    backends: &mut Vec<(&'static str, Backend)>,
    cancel: bool,
) -> Result<()> {
    // The volume: created (and attached) by the reference provider.
    let created = cli(w, &["create"], &["--size", "64M"]);
    ensure!(
        created.code == 0,
        "extstorage create failed: {}",
        created.stderr
    );
    let attached = cli(w, &["--json", "attach"], &[]);
    ensure!(
        attached.code == 0,
        "extstorage attach failed: {}",
        attached.stderr
    );
    let dev = PathBuf::from(
        attached.json()["dev_path"]
            .as_str()
            .with_context(|| format!("attach printed no device: {}", attached.stdout))?,
    );
    ensure!(
        std::fs::metadata(&dev)?.file_type().is_block_device(),
        "{} is not a block device",
        dev.display()
    );
    // The instance runs on the source: its disk is open exclusively there.
    step(w, "instance start (source)", &["open"], &[])?;
    expect_open_state(w, "exclusive=True", "after the source's open")?;

    let serial = "migration";
    // Both nodes' backends serve the one device during the migration.
    let shared = StartOptions {
        shared: true,
        ..StartOptions::default()
    };
    let (dir_a, dir_b) = (w.path("node-a"), w.path("node-b"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let (sock_a, sock_b) = (dir_a.join("vhost.sock"), dir_b.join("vhost.sock"));
    let backend_a = Backend::start_opts(kind, &dir_a, &dev, &sock_a, QUEUES, serial, &shared)?;
    backends.push(("a (source)", backend_a));

    let append = format!(
        "console=ttyS0 quiet panic=-1 e2e.seed={} {}",
        new_seed(),
        churn().append()
    );
    let deadline = Instant::now() + timeout() + Duration::from_secs(CHURN_SECS + 300);
    let mut vm_a = Vm::start("a", images, &append, w.path("").as_path(), &sock_a, &[])?;
    let mut qmp_a = vm_a.qmp()?;

    // Until the guest's writers have run a few seconds on the source.
    let writes = Cell::new(0u64);
    let secs = Cell::new(0u64);
    let mut on_progress = |ev: GuestEvent<'_>| {
        if let GuestEvent::ChurnProgress(f) = ev {
            writes.set(writes_of(f).unwrap_or(writes.get()));
            secs.set(
                f.get("secs")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(secs.get()),
            );
        }
        Ok(())
    };
    {
        let Seen {
            report, console_a, ..
        } = &mut *seen;
        let open = follow(
            &vm_a,
            report,
            console_a,
            deadline,
            &mut on_progress,
            &mut |r| Ok(secs.get() >= MIGRATE_AT_SECS || r.done.is_some()),
        )?;
        ensure!(open, "QEMU a's console closed before the migration");
        ensure!(
            report.done.is_none(),
            "the guest finished before the migration could start"
        );
    }

    // Ganeti, before migrating: close on the target, open shared on both.
    step(w, "pre-migration (target)", &["close"], &[])?;
    step(w, "pre-migration (source)", &["open"], &["--shared"])?;
    step(w, "pre-migration (target)", &["open"], &["--shared"])?;
    expect_open_state(w, "exclusive=False", "during the migration")?;

    // The target: its own backend on the same device, QEMU waiting for the
    // incoming migration.
    let backend_b = Backend::start_opts(kind, &dir_b, &dev, &sock_b, QUEUES, serial, &shared)?;
    backends.push(("b (target)", backend_b));
    let incoming = w.path("migrate.sock");
    let mut vm_b = Vm::start(
        "b",
        images,
        &append,
        w.path("").as_path(),
        &sock_b,
        &[
            "-incoming".to_owned(),
            format!("unix:{}", incoming.display()),
        ],
    )?;
    let mut qmp_b = vm_b.qmp()?;
    let st = vm_status(&mut qmp_b)?;
    ensure!(
        st == "inmigrate",
        "the target QEMU is {st:?}, not inmigrate"
    );

    // Migrate while the guest writes; follow the source's console meanwhile.
    qmp_a.execute(
        "migrate-set-parameters",
        // 4 MiB/s: 512 MiB of RAM cannot be sent before the cancel.
        &serde_json::json!({"max-bandwidth": if cancel { 4u64 << 20 } else { 1u64 << 30 }}),
    )?;
    seen.writes_at_start = writes.get();
    let started = Instant::now();
    qmp_a.execute(
        "migrate",
        &serde_json::json!({"uri": format!("unix:{}", incoming.display())}),
    )?;
    eprintln!("migration started at guest writes={}", writes.get());
    let mut last_poll = Instant::now();
    let mut outcome = String::new();
    let secs_at_start = secs.get();
    let mut cancel_sent = false;
    {
        let Seen {
            report, console_a, ..
        } = &mut *seen;
        follow(
            &vm_a,
            report,
            console_a,
            deadline,
            &mut on_progress,
            &mut |_| {
                if last_poll.elapsed() < Duration::from_millis(250) {
                    return Ok(false);
                }
                last_poll = Instant::now();
                let (status, error) = migration_status(&mut qmp_a)?;
                match status.as_str() {
                    "completed" if cancel => bail!("the migration completed before the cancel"),
                    "cancelled" if cancel_sent => {
                        outcome = status;
                        Ok(true)
                    }
                    "completed" => {
                        outcome = status;
                        Ok(true)
                    }
                    "failed" | "cancelled" => bail!("the migration {status}: {error}"),
                    _ => {
                        // Two seconds of guest writes into the migration.
                        if cancel && !cancel_sent && secs.get() >= secs_at_start + 2 {
                            qmp_a.execute("migrate_cancel", &serde_json::json!({}))?;
                            cancel_sent = true;
                            eprintln!("migration cancelled at guest writes={}", writes.get());
                        }
                        Ok(false)
                    }
                }
            },
        )?;
    }
    if cancel {
        ensure!(outcome == "cancelled", "the migration was not cancelled");
        seen.migration_secs = started.elapsed().as_secs_f64();
        seen.writes_at_completion = writes.get();
        return finish_cancelled(w, kind, seen, backends, vm_a, qmp_a, vm_b, qmp_b, deadline);
    }
    ensure!(outcome == "completed", "the migration did not complete");
    seen.migration_secs = started.elapsed().as_secs_f64();
    seen.writes_at_completion = writes.get();
    let st = vm_status(&mut qmp_b)?;
    ensure!(st == "running", "after the migration the target is {st:?}");
    let st = vm_status(&mut qmp_a)?;
    ensure!(
        st == "postmigrate",
        "after the migration the source is {st:?}"
    );
    eprintln!(
        "migration completed in {:.1} s at guest writes={}",
        seen.migration_secs,
        writes.get()
    );
    ensure!(
        !seen.report.results.contains_key("churn"),
        "the guest's writers finished before the migration completed"
    );

    // The source QEMU goes away, then its backend: from now on only the
    // target's backend can serve the guest.
    let _ = qmp_a.execute("quit", &serde_json::json!({}));
    vm_a.wait_exit(Duration::from_secs(60))?;
    while let Ok(line) = vm_a.lines.try_recv() {
        seen.console_a.push_str(&line);
    }
    stop_backend(&mut backends[0].1, "source")?;
    if kind == BackendKind::Ours {
        // QEMU turned dirty logging on for the migration, and the source
        // daemon saw it (that the data it then wrote into guest memory was
        // marked is proven by crates/vhost-user-blk/tests/dirty_log.rs).
        let log = backends[0].1.log_text();
        ensure!(
            log.contains("dirty-page logging (live migration) started"),
            "the source daemon never saw VHOST_F_LOG_ALL"
        );
    }

    // Ganeti, after migrating: close on the source, open exclusive on the
    // target.
    step(w, "post-migration (source)", &["close"], &[])?;
    step(w, "post-migration (target)", &["open"], &[])?;
    expect_open_state(w, "exclusive=True", "after the migration")?;

    // The guest finishes on the target.
    seen.result_on_target = finish_on(
        &mut vm_b,
        &mut seen.report,
        &mut seen.console_b,
        &mut backends[1].1,
        "target",
        deadline,
    )?;
    Ok(())
}

/// Follows the guest to the end on `vm` (the rest of its writes, then the
/// verification of every acknowledged block, then power off), its lines
/// going to `report` and `console`; requires `E2E-DONE ok`; then stops
/// `backend`, that VM's backend (`side`: "source" or "target", for the
/// error). Returns whether the churn result was printed on this console.
fn finish_on(
    vm: &mut Vm,
    report: &mut GuestReport,
    console: &mut String,
    backend: &mut Backend,
    side: &str,
    deadline: Instant,
) -> Result<bool> {
    let mut on_event = |_: GuestEvent<'_>| Ok(());
    let open = follow(vm, report, console, deadline, &mut on_event, &mut |r| {
        Ok(r.done.is_some())
    })?;
    if open {
        vm.wait_exit(Duration::from_secs(60))?;
    }
    let result_here = console.contains("E2E-RESULT name=churn");
    ensure!(
        report.done.as_deref() == Some("ok"),
        "the guest finished with E2E-DONE {:?}",
        report.done
    );
    stop_backend(backend, side)?;
    Ok(result_here)
}

/// Stops `backend` (`side`: "source" or "target"); it must exit cleanly on
/// SIGTERM.
fn stop_backend(backend: &mut Backend, side: &str) -> Result<()> {
    let st = backend.stop()?;
    ensure!(
        st.success(),
        "the {side} backend exited with {st} on SIGTERM"
    );
    Ok(())
}

/// After a cancelled migration: Ganeti aborts it (the target QEMU goes) and
/// reverts the disks (`close` on the target, `open` exclusive on the
/// source); the guest finishes on the source.
#[allow(clippy::too_many_arguments)]
fn finish_cancelled(
    w: &World,
    kind: BackendKind,
    seen: &mut Seen,
    backends: &mut [(&'static str, Backend)],
    mut vm_a: Vm,
    mut qmp_a: Qmp,
    mut vm_b: Vm,
    mut qmp_b: Qmp,
    deadline: Instant,
) -> Result<()> {
    let st = vm_status(&mut qmp_a)?;
    ensure!(
        st == "running",
        "after the cancelled migration the source is {st:?}"
    );
    // The target QEMU may have exited by itself when the stream broke.
    let _ = qmp_b.execute("quit", &serde_json::json!({}));
    let _ = vm_b.guard.wait_for(Duration::from_secs(60));
    while let Ok(line) = vm_b.lines.try_recv() {
        seen.console_b.push_str(&line);
    }
    stop_backend(&mut backends[1].1, "target")?;
    step(w, "migration aborted (target)", &["close"], &[])?;
    step(w, "migration aborted (source)", &["open"], &[])?;
    expect_open_state(w, "exclusive=True", "after the aborted migration")?;
    if kind == BackendKind::Ours {
        let log = backends[0].1.log_text();
        ensure!(
            log.contains("dirty-page logging (live migration) stopped"),
            "the source daemon never saw VHOST_F_LOG_ALL withdrawn"
        );
    }
    seen.result_on_source = finish_on(
        &mut vm_a,
        &mut seen.report,
        &mut seen.console_a,
        &mut backends[0].1,
        "source",
        deadline,
    )?;
    Ok(())
}

/// This project's daemon on both sides.
#[test]
fn live_migration_ours() {
    migrate(BackendKind::Ours, false);
}

/// qemu-storage-daemon on both sides (`locking=off`): the reference peer
/// passes the same test.
#[test]
fn live_migration_qemu_storage_daemon() {
    migrate(BackendKind::QemuStorageDaemon, false);
}

/// A migration cancelled half way: the source daemon stops logging and
/// keeps serving, the guest finishes there with every block intact.
#[test]
fn live_migration_cancelled_ours() {
    migrate(BackendKind::Ours, true);
}

/// The same against qemu-storage-daemon.
#[test]
fn live_migration_cancelled_qemu_storage_daemon() {
    migrate(BackendKind::QemuStorageDaemon, true);
}
