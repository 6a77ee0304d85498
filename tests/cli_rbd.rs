//! The `rbd` reference provider (`providers/rbd`) through the real
//! `extstorage` CLI, on a real single-node Ceph cluster started by
//! `scripts/ceph-cluster.sh`: every action, the userspace URI opened by QEMU
//! (data written through it read back with `rbd export`, and the other way
//! round), open records across two simulated nodes, and the errors (missing
//! pool, image exists, bad parameters, a cluster whose monitor is dead).
//!
//! One cluster is shared by the tests of this binary (each uses its own
//! images); the test that kills a monitor starts its own. A reaper process
//! per cluster stops it when this process ends in any way (even SIGKILL):
//! it waits for the end of a pipe only this process holds.

mod ceph_support;
mod common_cli;
mod uri_support;

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use ceph_support::Cluster;
use common_cli::{Run, World};
use serde_json::Value;
use uri_support::Qemu;

// ------------------------------------------------------------ the cluster

/// The cluster shared by this binary's tests, started by the first that
/// needs it and stopped by its reaper when the process ends.
fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::start("shared")) {
        Ok(c) => c,
        Err(why) => panic!("cannot test rbd: the throwaway Ceph cluster did not start:\n{why}"),
    }
}

// ------------------------------------------------------------ helpers

fn output(cmd: &mut Command) -> Run {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let r = output(cmd);
    assert_eq!(r.code, 0, "{what} failed: {r:#?}");
    r.stdout
}

/// `--provider rbd --volume NAME` and `-p PARAM` for each param.
fn args(name: &str, params: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--provider", "rbd", "--volume", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for p in params {
        v.push("-p".into());
        v.push(p.to_string());
    }
    v
}

/// [`args`] with `-p conf=CONF` of the cluster first.
fn vol(c: &Cluster, name: &str, params: &[&str]) -> Vec<String> {
    let conf = format!("conf={}", c.conf());
    let mut all = vec![conf.as_str()];
    all.extend_from_slice(params);
    args(name, &all)
}

/// `extstorage [--json] CMD VOL... EXTRA...`.
fn es(w: &World, json: bool, cmd: &str, v: &[String], extra: &[&str]) -> Run {
    let mut args: Vec<&str> = Vec::new();
    if json {
        args.push("--json");
    }
    args.push(cmd);
    args.extend(v.iter().map(String::as_str));
    args.extend_from_slice(extra);
    w.run(&args)
}

fn world() -> World {
    let w = World::new();
    w.install("rbd");
    w
}

/// The image's `rbd info`, or `None` when it does not exist.
fn info(c: &Cluster, spec: &str) -> Option<Value> {
    let r = output(c.rbd().args(["info", "--format=json", spec]));
    match r.code {
        0 => Some(serde_json::from_str(&r.stdout).expect("rbd info JSON")),
        2 => None,
        _ => panic!("rbd info {spec}: {r:#?}"),
    }
}

fn size_of(c: &Cluster, spec: &str) -> u64 {
    info(c, spec).unwrap_or_else(|| panic!("{spec} does not exist"))["size"]
        .as_u64()
        .unwrap()
}

fn meta(c: &Cluster, spec: &str) -> BTreeMap<String, String> {
    let out = ok(c.rbd().args(["image-meta", "list", "--format=json", spec]));
    if out.trim().is_empty() {
        return BTreeMap::new();
    }
    serde_json::from_str(&out).expect("image-meta JSON")
}

fn snapshots(c: &Cluster, spec: &str) -> Vec<String> {
    let out = ok(c.rbd().args(["snap", "ls", "--format=json", spec]));
    let v: Value = serde_json::from_str(&out).expect("snap ls JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// The image's bytes `[offset, offset+len)`, read by `rbd export` (librbd,
/// not QEMU).
fn export(c: &Cluster, spec: &str, offset: usize, len: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.raw");
    ok(c.rbd().args(["export", "--no-progress", spec]).arg(&file));
    fs::read(&file).unwrap()[offset..offset + len].to_vec()
}

/// Writes `byte` over `[offset, offset+len)` of the image with `rbd import`
/// of a whole-image file (librbd, not QEMU): the image is recreated.
fn fill_with_rbd(c: &Cluster, spec: &str, size: usize, offset: usize, len: usize, byte: u8) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("import.raw");
    let mut data = vec![0u8; size];
    data[offset..offset + len].fill(byte);
    fs::write(&file, &data).unwrap();
    ok(c.rbd().args(["rm", "--no-progress", spec]));
    ok(c.rbd()
        .args(["import", "--no-progress"])
        .arg(&file)
        .arg(spec));
}

/// QEMU started with the argv `kvm-args --access userspace` renders for
/// the volume (its node is `disk0`).
fn qemu_for(w: &World, v: &[String]) -> Qemu {
    let j = es(w, true, "kvm-args", v, &["--access", "userspace"])
        .ok()
        .json();
    assert_eq!(j["access"], "userspace", "{j:#}");
    assert_eq!(j["dev_path"], Value::Null, "{j:#}");
    let argv: Vec<String> = j["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    Qemu::start(&argv).unwrap_or_else(|e| panic!("QEMU refused {argv:?}:\n{}", e.stderr))
}

/// Writes `byte` over `[offset, offset+len)` through the guest device
/// `disk0` of [`qemu_for`]: HMP `qemu-io -d` on its virtio backend, whose
/// block backend holds the write permission (the node itself cannot be
/// written while the device uses it).
fn device_write(q: &mut Qemu, offset: usize, len: usize, byte: u8) {
    let out = q.hmp(&format!(
        "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x{byte:02x} {offset} {len}\""
    ));
    assert!(out.contains(&format!("wrote {len}/{len} bytes")), "{out}");
}

fn qemu_io(args: &[&str]) -> String {
    let r = output(Command::new("qemu-io").args(args));
    assert!(
        r.code == 0 && !r.stdout.contains("failed") && !r.stderr.contains("failed"),
        "qemu-io {args:?}: {r:#?}"
    );
    r.stdout
}

/// Runs a provider script directly, as Ganeti would: clean environment,
/// the provider directory as working directory.
fn run_script(w: &World, script: &str, env: &[(&str, &str)]) -> Run {
    let dir = w.providers().join("rbd");
    Command::new(dir.join(script))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

const KIB64: usize = 65536;
const MIB: usize = 1 << 20;

// ------------------------------------------------------------ tests

#[test]
fn rbd_volume_lifecycle_through_the_cli() {
    let c = shared();
    let w = world();
    let v = vol(c, "inst1.ext.disk0", &[]);
    let spec = "rbd/inst1.ext.disk0";

    // create: an image of the rounded size, name and UUID in its metadata;
    // then attach (as Ganeti): no device here, one userspace URI.
    let created = es(
        &w,
        true,
        "create",
        &v,
        // (A name that starts with '-' must not read as an rbd option.)
        &["--size", "16M", "--cname=-disk 0", "--uuid", "u-1"],
    )
    .ok()
    .json();
    let line = format!(
        "kvm:rbd:rbd/inst1.ext.disk0:conf={}",
        c.conf().replace('/', "\\/")
    );
    assert_eq!(created["dev_path"], Value::Null, "{created:#}");
    assert_eq!(created["uris"], serde_json::json!([line]), "{created:#}");
    assert_eq!(size_of(c, spec), 16 << 20);
    let m = meta(c, spec);
    assert_eq!(
        m.get("extstorage.cname").map(String::as_str),
        Some("-disk 0")
    );
    assert_eq!(m.get("extstorage.uuid").map(String::as_str), Some("u-1"));
    // attach and assemble are idempotent.
    for cmd in ["attach", "assemble"] {
        let again = es(&w, true, cmd, &v, &[]).ok().json();
        assert_eq!(again["uris"], serde_json::json!([line]), "{cmd}: {again:#}");
    }

    // The URI as QEMU's legacy filename (what Ganeti puts in -drive):
    // qemu-io reads data that librbd wrote.
    fill_with_rbd(c, spec, 16 << 20, MIB, KIB64, 0xab);
    let uri = es(&w, true, "uri-lookup", &v, &["--hypervisor", "kvm"])
        .ok()
        .json()["uri"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(Some(uri.as_str()), line.strip_prefix("kvm:"));
    qemu_io(&[
        "-f",
        "raw",
        "-r",
        "-c",
        "read -P 0xab 1M 64k",
        "-c",
        "read -P 0 0 64k",
        &uri,
    ]);

    // kvm-args --access userspace: QEMU with the rendered -blockdev reads
    // and writes; librbd reads it back later.
    let mut q = qemu_for(&w, &v);
    q.assert_pattern("disk0", MIB as u64, KIB64 as u64, 0xab);
    device_write(&mut q, 3 * MIB, KIB64, 0xcd);
    // Having written, QEMU holds the image's exclusive lock: what follows
    // runs against a live, locked image, as for a running instance (librbd
    // hands metadata changes, resizes and snapshots to the lock owner).
    let locks = ok(c.rbd().args(["lock", "ls", "--format=json", spec]));
    assert!(locks.contains("\"locker\""), "QEMU holds no lock: {locks}");

    // grow: rbd info sees the new size.
    let g = es(&w, true, "grow", &v, &["--size", "16", "--amount", "16M"])
        .ok()
        .json();
    assert_eq!(g["new_size_mib"], 32, "{g:#}");
    assert_eq!(size_of(c, spec), 32 << 20);
    // A stale VOL_SIZE never shrinks it: refused, size kept.
    let r = es(&w, false, "grow", &v, &["--size", "8", "--amount", "8M"]).code(1);
    assert!(
        r.stderr
            .contains("refusing to shrink image rbd/inst1.ext.disk0")
            && r.stderr.contains("33554432 bytes"),
        "{}",
        r.stderr
    );
    assert_eq!(size_of(c, spec), 32 << 20);

    // setinfo: image metadata (sanitised as Ganeti does); empty removes it.
    es(
        &w,
        false,
        "setinfo",
        &v,
        &["--metadata", "originstname+inst1"],
    )
    .ok();
    assert_eq!(
        meta(c, spec).get("extstorage.info").map(String::as_str),
        Some("originstname+inst1")
    );
    es(&w, false, "setinfo", &v, &["--metadata", "a b/c"]).ok();
    assert_eq!(
        meta(c, spec).get("extstorage.info").map(String::as_str),
        Some("a_b_c")
    );
    es(&w, false, "setinfo", &v, &["--metadata", ""]).ok();
    assert!(!meta(c, spec).contains_key("extstorage.info"));

    // open/close on this node: the record comes and goes.
    let node = nix::sys::utsname::uname()
        .expect("uname")
        .nodename()
        .to_str()
        .unwrap()
        .to_string();
    let key = format!("extstorage.open.{node}");
    es(&w, false, "open", &v, &["--shared"]).ok();
    assert_eq!(meta(c, spec).get(&key).map(String::as_str), Some("shared"));
    es(&w, false, "open", &v, &[]).ok();
    assert_eq!(
        meta(c, spec).get(&key).map(String::as_str),
        Some("exclusive")
    );
    es(&w, false, "close", &v, &[]).ok();
    assert!(!meta(c, spec).contains_key(&key));
    es(&w, false, "close", &v, &[]).ok();

    // snapshot: a new image with the data of the moment, of the asked
    // size; no RBD snapshot left behind on the volume.
    let s = es(
        &w,
        true,
        "snapshot",
        &v,
        &["--size", "32", "--snapshot-size", "48"],
    )
    .ok()
    .json();
    assert_eq!(s["name"], "inst1.ext.disk0.snap", "{s:#}");
    // The guest goes on writing; the snapshot keeps the old data.
    device_write(&mut q, MIB, KIB64, 0xef);
    drop(q);
    let snap = "rbd/inst1.ext.disk0.snap";
    assert_eq!(size_of(c, snap), 48 << 20);
    assert!(export(c, snap, 3 * MIB, KIB64).iter().all(|&b| b == 0xcd));
    assert!(export(c, snap, MIB, KIB64).iter().all(|&b| b == 0xab));
    assert!(export(c, spec, MIB, KIB64).iter().all(|&b| b == 0xef));
    assert_eq!(
        meta(c, snap)
            .get("extstorage.snapshot-of")
            .map(String::as_str),
        Some(spec)
    );
    assert_eq!(snapshots(c, spec), Vec::<String>::new());

    // QEMU opening it afresh sees the new size; `uri --format drive`'s
    // -drive form opens it too.
    let img = ok(Command::new("qemu-img").args(["info", "--output=json", &uri]));
    let img: Value = serde_json::from_str(&img).unwrap();
    assert_eq!(img["virtual-size"], 32u64 << 20, "{img:#}");
    let d = es(&w, true, "uri", &v, &[]).ok().json();
    let drive: Vec<String> = d["drive_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    {
        let mut q = Qemu::start(&drive).unwrap_or_else(|e| panic!("{drive:?}: {}", e.stderr));
        q.assert_pattern("disk0", 3 * MIB as u64, KIB64 as u64, 0xcd);
        q.assert_pattern("disk0", MIB as u64, KIB64 as u64, 0xef);
    }
    // The snapshot is a volume of this provider: Ganeti attaches, exports
    // and removes it like one.
    let sv = vol(c, "inst1.ext.disk0.snap", &[]);
    es(&w, false, "attach", &sv, &[]).ok();
    let r = es(&w, false, "snapshot", &v, &["--size", "32"]).code(1);
    assert!(
        r.stderr
            .contains("image rbd/inst1.ext.disk0.snap (the snapshot's name) already exists"),
        "{}",
        r.stderr
    );
    es(&w, false, "remove", &sv, &[]).ok();
    assert!(info(c, snap).is_none());

    // verify: the cluster answers and holds the pool; `image` checks the
    // image; an unknown check is refused.
    es(&w, false, "verify", &v, &[]).ok();
    es(&w, false, "verify", &v, &["image"]).ok();
    let r = es(&w, false, "verify", &v, &["bogus"]).code(1);
    assert!(r.stderr.contains("unknown check 'bogus'"), "{}", r.stderr);

    // detach: nothing is mapped here; the image stays. remove deletes it.
    es(&w, false, "detach", &v, &[]).ok();
    assert!(info(c, spec).is_some());
    es(&w, false, "remove", &v, &[]).ok();
    assert!(info(c, spec).is_none());
    // The scripts themselves are idempotent (the CLI attaches first, so
    // here they run as Ganeti's retries would: directly).
    for script in ["remove", "detach", "close"] {
        let r = run_script(
            &w,
            script,
            &[("VOL_NAME", "inst1.ext.disk0"), ("EXTP_CONF", c.conf())],
        );
        assert_eq!(r.code, 0, "{script}: {r:#?}");
    }
    // But a missing pool is not "already removed".
    let r = run_script(
        &w,
        "remove",
        &[
            ("VOL_NAME", "inst1.ext.disk0"),
            ("EXTP_CONF", c.conf()),
            ("EXTP_POOL", "nopool"),
        ],
    );
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("pool 'nopool' does not exist"),
        "{}",
        r.stderr
    );
    // Every script logged what it did.
    assert!(!w.log_files("remove-rbd-inst1.ext.disk0-").is_empty());
}

#[test]
fn rbd_scripts_print_usage_and_source_settings() {
    let c = shared();
    let w = world();
    let dir = w.providers().join("rbd");
    let out = Command::new(dir.join("attach")).arg("-h").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rbd ExtStorage provider"), "{text}");
    // etc/settings.sh supplies defaults: here the conf, so no -p at all.
    fs::create_dir(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/settings.sh"),
        format!("EXTP_CONF={}\n", c.conf()),
    )
    .unwrap();
    let base = ["--provider", "rbd", "--volume", "settings1"];
    let mut args = vec!["--json", "create"];
    args.extend(base);
    args.extend(["--size", "8"]);
    let r = w.run(&args).ok().json();
    assert_eq!(
        r["uris"][0],
        format!(
            "kvm:rbd:rbd/settings1:conf={}",
            c.conf().replace('/', "\\/")
        )
    );
    let mut args = vec!["remove"];
    args.extend(base);
    w.run(&args).ok();
    assert!(info(c, "rbd/settings1").is_none());
}

/// A World whose rbd provider believes it runs on node `name`.
fn node(name: &str) -> World {
    let w = world();
    let etc = w.providers().join("rbd/etc");
    fs::create_dir(&etc).unwrap();
    fs::write(etc.join("settings.sh"), format!("RBD_NODE_NAME={name}\n")).unwrap();
    w
}

/// The image's open records: node to mode.
fn open_records(c: &Cluster, spec: &str) -> BTreeMap<String, String> {
    meta(c, spec)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("extstorage.open.")?.to_string(), v)))
        .collect()
}

/// Open records as [`open_records`] gives them.
fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The addresses of the image's watchers (clients that have it open).
fn watchers(c: &Cluster, spec: &str) -> Vec<String> {
    let out = ok(c.rbd().args(["status", "--format=json", spec]));
    let v: Value = serde_json::from_str(&out).expect("rbd status JSON");
    v["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rbd_open_records_follow_ganetis_migration_sequence() {
    let c = shared();
    let (a, b) = (node("node-a"), node("node-b"));
    let v = vol(c, "mig1", &[]);
    let spec = "rbd/mig1";
    es(&a, false, "create", &v, &["--size", "8"]).ok();
    let records = || open_records(c, spec);
    let refused = |w: &World, extra: &[&str], needle: &str| {
        let r = es(w, false, "open", &v, extra).code(1);
        assert!(r.stderr.contains(needle), "{}", r.stderr);
    };

    // The instance runs on node-a.
    es(&a, false, "open", &v, &[]).ok();
    assert_eq!(records(), want(&[("node-a", "exclusive")]));
    // Nobody else may open it, in either mode.
    refused(&b, &[], "it is open on node-a (exclusive)");
    refused(&b, &["--shared"], "it is open on node-a (exclusive)");
    assert_eq!(records(), want(&[("node-a", "exclusive")]));

    // Migration to node-b, as Ganeti runs it: close on the target, open
    // shared on source and target, (QEMU migrates), close on the source,
    // open exclusive on the target.
    es(&b, false, "close", &v, &[]).ok();
    es(&a, false, "open", &v, &["--shared"]).ok();
    es(&b, false, "open", &v, &["--shared"]).ok();
    assert_eq!(
        records(),
        want(&[("node-a", "shared"), ("node-b", "shared")])
    );
    // While both have it open, neither may take it exclusively; a refused
    // open leaves the record as it was.
    refused(&b, &[], "it is open on node-a (shared)");
    assert_eq!(
        records(),
        want(&[("node-a", "shared"), ("node-b", "shared")])
    );
    es(&a, false, "close", &v, &[]).ok();
    es(&b, false, "open", &v, &[]).ok();
    assert_eq!(records(), want(&[("node-b", "exclusive")]));
    // Ganeti then unmaps the disks from the source (detach there): it
    // drops only the source's own record, never the target's.
    es(&a, false, "detach", &v, &[]).ok();
    assert_eq!(records(), want(&[("node-b", "exclusive")]));
    // Opening again in the same mode is a no-op.
    es(&b, false, "open", &v, &[]).ok();
    refused(&a, &["--shared"], "it is open on node-b (exclusive)");
    // The message names the way out for a node that is gone.
    refused(
        &a,
        &[],
        "remove its record with 'rbd image-meta remove rbd/mig1 extstorage.open.node-b'",
    );

    // A failed migration back: close on the target, exclusive on the source.
    es(&b, false, "open", &v, &["--shared"]).ok();
    es(&a, false, "open", &v, &["--shared"]).ok();
    es(&a, false, "close", &v, &[]).ok();
    es(&b, false, "open", &v, &[]).ok();
    es(&b, false, "close", &v, &[]).ok();
    es(&b, false, "close", &v, &[]).ok();
    assert_eq!(records(), want(&[]));
    es(&a, false, "remove", &v, &[]).ok();
}

/// Ganeti 3.0 never closes a disk outside a live migration: shutdown,
/// deactivate-disks and failover only detach. A failover after a shutdown
/// (detach on node-a, then attach and open exclusive on node-b) must work.
#[test]
fn rbd_failover_after_a_shutdown_opens_on_the_other_node() {
    let c = shared();
    let (a, b) = (node("node-a"), node("node-b"));
    let v = vol(c, "fo1", &[]);
    let spec = "rbd/fo1";
    es(&a, false, "create", &v, &["--size", "8"]).ok();

    // The instance runs on node-a: open there, its QEMU writes...
    es(&a, false, "open", &v, &[]).ok();
    {
        let mut q = qemu_for(&a, &v);
        device_write(&mut q, MIB, KIB64, 0x11);
    }
    // ...and is shut down: QEMU gone, the disk detached, never closed.
    es(&a, false, "detach", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[]), "detach left a record");

    // Failover: node-b attaches and opens it exclusively and its QEMU
    // finds node-a's data.
    es(&b, false, "attach", &v, &[]).ok();
    es(&b, false, "open", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[("node-b", "exclusive")]));
    {
        let mut q = qemu_for(&b, &v);
        q.assert_pattern("disk0", MIB as u64, KIB64 as u64, 0x11);
    }
    // node-a detaching again (Ganeti's failover shuts the disks down on
    // the old primary too) leaves node-b's record alone; node-a cannot
    // start the instance meanwhile.
    es(&a, false, "detach", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[("node-b", "exclusive")]));
    let r = es(&a, false, "open", &v, &[]).code(1);
    assert!(
        r.stderr.contains("it is open on node-b (exclusive)"),
        "{}",
        r.stderr
    );
    // And back: shutdown on node-b, start on node-a.
    es(&b, false, "detach", &v, &[]).ok();
    es(&a, false, "open", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[("node-a", "exclusive")]));
    es(&a, false, "detach", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[]));
    // A detach that cannot reach the cluster fails (a record it could not
    // remove would refuse the next open elsewhere) and says why.
    let r = es(&a, false, "detach", &vol(c, "fo1", &["pool=nopool"]), &[]).code(1);
    assert!(
        r.stderr.contains("pool 'nopool' does not exist"),
        "{}",
        r.stderr
    );
    es(&a, false, "remove", &v, &[]).ok();
}

/// A node that dies holding an image open leaves its record (nothing ran
/// detach there): the other node is refused with what to do, the operator
/// removes the record, and librbd fences the dead client when the new one
/// takes the exclusive lock (it breaks the lock and blocklists the dead
/// client once its watch has expired).
#[test]
fn rbd_a_dead_node_keeps_its_record_until_the_operator_removes_it() {
    let c = shared();
    let (a, b) = (node("node-a"), node("node-b"));
    let v = vol(c, "dead1", &[]);
    let spec = "rbd/dead1";
    es(&a, false, "create", &v, &["--size", "8"]).ok();
    es(&a, false, "open", &v, &[]).ok();
    let mut q = qemu_for(&a, &v);
    device_write(&mut q, 0, KIB64, 0x22);
    let dead = watchers(c, spec);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let locks = ok(c.rbd().args(["lock", "ls", "--format=json", spec]));
    assert!(locks.contains(&dead[0]), "QEMU holds no lock: {locks}");
    // node-a dies: its QEMU is killed, nothing detaches or closes.
    q.kill();

    // node-b may attach (attach does not look at records), but not open.
    // Writing its record is a metadata update, which librbd has the lock
    // holder make: it waits until Ceph drops the dead client's watch (up to
    // 30 s), then breaks the dead client's lock and blocklists it. The
    // refusal names the dead node, the exact command that removes its
    // record, and who has the image open now: nobody.
    let attached = es(&b, true, "attach", &v, &[]).ok().json();
    let uri = attached["uris"][0]
        .as_str()
        .unwrap()
        .strip_prefix("kvm:")
        .unwrap()
        .to_string();
    // (A short 'timeout' must not cut that wait short: it bounds Ceph's
    // answers, not a lock holder's death.)
    let t = std::time::Instant::now();
    let r = es(&b, false, "open", &vol(c, "dead1", &["timeout=5"]), &[]).code(1);
    eprintln!(
        "node-b's open after node-a died took {:.1} s (the dead client's watch expiring)",
        t.elapsed().as_secs_f64()
    );
    for needle in [
        "cannot open rbd/dead1 exclusive on node-b: it is open on node-a (exclusive)",
        "make sure it is down",
        "'rbd image-meta remove rbd/dead1 extstorage.open.node-a'",
        "(clients with the image open now: none)",
    ] {
        assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
    }
    assert_eq!(open_records(c, spec), want(&[("node-a", "exclusive")]));
    // The fence: the dead client could no longer write if it came back.
    let blocklist = ok(c.ceph().args(["osd", "blocklist", "ls"]));
    assert!(
        blocklist.contains(&dead[0]),
        "the dead client {} was not blocklisted: {blocklist}",
        dead[0]
    );
    assert_eq!(watchers(c, spec), Vec::<String>::new());

    // The operator, having made sure node-a is down, runs that command;
    // node-b opens and writes.
    ok(c.rbd()
        .args(["image-meta", "remove", spec, "extstorage.open.node-a"]));
    es(&b, false, "open", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[("node-b", "exclusive")]));
    qemu_io(&["-f", "raw", "-c", "write -P 0x33 1M 64k", &uri]);
    assert!(export(c, spec, MIB, KIB64).iter().all(|&b| b == 0x33));
    es(&b, false, "detach", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[]));
    es(&b, false, "remove", &v, &[]).ok();
}

/// `rbd copy` copies image metadata: a snapshot taken while the instance
/// runs must not carry the source's open records, or opening the snapshot
/// on another node would be refused.
#[test]
fn rbd_snapshot_carries_no_open_records() {
    let c = shared();
    let (a, b) = (node("node-a"), node("node-b"));
    let v = vol(c, "snapsrc", &[]);
    let spec = "rbd/snapsrc";
    es(&a, false, "create", &v, &["--size", "8"]).ok();
    // A record of each kind on the source: node-a exclusive, then (during
    // a migration) both shared.
    for (opens, name) in [
        (&[("node-a", "exclusive")][..], "snapsrc.s1"),
        (
            &[("node-a", "shared"), ("node-b", "shared")][..],
            "snapsrc.s2",
        ),
    ] {
        for (n, mode) in opens {
            let w = if *n == "node-a" { &a } else { &b };
            let extra: &[&str] = if *mode == "shared" {
                &["--shared"]
            } else {
                &[]
            };
            es(w, false, "open", &v, extra).ok();
        }
        es(
            &a,
            false,
            "snapshot",
            &v,
            &["--size", "8", "--snapshot-name", name],
        )
        .ok();
        assert_eq!(
            open_records(c, spec),
            want(opens),
            "the source lost its records"
        );
        let snap = format!("rbd/{name}");
        let m = meta(c, &snap);
        assert_eq!(open_records(c, &snap), want(&[]), "{m:?}");
        assert_eq!(
            m.get("extstorage.snapshot-of").map(String::as_str),
            Some(spec)
        );
        // Another node opens (and exports) the copy as its own volume.
        let sv = vol(c, name, &[]);
        es(&b, false, "attach", &sv, &[]).ok();
        es(&b, false, "open", &sv, &[]).ok();
        es(&b, false, "detach", &sv, &[]).ok();
        es(&b, false, "remove", &sv, &[]).ok();
    }
    es(&a, false, "detach", &v, &[]).ok();
    es(&b, false, "detach", &v, &[]).ok();
    assert_eq!(open_records(c, spec), want(&[]));
    es(&a, false, "remove", &v, &[]).ok();
}

#[test]
fn rbd_remove_refuses_an_image_in_use_or_with_snapshots() {
    let c = shared();
    let w = world();
    let v = vol(c, "busy1", &[]);
    let spec = "rbd/busy1";
    es(&w, false, "create", &v, &["--size", "8"]).ok();
    {
        // A running QEMU has it open: a watcher.
        let _q = qemu_for(&w, &v);
        let r = es(&w, false, "remove", &v, &[]).code(1);
        assert!(
            r.stderr
                .contains("image rbd/busy1 is in use (open by: 127.0.0.1:")
                && r.stderr.contains("(client."),
            "{}",
            r.stderr
        );
        assert!(info(c, spec).is_some());
    }
    // A snapshot someone took by hand is not deleted silently...
    ok(c.rbd()
        .args(["snap", "create", "--no-progress", "rbd/busy1@keep"]));
    // ...while one an interrupted snapshot script left behind is.
    ok(c.rbd().args([
        "snap",
        "create",
        "--no-progress",
        "rbd/busy1@extstorage-snap.1.2",
    ]));
    let r = es(&w, false, "remove", &v, &[]).code(1);
    assert!(
        r.stderr
            .contains("image rbd/busy1 has snapshots (keep) that remove does not delete"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshots(c, spec), vec!["keep".to_string()]);
    ok(c.rbd()
        .args(["snap", "rm", "--no-progress", "rbd/busy1@keep"]));
    es(&w, false, "remove", &v, &[]).ok();
    assert!(info(c, spec).is_none());
}

#[test]
fn rbd_errors_say_what_is_wrong() {
    let c = shared();
    let w = world();
    let fails = |v: &[String], cmd: &str, extra: &[&str], needle: &str| {
        let r = es(&w, false, cmd, v, extra).code(1);
        assert!(r.stderr.contains(needle), "{cmd} {v:?}: {}", r.stderr);
    };

    // Missing pool, missing namespace, existing image, missing image.
    fails(
        &vol(c, "e1", &["pool=nopool"]),
        "create",
        &["--size", "8"],
        "pool 'nopool' does not exist in the Ceph cluster",
    );
    fails(
        &vol(c, "e1", &["namespace=nons"]),
        "create",
        &["--size", "8"],
        "namespace 'nons' does not exist in pool 'rbd'",
    );
    let v = vol(c, "e1", &[]);
    es(&w, false, "create", &v, &["--size", "8"]).ok();
    fails(
        &v,
        "create",
        &["--size", "8"],
        "image rbd/e1 already exists",
    );
    assert_eq!(size_of(c, "rbd/e1"), 8 << 20, "a failed create touched it");
    fails(
        &vol(c, "e2", &[]),
        "attach",
        &[],
        "image rbd/e2 does not exist",
    );
    fails(
        &vol(c, "e2", &[]),
        "open",
        &[],
        "image rbd/e2 does not exist",
    );

    // Bad parameters, refused before Ceph is asked.
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("k.keyring");
    fs::write(
        &keyring,
        "[client.admin]\n\tkey = AQBPIWdnAAAAABAAb3qN1NxiQuVfW2kPXyMA4Q==\n",
    )
    .unwrap();
    let keyring_p = format!("keyring={}", keyring.display());
    let keyfile_p = format!("keyfile={}", keyring.display());
    let missing = format!("keyring={}/none.keyring", dir.path().display());
    let spaced = dir.path().join("a b.conf");
    fs::copy(c.conf(), &spaced).unwrap();
    let spaced_p = format!("conf={}", spaced.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &["keyring=etc/k.keyring"],
            "the 'keyring' parameter must be an absolute path, not 'etc/k.keyring'",
        ),
        (
            &[&missing],
            "none.keyring does not exist: give the path of an existing file",
        ),
        (
            &["keyfile=k"],
            "the 'keyfile' parameter must be an absolute path, not 'k'",
        ),
        (
            &[&keyring_p, &keyfile_p],
            "give either the 'keyring' or the 'keyfile' parameter, not both",
        ),
        (
            &["keyring=/tmp"],
            "the 'keyring' path /tmp is not a regular file",
        ),
        (
            &["id=client.admin"],
            "the 'id' parameter is the client id without 'client.': give 'admin'",
        ),
        (&["id=a:b"], "the 'id' parameter 'a:b' may only hold"),
        (
            &["timeout=abc"],
            "the 'timeout' parameter must be a number of seconds from 1 to 3600, not 'abc'",
        ),
        (&["timeout=0"], "from 1 to 3600, not '0'"),
        (&["pool="], "the 'pool' parameter is empty"),
        (&["pool=a/b"], "may not contain '/' or '@'"),
        (&["namespace=n@s"], "may not contain '/' or '@'"),
    ];
    for (params, needle) in cases {
        fails(&vol(c, "e1", params), "attach", &[], needle);
    }
    // Conf paths: vol() gives a good one, so these build their own args.
    let comma = dir.path().join("a,b.conf");
    fs::copy(c.conf(), &comma).unwrap();
    let comma_p = format!("conf={}", comma.display());
    for conf in [&spaced_p, &comma_p] {
        fails(
            &args("e1", &[conf]),
            "attach",
            &[],
            "contains ',', ';' or a space: Ceph reads a list of config files",
        );
    }
    fails(
        &args("e1", &["conf=ceph.conf"]),
        "attach",
        &[],
        "the 'conf' parameter must be an absolute path, not 'ceph.conf'",
    );
    // An unknown parameter is the CLI's usage error (exit 2).
    let r = es(&w, false, "attach", &vol(c, "e1", &["pools=rbd"]), &[]).code(2);
    assert!(
        r.stderr.contains("unknown parameter \"pools\""),
        "{}",
        r.stderr
    );
    // The CLI checks snapshot names; the script does too, for callers
    // that do not (run here as Ganeti would: clean environment, provider
    // directory as working directory).
    let r = run_script(
        &w,
        "snapshot",
        &[
            ("VOL_NAME", "e1"),
            ("VOL_SNAPSHOT_NAME", "a/b"),
            ("EXTP_CONF", c.conf()),
        ],
    );
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr
            .contains("snapshot name 'a/b' may only hold letters, digits"),
        "{}",
        r.stderr
    );
    es(&w, false, "remove", &v, &[]).ok();
}

#[test]
fn rbd_attach_line_escapes_hostile_names_for_qemu() {
    let c = shared();
    let w = world();
    // Names rbd accepts and QEMU's legacy syntax must escape: ':' '=' ';'
    // in pool and namespace, ',' and ' ' too (QemuOpts doubles commas).
    let pool = "p:o=1;x,y";
    let ns = "n:s=1;x y";
    ok(c.ceph().args(["osd", "pool", "create", pool, "8"]));
    ok(c.rbd().args(["pool", "init", pool]));
    ok(c.rbd()
        .args(["namespace", "create", "--pool", pool, "--namespace", ns]));
    // A conf whose path needs escaping too ('\\', ':', '=', '@').
    let confdir = tempfile::Builder::new()
        .prefix("esrbd-c:o=n@f\\")
        .tempdir()
        .unwrap();
    let conf = confdir.path().join("ceph:1=x@y.conf");
    fs::copy(c.conf(), &conf).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let v: Vec<String> = [
        "--provider",
        "rbd",
        "--volume",
        "h1",
        "-p",
        &format!("conf={conf}"),
        "-p",
        &format!("pool={pool}"),
        "-p",
        &format!("namespace={ns}"),
        "-p",
        "id=admin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let created = es(&w, true, "create", &v, &["--size", "8"]).ok().json();
    let esc_conf = conf
        .replace('\\', "\\\\")
        .replace('/', "\\/")
        .replace('@', "\\@")
        .replace(':', "\\:")
        .replace('=', "\\=");
    let line = format!(r"kvm:rbd:p\:o\=1\;x,y/n\:s\=1\;x y/h1:conf={esc_conf}:id=admin");
    assert_eq!(created["uris"], serde_json::json!([line]), "{created:#}");

    // The CLI parses the line back into exactly these fields...
    let u = es(&w, true, "uri", &v, &[]).ok().json();
    let node: Value = serde_json::from_str(u["blockdev"][0].as_str().unwrap()).unwrap();
    assert_eq!(node["driver"], "rbd");
    assert_eq!(node["pool"], pool);
    assert_eq!(node["namespace"], ns);
    assert_eq!(node["image"], "h1");
    assert_eq!(node["conf"], conf.as_str());
    assert_eq!(node["user"], "admin");
    // ...and QEMU opens the image through -blockdev and through -drive
    // (whose commas the CLI doubles), reading what librbd wrote.
    let spec = format!("{pool}/{ns}/h1");
    fill_with_rbd(c, &spec, 8 << 20, 2 * MIB, KIB64, 0x5a);
    {
        let mut q = qemu_for(&w, &v);
        q.assert_pattern("disk0", 2 * MIB as u64, KIB64 as u64, 0x5a);
        device_write(&mut q, 0, KIB64, 0x3c);
    }
    assert!(export(c, &spec, 0, KIB64).iter().all(|&b| b == 0x3c));
    let drive: Vec<String> = u["drive_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(drive[1].contains("x,,y"), "{drive:?}");
    {
        let mut q = Qemu::start(&drive).unwrap_or_else(|e| panic!("{drive:?}: {}", e.stderr));
        q.assert_pattern("disk0", 0, KIB64 as u64, 0x3c);
    }
    // The legacy line itself, as Ganeti hands it to QEMU, in qemu-io.
    let uri = line.strip_prefix("kvm:").unwrap();
    qemu_io(&["-f", "raw", "-r", "-c", "read -P 0x5a 2M 64k", uri]);
    es(&w, false, "remove", &v, &[]).ok();
    assert!(info(c, &spec).is_none());
}

#[test]
fn rbd_keyring_must_reach_qemu_through_the_conf() {
    let c = shared();
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("admin.keyring");
    fs::write(
        &keyring,
        "[client.admin]\n\tkey = AQBPIWdnAAAAABAAb3qN1NxiQuVfW2kPXyMA4Q==\n",
    )
    .unwrap();
    let keyfile = dir.path().join("admin.key");
    fs::write(&keyfile, "AQBPIWdnAAAAABAAb3qN1NxiQuVfW2kPXyMA4Q==\n").unwrap();
    // A client that would use cephx where offered (the cluster offers only
    // none, so connections still work).
    let base = fs::read_to_string(c.conf()).unwrap()
        + "\n[client.admin]\nauth client required = cephx, none\n";
    let write_conf = |name: &str, extra: &str| -> String {
        let p = dir.path().join(name);
        fs::write(&p, format!("{base}{extra}")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let plain = write_conf("plain.conf", "");
    let with_keyring = write_conf("kr.conf", &format!("keyring = {}\n", keyring.display()));
    let with_keyfile = write_conf("kf.conf", &format!("keyfile = {}\n", keyfile.display()));
    let args = |conf: &str, key: String| args("k1", &[&format!("conf={conf}"), &key]);
    let kr = format!("keyring={}", keyring.display());
    let kf = format!("keyfile={}", keyfile.display());

    // The provider's own commands use the key file given: the create
    // script succeeds (the attach after it is refused, as below)...
    let r = es(
        &w,
        false,
        "create",
        &args(&plain, kr.clone()),
        &["--size", "8"],
    )
    .code(1);
    assert!(r.stderr.contains("attach script failed"), "{}", r.stderr);
    assert_eq!(size_of(c, "rbd/k1"), 8 << 20);
    // ...but QEMU, given conf and id only, would not find it: attach says
    // so, with the line to add, instead of printing a URI that fails later.
    for (key, needle) in [
        (
            kr.clone(),
            format!(
                "add 'keyring = {}' to the [client.admin] section of {plain}",
                keyring.display()
            ),
        ),
        (
            kf.clone(),
            format!(
                "add 'keyfile = {}' to the [client.admin] section of {plain}",
                keyfile.display()
            ),
        ),
    ] {
        let r = es(&w, false, "attach", &args(&plain, key), &[]).code(1);
        assert!(r.stderr.contains(&needle), "{}", r.stderr);
        assert!(!r.stderr.contains("AQBPIWdn"), "a key leaked: {}", r.stderr);
    }
    // With the conf naming the same file, the URI works in QEMU.
    for (conf, key) in [(&with_keyring, kr.clone()), (&with_keyfile, kf.clone())] {
        let v = args(conf, key);
        let j = es(&w, true, "attach", &v, &[]).ok().json();
        let line = j["uris"][0].as_str().unwrap().to_string();
        assert!(
            !line.contains("AQBPIWdn") && !line.contains("key"),
            "{line}"
        );
        let mut q = qemu_for(&w, &v);
        q.assert_pattern("disk0", 0, KIB64 as u64, 0);
    }
    // A keyfile the conf names for another purpose does not hide the
    // keyring: the conf's keyfile wins in Ceph, so this is refused too.
    let r = es(&w, false, "attach", &args(&with_keyfile, kr.clone()), &[]).code(1);
    assert!(
        r.stderr.contains(&format!(
            "would take the key from keyfile {}",
            keyfile.display()
        )),
        "{}",
        r.stderr
    );
    es(&w, false, "remove", &args(&with_keyring, kr), &[]).ok();
}

#[test]
fn rbd_cluster_down_gives_a_clear_error_within_the_timeout() {
    // Its own cluster: this test kills the monitor.
    let c = match Cluster::start("down") {
        Ok(c) => c,
        Err(why) => panic!("cannot test rbd: the throwaway Ceph cluster did not start:\n{why}"),
    };
    let w = world();
    let v = vol(&c, "down1", &[]);
    es(&w, false, "create", &v, &["--size", "8"]).ok();
    let mon = c.pid("mon.a");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while !common_cli::process_gone(mon) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Every action that talks to the cluster ends on its own (exit 1, not
    // the runner's timeout, exit 3) and says what is wrong. The CLI's limit
    // is far above the provider's, so a hang would show as exit 3.
    let quick = vol(&c, "down1", &["timeout=3"]);
    let said = |r: &Run, secs: u32| {
        let conf = format!(
            "the Ceph cluster (conf {}, client.admin) did not answer within {secs} s",
            c.conf()
        );
        assert!(
            r.stderr.contains(&conf)
                && r.stderr.contains("check that its monitors and OSDs are up"),
            "{}",
            r.stderr
        );
    };
    for (cmd, extra) in [
        ("attach", &[][..]),
        ("open", &[][..]),
        ("create", &["--size", "8"][..]),
        ("grow", &["--size", "8", "--amount", "8"][..]),
        ("verify", &[][..]),
    ] {
        let mut args = vec!["--timeout", "240", cmd];
        args.extend(quick.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let r = w.run(&args).code(1);
        said(&r, 3);
    }
    // The default bound (30 s) holds as well.
    let mut args = vec!["--timeout", "240", "attach"];
    args.extend(v.iter().map(String::as_str));
    said(&w.run(&args).code(1), 30);
    // No rbd client is left behind on the dead cluster.
    let left = output(Command::new("pgrep").args(["-f", &format!("rbd.*{}", c.conf())]));
    assert_eq!(left.stdout, "", "rbd clients still running");
    c.stop();
    assert!(!c.dir.exists(), "the cluster directory was not removed");
}
