//! QEMU accepts the daemon as a vhost-user-blk backend: it negotiates
//! features, reads the config space at device realize, and the daemon serves
//! the next QEMU after the first one quits. No guest runs (`-S`); the
//! real-guest test is `guest_e2e.rs`.

mod vhost_support;

use std::io::Write;
use std::process::{Command, Stdio};

use vhost_support::*;

/// Starts a paused QEMU with the device, asks QMP whether it was realized,
/// quits, and returns QEMU's stdout.
fn qemu_realize(sock: &std::path::Path, num_queues: u16) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "128", "-nographic", "-S"])
        .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .args(["-serial", "none", "-monitor", "none", "-qmp", "stdio"])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", sock.display()))
        .arg("-device")
        .arg(format!(
            "vhost-user-blk-pci,id=vblk0,chardev=c0,num-queues={num_queues}"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 is installed by scripts/install-deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            concat!(
                r#"{"execute":"qmp_capabilities"}"#,
                "\n",
                r#"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/vblk0","property":"realized"}}"#,
                "\n",
                r#"{"execute":"quit"}"#,
                "\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn qemu_realizes_the_device_and_reconnects() {
    let d = Daemon::start(16 << 20, &["--num-queues", "2", "--serial", "smoke"]);
    for _ in 0..2 {
        let out = qemu_realize(&d.sock, 2);
        assert!(out.contains(r#"{"return": true}"#), "{out}");
    }
    let log = d.log();
    assert_eq!(log.matches("frontend connected").count(), 2, "{log}");
    assert!(log.contains("GET_CONFIG"), "{log}");
}

#[test]
fn qemu_refuses_more_queues_than_the_daemon_has() {
    let d = Daemon::start(16 << 20, &["--num-queues", "1"]);
    let out = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "128", "-nographic", "-S"])
        .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
        .args([
            "-numa",
            "node,memdev=mem",
            "-serial",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", d.sock.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=c0,num-queues=4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The daemon survives the refused frontend and serves the next one.
    let out = qemu_realize(&d.sock, 1);
    assert!(out.contains(r#"{"return": true}"#), "{out}");
}
