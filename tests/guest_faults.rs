//! Faults under a real guest running the churn workload (checksummed
//! O_DIRECT writes from many writers, every acknowledged block verified):
//! the guest must get an I/O error status, never a wrong success, the
//! backend must keep serving and stop cleanly, and no acknowledged write
//! may be lost. Each case runs against qemu-storage-daemon as the peer too.

mod guest_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_support::{BackendKind, ChurnConfig, boot_churn, skip_or_fail};

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
    };
    let Some(outcome) = boot_churn(kind, 2, &churn, &mut |_, _| Ok(())) else {
        return;
    };
    let mut problems = outcome.problems;
    let errors: u64 = outcome
        .report
        .results
        .get("churn")
        .and_then(|r| r.fields.get("io_errors"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if errors == 0 {
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
