//! `interrupt::request` as a program that takes signals in a thread of its
//! own uses it: a running script's group gets the signal and is waited for,
//! no further script starts, a lock wait stops. One test in its own process:
//! the interruption state is process-wide.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use extstorage_core::runner::{RunnerConfig, ScriptRun, run_script};
use extstorage_core::{ErrorKind, Provider, interrupt, lock};
use nix::sys::signal::Signal;

fn script(dir: &Path, action: &str, body: &str) {
    let path = dir.join(action);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn requested_interruption_forwards_then_stops_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let prov = tmp.path().join("prov");
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(&prov).unwrap();
    // verify waits for SIGTERM, which it records.
    script(
        &prov,
        "verify",
        &format!(
            "out={out}\nsleep 1000 &\nchild=$!\n\
             trap \"echo TERM > $out/verify.signal; kill $child; exit 0\" TERM\n\
             echo $$ > $out/verify.pid.tmp && mv $out/verify.pid.tmp $out/verify.pid\n\
             wait $child",
            out = out.display()
        ),
    );
    script(
        &prov,
        "detach",
        &format!(": > {}/detach.ran", out.display()),
    );
    let provider = Provider {
        name: "prov".into(),
        path: prov.clone(),
        parameters: Vec::new(),
        optional: Default::default(),
    };
    let cfg = RunnerConfig {
        log_dir: tmp.path().join("log"),
        timeout: Duration::from_secs(600),
        kill_grace: Duration::from_millis(500),
        ..RunnerConfig::default()
    };
    let run = |action| {
        run_script(
            &cfg,
            &ScriptRun {
                provider: &provider,
                action,
                volume: "vol",
                env: Vec::new(),
                args: Vec::new(),
                stdout_is_result: false,
            },
        )
    };
    // Held while the script runs, as every volume operation does (so the
    // lock keeper is part of the run).
    let lock_dir = tmp.path().join("lock");
    let held = lock::lock_volume(&lock_dir, "prov", "vol", Duration::ZERO).unwrap();

    // A signal thread asks for SIGTERM once the script waits for it.
    let pid_file = out.join("verify.pid");
    let requester = std::thread::spawn(move || {
        let start = Instant::now();
        while !pid_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "verify never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        interrupt::request(Signal::SIGTERM);
    });
    let err = run("verify").unwrap_err();
    requester.join().unwrap();
    assert_eq!(err.kind(), ErrorKind::Interrupted, "{err}");
    assert_eq!(err.interrupted_by(), Some(Signal::SIGTERM));
    let text = err.to_string();
    assert!(
        text.starts_with("interrupted by SIGTERM while the verify script of volume \"vol\"")
            && text.contains("which has exited (the script: exit status 0)"),
        "{text}"
    );
    assert_eq!(
        fs::read_to_string(out.join("verify.signal"))
            .unwrap()
            .trim(),
        "TERM"
    );

    // The next script of the operation does not start.
    let err = run("detach").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Interrupted, "{err}");
    assert!(
        err.to_string().contains("before the detach script"),
        "{err}"
    );
    assert!(!out.join("detach.ran").exists(), "detach ran");
    drop(held);

    // A lock wait stops at once, with nothing run.
    let err = lock::lock_volume(&lock_dir, "prov", "vol", Duration::from_secs(600)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Interrupted, "{err}");
    assert!(err.to_string().contains("while waiting"), "{err}");

    // Once the program has handled it, work goes on.
    interrupt::clear();
    assert_eq!(interrupt::pending(), None);
    let _held = lock::lock_volume(&lock_dir, "prov", "vol", Duration::ZERO).unwrap();
    run("detach").unwrap();
    assert!(out.join("detach.ran").exists());
}
