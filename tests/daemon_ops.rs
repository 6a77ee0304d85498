//! The daemon as an operator runs it: status and config over the control
//! socket, readiness notification, socket ownership and mode, serving
//! without root, and systemd socket activation. Real daemon processes,
//! real sockets, the libblkio client.

mod vhost_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use vhost_support::*;

const MIB: u64 = 1 << 20;

fn control(d: &Daemon, what: &str) -> Value {
    let out = Command::new(bin())
        .arg(what)
        .arg("--control-socket")
        .arg(&d.ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{what}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_counts_requests_bytes_and_latency_per_queue() {
    let d = Daemon::start(4 * MIB, &["--num-queues", "2", "--engine", "sync"]);
    let before = control(&d, "status");
    assert_eq!(before["connected"], false);
    assert_eq!(before["queues"].as_array().unwrap().len(), 2);

    let mut c = Client::connect(&d.sock, 2, false).unwrap();
    let (m0, m1) = (c.mem(0), c.mem(1));
    for i in 0..3u64 {
        assert_eq!(write(&mut c.queues[0], m0, i * 4096, &[7u8; 4096]), 0);
    }
    assert_eq!(read(&mut c.queues[1], m1, 0, 8192).0, 0);
    assert_eq!(flush(&mut c.queues[1]), 0);
    // Past the end: an I/O error, counted as one.
    assert!(read(&mut c.queues[1], m1, 4 * MIB, 512).0 < 0);

    let s = control(&d, "status");
    assert_eq!(s["connected"], true);
    assert_eq!(s["connections"], 1);
    assert_eq!(s["size_bytes"], 4 * MIB);
    let q0 = &s["queues"][0];
    let q1 = &s["queues"][1];
    assert_eq!(q0["requests"]["write"], 3, "{s:#}");
    assert_eq!(q0["bytes_written"], 3 * 4096);
    assert_eq!(q0["requests"]["read"], 0);
    assert_eq!(q1["requests"]["read"], 2, "{s:#}");
    assert_eq!(q1["bytes_read"], 8192, "the failed read moved nothing");
    assert_eq!(q1["requests"]["flush"], 1);
    assert_eq!(q1["errors"], 1);
    for q in [q0, q1] {
        assert_eq!(q["in_flight"], 0);
        let n: u64 = q["latency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        let engine_requests = q["requests"]["read"].as_u64().unwrap()
            + q["requests"]["write"].as_u64().unwrap()
            + q["requests"]["flush"].as_u64().unwrap()
            - q["errors"].as_u64().unwrap();
        assert_eq!(
            n, engine_requests,
            "one latency sample per engine request: {q:#}"
        );
    }
    drop(c);
    d.wait_disconnects(1);
    let after = control(&d, "status");
    assert_eq!(after["connected"], false);
    assert_eq!(
        after["queues"][0]["requests"]["write"], 3,
        "kept across connections"
    );
}

#[test]
fn config_reports_what_is_served() {
    let d = Daemon::start(
        MIB,
        &[
            "--num-queues",
            "3",
            "--queue-size",
            "128",
            "--serial",
            "-starts-with-dash",
            "--write-cache",
            "writethrough",
        ],
    );
    let c = control(&d, "config");
    assert_eq!(c["pid"], d.pid());
    assert_eq!(c["path"], d.img.to_str().unwrap());
    assert_eq!(c["socket"], d.sock.to_str().unwrap());
    assert_eq!(c["device"]["num_queues"], 3);
    assert_eq!(c["device"]["queue_size"], 128);
    assert_eq!(c["device"]["serial"], "-starts-with-dash");
    assert_eq!(c["device"]["write_cache"], "writethrough");
    assert_eq!(c["provider"], Value::Null);
}

#[test]
fn the_default_queue_count_follows_vcpus() {
    let d = Daemon::start(MIB, &["--vcpus", "16"]);
    assert_eq!(control(&d, "config")["device"]["num_queues"], 4);
    let d = Daemon::start(MIB, &["--vcpus", "1"]);
    assert_eq!(control(&d, "config")["device"]["num_queues"], 1);
}

#[test]
fn readiness_and_stopping_are_notified_under_systemd() {
    notified(&[]);
}

/// Sandboxed, the daemon may still create the datagram socket it notifies
/// through (a refused call would end it with status 159).
#[test]
fn readiness_and_stopping_are_notified_under_systemd_with_user() {
    notified(&["--user", "nobody"]);
}

fn notified(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    // Like /run/systemd/notify: reachable and writable by the user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify).unwrap();
    std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let sock = dir.path().join("vhost.sock");
    let log = dir.path().join("log");
    let mut child = Command::new(bin())
        .args(["serve", "--path"])
        .arg(&img)
        .arg("--socket")
        .arg(&sock)
        .args(extra)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(sock.exists(), "the socket exists once ready");
    // Ready means accepting: a client connects at once.
    drop(Client::connect(&sock, 1, false).unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let n = listener.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(wait_exit(&mut child, &log).success());
}

#[test]
fn socket_owner_group_and_mode_are_applied() {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let d = Daemon::start(
        MIB,
        &[
            "--socket-owner",
            "nobody",
            "--socket-group",
            "nogroup",
            "--socket-mode",
            "0660",
        ],
    );
    let meta = std::fs::metadata(&d.sock).unwrap();
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    assert_eq!(meta.gid(), nogroup.gid.as_raw());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // The default is the owner only.
    let d = Daemon::start(MIB, &[]);
    let meta = std::fs::metadata(&d.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);

    let out = Command::new(bin())
        .args(["serve", "--path"])
        .arg(&d.img)
        .args(["--socket", "/tmp/x.sock"])
        .args(["--socket-owner", "no-such-user-here"])
        .output()
        .unwrap();
    // A bad value is a usage error (exit 2), found before anything is
    // opened or bound.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no user \"no-such-user-here\""), "{err}");
    let long = format!("/tmp/{}.sock", "s".repeat(110));
    for (extra, needle) in [
        (["--user", "no-such-user-here"], "--user"),
        (["--socket-group", "no-such-group-here"], "no group"),
        (["--control-socket", long.as_str()], "--control-socket"),
    ] {
        let sock = d.sock.with_extension("bad.sock");
        let out = Command::new(bin())
            .args(["serve", "--path"])
            .arg(&d.img)
            .arg("--socket")
            .arg(&sock)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!sock.exists(), "{extra:?}: nothing bound");
    }
    let out = Command::new(bin())
        .args(["serve", "--path"])
        .arg(&d.img)
        .args(["--socket", long.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("120 bytes"));

    // Under umask 000 the socket's missing directories are 0755, not 0777.
    let top = d.sock.with_extension("dirs");
    let sock = top.join("a/b.sock");
    let mut child = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["serve", "--path"])
        .arg(&d.img)
        .arg("--socket")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_exists(&sock, 30, "no socket");
    let modes: Vec<u32> = [&top, &top.join("a")]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().permissions().mode() & 0o777)
        .collect();
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(modes, [0o755, 0o755]);
}

#[test]
fn serves_as_an_unprivileged_user_after_setup() {
    let d = Daemon::start(MIB, &["--user", "nobody", "--num-queues", "2"]);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // The sockets appear before the switch; it follows at once.
    let start = std::time::Instant::now();
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        if status.contains(&format!("Uid:\t{}", nobody.uid)) || start.elapsed().as_secs() > 30 {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    for id in uid_line.split_whitespace().skip(1) {
        assert_eq!(id, nobody.uid.to_string(), "{uid_line}");
    }
    for id in gid_line.split_whitespace().skip(1) {
        assert_eq!(id, nobody.gid.to_string(), "{gid_line}");
    }
    // The device opened as root still serves, on every queue.
    let mut c = Client::connect(&d.sock, 2, false).unwrap();
    let (m0, m1) = (c.mem(0), c.mem(1));
    assert_eq!(write(&mut c.queues[0], m0, 0, &[5u8; 4096]), 0);
    assert_eq!(read(&mut c.queues[1], m1, 0, 4096), (0, vec![5u8; 4096]));
    assert_eq!(d.file_bytes(0, 4096), vec![5u8; 4096]);
    // And the control socket still answers.
    assert_eq!(control(&d, "status")["queues"][0]["requests"]["write"], 1);
    // Sandboxed like serve's I/O process: every thread.
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for want in ["CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"] {
            assert!(status.contains(want), "{want} in {status}");
        }
    }
    drop(c);
    // The root-owned socket directory: the root helper removes both
    // sockets, before the daemon has exited.
    let mut d = d;
    assert!(d.signal_and_wait(Signal::SIGTERM).success());
    assert!(!d.sock.exists(), "{} left behind", d.sock.display());
    assert!(!d.ctl.exists(), "{} left behind", d.ctl.display());
}

#[test]
fn systemd_socket_activation_is_used_without_options() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let sock = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let log = dir.path().join("daemon.log");
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID must be the daemon's pid: the shell's, kept by exec.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --path \"$1\"")
        .arg(bin())
        .arg(&img)
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` stays open in the
    // parent until the child has been spawned. dup2 onto itself keeps
    // FD_CLOEXEC, so that case clears it by hand.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut c = Client::connect(&sock, 1, false)
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap()));
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 512, &[9u8; 512]), 0);
    assert_eq!(read(&mut c.queues[0], mem, 512, 512), (0, vec![9u8; 512]));
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, &log).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("inherited socket"), "{text}");
}

#[test]
fn the_control_socket_goes_away_with_the_daemon() {
    let mut d = Daemon::start(MIB, &[]);
    assert!(d.ctl.exists());
    assert!(d.signal_and_wait(Signal::SIGTERM).success());
    assert!(
        !d.ctl.exists(),
        "a stopped backend leaves no control socket"
    );
}
