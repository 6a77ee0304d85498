//! The daemon's rbd engine on a real single-node Ceph cluster
//! (`scripts/ceph-cluster.sh`): a libblkio client reads and writes an RBD
//! image served with `--rbd` (what it writes is what `rbd export` reads,
//! and the other way round), flush, discard, write-zeroes, several queues,
//! an `rbd resize` by another client reaching the connected client,
//! reconnects, read-only snapshots, and clear errors for a missing pool or
//! image, an unreachable cluster and missing Ceph libraries.
//!
//! `extstorage serve` on a volume of the `rbd` provider serves it the same
//! way, chosen by the provider's `kvm:rbd:...` attach line.
//!
//! One cluster is shared by the tests of this binary (each uses its own
//! image); a reaper stops it when the process ends.

mod ceph_support;
mod common_cli;
mod vhost_support;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use ceph_support::Cluster;
use common_cli::World;
use vhost_support::{Client, Daemon, flush, pattern, read, wait_one, write};

const MIB: u64 = 1 << 20;

/// A deadline for things that must happen, not a speed assertion.
const WAIT: Duration = Duration::from_secs(60);

fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::start("vhost")) {
        Ok(c) => c,
        Err(why) => panic!("cannot test rbd: the throwaway Ceph cluster did not start:\n{why}"),
    }
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Creates image `name` of `size` bytes in pool `rbd`.
fn create(c: &Cluster, name: &str, size: u64) {
    run_ok(c.rbd().args([
        "create",
        "--size",
        &format!("{}M", size / MIB),
        &format!("rbd/{name}"),
    ]));
}

/// `rbd export` of the whole image (or snapshot).
fn export(c: &Cluster, spec: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export");
    run_ok(c.rbd().arg("export").arg(spec).arg(&file));
    std::fs::read(&file).unwrap()
}

/// The daemon serving `rbd/IMAGE` (or `rbd/IMAGE@SNAP`) of the shared cluster.
fn serve(c: &Cluster, spec: &str, extra: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    Daemon::start_source(dir, PathBuf::new(), &rbd_args(c, spec), extra)
}

fn rbd_args(c: &Cluster, spec: &str) -> Vec<OsString> {
    vec![
        format!("--rbd=rbd/{spec}").into(),
        "--rbd-conf".into(),
        c.conf.clone().into(),
    ]
}

/// Starts the daemon and expects it to fail on its own with `code` (1: the
/// image or cluster failed; 2: an option value is wrong); returns its log.
fn serve_fails(code: i32, source: &[OsString], env: &[(&str, &str)], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let mut cmd = Command::new(vhost_support::bin());
    cmd.arg("serve")
        .args(source)
        .arg("--socket")
        .arg(&sock)
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("{cmd:?} did not fail within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {out:?}");
    assert!(!sock.exists(), "a failed start left a socket");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn discard(q: &mut blkio::Blkioq, offset: u64, len: u64) -> i32 {
    q.discard(offset, len, 4, ReqFlags::empty());
    wait_one(q)
}

fn write_zeroes(q: &mut blkio::Blkioq, offset: u64, len: u64) -> i32 {
    q.write_zeroes(offset, len, 5, ReqFlags::empty());
    wait_one(q)
}

#[test]
fn rbd_image_served_through_librbd_moves_data_on_every_queue() {
    let c = shared();
    create(c, "data", 32 * MIB);
    // Data put in by another client first: the daemon must read it.
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    let mut img = vec![0u8; (32 * MIB) as usize];
    img[..MIB as usize].copy_from_slice(&pattern(9, MIB as usize));
    std::fs::write(&seed, &img[..MIB as usize]).unwrap();
    run_ok(
        c.rbd()
            .args(["import", "--no-progress"])
            .arg(&seed)
            .arg("rbd/seeded"),
    );
    let d = serve(c, "seeded", &["--num-queues=1"]);
    let mut cl = Client::connect(&d.sock, 1, false).unwrap();
    let mem = cl.mem(0);
    let (ret, got) = read(&mut cl.queues[0], mem, 0, MIB as usize);
    assert_eq!(ret, 0);
    assert!(
        got == img[..MIB as usize],
        "data imported with rbd import reads back"
    );
    drop(cl);
    drop(d);

    // The image the rest works on starts empty.
    img.fill(0);
    let mut d = serve(c, "data", &["--num-queues=2"]);
    assert!(
        d.log().contains("engine=\"rbd\"") || d.log().contains("engine=rbd"),
        "{}",
        d.log()
    );
    let mut cl = Client::connect(&d.sock, 2, false).unwrap();
    assert_eq!(cl.capacity(), 32 * MIB);
    // Each queue writes its own region; both read back.
    for qi in 0..2 {
        let data = pattern(qi as u8 + 1, 256 * 1024);
        let off = qi as u64 * 8 * MIB + 4096;
        let mem = cl.mem(qi);
        assert_eq!(write(&mut cl.queues[qi], mem, off, &data), 0);
        img[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    for qi in 0..2 {
        let off = qi as u64 * 8 * MIB + 4096;
        let mem = cl.mem(1 - qi);
        let (ret, got) = read(&mut cl.queues[1 - qi], mem, off, 256 * 1024);
        assert_eq!(ret, 0);
        assert!(
            got == img[off as usize..off as usize + got.len()],
            "queue {qi}'s write read back on the other queue"
        );
    }
    assert_eq!(flush(&mut cl.queues[0]), 0);
    // Flushed: another client sees it.
    assert!(
        export(c, "rbd/data") == img,
        "rbd export sees the flushed writes"
    );

    // Write-zeroes over part of a written range zeroes exactly that part.
    assert_eq!(write_zeroes(&mut cl.queues[0], 8192, 16384), 0);
    img[8192..8192 + 16384].fill(0);
    // Discard a whole 4 MiB object (librbd then drops it: zeroes).
    assert_eq!(discard(&mut cl.queues[1], 8 * MIB, 4 * MIB), 0);
    img[(8 * MIB) as usize..(12 * MIB) as usize].fill(0);
    let mem = cl.mem(0);
    let (ret, got) = read(&mut cl.queues[0], mem, 0, MIB as usize);
    assert_eq!(ret, 0);
    assert!(
        got == img[..MIB as usize],
        "write-zeroes zeroed 8192..24576 only"
    );
    let mem = cl.mem(1);
    let (ret, got) = read(&mut cl.queues[1], mem, 8 * MIB, MIB as usize);
    assert_eq!(ret, 0);
    assert!(
        got.iter().all(|&b| b == 0),
        "the discarded object reads as zeroes"
    );
    assert_eq!(flush(&mut cl.queues[1]), 0);
    assert!(
        export(c, "rbd/data") == img,
        "rbd export after zeroing and discard"
    );

    // Reconnect: a new client sees the same data.
    drop(cl);
    d.wait_disconnects(1);
    let mut cl = Client::connect(&d.sock, 2, false).unwrap();
    let mem = cl.mem(1);
    let (ret, got) = read(&mut cl.queues[1], mem, 4096, 256 * 1024);
    assert_eq!(ret, 0);
    assert!(
        got == img[4096..4096 + 256 * 1024],
        "data survives a reconnect"
    );
    // Writes past the end fail, the daemon keeps serving.
    let mem = cl.mem(0);
    assert!(write(&mut cl.queues[0], mem, 32 * MIB, &[1u8; 4096]) < 0);
    drop(cl);
    let st = d.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(st.success(), "{st}: {}", d.log());
}

#[test]
fn rbd_resize_by_another_client_reaches_the_connected_client() {
    let c = shared();
    create(c, "grow", 16 * MIB);
    // Write-through: every write is followed by a flush before it completes.
    let d = serve(c, "grow", &["--num-queues=1", "--write-cache=writethrough"]);
    let mut cl = Client::connect(&d.sock, 1, false).unwrap();
    assert_eq!(cl.capacity(), 16 * MIB);
    // The daemon holds the exclusive lock once it wrote; rbd hands the
    // resize to it.
    let mem = cl.mem(0);
    assert_eq!(write(&mut cl.queues[0], mem, 0, &pattern(3, 4096)), 0);
    run_ok(c.rbd().args(["resize", "--size", "48M", "rbd/grow"]));
    let start = Instant::now();
    while cl.capacity() != 48 * MIB {
        assert!(
            start.elapsed() < WAIT,
            "capacity stayed {}: {}",
            cl.capacity(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("capacity changed"), "{}", d.log());
    // The new space is usable.
    let data = pattern(4, 8192);
    let mem = cl.mem(0);
    assert_eq!(write(&mut cl.queues[0], mem, 40 * MIB, &data), 0);
    let (ret, got) = read(&mut cl.queues[0], mem, 40 * MIB, 8192);
    assert_eq!(ret, 0);
    assert!(got == data);
    // The control socket's resize agrees (nothing changed since).
    let out = d.resize_cmd();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (48 * MIB).to_string()
    );
    // status names the image and counts the requests.
    let out = Command::new(vhost_support::bin())
        .args(["status", "--control-socket"])
        .arg(&d.ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["path"], "rbd:rbd/grow", "{st:#}");
    assert_eq!(st["size_bytes"], 48 * MIB, "{st:#}");
    assert_eq!(st["queues"][0]["requests"]["write"], 2, "{st:#}");
}

#[test]
fn rbd_snapshot_is_served_read_only() {
    let c = shared();
    create(c, "snapped", 8 * MIB);
    let d = serve(c, "snapped", &["--num-queues=1"]);
    let mut cl = Client::connect(&d.sock, 1, false).unwrap();
    let old = pattern(5, 65536);
    let mem = cl.mem(0);
    assert_eq!(write(&mut cl.queues[0], mem, 0, &old), 0);
    assert_eq!(flush(&mut cl.queues[0]), 0);
    // A snapshot of an image in use (rbd asks the lock owner to quiesce).
    run_ok(c.rbd().args(["snap", "create", "rbd/snapped@s1"]));
    assert_eq!(write(&mut cl.queues[0], mem, 0, &pattern(6, 65536)), 0);

    // Without --read-only: refused with what to add.
    let err = serve_fails(2, &rbd_args(c, "snapped@s1"), &[], &[]);
    assert!(err.contains("add --read-only"), "{err}");

    let s = serve(c, "snapped@s1", &["--num-queues=1", "--read-only"]);
    let mut sc = Client::connect(&s.sock, 1, true).unwrap();
    let mem = sc.mem(0);
    let (ret, got) = read(&mut sc.queues[0], mem, 0, 65536);
    assert_eq!(ret, 0);
    assert!(got == old, "the snapshot holds the data of its moment");
    // The read-only device refuses writes.
    assert!(write(&mut sc.queues[0], mem, 0, &[7u8; 4096]) < 0);
    assert!(s.log().contains("read_only=true"), "{}", s.log());
}

#[test]
fn rbd_errors_say_what_is_wrong_and_do_not_hang() {
    let c = shared();
    let conf = c.conf.to_str().unwrap().to_owned();
    let args = |spec: &str, conf: &str| -> Vec<OsString> {
        vec![
            format!("--rbd={spec}").into(),
            format!("--rbd-conf={conf}").into(),
        ]
    };
    let err = serve_fails(1, &args("nopool/img", &conf), &[], &[]);
    assert!(err.contains("pool does not exist"), "{err}");
    let err = serve_fails(1, &args("rbd/noimage", &conf), &[], &[]);
    assert!(
        err.contains("image (or snapshot, or namespace) does not exist"),
        "{err}"
    );
    let err = serve_fails(1, &args("rbd/noimage", "/nonexistent/ceph.conf"), &[], &[]);
    assert!(err.contains("--rbd-conf"), "{err}");

    // A cluster nobody answers for: a monitor address where nothing listens.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.conf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &dead,
        format!("[global]\nmon host = 127.0.0.1:{port}\nauth cluster required = none\nauth service required = none\nauth client required = none\n"),
    )
    .unwrap();
    let err = serve_fails(
        1,
        &args("rbd/img", dead.to_str().unwrap()),
        &[],
        &["--rbd-timeout=3"],
    );
    assert!(err.contains("did not answer in time"), "{err}");

    // No librbd on this node: the package to install.
    let err = serve_fails(
        1,
        &args("rbd/img", &conf),
        &[("EXTSTORAGE_LIBRBD", "/nonexistent/librbd.so.1")],
        &[],
    );
    assert!(err.contains("install the librbd1 package"), "{err}");

    // Bad options never reach Ceph.
    let err = serve_fails(2, &[OsString::from("--rbd=img")], &[], &[]);
    assert!(err.contains("POOL/IMAGE"), "{err}");
}

#[test]
fn serving_a_file_never_loads_librbd() {
    let d = Daemon::start(MIB, &["--num-queues=1"]);
    let _cl = Client::connect(&d.sock, 1, false).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", d.pid())).unwrap();
    assert!(
        !maps.contains("librbd") && !maps.contains("librados"),
        "{maps}"
    );
}

#[test]
fn extstorage_serve_uses_the_rbd_engine_for_an_rbd_volume() {
    let c = shared();
    let w = World::new();
    w.install("rbd");
    let conf = format!("conf={}", c.conf.display());
    let vol = [
        "--provider",
        "rbd",
        "--volume",
        "served",
        "-p",
        conf.as_str(),
    ];
    let with = |cmd: &[&str], extra: &[&str]| -> Vec<String> {
        cmd.iter()
            .chain(vol.iter())
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let strs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        w.run(&a).ok()
    };
    run(strs(&with(&["create"], &["--size", "32M"])));
    // Not served yet: kvm-args says how to serve it.
    let j = run(with(
        &["--json", "kvm-args"],
        &["--access", "vhost-user", "--vcpus", "2"],
    ))
    .json();
    assert_eq!(j["served"], false, "{j:#}");
    assert!(
        j["serve_command"].to_string().contains("\"serve\""),
        "{j:#}"
    );
    let serve_args = with(&[], &["--num-queues", "2"]);
    let a: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let mut served = w.serve(&a).unwrap_or_else(|r| panic!("{r:#?}"));
    assert_eq!(
        served.ready["serving"], "rbd:rbd/served",
        "{:#}",
        served.ready
    );
    assert!(
        served.log().contains("rbd image opened"),
        "{}",
        served.log()
    );
    // open ran, exclusively, on this node.
    let meta = run_ok(c.rbd().args(["image-meta", "list", "rbd/served"]));
    assert!(
        String::from_utf8_lossy(&meta).contains("exclusive"),
        "{}",
        String::from_utf8_lossy(&meta)
    );

    // kvm-args offers our backend for it: the served socket and queues.
    let j = run(with(&["--json", "kvm-args"], &["--access", "vhost-user"])).json();
    assert_eq!(j["served"], true, "{j:#}");
    assert_eq!(j["socket"], served.ready["socket"], "{j:#}");
    let device = j["argv"].as_array().unwrap().last().unwrap().to_string();
    assert!(
        device.contains("vhost-user-blk") && device.contains("num-queues=2"),
        "{j:#}"
    );

    let mut cl = Client::connect(&served.socket(), 2, false).unwrap();
    assert_eq!(cl.capacity(), 32 * MIB);
    let data = pattern(11, 65536);
    let (m0, m1) = (cl.mem(0), cl.mem(1));
    assert_eq!(write(&mut cl.queues[0], m0, 30 * MIB, &data), 0);
    assert_eq!(
        read(&mut cl.queues[1], m1, 30 * MIB, data.len()),
        (0, data.clone())
    );
    assert_eq!(flush(&mut cl.queues[1]), 0);

    // grow: the provider resizes the image, the served size follows.
    let grown = run(with(
        &["--json", "grow"],
        &["--size", "32M", "--amount", "16M"],
    ))
    .json();
    assert_eq!(grown["served_size_bytes"], 48 * MIB, "{grown:#}");
    let start = Instant::now();
    while cl.capacity() != 48 * MIB {
        assert!(start.elapsed() < WAIT, "capacity still {}", cl.capacity());
        std::thread::sleep(Duration::from_millis(50));
    }

    drop(cl);
    assert_eq!(
        served.stop(nix::sys::signal::Signal::SIGTERM),
        Some(0),
        "{}",
        served.log()
    );
    // close ran: no open record left; the data is in the image.
    let meta = run_ok(c.rbd().args(["image-meta", "list", "rbd/served"]));
    assert!(
        !String::from_utf8_lossy(&meta).contains("extstorage.open"),
        "{}",
        String::from_utf8_lossy(&meta)
    );
    let img = export(c, "rbd/served");
    assert_eq!(img.len() as u64, 48 * MIB);
    assert!(img[(30 * MIB) as usize..(30 * MIB) as usize + data.len()] == data[..]);
}
