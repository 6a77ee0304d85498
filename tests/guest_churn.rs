//! A real guest writing checksummed blocks with O_DIRECT from many parallel
//! writers (queue depth 16 over two queues), then verifying every
//! acknowledged block: the workload the reliability tests (restart, fault
//! and migration) run under, here on an undisturbed backend, against
//! qemu-storage-daemon as the peer and against this project's daemon.

mod guest_support;

use guest_support::{
    BackendKind, ChurnConfig, GuestEvent, StartOptions, boot_churn, boot_churn_opts,
};

const QUEUES: u32 = 2;

fn churn() -> ChurnConfig {
    ChurnConfig {
        secs: 15,
        jobs: 16,
        bytes: 32 << 20,
        errors_ok: false,
        backing_dir: None,
        qemu_args: Vec::new(),
    }
}

fn run(kind: BackendKind) {
    run_opts(kind, &StartOptions::default());
}

fn run_opts(kind: BackendKind, opts: &StartOptions) {
    let mut progress = 0u32;
    let Some(outcome) = boot_churn_opts(kind, QUEUES, &churn(), opts, &mut |_, ev| {
        if let GuestEvent::ChurnProgress(_) = ev {
            progress += 1;
        }
        Ok(())
    }) else {
        return;
    };
    let mut problems = outcome.problems;
    if progress == 0 {
        problems.push("the guest never reported churn progress".to_owned());
    }
    assert!(
        problems.is_empty(),
        "churn on {kind:?} failed:\n  {}\n{}",
        problems.join("\n  "),
        outcome.diagnostics
    );
    eprintln!(
        "churn on {kind:?} {:?}: {:?}",
        opts.daemon_args, outcome.report.results["churn"].fields
    );
}

/// The reference backend passes: the workload and its verifier are sound.
#[test]
fn churn_qemu_storage_daemon() {
    run(BackendKind::QemuStorageDaemon);
}

/// A backend that acknowledges writes and loses them (qemu-storage-daemon
/// on a `null-co` node that reads zeroes): the verifier must catch it, so a
/// pass above means something.
#[test]
fn churn_catches_a_backend_that_loses_writes() {
    let short = ChurnConfig { secs: 5, ..churn() };
    let Some(outcome) = boot_churn(
        BackendKind::QemuStorageDaemonDroppingWrites,
        QUEUES,
        &short,
        &mut |_, _| Ok(()),
    ) else {
        return;
    };
    let r = outcome
        .report
        .results
        .get("churn")
        .unwrap_or_else(|| panic!("no churn result:\n{}", outcome.diagnostics));
    let mismatches: u64 = r.fields["mismatches"].parse().unwrap_or(0);
    assert!(
        r.status == "fail" && mismatches > 0,
        "the churn verifier passed a backend that loses every write: {:?}\n{}",
        r.fields,
        outcome.diagnostics
    );
    assert!(
        r.fields["first_mismatch"].contains("found=foreign"),
        "the mismatch should say zeroes were found: {:?}",
        r.fields
    );
}

/// This project's daemon, `extstorage-vhost-user-blk serve`.
#[test]
fn churn_ours() {
    run(BackendKind::Ours);
}

/// This project's daemon in poll mode: the worker spins for requests and
/// completions after each batch (the window restarting with every
/// completion) on both queues, and every acknowledged block must read back.
#[test]
fn churn_ours_in_poll_mode() {
    run_opts(
        BackendKind::Ours,
        &StartOptions {
            daemon_args: vec!["--poll-us".into(), "200".into()],
            ..StartOptions::default()
        },
    );
}
