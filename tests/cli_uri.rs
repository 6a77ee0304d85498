//! `extstorage uri` and `extstorage kvm-args`: the real CLI against the
//! reference providers (loopfile: a real loop device; qemunbd: a real
//! qemu-nbd export) and the `attachfile` test provider, with the printed
//! arguments fed to a real QEMU (and qemu-storage-daemon for vhost-user).

mod common_cli;
mod uri_support;
mod vhost_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common_cli::{Run, World};
use serde_json::{Value, json};
use uri_support::{Qemu, qemu_ok, qemu_version, read_back, short_dir, write_pattern};

const MIB: u64 = 1 << 20;

fn vol_args(w: &World, provider: &str, vol: &str) -> Vec<String> {
    vec![
        "--provider".into(),
        provider.into(),
        "--volume".into(),
        vol.into(),
        "-p".into(),
        format!("dir={}", w.vols().display()),
    ]
}

/// Runs `extstorage [--json] CMD VOLUME-ARGS EXTRA...`.
fn cli(w: &World, json: bool, cmd: &str, base: &[String], extra: &[&str]) -> Run {
    let mut args: Vec<&str> = Vec::new();
    if json {
        args.push("--json");
    }
    args.push(cmd);
    args.extend(base.iter().map(String::as_str));
    args.extend_from_slice(extra);
    w.run(&args)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn create(w: &World, base: &[String]) {
    cli(w, true, "create", base, &["--size", "16M"]).ok();
}

fn image(w: &World, vol: &str) -> PathBuf {
    w.vols().join(format!("{vol}.img"))
}

/// A QMP `qom-get` on a guest device.
fn qom(q: &mut Qemu, dev: &str, prop: &str) -> Value {
    q.execute(
        "qom-get",
        &json!({"path": format!("/machine/peripheral/{dev}"), "property": prop}),
    )
    .unwrap_or_else(|e| panic!("qom-get {dev}.{prop}: {e}"))
}

#[test]
fn kvm_args_loopfile_kernelspace_reads_and_writes_in_qemu() {
    let w = World::new();
    w.install("loopfile");
    let base = vol_args(&w, "loopfile", "lv1");
    create(&w, &base);
    write_pattern(&image(&w, "lv1"), MIB, 4096, 0x5a);

    let j = cli(&w, true, "kvm-args", &base, &["--bootindex", "1"])
        .ok()
        .json();
    assert_eq!(j["access"], "kernelspace", "{j:#}");
    let dev = j["dev_path"].as_str().expect("dev_path").to_owned();
    assert!(dev.starts_with("/dev/loop"), "{j:#}");
    assert_eq!(j["node_name"], "disk0");
    assert_eq!(j["serve_command"], Value::Null);
    let argv = strings(&j["argv"]);
    // Without --json: the same argv, one element per line.
    let human = cli(&w, false, "kvm-args", &base, &["--bootindex", "1"]).ok();
    assert_eq!(lines(&human.stdout), argv);

    let mut q = qemu_ok(&argv);
    let file = q.node("disk0-file");
    assert_eq!(file["drv"], "host_device", "{file:#}");
    assert_eq!(file["file"], dev.as_str(), "{file:#}");
    assert_eq!(
        file["cache"]["direct"], true,
        "Ganeti's cache=none: {file:#}"
    );
    assert_eq!(q.node("disk0")["drv"], "raw");
    assert_eq!(qom(&mut q, "disk0", "drive"), "disk0");
    assert_eq!(qom(&mut q, "disk0", "bootindex"), 1);
    assert_eq!(qom(&mut q, "disk0", "write-cache"), "on");
    q.assert_pattern("disk0", MIB, 4096, 0x5a);
    // Through the guest device's own BlockBackend (-d): the device holds
    // the node's write permission.
    let out = q.hmp(&format!(
        "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0xc3 {} 4096\"",
        2 * MIB
    ));
    assert!(out.contains("wrote 4096/4096"), "{out}");
    drop(q);
    assert_eq!(
        read_back(&image(&w, "lv1"), 2 * MIB, 4096),
        vec![0xc3; 4096]
    );
}

#[test]
fn kvm_args_and_uri_qemunbd_userspace_in_qemu() {
    let w = World::new();
    w.install("qemunbd");
    let base = vol_args(&w, "qemunbd", "nv1");
    create(&w, &base);
    write_pattern(&image(&w, "nv1"), 3 * MIB, 8192, 0x77);
    let socket = w.vols().join("nv1.nbd.sock");

    // No device: userspace is the default access, and attach is told so.
    let j = cli(&w, true, "kvm-args", &base, &["--num-queues", "2"])
        .ok()
        .json();
    assert_eq!(j["access"], "userspace", "{j:#}");
    assert_eq!(j["dev_path"], Value::Null);
    let argv = strings(&j["argv"]);
    let mut q = qemu_ok(&argv);
    let file = q.node("disk0-file");
    assert_eq!(file["drv"], "nbd", "{file:#}");
    assert!(
        file["file"]
            .as_str()
            .unwrap()
            .contains(socket.to_str().unwrap()),
        "{file:#}"
    );
    assert_eq!(qom(&mut q, "disk0", "num-queues"), 2);
    q.assert_pattern("disk0", 3 * MIB, 8192, 0x77);
    drop(q);

    // `uri`: every form agrees with --json, and QEMU opens each of them.
    let all = cli(&w, true, "uri", &base, &[]).ok().json();
    assert_eq!(all["driver"], "nbd");
    assert_eq!(all["secrets"], json!([]));
    let drive = cli(&w, false, "uri", &base, &["--format", "drive"]).ok();
    assert_eq!(drive.stdout.trim_end(), all["drive"].as_str().unwrap());
    let blockdev = cli(&w, false, "uri", &base, &["--format", "blockdev"]).ok();
    assert_eq!(lines(&blockdev.stdout), strings(&all["blockdev"]));
    let args = cli(&w, false, "uri", &base, &["--format", "args"]).ok();
    assert_eq!(lines(&args.stdout), strings(&all["args"]));
    assert_eq!(
        lines(&cli(&w, false, "uri", &base, &[]).ok().stdout),
        strings(&all["args"]),
        "args is the default format"
    );

    let mut a: Vec<String> = strings(&all["drive_args"]);
    a.extend(["-device".into(), "virtio-blk-pci,drive=disk0,id=vd0".into()]);
    let mut q = qemu_ok(&a);
    let inserted = q.drive("disk0");
    assert_eq!(inserted["drv"], "raw", "{inserted:#}");
    assert_eq!(inserted["cache"]["direct"], true, "{inserted:#}");
    q.assert_pattern("disk0", 3 * MIB, 8192, 0x77);
    drop(q);

    let ro = cli(
        &w,
        true,
        "uri",
        &base,
        &["--node-name", "ro0", "--read-only", "--discard", "unmap"],
    )
    .ok()
    .json();
    let mut a = strings(&all["args"]);
    a.extend(strings(&ro["args"]));
    a.extend([
        "-device".into(),
        "virtio-blk-pci,drive=disk0,id=vd0".into(),
        "-device".into(),
        "virtio-blk-pci,drive=ro0,id=vd1".into(),
    ]);
    let mut q = qemu_ok(&a);
    assert_eq!(q.node("ro0")["ro"], true);
    assert_eq!(q.node("disk0")["ro"], false);
    q.assert_pattern("ro0", 3 * MIB, 8192, 0x77);
    let out = q.hmp("qemu-io -d /machine/peripheral/vd1/virtio-backend \"write -P 0x01 0 512\"");
    assert!(
        !out.contains("wrote") && out.contains("read-only"),
        "read-only node accepted a write: {out}"
    );
    let out = q.hmp("qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x01 0 512\"");
    assert!(out.contains("wrote 512/512"), "{out}");
    drop(q);
    cli(&w, true, "remove", &base, &[]).ok();
}

/// Starts a backend from the serve command, the device and the socket.
type StartBackend = fn(&[String], &str, &Path) -> Backend;

/// A vhost-user-blk backend for a block device, killed on drop.
struct Backend {
    child: Child,
    what: &'static str,
}

impl Backend {
    /// Runs the serve command `kvm-args` printed: `extstorage serve`.
    fn ours(serve: &[String], socket: &Path) -> Backend {
        let mut c = Command::new(&serve[0]);
        c.args(&serve[1..]).env("RUST_LOG", "warn");
        Backend::spawn(c, "extstorage serve", socket)
    }

    /// qemu-storage-daemon's export of the same block device, the reference.
    fn qsd(dev: &str, socket: &Path, num_queues: u16) -> Backend {
        let mut c = Command::new("qemu-storage-daemon");
        c.arg("--blockdev")
            .arg(format!(
                "driver=host_device,node-name=f0,filename={dev},cache.direct=on"
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
                extstorage_uri::escape_opt_value(socket.to_str().expect("utf-8"))
            ));
        Backend::spawn(c, "qemu-storage-daemon", socket)
    }

    fn spawn(mut cmd: Command, what: &'static str, socket: &Path) -> Backend {
        let _ = fs::remove_file(socket);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut b = Backend { child, what };
        // A hang guard, not a timing assertion.
        let start = Instant::now();
        while !socket.exists() {
            if let Some(st) = b.child.try_wait().expect("wait") {
                panic!("{what} exited before listening: {st}");
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{what} hung");
            sleep(Duration::from_millis(20));
        }
        b
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kvm_args_vhost_user_served_and_accepted_by_qemu() {
    let w = World::new();
    w.install("loopfile");
    let base = vol_args(&w, "loopfile", "vu1");
    create(&w, &base);
    write_pattern(&image(&w, "vu1"), 5 * MIB, 4096, 0x3c);
    let sockdir = short_dir("cu");
    let socket = sockdir.path().join("vu,1.sock");
    let sock = socket.to_str().unwrap();
    let j = cli(
        &w,
        true,
        "kvm-args",
        &base,
        &[
            "--access",
            "vhost-user",
            "--socket",
            sock,
            "--num-queues",
            "2",
            "--queue-size",
            "128",
            "--memory-mib",
            "256",
            "--reconnect-ms",
            "1000",
            "--disk-id",
            "vdisk0",
        ],
    )
    .ok()
    .json();
    assert_eq!(j["access"], "vhost-user", "{j:#}");
    assert_eq!(j["socket"], sock);
    assert_eq!(j["notes"], json!([]));
    let dev = j["dev_path"].as_str().unwrap().to_owned();
    let serve = strings(&j["serve_command"]);
    assert_eq!(j["served"], false);
    assert_eq!(j["num_queues"], 2);
    assert_eq!(
        serve[0],
        extstorage_testbins::path(extstorage_testbins::CLI)
            .to_str()
            .unwrap(),
        "this CLI serves"
    );
    let at = serve.iter().position(|a| a == "serve").expect("serve");
    assert!(
        serve[1..at].iter().all(|a| a.starts_with("--")),
        "global options before serve: {serve:?}"
    );
    assert!(
        serve[1..at].iter().any(|a| a.starts_with("--run-dir=")),
        "{serve:?}"
    );
    assert_eq!(
        serve[at + 1..],
        [
            "--provider=loopfile",
            "--volume=vu1",
            &format!("--param=dir={}", w.vols().display()),
            "--num-queues=2",
            "--queue-size=128",
            "--socket",
            sock,
        ]
    );
    // Without --json the serve command and the memory note go to stderr.
    let human = cli(
        &w,
        false,
        "kvm-args",
        &base,
        &["--access", "vhost-user", "--socket", sock],
    )
    .ok();
    assert!(
        human.stderr.contains("start its backend first:")
            && human.stderr.contains(" serve --provider=loopfile")
            && human.stderr.contains(&format!("--socket {sock}")),
        "{human:#?}"
    );
    assert!(human.stderr.contains("share=on"), "memory note: {human:#?}");
    assert!(!human.stdout.contains("serve"), "{human:#?}");

    let backends: [StartBackend; 2] = [
        |_, dev, socket| Backend::qsd(dev, socket, 2),
        |serve, _, socket| Backend::ours(serve, socket),
    ];
    let argv = strings(&j["argv"]);
    for start in backends {
        let backend = start(&serve, &dev, &socket);
        // The socket serves the attached volume: a vhost-user client reads
        // what was written to the volume file.
        {
            let mut c = vhost_support::Client::connect_with(&socket, 2, false, Some(128))
                .unwrap_or_else(|e| panic!("libblkio to {}: {e:?}", backend.what));
            assert_eq!(c.capacity(), 16 * MIB, "{}", backend.what);
            let mem = c.mem(1);
            let (ret, data) = vhost_support::read(&mut c.queues[1], mem, 5 * MIB, 4096);
            assert_eq!(ret, 0, "{}", backend.what);
            assert_eq!(data, vec![0x3c; 4096], "{}", backend.what);
        }
        let mut q = match Qemu::start(&argv) {
            Ok(q) => q,
            Err(e) => panic!("QEMU refused {argv:?} ({}):\n{}", backend.what, e.stderr),
        };
        assert_eq!(qom(&mut q, "vdisk0", "chardev"), "vdisk0-chr");
        assert_eq!(qom(&mut q, "vdisk0", "num-queues"), 2);
        assert_eq!(qom(&mut q, "vdisk0", "queue-size"), 128);
        assert_eq!(qom(&mut q, "vdisk0", "config-wce"), true);
        let chardevs = q.execute("query-chardev", &json!({})).unwrap();
        let chr = chardevs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == "vdisk0-chr")
            .unwrap_or_else(|| panic!("no chardev vdisk0-chr: {chardevs:#}"));
        assert!(chr["filename"].as_str().unwrap().contains(sock), "{chr:#}");
        drop(q);
        drop(backend);
    }
}

#[test]
fn qemu_version_decides_the_reconnect_option() {
    let w = World::new();
    w.install("loopfile");
    let base = vol_args(&w, "loopfile", "qv1");
    create(&w, &base);
    let chardev = |extra: &[&str]| {
        let mut a = vec![
            "--access",
            "vhost-user",
            "--socket",
            "/run/x.sock",
            "--reconnect-ms",
            "1500",
        ];
        a.extend_from_slice(extra);
        let j = cli(&w, true, "kvm-args", &base, &a).ok().json();
        (
            j["qemu_version"].as_str().unwrap().to_owned(),
            strings(&j["argv"])[1].clone(),
        )
    };
    let (v, c) = chardev(&["--qemu-version", "9.1"]);
    assert_eq!(v, "9.1.0");
    assert!(c.ends_with(",reconnect=2"), "{c}");
    let (v, c) = chardev(&["--qemu-version", "10.0.2"]);
    assert_eq!(v, "10.0.2");
    assert!(c.ends_with(",reconnect-ms=1500"), "{c}");
    // Autodetected from the installed qemu-system-x86_64.
    let (v, _) = chardev(&[]);
    assert_eq!(v, qemu_version().to_string());
    let bad = cli(&w, false, "kvm-args", &base, &["--qemu-version", "ten"]).code(2);
    assert!(bad.stderr.contains("QEMU version"), "{bad:#?}");
}

/// An attachfile volume whose attach prints `output`.
fn attachfile(w: &World, vol: &str, output: &str) -> (Vec<String>, PathBuf) {
    if !w.providers().join("attachfile").exists() {
        w.install_test("attachfile", "attachfile");
    }
    let out = w.out().join(format!("{vol}.attach"));
    fs::write(&out, output).unwrap();
    let base = vec![
        "--provider".into(),
        "attachfile".into(),
        "--volume".into(),
        vol.into(),
        "-p".into(),
        format!("out={}", out.display()),
    ];
    (base, out)
}

fn recorded_access(out: &Path) -> String {
    let mut p = out.as_os_str().to_owned();
    p.push(".access");
    fs::read_to_string(PathBuf::from(p))
        .unwrap()
        .trim()
        .to_owned()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn secrets_go_to_0600_files_never_to_output() {
    let w = World::new();
    // Base64 of 16 bytes, as Ceph keys are; and an iSCSI password.
    let key = "QVFEOXRlc3RrZXlTRUNSRVQ9PT0=";
    let cases = [
        (
            "rbd1",
            format!("\nKVM:rbd:rbd/vol1:id=admin:key={key}:mon_host=127.0.0.1\\:6789\n"),
            key,
            "base64",
        ),
        (
            "isc1",
            "\nkvm:iscsi://alice%s3cr3tPW@127.0.0.1/iqn.2001-04.com.example:t1/0\n".into(),
            "s3cr3tPW",
            "raw",
        ),
    ];
    for (vol, output, secret, format) in cases {
        let (base, out) = attachfile(&w, vol, &output);
        let secdir = w.path(&format!("secrets-{vol}"));
        let sd = ["--secret-dir", secdir.to_str().unwrap()];
        let mut outputs = Vec::new();
        for f in ["args", "drive", "blockdev"] {
            let r = cli(
                &w,
                false,
                "uri",
                &base,
                &[&sd[..], &["--format", f]].concat(),
            )
            .ok();
            outputs.push(r);
        }
        let j = cli(&w, true, "uri", &base, &sd).ok();
        let k = cli(&w, true, "kvm-args", &base, &sd).ok();
        let k2 = cli(&w, false, "kvm-args", &base, &sd).ok();
        assert_eq!(
            recorded_access(&out),
            "kernelspace",
            "kvm-args without --access"
        );
        outputs.extend([j, k, k2]);
        for r in &outputs {
            assert!(
                !r.stdout.contains(secret) && !r.stderr.contains(secret),
                "secret printed: {r:#?}"
            );
        }
        let file = secdir.join("disk0-secret");
        assert_eq!(fs::read_to_string(&file).unwrap(), secret);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&secdir), 0o700);

        let jv = outputs[3].json();
        assert_eq!(recorded_access(&out), "kernelspace");
        assert_eq!(
            jv["secrets"],
            json!([{"id": "disk0-secret", "path": file, "format": format}])
        );
        let args = strings(&jv["args"]);
        assert_eq!(args[0], "-object");
        assert_eq!(
            args[1],
            format!(
                "secret,id=disk0-secret,file={},format={format}",
                file.display()
            )
        );
        assert!(args[3].contains(r#"-secret":"disk0-secret""#), "{args:?}");
        assert_eq!(lines(&outputs[0].stdout), args);
        // The drive form references the same object and says so on stderr.
        assert!(
            outputs[1].stdout.contains("-secret=disk0-secret"),
            "{:#?}",
            outputs[1]
        );
        assert!(
            outputs[1].stderr.contains("-object secret,id=disk0-secret"),
            "{:#?}",
            outputs[1]
        );
        let kv = outputs[4].json();
        assert_eq!(kv["access"], "userspace");
        assert_eq!(strings(&kv["argv"])[..2], args[..2]);
        // QEMU itself loads the secret from the file the CLI wrote.
        let q = qemu_ok(&args[..2]);
        drop(q);
    }
}

#[test]
fn access_mode_sets_extp_access_and_defaults() {
    let w = World::new();
    let lo = w.path("lo.img");
    let dev = common_cli::LoopDev::new(lo, 4 * MIB);
    let (base, out) = attachfile(
        &w,
        "both1",
        &format!("{}\nkvm:nbd+unix:///e?socket=/run/e.sock\n", dev.dev),
    );
    let j = cli(&w, true, "kvm-args", &base, &[]).ok().json();
    assert_eq!(
        j["access"], "kernelspace",
        "device given: kernelspace default"
    );
    assert_eq!(recorded_access(&out), "kernelspace");
    let j = cli(&w, true, "kvm-args", &base, &["--access", "userspace"])
        .ok()
        .json();
    assert_eq!(j["access"], "userspace");
    assert!(
        strings(&j["argv"])[1].contains(r#""driver":"nbd""#),
        "{j:#}"
    );
    assert_eq!(recorded_access(&out), "userspace");
    let j = cli(&w, true, "kvm-args", &base, &["--access", "vhost-user"])
        .ok()
        .json();
    assert_eq!(recorded_access(&out), "kernelspace");
    assert_eq!(
        j["socket"],
        w.run_dir()
            .join("vhost-user/attachfile.both1.sock")
            .to_str()
            .unwrap(),
        "default socket"
    );
    let ro = cli(
        &w,
        true,
        "kvm-args",
        &base,
        &[
            "--access",
            "vhost-user",
            "--read-only",
            "--socket",
            "/run/r.sock",
        ],
    )
    .ok()
    .json();
    assert!(
        strings(&ro["serve_command"]).contains(&"--read-only".to_owned()),
        "{ro:#}"
    );
    assert!(ro["notes"].to_string().contains("read-only"), "{ro:#}");
    cli(&w, true, "uri", &base, &[]).ok();
    assert_eq!(recorded_access(&out), "userspace", "uri asks for userspace");
    // As in Ganeti, an `access` disk parameter chooses the access: attach
    // sees it as EXTP_ACCESS and kvm-args renders that mode.
    let j = cli(&w, true, "kvm-args", &base, &["-p", "access=userspace"])
        .ok()
        .json();
    assert_eq!(j["access"], "userspace", "{j:#}");
    assert_eq!(recorded_access(&out), "userspace");
    let r = cli(
        &w,
        true,
        "kvm-args",
        &base,
        &["-p", "access=userspace", "--access", "vhost-user"],
    )
    .code(2);
    assert!(r.stderr.contains("conflicts"), "{}", r.stderr);
    let r = cli(&w, true, "uri", &base, &["-p", "access=kernelspace"]).code(2);
    assert!(r.stderr.contains("conflicts"), "{}", r.stderr);
    // Raw Ceph options have a -drive form only: --json says why -blockdev is missing.
    let (rbd, _) = attachfile(&w, "rbdopt", "\nkvm:rbd:pool/img:rbd_cache=true\n");
    let j = cli(&w, true, "uri", &rbd, &[]).ok().json();
    assert!(
        j["drive"]
            .as_str()
            .unwrap()
            .starts_with("file=rbd:pool/img:rbd_cache=true,"),
        "{j:#}"
    );
    assert!(
        j["blockdev_error"].as_str().unwrap().contains("-blockdev"),
        "{j:#}"
    );
    assert_eq!(j["args"], Value::Null);
    let r = cli(&w, false, "uri", &rbd, &[]).code(2);
    assert!(r.stderr.contains("conf"), "{r:#?}");
    cli(&w, false, "uri", &rbd, &["--format", "drive"]).ok();
    let argv = strings(
        &cli(&w, true, "kvm-args", &base, &["--aio", "native"])
            .ok()
            .json()["argv"],
    );
    let node: Value = serde_json::from_str(&argv[1]).unwrap();
    assert_eq!(node["aio"], "native");
    assert_eq!(node["filename"], dev.dev.as_str());
}

#[test]
fn errors_say_what_to_do() {
    let w = World::new();
    w.install("loopfile");
    w.install("qemunbd");
    let lbase = vol_args(&w, "loopfile", "e1");
    let nbase = vol_args(&w, "qemunbd", "e2");
    create(&w, &lbase);
    create(&w, &nbase);

    let check = |r: Run, code: i32, needle: &str| {
        let r = r.code(code);
        assert!(r.stderr.contains(needle), "expected {needle:?}: {r:#?}");
        r
    };
    // No URI for the hypervisor: the core's message, exit 1, also with --json.
    let msg = "Userspace access is not supported by the 'loopfile' ExtStorage provider for the 'kvm' hypervisor";
    check(cli(&w, false, "uri", &lbase, &[]), 1, msg);
    let r = check(
        cli(&w, true, "kvm-args", &lbase, &["--access", "userspace"]),
        1,
        msg,
    );
    assert_eq!(r.json()["exit_code"], 1);
    check(
        cli(&w, false, "uri", &lbase, &["--hypervisor", "xen"]),
        1,
        "'xen' hypervisor",
    );
    // No block device.
    for m in ["kernelspace", "vhost-user"] {
        check(
            cli(&w, false, "kvm-args", &nbase, &["--access", m]),
            1,
            "has no block device",
        );
    }
    // Options that break Ganeti's rules or each other: exit 2.
    check(
        cli(&w, false, "kvm-args", &lbase, &["--cache", "writeback"]),
        2,
        "cache=none",
    );
    check(
        cli(&w, false, "kvm-args", &nbase, &["--aio", "native"]),
        2,
        "aio applies to files and block devices only",
    );
    check(
        cli(
            &w,
            false,
            "kvm-args",
            &lbase,
            &["--access", "vhost-user", "--aio", "threads"],
        ),
        2,
        "backend daemon",
    );
    check(
        cli(&w, false, "kvm-args", &lbase, &["--access", "vhost"]),
        2,
        "kernelspace, userspace, vhost-user",
    );
    check(
        cli(&w, false, "kvm-args", &lbase, &["--cache", "fast"]),
        2,
        "writeback",
    );
    let long = format!("/tmp/{}.sock", "s".repeat(120));
    check(
        cli(
            &w,
            false,
            "kvm-args",
            &lbase,
            &["--access", "vhost-user", "--socket", &long],
        ),
        2,
        "shorter",
    );
    check(
        cli(&w, false, "kvm-args", &lbase, &["--disk-id", "0bad"]),
        2,
        "start with a letter",
    );
    check(
        cli(&w, false, "kvm-args", &lbase, &["--queue-size", "100"]),
        2,
        "power of two",
    );
    // A URI the provider got wrong is bad attach output: exit 1.
    let (base, _) = attachfile(&w, "bad1", "\nkvm:sheepdog:vol\n");
    check(cli(&w, false, "uri", &base, &[]), 1, "removed from QEMU");
    let (base, _) = attachfile(&w, "bad2", "\nkvm:rbd:p/i:key=c2VjcmV0,x\n");
    let r = cli(&w, false, "kvm-args", &base, &["--secret-dir", "/tmp/none"]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(!r.stderr.contains("c2VjcmV0"), "secret in an error: {r:#?}");
    // A group-writable secret directory is refused.
    let (base, _) = attachfile(&w, "sec1", "\nkvm:rbd:p/i:key=c2VjcmV0\n");
    let open = w.path("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    check(
        cli(
            &w,
            false,
            "uri",
            &base,
            &["--secret-dir", open.to_str().unwrap()],
        ),
        2,
        "chmod go-w",
    );
    assert!(!open.join("disk0-secret").exists());
    cli(&w, true, "remove", &nbase, &[]).ok();
}

#[test]
fn vhost_user_reconnects_by_default_and_0_turns_it_off() {
    let w = World::new();
    w.install("loopfile");
    let base = vol_args(&w, "loopfile", "rc1");
    create(&w, &base);
    let chardev = |extra: &[&str]| {
        let mut a = vec![
            "--access",
            "vhost-user",
            "--socket",
            "/run/x.sock",
            "--qemu-version",
            "10.0.2",
        ];
        a.extend_from_slice(extra);
        let j = cli(&w, true, "kvm-args", &base, &a).ok().json();
        strings(&j["argv"])[1].clone()
    };
    let c = chardev(&[]);
    assert!(c.ends_with(",reconnect-ms=1000"), "{c}");
    let c = chardev(&["--reconnect-ms", "0"]);
    assert!(!c.contains("reconnect"), "{c}");
    assert!(c.ends_with("path=/run/x.sock"), "{c}");
}
