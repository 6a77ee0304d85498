//! Real-guest end-to-end test of a vhost-user-blk backend: a Linux guest
//! (TCG) drives the disk through its own virtio-blk driver, the host grows
//! the disk while the guest runs, and the backing file is checked afterwards.
//! See docs/testing-guest.md.

mod guest_support;

use guest_support::{BackendKind, BootConfig, boot, run_boot};

/// The reference backend: proves the harness and the guest checks; a second
/// guest then reconnects to the same backend process.
#[test]
fn guest_e2e_qemu_storage_daemon() {
    run_boot(&BootConfig {
        kind: BackendKind::QemuStorageDaemon,
        num_queues: 1,
        reconnect: true,
    });
}

/// The reference backend with two queues and two vCPUs.
#[test]
fn guest_e2e_qemu_storage_daemon_two_queues() {
    run_boot(&BootConfig {
        kind: BackendKind::QemuStorageDaemon,
        num_queues: 2,
        reconnect: false,
    });
}

/// This project's daemon, `extstorage-vhost-user-blk serve`; a second guest
/// then reconnects to the same daemon process.
#[test]
fn guest_e2e_ours() {
    run_boot(&BootConfig {
        kind: BackendKind::Ours,
        num_queues: 1,
        reconnect: true,
    });
}

/// This project's daemon with two queues and two vCPUs.
#[test]
fn guest_e2e_ours_two_queues() {
    run_boot(&BootConfig {
        kind: BackendKind::Ours,
        num_queues: 2,
        reconnect: false,
    });
}

/// Negative control: a backend whose discard leaves the data in place must
/// fail the discard check, and only that one.
#[test]
fn guest_e2e_detects_discard_that_keeps_data() {
    let Some(outcome) = boot(&BootConfig {
        kind: BackendKind::QemuStorageDaemonIgnoringDiscard,
        num_queues: 1,
        reconnect: false,
    }) else {
        return;
    };
    let discard = outcome.report.results.get("discard");
    assert_eq!(
        discard.map(|r| r.status.as_str()),
        Some("fail"),
        "the discard check passed although the backend ignores discard:\n{}",
        outcome.diagnostics
    );
    assert_eq!(
        discard
            .and_then(|r| r.fields.get("zeroed"))
            .map(String::as_str),
        Some("no")
    );
    let failed: Vec<&str> = outcome
        .report
        .results
        .values()
        .filter(|r| r.status != "ok")
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(failed, ["discard"], "{}", outcome.diagnostics);
    assert_eq!(outcome.report.done.as_deref(), Some("fail"));
}
