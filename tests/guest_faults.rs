//! Faults under a real guest running the churn workload (checksummed
//! O_DIRECT writes from many writers, every acknowledged block verified):
//! the guest must get an I/O error status, never a wrong success, the
//! backend must keep serving and stop cleanly, and no acknowledged write
//! may be lost. Each case runs against qemu-storage-daemon as the peer too.

mod guest_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::ffi::OsString;

use guest_support::{
    BackendKind, ChurnConfig, GuestEvent, Qmp, boot_churn, churn_count, skip_or_fail,
};

/// A tmpfs of a few MiB mounted for one test, unmounted when dropped.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount(mib: u32) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("small-tmpfs-")
            .tempdir()
            .map_err(|e| format!("creating a mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The backing file (64 MiB, sparse) on an 8 MiB tmpfs, the guest writing
/// 32 MiB of it: writes into holes fail with ENOSPC once the tmpfs is full.
fn enospc(kind: BackendKind) {
    let tmpfs = match SmallTmpfs::mount(8) {
        Ok(t) => t,
        Err(why) => {
            skip_or_fail(&why);
            return;
        }
    };
    let churn = ChurnConfig {
        secs: 10,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok: true,
        backing_dir: Some(PathBuf::from(tmpfs.path())),
        qemu_args: Vec::new(),
    };
    let Some(outcome) = boot_churn(kind, 2, &churn, &mut |_, _| Ok(())) else {
        return;
    };
    let mut problems = outcome.problems;
    if churn_count(&outcome.report, "io_errors") == 0 {
        problems.push(
            "the guest saw no I/O error although the backing tmpfs filled up: \
             the test did not exercise ENOSPC"
                .to_owned(),
        );
    }
    assert!(
        problems.is_empty(),
        "ENOSPC under churn on {kind:?} failed:\n  {}\n{}",
        problems.join("\n  "),
        outcome.diagnostics
    );
    eprintln!(
        "ENOSPC on {kind:?}: {:?}",
        outcome.report.results["churn"].fields
    );
}

/// The peer: qemu-storage-daemon reports ENOSPC to the guest as an error.
#[test]
fn enospc_qemu_storage_daemon() {
    enospc(BackendKind::QemuStorageDaemon);
}

/// Ours: the guest gets IOERR for the writes that did not fit, every
/// acknowledged write reads back, and the daemon keeps serving.
#[test]
fn enospc_ours() {
    enospc(BackendKind::Ours);
}

/// Memory hot-added to the guest while the churn runs: QEMU sends the
/// backend a new memory table (ADD_MEM_REG) under load, the guest onlines
/// the memory and the jobs' fresh I/O buffers land in it. Nothing may fail.
fn memory_hotplug(kind: BackendKind) {
    let dir = tempfile::Builder::new()
        .prefix("hotplug-")
        .tempdir()
        .expect("a temporary directory");
    let qmp_path = dir.path().join("qemu-qmp.sock");
    let churn = ChurnConfig {
        secs: 20,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok: false,
        backing_dir: None,
        qemu_args: [
            "-m".to_owned(),
            "slots=4,maxmem=2G".to_owned(),
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", qmp_path.display()),
        ]
        .into_iter()
        .map(OsString::from)
        .collect(),
    };
    let mut plugged = 0u32;
    let Some(outcome) = boot_churn(kind, 2, &churn, &mut |_, ev| {
        let GuestEvent::ChurnProgress(fields) = ev else {
            return Ok(());
        };
        let secs: u64 = fields.get("secs").and_then(|s| s.parse().ok()).unwrap_or(0);
        // Two DIMMs, at about 3 s and 8 s into the churn.
        if (plugged == 0 && secs >= 3) || (plugged == 1 && secs >= 8) {
            let mut qmp = Qmp::connect(&qmp_path)?;
            let id = format!("hp{plugged}");
            qmp.execute(
                "object-add",
                &serde_json::json!({
                    "qom-type": "memory-backend-memfd", "id": format!("{id}-mem"),
                    "size": 256u64 << 20, "share": true
                }),
            )?;
            qmp.execute(
                "device_add",
                &serde_json::json!({"driver": "pc-dimm", "id": id, "memdev": format!("{id}-mem")}),
            )?;
            eprintln!("hot-added 256 MiB ({id}) at {secs} s");
            plugged += 1;
        }
        Ok(())
    }) else {
        return;
    };
    let mut problems = outcome.problems;
    if plugged != 2 {
        problems.push(format!(
            "only {plugged} of 2 DIMMs were added during the churn"
        ));
    }
    let kib = |k: &str| churn_count(&outcome.report, k);
    if kib("mem_kib_end") < kib("mem_kib_start") + (400 << 10) {
        problems.push(format!(
            "the guest did not online the hot-added memory: MemTotal {} -> {} KiB",
            kib("mem_kib_start"),
            kib("mem_kib_end")
        ));
    }
    assert!(
        problems.is_empty(),
        "memory hotplug under churn on {kind:?} failed:\n  {}\n{}",
        problems.join("\n  "),
        outcome.diagnostics
    );
    eprintln!(
        "hotplug on {kind:?}: {:?}",
        outcome.report.results["churn"].fields
    );
}

/// The peer: qemu-storage-daemon takes new memory regions under load.
#[test]
fn memory_hotplug_under_load_qemu_storage_daemon() {
    memory_hotplug(BackendKind::QemuStorageDaemon);
}

/// Ours: the new table is used from the next batch on, with no I/O error.
#[test]
fn memory_hotplug_under_load_ours() {
    memory_hotplug(BackendKind::Ours);
}
