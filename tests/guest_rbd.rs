//! A real Linux guest (TCG) booted on a Ceph RBD volume served by
//! `extstorage serve` through the rbd engine: a volume of the `rbd`
//! provider on a throwaway single-node cluster (`scripts/ceph-cluster.sh`),
//! the disk arguments exactly as `extstorage kvm-args --access vhost-user`
//! prints them, the guest's checks (size, queues, serial, data, discard,
//! write-zeroes, flush), an online `extstorage grow` the guest sees, then
//! SIGTERM and every range the guest wrote checked in `rbd export` of the
//! image. See docs/testing-guest.md for the guest.

mod ceph_support;
mod common_cli;
mod guest_support;

use std::ffi::OsString;
use std::time::Instant;

use anyhow::{Result, ensure};
use ceph_support::Cluster;
use common_cli::World;
use guest_support::{
    CheckResult, GROWN_SIZE, GUEST_MEMORY_MIB, INITIAL_SIZE, Prepared, REQUIRED_CHECKS, SECTOR,
};
use nix::sys::signal::Signal;

#[test]
fn guest_boots_on_an_rbd_volume_served_through_librbd_and_grows_online() {
    let images = match guest_support::guest_images() {
        Prepared::Ready(i) => i,
        Prepared::Skip(why) => {
            guest_support::skip_or_fail(&why);
            return;
        }
    };
    let _one = guest_support::one_guest_at_a_time();
    let cluster = Cluster::start("guest")
        .unwrap_or_else(|why| panic!("the throwaway Ceph cluster did not start:\n{why}"));
    let w = World::new();
    w.install("rbd");
    let conf = format!("conf={}", cluster.conf.display());
    let vol = [
        "--provider",
        "rbd",
        "--volume",
        "guest0",
        "-p",
        conf.as_str(),
    ];
    let cli = |cmd: &[&str], extra: &[&str]| {
        let args: Vec<&str> = cmd.iter().chain(&vol).chain(extra).copied().collect();
        w.run(&args)
    };
    let size = format!("{}M", INITIAL_SIZE >> 20);
    cli(&["create"], &["--size", &size]).ok();

    let seed = guest_support::new_seed();
    let serial = format!("rbd-{:08x}", seed as u32);
    let serve: Vec<&str> = vol
        .iter()
        .copied()
        .chain(["--vcpus", "2", "--serial", &serial])
        .collect();
    let mut served = w
        .serve(&serve)
        .unwrap_or_else(|r| panic!("extstorage serve did not start: {r:#?}"));
    assert_eq!(
        served.ready["serving"], "rbd:rbd/guest0",
        "{}",
        served.ready
    );

    let mib = GUEST_MEMORY_MIB.to_string();
    let out = cli(
        &["--json", "kvm-args"],
        &["--access", "vhost-user", "--memory-mib", &mib],
    )
    .ok()
    .json();
    let disk_args: Vec<OsString> = out["argv"]
        .as_array()
        .unwrap_or_else(|| panic!("kvm-args printed no argv: {out:#}"))
        .iter()
        .map(|a| OsString::from(a.as_str().expect("argv holds strings")))
        .collect();

    let grow = || -> Result<()> {
        let r = cli(&["--json", "grow"], &["--size", &size, "--amount", "32M"]);
        ensure!(r.code == 0, "extstorage grow failed: {r:#?}");
        let out = r.json();
        ensure!(
            out["served_size_bytes"].as_u64() == Some(GROWN_SIZE),
            "grow did not reach the server: {out}"
        );
        Ok(())
    };
    // Discard may leave data in a partly discarded RBD object (librbd
    // skips partial discards), as virtio allows: not required to zero.
    let append = format!(
        "console=ttyS0 quiet panic=-1 e2e.seed={seed} e2e.expect_size={} e2e.queues=2 \
         e2e.serial={serial} e2e.discard_zeroes=0 e2e.resize_to={} e2e.resize_timeout=60",
        INITIAL_SIZE / SECTOR,
        GROWN_SIZE / SECTOR
    );
    let qemu_log = w.path("qemu.log");
    let (report, mut problems) = guest_support::run_guest(
        &guest_support::GuestRun {
            images: &images,
            smp: 2,
            disk_args,
            append,
            log: qemu_log.clone(),
        },
        &mut guest_support::on_resize(grow),
        Instant::now() + guest_support::timeout(),
    );
    guest_support::require_checks(&report, REQUIRED_CHECKS, &mut problems);
    match served.stop(Signal::SIGTERM) {
        Some(0) => {}
        other => problems.push(format!("extstorage serve exited with {other:?} on SIGTERM")),
    }
    if problems.is_empty() {
        // Every range the guest wrote (and zeroed) is in the image.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export");
        let st = cluster
            .rbd()
            .arg("export")
            .arg("rbd/guest0")
            .arg(&file)
            .output()
            .unwrap();
        assert!(st.status.success(), "rbd export: {st:?}");
        let expect: Vec<(u64, &CheckResult)> = report.results.values().map(|r| (seed, r)).collect();
        if let Err(e) = guest_support::verify_image(&file, GROWN_SIZE, &expect) {
            problems.push(format!("host check of the exported image: {e:#}"));
        }
    }
    assert!(
        problems.is_empty(),
        "guest on rbd failed:\n  {}\n--- serial console ---\n{}\n--- qemu stderr ---\n{}\n\
         --- server log ---\n{}",
        problems.join("\n  "),
        report.console,
        guest_support::qemu_log_text(&qemu_log),
        served.log()
    );
    for r in report.results.values() {
        eprintln!("guest check {} ok: {:?}", r.name, r.fields);
    }
}
