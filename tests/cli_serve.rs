//! `extstorage serve` end to end without a VM: the reference `loopfile`
//! provider (real loop devices), the real CLI as a process, the libblkio
//! client as the frontend. The guest tests (tests/guest_serve.rs) boot
//! Linux on the same path.

mod common_cli;
mod vhost_support;

use std::path::Path;
use std::process::Command;

use common_cli::{World, loop_devices_of};
use nix::sys::signal::Signal;
use vhost_support::{Client, read, write};

const MIB: u64 = 1 << 20;

fn vol_args(w: &World, vol: &str) -> Vec<String> {
    vec![
        "--provider".into(),
        "loopfile".into(),
        "--volume".into(),
        vol.into(),
        "-p".into(),
        format!("dir={}", w.vols().display()),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn create(w: &World, vol: &str, size: &str) {
    let mut args = vec!["create".to_owned()];
    args.extend(vol_args(w, vol));
    args.extend(["--size".into(), size.into()]);
    w.run(&strs(&args)).ok();
}

fn img(w: &World, vol: &str) -> std::path::PathBuf {
    w.vols().join(format!("{vol}.img"))
}

#[test]
fn serve_attaches_opens_serves_and_cleans_up_on_sigterm() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "64M");
    // create attaches; serve must pick the existing device up.
    let before = loop_devices_of(&img(&w, "vol1"));
    assert_eq!(before.len(), 1);

    let mut args = vol_args(&w, "vol1");
    args.extend(["--num-queues".into(), "2".into()]);
    let mut served = w.serve(&strs(&args)).unwrap_or_else(|r| panic!("{r:#?}"));
    let ready = served.ready.clone();
    assert_eq!(ready["serving"], before[0].as_str(), "{ready:#}");
    assert_eq!(ready["num_queues"], 2);
    let socket = served.socket();
    assert!(
        socket.starts_with(w.run_dir()),
        "default socket under --run-dir: {}",
        socket.display()
    );
    // open ran, exclusively.
    let open = std::fs::read_to_string(w.vols().join("vol1.img.open")).unwrap();
    assert_eq!(open.trim(), "exclusive=True");

    let mut c = Client::connect(&socket, 2, false).unwrap();
    assert_eq!(c.capacity(), 64 * MIB);
    let (m0, m1) = (c.mem(0), c.mem(1));
    assert_eq!(write(&mut c.queues[0], m0, 60 * MIB, &[0xa5; 4096]), 0);
    assert_eq!(
        read(&mut c.queues[1], m1, 60 * MIB, 4096),
        (0, vec![0xa5; 4096])
    );

    // Other operations keep working on a served volume.
    let mut st = vec!["--json".to_owned(), "status".into()];
    st.extend(vol_args(&w, "vol1")[..4].iter().cloned());
    let status = w.run(&strs(&st)).ok().json();
    assert_eq!(status["connected"], true, "{status:#}");
    assert_eq!(status["queues"][0]["requests"]["write"], 1);
    assert_eq!(status["queues"][1]["requests"]["read"], 1);
    let mut si = vec!["setinfo".to_owned()];
    si.extend(vol_args(&w, "vol1"));
    si.extend(["--metadata".into(), "originstname+vm1".into()]);
    w.run(&strs(&si)).ok();

    // A second serve of the same volume is refused, busy (exit 4).
    let err = w
        .serve(&strs(&vol_args(&w, "vol1")))
        .err()
        .expect("refused");
    assert_eq!(err.code, 4, "{err:#?}");
    assert!(
        err.stderr.contains(&format!(
            "already served on this node by pid {}",
            served.pid()
        )),
        "{err:#?}"
    );

    drop(c);
    assert_eq!(served.stop(Signal::SIGTERM), Some(0), "{}", served.log());
    assert!(
        loop_devices_of(&img(&w, "vol1")).is_empty(),
        "detached on stop"
    );
    assert!(!w.vols().join("vol1.img.open").exists(), "closed on stop");
    assert!(!socket.exists(), "socket removed");
    // The data is in the volume file.
    let data = std::fs::read(img(&w, "vol1")).unwrap();
    assert_eq!(
        &data[60 * MIB as usize..60 * MIB as usize + 4096],
        &[0xa5; 4096]
    );
}

#[test]
fn grow_reaches_a_connected_frontend() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "64M");
    let served = w.serve(&strs(&vol_args(&w, "vol1"))).unwrap();
    let c = Client::connect(&served.socket(), 1, false).unwrap();
    assert_eq!(c.capacity(), 64 * MIB);
    let mut g = vec!["--json".to_owned(), "grow".into()];
    g.extend(vol_args(&w, "vol1"));
    g.extend(["--amount".into(), "32M".into()]);
    let grown = w.run(&strs(&g)).ok().json();
    assert_eq!(grown["new_size_mib"], 96);
    assert_eq!(grown["served_size_bytes"], 96 * MIB, "{grown:#}");
    // The config-change message makes libblkio re-read the capacity.
    let start = std::time::Instant::now();
    while c.capacity() != 96 * MIB {
        assert!(
            start.elapsed().as_secs() < 30,
            "capacity still {}",
            c.capacity()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_killed_server_leaves_the_volume_attached_for_the_next() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    let mut first = w.serve(&strs(&vol_args(&w, "vol1"))).unwrap();
    let dev = first.ready["serving"].as_str().unwrap().to_owned();
    {
        let mut c = Client::connect(&first.socket(), 1, false).unwrap();
        let m = c.mem(0);
        assert_eq!(write(&mut c.queues[0], m, 0, &[7; 512]), 0);
    }
    assert_eq!(first.stop(Signal::SIGKILL), None);
    assert_eq!(loop_devices_of(&img(&w, "vol1")), vec![dev.clone()]);
    // The claim died with it: the next serve picks the volume up.
    let second = w.serve(&strs(&vol_args(&w, "vol1"))).unwrap();
    assert_eq!(second.ready["serving"], dev.as_str());
    let mut c = Client::connect(&second.socket(), 1, false).unwrap();
    let m = c.mem(0);
    assert_eq!(read(&mut c.queues[0], m, 0, 512), (0, vec![7; 512]));
}

#[test]
fn shared_open_and_keep_attached() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    let mut args = vol_args(&w, "vol1");
    args.extend(["--shared".into(), "--keep-attached".into()]);
    let mut served = w.serve(&strs(&args)).unwrap();
    let open = std::fs::read_to_string(w.vols().join("vol1.img.open")).unwrap();
    assert_eq!(
        open.trim(),
        "exclusive=False",
        "migration target opens shared"
    );
    assert_eq!(served.stop(Signal::SIGINT), Some(0), "{}", served.log());
    assert_eq!(loop_devices_of(&img(&w, "vol1")).len(), 1, "still attached");
    assert!(w.vols().join("vol1.img.open").exists(), "still open");
}

#[test]
fn serve_refuses_clearly_before_running_anything() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    let dev = loop_devices_of(&img(&w, "vol1"));
    for (extra, needle) in [
        (vec!["--num-queues", "0"], "--num-queues"),
        (vec!["--queue-size", "100"], "power of two"),
        (vec!["--socket-mode", "0400"], "read and write"),
        (vec!["--serial", "012345678901234567890"], "at most 20"),
    ] {
        let mut args = vol_args(&w, "vol1");
        args.extend(extra.iter().map(|s| s.to_string()));
        let err = w.serve(&strs(&args)).err().expect("refused");
        assert_eq!(err.code, 2, "{extra:?}: {err:#?}");
        assert!(err.stderr.contains(needle), "{extra:?}: {err:#?}");
    }
    assert_eq!(loop_devices_of(&img(&w, "vol1")), dev, "nothing ran");
    assert!(w.log_files("open-").is_empty(), "open never ran");
}

#[test]
fn a_userspace_only_volume_cannot_be_served() {
    let w = World::new();
    w.install("qemunbd");
    let vols = format!("dir={}", w.vols().display());
    w.run(&[
        "create",
        "--provider",
        "qemunbd",
        "--volume",
        "nbd1",
        "-p",
        &vols,
        "--size",
        "16M",
    ])
    .ok();
    let err = w
        .serve(&["--provider", "qemunbd", "--volume", "nbd1", "-p", &vols])
        .err()
        .expect("refused");
    assert_eq!(err.code, 1, "{err:#?}");
    assert!(err.stderr.contains("has no block device"), "{err:#?}");
    // The claim was released: the message is the same the second time.
    let again = w
        .serve(&["--provider", "qemunbd", "--volume", "nbd1", "-p", &vols])
        .err()
        .unwrap();
    assert_eq!(again.code, 1);
}

#[test]
fn status_of_a_volume_not_served_says_so() {
    let w = World::new();
    let r = w
        .run(&["status", "--provider", "loopfile", "--volume", "nothere"])
        .code(1);
    assert!(r.stderr.contains("is the backend running"), "{r:#?}");
    let r = w
        .run(&["status", "--provider", "a/b", "--volume", "v"])
        .code(2);
    assert!(r.stderr.contains("invalid provider name"), "{r:#?}");
}

#[test]
fn the_cli_without_the_serve_feature_links_no_vhost_or_io_uring() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--offline", "-e", "normal", "--no-default-features"])
        .args(["-p", "extstorage", "--manifest-path"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tree = String::from_utf8_lossy(&out.stdout);
    for dep in ["vhost", "io-uring", "vm-memory"] {
        assert!(!tree.contains(&format!(" {dep} v")), "{dep} in:\n{tree}");
    }
}

#[test]
fn kvm_args_states_the_served_queue_count() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    let kvm = |extra: &[&str]| {
        let mut a = vec!["--json".to_owned(), "kvm-args".into()];
        a.extend(vol_args(&w, "vol1"));
        a.extend(["--access".into(), "vhost-user".into()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        w.run(&strs(&a))
    };
    // Not served: the default, min(vCPUs, 4), stated explicitly, and the
    // serve command that offers exactly that.
    let j = kvm(&["--vcpus", "3"]).ok().json();
    assert_eq!(j["served"], false);
    assert_eq!(j["num_queues"], 3);
    let device = j["argv"].as_array().unwrap().last().unwrap().to_string();
    assert!(device.contains("num-queues=3"), "{j:#}");
    let serve_cmd: Vec<String> = j["serve_command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        serve_cmd.contains(&"--num-queues=3".to_owned()),
        "{serve_cmd:?}"
    );

    // Served: the server's settings, whatever the defaults here.
    let mut args = vol_args(&w, "vol1");
    args.extend([
        "--num-queues".into(),
        "3".into(),
        "--queue-size".into(),
        "64".into(),
    ]);
    let served = w.serve(&strs(&args)).unwrap();
    let j = kvm(&[]).ok().json();
    assert_eq!(j["served"], true, "{j:#}");
    assert_eq!(j["serve_command"], serde_json::Value::Null);
    assert_eq!(j["socket"], served.ready["socket"]);
    let device = j["argv"].as_array().unwrap().last().unwrap().to_string();
    assert!(device.contains("num-queues=3"), "{device}");
    assert!(device.contains("queue-size=64"), "{device}");
    // Asking for something else is refused, saying what is served.
    let r = kvm(&["--num-queues", "2"]).code(2);
    assert!(r.stderr.contains("served with 3"), "{r:#?}");
}

/// The uid and gid lines of a process.
fn ids(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    (line("Uid:"), line("Gid:"))
}

fn served_pid(w: &World, vol: &str) -> u32 {
    let mut c = vec!["--json".to_owned(), "kvm-args".into()];
    c.extend(vol_args(w, vol));
    c.extend(["--access".into(), "vhost-user".into()]);
    assert_eq!(w.run(&strs(&c)).ok().json()["served"], true);
    let ctl = w.run_dir().join(format!("serve/loopfile.{vol}.ctl"));
    let out = Command::new(vhost_support::bin())
        .args(["config", "--control-socket"])
        .arg(&ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// Installs loopfile in `w`, creates its 16 MiB volume vol1 and serves it
/// with `--user nobody` and `extra`; returns the server and the pid of its
/// I/O process.
fn serve_vol1_as_nobody(w: &World, extra: &[&str]) -> (common_cli::Served, u32) {
    w.install("loopfile");
    create(w, "vol1", "16M");
    let served = w
        .serve(&strs(&vol1_as_nobody(w, extra)))
        .unwrap_or_else(|r| panic!("{r:#?}"));
    let io_pid = served_pid(w, "vol1");
    (served, io_pid)
}

/// The arguments serving `w`'s volume vol1 with `--user nobody` and `extra`.
fn vol1_as_nobody(w: &World, extra: &[&str]) -> Vec<String> {
    let mut args = vol_args(w, "vol1");
    args.extend(["--user".into(), "nobody".into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn with_user_the_io_process_runs_unprivileged_and_root_cleans_up() {
    let w = World::new();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (mut served, io_pid) = serve_vol1_as_nobody(&w, &["--num-queues", "2"]);
    assert_ne!(io_pid, served.pid() as u32, "a separate I/O process");
    assert_eq!(
        ids(io_pid),
        (nobody.uid.to_string(), nobody.gid.to_string())
    );
    assert_eq!(
        ids(served.pid() as u32).0,
        "0",
        "the script runner keeps root"
    );
    {
        let mut c = Client::connect(&served.socket(), 2, false).unwrap();
        let (m0, m1) = (c.mem(0), c.mem(1));
        assert_eq!(write(&mut c.queues[0], m0, MIB, &[3; 4096]), 0);
        assert_eq!(read(&mut c.queues[1], m1, MIB, 4096), (0, vec![3; 4096]));
    }
    assert_eq!(served.stop(Signal::SIGTERM), Some(0), "{}", served.log());
    assert!(
        loop_devices_of(&img(&w, "vol1")).is_empty(),
        "root detached after the I/O process drained"
    );
    assert!(!w.vols().join("vol1.img.open").exists(), "closed");
}

/// The `key:` line of every thread of process `pid`.
fn task_lines(pid: u32, key: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {status}"))
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn with_user_the_io_process_is_sandboxed_and_still_serves_io_and_grow() {
    let w = World::new();
    let (mut served, io_pid) = serve_vol1_as_nobody(&w, &["--num-queues", "2"]);
    // Every thread: no capability can come back, and the filter is on.
    for (key, want) in [
        ("CapBnd:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
        ("CapEff:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let lines = task_lines(io_pid, key);
        assert!(lines.iter().all(|l| l == want), "{key} {lines:?}");
    }
    // Only the fds it serves with: not the claim lock the parent holds.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{io_pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(!fds.iter().any(|f| f.ends_with(".lock")), "{fds:?}");
    {
        let mut c = Client::connect(&served.socket(), 2, false).unwrap();
        let (m0, m1) = (c.mem(0), c.mem(1));
        assert_eq!(write(&mut c.queues[0], m0, MIB, &[7; 4096]), 0);
        assert_eq!(read(&mut c.queues[1], m1, MIB, 4096), (0, vec![7; 4096]));
        let mut g = vec!["--json".to_owned(), "grow".into()];
        g.extend(vol_args(&w, "vol1"));
        g.extend(["--amount".into(), "16M".into()]);
        let grown = w.run(&strs(&g)).ok().json();
        assert_eq!(grown["served_size_bytes"], 32 * MIB, "{grown:#}");
        let start = std::time::Instant::now();
        while c.capacity() != 32 * MIB {
            assert!(start.elapsed().as_secs() < 30, "capacity {}", c.capacity());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(
            read(&mut c.queues[0], m0, 20 * MIB, 4096),
            (0, vec![0; 4096])
        );
    }
    // Status over the control socket, and a second frontend after the first.
    let mut st = vec!["--json".to_owned(), "status".into()];
    st.extend(vol_args(&w, "vol1")[..4].iter().cloned());
    w.run(&strs(&st)).ok();
    {
        let mut c = Client::connect(&served.socket(), 1, false).unwrap();
        let m0 = c.mem(0);
        assert_eq!(read(&mut c.queues[0], m0, MIB, 4096), (0, vec![7; 4096]));
    }
    assert_eq!(served.stop(Signal::SIGTERM), Some(0), "{}", served.log());
    assert!(
        !served.log().contains("seccomp: system call"),
        "{}",
        served.log()
    );
}

#[test]
fn a_dead_io_process_leaves_the_volume_attached_and_a_dead_parent_takes_the_child_along() {
    let w = World::new();
    let (mut served, io_pid) = serve_vol1_as_nobody(&w, &[]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(io_pid as i32), Signal::SIGKILL).unwrap();
    assert_eq!(served.stop(Signal::SIGCONT), Some(1), "{}", served.log());
    assert!(
        served.log().contains("I/O process died"),
        "{}",
        served.log()
    );
    assert_eq!(loop_devices_of(&img(&w, "vol1")).len(), 1, "still attached");

    // A killed parent: its I/O process stops too, releasing the claim.
    let mut served = w.serve(&strs(&vol1_as_nobody(&w, &[]))).unwrap();
    let io_pid = served_pid(&w, "vol1");
    assert_eq!(served.stop(Signal::SIGKILL), None);
    let start = std::time::Instant::now();
    while !common_cli::process_gone(io_pid as i32) {
        assert!(
            start.elapsed().as_secs() < 30,
            "I/O process {io_pid} outlived its parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let again = w.serve(&strs(&vol_args(&w, "vol1"))).unwrap();
    assert_eq!(again.ready["ok"], true);
}

/// Every log file of the world's script runs, with its contents.
fn script_logs(w: &World) -> Vec<(std::path::PathBuf, String)> {
    w.log_files("")
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (p, text)
        })
        .collect()
}

#[test]
fn serve_checks_users_groups_and_socket_paths_before_any_script() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    let mut detach = vec!["detach".to_owned()];
    detach.extend(vol_args(&w, "vol1"));
    w.run(&strs(&detach)).ok();
    assert!(loop_devices_of(&img(&w, "vol1")).is_empty());
    let logs = script_logs(&w);
    let long = format!("/tmp/{}.sock", "s".repeat(110));
    for (extra, needles) in [
        (
            vec!["--user", "NOSUCHUSER"],
            vec!["--user", "no user \"NOSUCHUSER\"", "existing user"],
        ),
        (
            vec!["--socket-owner", "NOSUCHUSER"],
            vec!["--socket-owner", "no user \"NOSUCHUSER\"", "existing user"],
        ),
        (
            vec!["--socket-group", "NOSUCHGROUP"],
            vec![
                "--socket-group",
                "no group \"NOSUCHGROUP\"",
                "existing group",
            ],
        ),
        (
            vec!["--socket", long.as_str()],
            vec!["--socket", "120 bytes", "shorter path"],
        ),
    ] {
        let mut args = vol_args(&w, "vol1");
        args.extend(extra.iter().map(|s| s.to_string()));
        let err = w.serve(&strs(&args)).err().expect("refused");
        assert_eq!(err.code, 2, "{extra:?}: {err:#?}");
        for needle in needles {
            assert!(err.stderr.contains(needle), "{extra:?}: {needle}: {err:#?}");
        }
    }
    // A run directory whose sockets cannot fit is refused the same way.
    let deep = w.path(&"d".repeat(100));
    let err = Command::new(extstorage_testbins::path(extstorage_testbins::CLI))
        .arg("--search-path")
        .arg(w.providers())
        .arg("--log-dir")
        .arg(w.logs())
        .arg("--lock-dir")
        .arg(w.path("lock"))
        .arg("--run-dir")
        .arg(&deep)
        .arg("serve")
        .args(vol_args(&w, "vol1"))
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(2), "{err:?}");
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("--run-dir"),
        "{err:?}"
    );
    assert!(
        loop_devices_of(&img(&w, "vol1")).is_empty(),
        "attach never ran"
    );
    assert_eq!(script_logs(&w), logs, "no provider script ran");
}

/// Replaces the installed loopfile provider's `open` script.
fn replace_open(w: &World, body: &str) {
    let open = w.providers().join("loopfile/open");
    std::fs::write(&open, format!("#!/bin/bash\n{body}\n")).unwrap();
    let mut perms = std::fs::metadata(&open).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&open, perms).unwrap();
}

#[test]
fn a_failed_open_detaches_and_releases_the_claim() {
    let w = World::new();
    w.install("loopfile");
    create(&w, "vol1", "16M");
    replace_open(&w, "echo 'open refused by the test' >&2; exit 1");
    let err = w
        .serve(&strs(&vol_args(&w, "vol1")))
        .err()
        .expect("refused");
    assert_eq!(err.code, 1, "{err:#?}");
    assert!(err.stderr.contains("open refused by the test"), "{err:#?}");
    assert!(
        loop_devices_of(&img(&w, "vol1")).is_empty(),
        "detached after the failed open: {err:#?}"
    );
    assert_eq!(w.log_files("detach-").len(), 1, "detach ran once");
    // The claim was released: with open fixed, serve works.
    w.install("loopfile");
    let served = w.serve(&strs(&vol_args(&w, "vol1"))).unwrap();
    assert_eq!(served.ready["ok"], true);
}

#[test]
fn an_interrupted_open_detaches() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let w = World::new();
        w.install("loopfile");
        create(&w, "vol1", "16M");
        let started = w.vols().join("open-started");
        replace_open(&w, &format!("touch '{}'\nexec sleep 60", started.display()));
        let child = w
            .cmd()
            .arg("serve")
            .args(vol_args(&w, "vol1"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        vhost_support::wait_until_exists(&started, 60, "open never started");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + sig as i32), "{sig}: {stderr}");
        assert!(
            start.elapsed().as_secs() < 30,
            "{sig}: open was not interrupted"
        );
        assert!(
            loop_devices_of(&img(&w, "vol1")).is_empty(),
            "{sig}: detached after the interrupted open: {stderr}"
        );
        assert!(!w.vols().join("vol1.img.open").exists(), "{sig}: closed");
    }
}

/// `cmd` run by a real shell under `umask 000`.
fn under_umask_000(cmd: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    sh
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn under_umask_000_the_cli_and_serve_set_their_modes() {
    let w = World::new();
    w.install("loopfile");
    let mut create = w.cmd();
    create.arg("create").args(vol_args(&w, "vol1"));
    create.args(["--size", "16M"]);
    let out = under_umask_000(&create).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut serve = w.cmd();
    serve.args(["--json", "serve"]).args(vol_args(&w, "vol1"));
    let mut child = under_umask_000(&serve)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let socket = std::path::PathBuf::from(ready["socket"].as_str().unwrap());
    let control = std::path::PathBuf::from(ready["control_socket"].as_str().unwrap());
    let run = w.run_dir();
    let mut want = vec![
        (w.logs(), 0o750),
        (w.path("lock"), 0o700),
        (run.clone(), 0o755),
        (run.join("serve"), 0o755),
        (run.join("vhost-user"), 0o755),
        (run.join("serve/loopfile.vol1.lock"), 0o600),
        (socket, 0o600),
        (control, 0o600),
    ];
    for log in w.log_files("") {
        want.push((log, 0o640));
    }
    for lock in std::fs::read_dir(w.path("lock")).unwrap() {
        want.push((lock.unwrap().path(), 0o600));
    }
    assert!(want.len() > 10, "{want:?}");
    let octal = |m: u32| format!("{m:04o}");
    let got: Vec<_> = want
        .iter()
        .map(|(p, _)| (p.clone(), octal(mode_of(p))))
        .collect();
    let want: Vec<_> = want.into_iter().map(|(p, m)| (p, octal(m))).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    // The shell exec'd the CLI: its exit status is the CLI's.
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(got, want);
}
