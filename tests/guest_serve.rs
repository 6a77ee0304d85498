//! Real-guest end-to-end tests of `extstorage serve`: a volume of the
//! reference `loopfile` provider (a real loop device) served by the real CLI
//! as a process, a Linux guest (TCG) booted from exactly the disk arguments
//! `extstorage kvm-args --access vhost-user` prints, with 2 and 4 vCPUs, the
//! disk grown online by `extstorage grow` while the guest runs; and the same
//! online grow against qemu-storage-daemon exporting the same kind of loop
//! device, to show the test itself is fair. See docs/testing-guest.md.

mod common_cli;
mod guest_support;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use common_cli::{Run, World, loop_devices_of};
use guest_support::{
    Backend, BackendKind, CheckResult, GROWN_SIZE, GUEST_MEMORY_MIB, GuestReport, GuestRun,
    INITIAL_SIZE, REQUIRED_CHECKS, SECTOR,
};
use nix::sys::signal::Signal;

const PROVIDER: &str = "loopfile";
const VOLUME: &str = "vol1";
/// What `extstorage grow --amount` adds: [`INITIAL_SIZE`] to [`GROWN_SIZE`].
const GROW_AMOUNT: &str = "32M";

/// Who serves the volume's loop device to the guest.
enum Server {
    /// `extstorage serve` with these extra options; `socket`: pass
    /// `--socket` (to serve and to kvm-args) instead of the defaults.
    Serve {
        options: &'static [&'static str],
        socket: bool,
    },
    /// qemu-storage-daemon exporting the attached loop device with this many
    /// queues, resized through QMP `block_resize` after `extstorage grow`.
    QemuStorageDaemon { num_queues: u32 },
}

/// One boot: the server, the guest's vCPUs and the queue count the guest
/// must see.
struct Case {
    server: Server,
    smp: u32,
    queues: u32,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--provider loopfile --volume vol1 -p dir=<world>/vols`.
fn vol_args(w: &World) -> Vec<String> {
    vec![
        "--provider".into(),
        PROVIDER.into(),
        "--volume".into(),
        VOLUME.into(),
        "-p".into(),
        format!("dir={}", w.vols().display()),
    ]
}

/// Runs `extstorage COMMAND <volume> EXTRA...` in the world.
fn cli(w: &World, command: &[&str], extra: &[&str]) -> Run {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend(vol_args(w));
    args.extend(extra.iter().map(|s| s.to_string()));
    w.run(&strs(&args))
}

/// The volume file of the loopfile provider.
fn volume_file(w: &World) -> PathBuf {
    w.vols().join(format!("{VOLUME}.img"))
}

/// The disk arguments from `extstorage --json kvm-args --access vhost-user`,
/// and what is wrong with them (they must state the served queue count and
/// carry the shared memory backend).
fn kvm_args(w: &World, extra: &[&str], queues: u32) -> (Vec<OsString>, Vec<String>) {
    let mib = GUEST_MEMORY_MIB.to_string();
    let mut opts = vec!["--access", "vhost-user", "--memory-mib", &mib];
    opts.extend_from_slice(extra);
    let out = cli(w, &["--json", "kvm-args"], &opts).ok().json();
    let argv: Vec<String> = out["argv"]
        .as_array()
        .unwrap_or_else(|| panic!("kvm-args printed no argv: {out:#}"))
        .iter()
        .map(|a| a.as_str().expect("argv holds strings").to_owned())
        .collect();
    eprintln!("kvm-args: {}", argv.join(" "));
    let mut problems = Vec::new();
    let device = argv.iter().find(|a| a.starts_with("vhost-user-blk-pci,"));
    match device {
        None => problems.push(format!("kvm-args printed no vhost-user-blk-pci: {argv:?}")),
        Some(d) if !d.split(',').any(|o| o == format!("num-queues={queues}")) => problems.push(
            format!("kvm-args did not state num-queues={queues} (what is served): {d}"),
        ),
        Some(_) => {}
    }
    if !argv
        .iter()
        .any(|a| a.starts_with("memory-backend-") && a.contains("share=on"))
    {
        problems.push(format!(
            "kvm-args --memory-mib printed no shared memory backend: {argv:?}"
        ));
    }
    (argv.into_iter().map(OsString::from).collect(), problems)
}

/// The per-queue counters of the served volume (`extstorage status`): the
/// backend must have taken reads and writes from every one of `queues`.
fn check_status(w: &World, queues: u32, problems: &mut Vec<String>) {
    let r = w.run(&[
        "--json",
        "status",
        "--provider",
        PROVIDER,
        "--volume",
        VOLUME,
    ]);
    if r.code != 0 {
        problems.push(format!("extstorage status failed: {r:#?}"));
        return;
    }
    let st = r.json();
    let list = st["queues"].as_array().cloned().unwrap_or_default();
    if list.len() != queues as usize {
        problems.push(format!(
            "status lists {} queues, served {queues}: {st:#}",
            list.len()
        ));
    }
    for q in &list {
        let (reads, writes) = (
            q["requests"]["read"].as_u64().unwrap_or(0),
            q["requests"]["write"].as_u64().unwrap_or(0),
        );
        eprintln!("queue {}: {reads} reads, {writes} writes", q["index"]);
        if reads == 0 || writes == 0 {
            problems.push(format!(
                "queue {} carried {reads} reads and {writes} writes; every queue must carry both",
                q["index"]
            ));
        }
    }
    if st["size_bytes"].as_u64() != Some(GROWN_SIZE) {
        problems.push(format!(
            "status reports {} bytes served, expected {GROWN_SIZE}",
            st["size_bytes"]
        ));
    }
}

/// The running server of the loop device.
enum Running {
    Serve(common_cli::Served),
    Qsd(Backend),
}

/// Creates a 64 MiB loopfile volume, serves it as `case.server` says, boots
/// the guest with `-smp case.smp` from the argv kvm-args prints, grows the
/// volume with `extstorage grow` when the guest waits for it, then stops
/// the server and checks the loop device is detached and the volume file
/// holds every range the guest wrote (the grown tail included).
fn run_case(case: &Case) {
    let qsd = matches!(case.server, Server::QemuStorageDaemon { .. });
    let kind = if qsd {
        BackendKind::QemuStorageDaemon
    } else {
        BackendKind::Ours
    };
    let Some(images) = guest_support::prerequisites(kind) else {
        return;
    };
    let _one = guest_support::one_guest_at_a_time();
    let w = World::new();
    w.install(PROVIDER);
    cli(&w, &["create"], &["--size", "64M"]).ok();
    let file = volume_file(&w);
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len()).ok(),
        Some(INITIAL_SIZE)
    );
    let seed = guest_support::new_seed();
    let socket = w.path("vhost.sock");
    let socket_str = socket.to_str().expect("UTF-8 temp path").to_owned();
    let qemu_log = w.path("qemu.log");

    let mut problems = Vec::new();
    let (mut running, serial, disk_args) = match &case.server {
        Server::Serve {
            options,
            socket: explicit,
        } => {
            let serial = format!("es-{:08x}", seed as u32);
            let mut args = vol_args(&w);
            args.extend(options.iter().map(|s| s.to_string()));
            args.extend(["--serial".into(), serial.clone()]);
            if *explicit {
                args.extend(["--socket".into(), socket_str.clone()]);
            }
            let served = w
                .serve(&strs(&args))
                .unwrap_or_else(|r| panic!("extstorage serve did not start: {r:#?}"));
            assert_eq!(
                served.ready["num_queues"], case.queues,
                "serve offers another queue count than the test expects: {}",
                served.ready
            );
            let extra: Vec<&str> = if *explicit {
                vec!["--socket", &socket_str]
            } else {
                Vec::new()
            };
            let (argv, p) = kvm_args(&w, &extra, case.queues);
            problems.extend(p);
            (Running::Serve(served), serial, argv)
        }
        Server::QemuStorageDaemon { num_queues } => {
            let att = cli(&w, &["--json", "attach"], &[]).ok().json();
            let dev = PathBuf::from(att["dev_path"].as_str().expect("loopfile gives a device"));
            let backend = Backend::start(
                BackendKind::QemuStorageDaemon,
                w.tmp.path(),
                &dev,
                &socket,
                *num_queues,
                "",
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            let nq = num_queues.to_string();
            let (argv, p) = kvm_args(
                &w,
                &["--socket", &socket_str, "--num-queues", &nq],
                case.queues,
            );
            problems.extend(p);
            // qemu-storage-daemon answers GET_ID with a fixed string.
            (Running::Qsd(backend), "vhost_user_blk".to_owned(), argv)
        }
    };

    // The online grow: the provider's grow script on the real loop device,
    // then (qemu-storage-daemon only) QMP block_resize; `extstorage grow`
    // tells a served volume's backend itself.
    let grow = || -> Result<()> {
        let r = cli(&w, &["--json", "grow"], &["--amount", GROW_AMOUNT]);
        ensure!(r.code == 0, "extstorage grow failed: {r:#?}");
        let out = r.json();
        eprintln!("grow: {out}");
        match &running {
            Running::Serve(_) => ensure!(
                out["served_size_bytes"].as_u64() == Some(GROWN_SIZE),
                "grow did not reach the server: {out}"
            ),
            Running::Qsd(b) => b.resize(GROWN_SIZE).context("QMP block_resize")?,
        }
        Ok(())
    };
    let append = format!(
        "console=ttyS0 quiet panic=-1 e2e.seed={seed} e2e.expect_size={} e2e.queues={} \
         e2e.serial={serial} e2e.discard_zeroes=1 e2e.resize_to={} e2e.resize_timeout=60",
        INITIAL_SIZE / SECTOR,
        case.queues,
        GROWN_SIZE / SECTOR
    );
    let (report, p) = guest_support::run_guest(
        &GuestRun {
            images: &images,
            smp: case.smp,
            disk_args,
            append,
            log: qemu_log.clone(),
        },
        &mut guest_support::on_resize(grow),
        Instant::now() + guest_support::timeout(),
    );
    problems.extend(p);
    guest_support::require_checks(&report, REQUIRED_CHECKS, &mut problems);
    check_report(&report, case, &mut problems);

    // Stop the server: SIGTERM, exit 0, the loop device detached.
    let server_log = match &mut running {
        Running::Serve(served) => {
            if report.done.is_some() {
                check_status(&w, case.queues, &mut problems);
            }
            match served.stop(Signal::SIGTERM) {
                Some(0) => {}
                other => problems.push(format!(
                    "extstorage serve exited with {other:?} on SIGTERM, expected 0"
                )),
            }
            // loopfile's open script leaves this marker; close removes it.
            let marker = w.vols().join(format!("{VOLUME}.img.open"));
            if marker.exists() {
                problems.push(format!(
                    "serve did not close the volume: {}",
                    marker.display()
                ));
            }
            served.log()
        }
        Running::Qsd(backend) => {
            match backend.stop() {
                Ok(st) if st.success() => {}
                Ok(st) => problems.push(format!("qemu-storage-daemon exited with {st} on SIGTERM")),
                Err(e) => problems.push(format!("stopping qemu-storage-daemon: {e:#}")),
            }
            let r = cli(&w, &["detach"], &[]);
            if r.code != 0 {
                problems.push(format!("extstorage detach failed: {r:#?}"));
            }
            backend.log_text()
        }
    };
    let left = loop_devices_of(&file);
    if !left.is_empty() {
        problems.push(format!(
            "loop device(s) still attached after stop: {left:?}"
        ));
    }
    if problems.is_empty() {
        let expect: Vec<(u64, &CheckResult)> = report.results.values().map(|r| (seed, r)).collect();
        if let Err(e) = guest_support::verify_image(&file, GROWN_SIZE, &expect) {
            problems.push(format!("host check of the volume file: {e:#}"));
        }
    }
    assert!(
        problems.is_empty(),
        "guest test ({} vCPUs, {} queues) failed:\n  {}\n--- serial console ---\n{}\n\
         --- qemu stderr ---\n{}\n--- server log ---\n{server_log}",
        case.smp,
        case.queues,
        problems.join("\n  "),
        report.console,
        guest_support::qemu_log_text(&qemu_log),
    );
    for r in report.results.values() {
        eprintln!("guest check {} ok: {:?}", r.name, r.fields);
    }
}

/// What the guest must have seen beyond every check passing: its vCPUs, and
/// the disk grown to exactly the new size with the tail written.
fn check_report(report: &GuestReport, case: &Case, problems: &mut Vec<String>) {
    let field = |check: &str, key: &str| {
        report
            .results
            .get(check)
            .and_then(|r| r.fields.get(key))
            .cloned()
    };
    let cpus = case.smp.to_string();
    match field("queues", "cpus") {
        Some(c) if c != cpus => {
            problems.push(format!("the guest has {c} CPUs, booted with {cpus}"))
        }
        _ => {}
    }
    let grown = (GROWN_SIZE / SECTOR).to_string();
    match field("resize", "new") {
        Some(new) if new != grown => problems.push(format!(
            "the guest saw the disk grow to {new} sectors, expected {grown}"
        )),
        _ => {}
    }
}

/// `-smp 2` on a volume served with the default socket and the queue count
/// for 2 vCPUs (`--vcpus 2`): kvm-args finds the served socket and states
/// its two queues; both carry I/O; the disk grows online.
#[test]
fn serve_smp2_boots_from_kvm_args_and_grows_online() {
    run_case(&Case {
        server: Server::Serve {
            options: &["--vcpus", "2"],
            socket: false,
        },
        smp: 2,
        queues: 2,
    });
}

/// `-smp 4` on a volume served with fewer queues than vCPUs (2) on a socket
/// the operator chose: QEMU must not ask for one queue per vCPU, which the
/// backend refuses ("The maximum number of queues supported by the backend
/// is 2"); both queues carry I/O from four CPUs; the disk grows online.
#[test]
fn serve_smp4_with_fewer_queues_than_vcpus_boots_and_grows_online() {
    run_case(&Case {
        server: Server::Serve {
            options: &["--num-queues", "2"],
            socket: true,
        },
        smp: 4,
        queues: 2,
    });
}

/// The same online grow with qemu-storage-daemon exporting the attached
/// loop device (the reference backend): the guest steps and host checks
/// pass there too, so they ask nothing a correct backend cannot do.
#[test]
fn qemu_storage_daemon_on_the_loop_device_grows_online() {
    run_case(&Case {
        server: Server::QemuStorageDaemon { num_queues: 2 },
        smp: 2,
        queues: 2,
    });
}

/// The user's restart path: a guest booted from the argv kvm-args prints
/// (which asks QEMU to reconnect) writes checksummed blocks while its
/// server is killed (`kill -9`, a crash) and later stopped with SIGTERM
/// (`systemctl restart`: close and detach, then a new `serve` attaches the
/// volume again); each time `extstorage serve` is started again with the
/// same arguments. The guest must carry on with no I/O error and find every
/// acknowledged block intact.
#[test]
fn serve_restarted_under_a_writing_guest_loses_nothing() {
    let Some(images) = guest_support::prerequisites(BackendKind::Ours) else {
        return;
    };
    let _one = guest_support::one_guest_at_a_time();
    let w = World::new();
    w.install(PROVIDER);
    cli(&w, &["create"], &["--size", "64M"]).ok();
    let mut args = vol_args(&w);
    args.extend(["--vcpus".into(), "2".into()]);
    let start = |why: &str| {
        w.serve(&strs(&args))
            .unwrap_or_else(|r| panic!("extstorage serve did not start ({why}): {r:#?}"))
    };
    let mut served = vec![start("first")];
    let (disk_args, mut problems) = kvm_args(&w, &[], 2);
    if !disk_args
        .iter()
        .any(|a| a.to_string_lossy().contains(",reconnect-ms="))
    {
        problems.push(format!(
            "kvm-args did not ask QEMU to reconnect: {disk_args:?}"
        ));
    }
    let churn = guest_support::ChurnConfig {
        secs: 16,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok: false,
        backing_dir: None,
        qemu_args: Vec::new(),
    };
    let qemu_log = w.path("qemu.log");
    // (churn second, signal): a crash, then a clean restart.
    let mut plan = vec![(4u64, Signal::SIGKILL), (10, Signal::SIGTERM)]
        .into_iter()
        .peekable();
    let (report, p) = guest_support::run_guest(
        &GuestRun {
            images: &images,
            smp: 2,
            disk_args,
            append: format!(
                "console=ttyS0 quiet panic=-1 e2e.seed={} {}",
                guest_support::new_seed(),
                churn.append()
            ),
            log: qemu_log.clone(),
        },
        &mut |ev| {
            let guest_support::GuestEvent::ChurnProgress(fields) = ev else {
                return Ok(());
            };
            let secs: u64 = fields.get("secs").and_then(|s| s.parse().ok()).unwrap_or(0);
            let Some((_, sig)) = plan.next_if(|&(at, _)| at <= secs) else {
                return Ok(());
            };
            let current = served.last_mut().context("no server")?;
            let code = current.stop(sig);
            eprintln!("churn second {secs}: {sig} to serve, exit {code:?}; starting it again");
            if sig == Signal::SIGTERM {
                ensure!(code == Some(0), "serve exited with {code:?} on SIGTERM");
            }
            served.push(start("again"));
            Ok(())
        },
        Instant::now() + guest_support::timeout() + std::time::Duration::from_secs(churn.secs),
    );
    problems.extend(p);
    guest_support::require_churn(&report, &mut problems);
    if plan.next().is_some() {
        problems.push("the guest finished before every restart was done".to_owned());
    }
    let last = served.last_mut().expect("a server");
    match last.stop(Signal::SIGTERM) {
        Some(0) => {}
        other => problems.push(format!("the last serve exited with {other:?} on SIGTERM")),
    }
    let left = loop_devices_of(&volume_file(&w));
    if !left.is_empty() {
        problems.push(format!(
            "loop device(s) still attached after stop: {left:?}"
        ));
    }
    let logs: Vec<String> = served.iter().map(|s| s.log()).collect();
    assert!(
        problems.is_empty(),
        "restarting serve under a writing guest failed:\n  {}\n--- serial console ---\n{}\n\
         --- qemu stderr ---\n{}\n--- serve logs ---\n{}",
        problems.join("\n  "),
        report.console,
        guest_support::qemu_log_text(&qemu_log),
        logs.join("\n---\n"),
    );
    eprintln!("churn: {:?}", report.results["churn"].fields);
}
