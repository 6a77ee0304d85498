//! Proof against the real parser: the strings and JSON the uri crate renders
//! are fed to QEMU 10 itself (`qemu-system-x86_64 -accel tcg -S`, inspected
//! over QMP), which must open the intended storage and read back what was
//! written. Servers are real: files with hostile names, a loop device,
//! qemu-nbd on a unix socket and on 127.0.0.1/::1, a single-node Ceph
//! cluster, qemu-storage-daemon for vhost-user-blk. Protocols with no server
//! here are pointed at closed ports on 127.0.0.1 and must fail to connect,
//! not to parse.

mod uri_support;

use std::ffi::OsString;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use extstorage_uri::secret_files::{remove_secret_files, write_secret_files};
use extstorage_uri::{
    Aio, CacheMode, CurlScheme, DetectZeroes, Discard, DiskOptions, Host, Nbd,
    NbdServer as NbdAddr, Rbd, Secret, Server, SharedMemory, Source, VhostUserBlkDisk,
    VirtioBlkDevice, parse_attach_line, render_blockdev, render_drive, render_json_filename,
};
use serde_json::json;
use uri_support::*;

const KIB64: u64 = 65536;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Opens `src` with `-drive` (writeback) and checks QEMU reads the pattern,
/// then writes through it; returns nothing, panics with QEMU's words.
fn check_drive_rw(src: &Source, id: &str, byte: u8) {
    let d = render_drive(src, &DiskOptions::default(), id).unwrap();
    let mut q = qemu_ok(d.argv().unwrap());
    let ins = q.drive(id);
    assert_eq!(ins["drv"], "raw", "{ins:#}");
    assert_eq!(ins["ro"], false, "{ins:#}");
    assert_eq!(ins["cache"]["direct"], false, "{ins:#}");
    q.assert_pattern(id, 0, KIB64, byte);
}

/// Opens `src` with `-blockdev` (cache=none, discard=unmap, read-only) and
/// checks the nodes and the pattern.
fn check_blockdev_ro(src: &Source, node: &str, byte: u8) {
    let opts = DiskOptions {
        cache: CacheMode::None,
        discard: Discard::Unmap,
        read_only: true,
        ..DiskOptions::default()
    };
    let b = render_blockdev(src, &opts, node).unwrap();
    let mut q = qemu_ok(b.argv().unwrap());
    let proto = q.node(&b.protocol_node_name);
    assert_eq!(proto["drv"], src.driver(), "{proto:#}");
    assert_eq!(proto["ro"], true, "{proto:#}");
    assert_eq!(proto["cache"]["direct"], true, "{proto:#}");
    let raw = q.node(node);
    assert_eq!(raw["drv"], "raw", "{raw:#}");
    q.assert_pattern(node, 0, KIB64, byte);
    let w = q.write_pattern(node, 0, 512, 0x11);
    assert!(
        !w.contains("wrote"),
        "a read-only node accepted a write: {w}"
    );
}

/// The `json:` filename in the standalone tools: `qemu-img info` reports a
/// raw image of `size` bytes and `qemu-io` reads the pattern back.
fn check_json_filename(src: &Source, size: u64, byte: u8, secret_dir: Option<&Path>) {
    let opts = DiskOptions {
        read_only: true,
        secret_dir: secret_dir.map(Path::to_path_buf),
        ..DiskOptions::default()
    };
    let j = render_json_filename(src, &opts, "j0").unwrap();
    write_secret_files(&j.secrets).unwrap();
    let objects: Vec<String> = j
        .secrets
        .iter()
        .flat_map(|s| ["--object".to_string(), s.object_arg().unwrap()])
        .collect();
    let info = run_ok(
        Command::new("qemu-img")
            .arg("info")
            .args(&objects)
            .args(["--output=json", &j.filename]),
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "raw", "{info:#}");
    assert_eq!(info["virtual-size"], size, "{info:#}");
    let out = run_ok(Command::new("qemu-io").args(&objects).args([
        "-r",
        "-c",
        &format!("read -P 0x{byte:02x} 0 {KIB64}"),
        &j.filename,
    ]));
    assert!(
        out.contains("read 65536/65536 bytes") && !out.contains("failed"),
        "qemu-io {}: {out}",
        j.filename
    );
    remove_secret_files(&j.secrets).unwrap();
}

#[test]
fn file_with_hostile_name() {
    let dir = hostile_dir("file");
    let img = dir.path().join("disk, x:y =z@w\\é.img");
    make_image(&img, 1 << 20, 0, 65536, 0xab);
    let src = Source::from_file(&img).unwrap();
    // The legacy filename is the path itself; commas are doubled in -drive.
    let d = render_drive(&src, &DiskOptions::default(), "d0").unwrap();
    assert!(d.drive.contains("disk,, x:y"), "{}", d.drive);

    check_drive_rw(&src, "d0", 0xab);
    {
        let d = render_drive(&src, &DiskOptions::default(), "d0").unwrap();
        let mut q = qemu_ok(d.argv().unwrap());
        assert_eq!(q.drive("d0")["file"], path_str(&img));
        let w = q.write_pattern("d0", KIB64, KIB64, 0xcd);
        assert!(w.contains("wrote 65536/65536 bytes"), "{w}");
    }
    assert!(read_back(&img, KIB64, 65536).iter().all(|&b| b == 0xcd));

    check_blockdev_ro(&src, "f0", 0xab);
    check_json_filename(&src, 1 << 20, 0xab, None);
    // aio=native with cache.direct, detect-zeroes: QEMU takes them as given.
    let opts = DiskOptions {
        cache: CacheMode::None,
        aio: Some(Aio::Native),
        discard: Discard::Unmap,
        detect_zeroes: Some(DetectZeroes::Unmap),
        ..DiskOptions::default()
    };
    let b = render_blockdev(&src, &opts, "f1").unwrap();
    let mut q = qemu_ok(b.argv().unwrap());
    assert_eq!(q.node("f1-file")["file"], path_str(&img));
    assert_eq!(q.node("f1")["detect_zeroes"], "unmap");
    q.assert_pattern("f1", KIB64, KIB64, 0xcd);
    // The guest device on top, carrying write-cache and a hostile serial.
    let mut dev = VirtioBlkDevice::for_blockdev(&b, "vd1");
    dev.serial = Some("ser,ial: 1".into());
    dev.num_queues = Some(2);
    let mut args = b.argv().unwrap();
    args.extend(dev.qemu_args().unwrap());
    drop(q);
    let mut q = qemu_ok(args);
    let get = |q: &mut Qemu, prop: &str| {
        q.execute(
            "qom-get",
            &json!({"path": "/machine/peripheral/vd1", "property": prop}),
        )
        .unwrap_or_else(|e| panic!("qom-get vd1.{prop}: {e}"))
    };
    assert_eq!(get(&mut q, "serial"), "ser,ial: 1");
    assert_eq!(get(&mut q, "write-cache"), "on");
    assert_eq!(get(&mut q, "num-queues"), 2);
    drop(q);
    // Hot-plug: the same nodes through QMP object-add/blockdev-add, then the device.
    let mut q = qemu_ok(Vec::<OsString>::new());
    for cmd in b.qmp_commands().unwrap() {
        q.send(&cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }
    q.send(&dev.qmp_device_add().unwrap()).unwrap();
    assert_eq!(get(&mut q, "serial"), "ser,ial: 1");
    q.assert_pattern("f1", 0, KIB64, 0xab);
    drop(q);
    // The same options through -drive.
    let d = render_drive(&src, &opts, "d1").unwrap();
    let mut q = qemu_ok(d.argv().unwrap());
    let ins = q.drive("d1");
    assert_eq!(ins["cache"]["direct"], true, "{ins:#}");
    assert_eq!(ins["detect_zeroes"], "unmap", "{ins:#}");
    q.assert_pattern("d1", 0, KIB64, 0xab);
}

#[test]
fn qemu_rejects_what_the_crate_rejects() {
    // aio=native without O_DIRECT: the crate refuses, and so does QEMU's
    // -blockdev (proof that the rule is real, not invented).
    let dir = hostile_dir("rules");
    let img = dir.path().join("a.img");
    make_image(&img, 1 << 20, 0, 512, 1);
    let src = Source::from_file(&img).unwrap();
    let bad = DiskOptions {
        aio: Some(Aio::Native),
        ..DiskOptions::default()
    };
    assert!(render_blockdev(&src, &bad, "n0").is_err());
    let json = json!({"driver": "file", "node-name": "n0", "filename": path_str(&img),
                      "aio": "native", "cache": {"direct": false}});
    let e = Qemu::start(["-blockdev".to_string(), json.to_string()])
        .err()
        .expect("QEMU accepted aio=native without cache.direct");
    assert!(e.stderr.contains("aio=native"), "{}", e.stderr);
}

#[test]
fn block_device_on_a_loop_device() {
    let dir = hostile_dir("loop");
    let backing = dir.path().join("backing.img");
    make_image(&backing, 4 << 20, 0, 65536, 0x5a);
    let lo = LoopDevice::attach(&backing);
    let src = Source::from_block_device(&lo.path).unwrap();
    assert_eq!(Source::parse_legacy(path_str(&lo.path)).unwrap(), src);
    check_drive_rw(&src, "d0", 0x5a);
    check_blockdev_ro(&src, "b0", 0x5a);
    check_json_filename(&src, 4 << 20, 0x5a, None);
    let opts = DiskOptions {
        aio: Some(Aio::Native),
        ..DiskOptions::ganeti_ext()
    };
    let b = render_blockdev(&src, &opts, "b1").unwrap();
    let mut q = qemu_ok(b.argv().unwrap());
    let node = q.node("b1-file");
    assert_eq!(node["drv"], "host_device");
    assert_eq!(node["file"], path_str(&lo.path));
    let w = q.write_pattern("b1", KIB64, KIB64, 0x77);
    assert!(w.contains("wrote 65536/65536 bytes"), "{w}");
    drop(q);
    assert!(read_back(&backing, KIB64, 65536).iter().all(|&b| b == 0x77));
}

#[test]
fn nbd_on_a_hostile_unix_socket() {
    let dir = short_dir("nbd");
    let img = dir.path().join("img");
    make_image(&img, 1 << 20, 0, 65536, 0x3c);
    let sock = dir.path().join("s p,a:c@=é.sock");
    let export = "exp, one:é/x?y#z&w=%";
    let _srv = NbdServer::start(&img, export, &["-k", path_str(&sock)]);
    let src = Source::Nbd(Nbd {
        server: NbdAddr::Unix(path_str(&sock).into()),
        export: Some(export.into()),
    });
    // The old colon form names the same export.
    let old = format!("nbd:unix:{}:exportname={export}", path_str(&sock));
    assert_eq!(Source::parse_legacy(&old).unwrap(), src);
    // And so does an attach-script line carrying the URI form.
    let line = format!("KVM:{}\r\n", src.to_legacy().unwrap());
    let (hv, parsed) = parse_attach_line(&line).unwrap();
    assert_eq!((hv.as_str(), &parsed), ("kvm", &src));

    check_drive_rw(&src, "d0", 0x3c);
    check_blockdev_ro(&src, "n0", 0x3c);
    check_json_filename(&src, 1 << 20, 0x3c, None);
    {
        let d = render_drive(&src, &DiskOptions::default(), "d0").unwrap();
        let mut q = qemu_ok(d.argv().unwrap());
        let file = q.drive("d0")["file"].as_str().unwrap().to_string();
        eprintln!("QEMU names the nbd drive {file}");
        assert!(
            file.contains(export) && file.contains(path_str(&sock)),
            "{file}"
        );
    }
}

#[test]
fn nbd_over_tcp_ipv4_and_ipv6() {
    let dir = short_dir("nbdt");
    let img = dir.path().join("img");
    make_image(&img, 1 << 20, 0, 65536, 0x42);
    let port = closed_port();
    let _srv = NbdServer::start(&img, "e", &["-b", "127.0.0.1", "-p", &port.to_string()]);
    let src = Source::parse_legacy(&format!("nbd://127.0.0.1:{port}/e")).unwrap();
    check_drive_rw(&src, "d0", 0x42);
    check_blockdev_ro(&src, "t0", 0x42);
    let old = Source::parse_legacy(&format!("nbd:127.0.0.1:{port}:exportname=e")).unwrap();
    assert_eq!(old, src);

    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP nbd over ::1: this machine has no IPv6 loopback");
        return;
    }
    let port6 = {
        let l = TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _srv6 = NbdServer::start(&img, "e6", &["-b", "::1", "-p", &port6.to_string()]);
    let src6 = Source::parse_legacy(&format!("nbd://[::1]:{port6}/e6")).unwrap();
    assert!(
        matches!(&src6, Source::Nbd(Nbd { server: NbdAddr::Tcp(Server { host: Host::Ip(ip), .. }), .. }) if ip.is_ipv6())
    );
    check_drive_rw(&src6, "d6", 0x42);
    check_blockdev_ro(&src6, "t6", 0x42);
    let old6 = Source::parse_legacy(&format!("nbd:[::1]:{port6}:exportname=e6")).unwrap();
    assert_eq!(old6, src6);
}

/// Everything that needs Ceph runs here, against one cluster that is
/// stopped when this function returns or panics.
#[test]
fn rbd_on_a_single_node_ceph_cluster() {
    let ceph = match CephCluster::start() {
        Ok(c) => c,
        Err(why) => panic!("cannot test rbd: the throwaway Ceph cluster did not start:\n{why}"),
    };
    let dir = hostile_dir("rbd");
    let pattern = dir.path().join("pattern.img");
    make_image(&pattern, 4 << 20, 0, 65536, 0xab);
    run_ok(
        ceph.rbd()
            .args(["import", "--dest-pool", "rbd", "--dest", "vol"])
            .arg(&pattern),
    );
    let ns = "ns,1:x";
    let hostile_image = "we:ird=na me,x é\\y;z";
    run_ok(
        ceph.rbd()
            .args(["namespace", "create", "--pool", "rbd", "--namespace", ns]),
    );
    run_ok(
        ceph.rbd()
            .args([
                "import",
                "--dest-pool",
                "rbd",
                "--dest-namespace",
                ns,
                "--dest",
                hostile_image,
            ])
            .arg(&pattern),
    );
    // A config file whose path needs rbd escaping. (Ceph itself splits
    // conf paths at ',', ';' and spaces: the crate refuses those.)
    let confdir = tempfile::Builder::new()
        .prefix("uri-rbd:c=o@n\\é")
        .tempdir()
        .unwrap();
    let conf = confdir.path().join("ce:ph=c@o\\nf.conf");
    std::fs::copy(&ceph.conf, &conf).unwrap();
    let conf = path_str(&conf).to_string();

    // 1. The plain attach-script line, with conf=.
    let (_, vol) = parse_attach_line(&format!(
        "kvm:rbd:rbd/vol:conf={}",
        conf.replace('\\', "\\\\")
            .replace(':', "\\:")
            .replace('@', "\\@")
            .replace('=', "\\=")
            .replace(';', "\\;")
    ))
    .unwrap();
    let Source::Rbd(r) = &vol else {
        panic!("{vol:?}")
    };
    assert_eq!(r.conf.as_deref(), Some(conf.as_str()));
    check_drive_rw(&vol, "d0", 0xab);
    check_blockdev_ro(&vol, "r0", 0xab);

    // 2. Namespace and a hostile image name.
    let hostile = Source::Rbd(Rbd {
        pool: "rbd".into(),
        namespace: Some(ns.into()),
        image: hostile_image.into(),
        conf: Some(conf.clone()),
        ..Rbd::default()
    });
    check_drive_rw(&hostile, "d1", 0xab);
    {
        // QEMU's own account of what it opened: the json: filename of the
        // drive names exactly our namespace, image and config file.
        let d = render_drive(&hostile, &DiskOptions::default(), "d1").unwrap();
        let mut q = qemu_ok(d.argv().unwrap());
        let file = q.drive("d1")["file"].as_str().unwrap().to_string();
        let opened: serde_json::Value =
            serde_json::from_str(file.strip_prefix("json:").expect("json: filename")).unwrap();
        assert_eq!(opened["file"]["driver"], "rbd", "{file}");
        assert_eq!(opened["file"]["pool"], "rbd", "{file}");
        assert_eq!(opened["file"]["namespace"], ns, "{file}");
        assert_eq!(opened["file"]["image"], hostile_image, "{file}");
        assert_eq!(opened["file"]["conf"], conf.as_str(), "{file}");
    }
    check_blockdev_ro(&hostile, "r1", 0xab);
    check_json_filename(&hostile, 4 << 20, 0xab, None);

    // 3. No config file: monitors and auth mode from the source itself.
    let mon = Source::Rbd(Rbd {
        pool: "rbd".into(),
        image: "vol".into(),
        mon_hosts: vec![Server::with_port(
            Host::parse("127.0.0.1").unwrap(),
            ceph.mon_port(),
        )],
        auth_client_required: vec!["none".into()],
        ..Rbd::default()
    });
    check_drive_rw(&mon, "d2", 0xab);
    check_blockdev_ro(&mon, "r2", 0xab);

    // 4. A key: it must reach QEMU through a secret file, never argv.
    let key = "AQBPIWdnAAAAABAAb3qN1NxiQuVfW2kPXyMA4Q==";
    let keyed = Source::Rbd(Rbd {
        key: Some(Secret::new(key)),
        user: Some("admin".into()),
        ..match &vol {
            Source::Rbd(r) => r.clone(),
            _ => unreachable!(),
        }
    });
    let secrets = dir.path().join("secrets");
    let opts = DiskOptions {
        secret_dir: Some(secrets.clone()),
        ..DiskOptions::ganeti_ext()
    };
    let d = render_drive(&keyed, &opts, "d3").unwrap();
    let b = render_blockdev(&keyed, &opts, "r3").unwrap();
    write_secret_files(&d.secrets).unwrap();
    write_secret_files(&b.secrets).unwrap();
    for args in [d.argv().unwrap(), b.argv().unwrap()] {
        assert!(
            args.iter().all(|a| !a.to_string_lossy().contains(key)),
            "{args:?}"
        );
        let mut q = qemu_ok(args);
        let obj = q
            .execute(
                "qom-get",
                &json!({"path": "/objects/d3-secret", "property": "format"}),
            )
            .or_else(|_| {
                q.execute(
                    "qom-get",
                    &json!({"path": "/objects/r3-secret", "property": "format"}),
                )
            })
            .expect("secret object exists");
        assert_eq!(obj, "base64");
    }
    check_json_filename(&keyed, 4 << 20, 0xab, Some(&secrets));
    remove_secret_files(&d.secrets).unwrap();
    remove_secret_files(&b.secrets).unwrap();

    // 5. Snapshots: take one, overwrite the head, read the snapshot back.
    run_ok(ceph.rbd().args(["snap", "create", "rbd/vol@s1"]));
    {
        let d = render_drive(&vol, &DiskOptions::default(), "d4").unwrap();
        let mut q = qemu_ok(d.argv().unwrap());
        let w = q.write_pattern("d4", 0, KIB64, 0xcd);
        assert!(w.contains("wrote 65536/65536 bytes"), "{w}");
    }
    let Source::Rbd(mut snap) = vol.clone() else {
        unreachable!()
    };
    snap.snapshot = Some("s1".into());
    let snap = Source::Rbd(snap);
    assert!(render_drive(&snap, &DiskOptions::default(), "d5").is_err());
    check_blockdev_ro(&snap, "r5", 0xab);
    let ro = DiskOptions {
        read_only: true,
        ..DiskOptions::default()
    };
    let d = render_drive(&snap, &ro, "d5").unwrap();
    let mut q = qemu_ok(d.argv().unwrap());
    q.assert_pattern("d5", 0, KIB64, 0xab);
    check_blockdev_ro(&vol, "r6", 0xcd);
}

/// Starts QEMU with `args`, which must fail to *connect* (stderr contains
/// `marker`) rather than to parse.
fn assert_connect_error(what: &str, args: &[OsString], marker: &str) {
    let e = match Qemu::start(args) {
        Ok(_) => panic!("{what}: QEMU opened a source that has no server: {args:?}"),
        Err(e) => e,
    };
    assert!(
        e.stderr.contains(marker),
        "{what}: expected a connection error containing '{marker}', QEMU said:\n{}",
        e.stderr
    );
    for parse_error in [
        "Invalid parameter",
        "Parameter '",
        "Unknown protocol",
        "is missing",
    ] {
        assert!(
            !e.stderr.contains(parse_error),
            "{what}: QEMU could not parse it:\n{}",
            e.stderr
        );
    }
}

#[test]
fn protocols_without_a_server_fail_to_connect_not_to_parse() {
    let port = closed_port();
    let secrets = short_dir("sec");
    let mut cases = vec![
        (
            format!("gluster://127.0.0.1:{port}/vol_x-1/dir,a/i:m g%C3%A9.raw"),
            "failed to connect",
        ),
        (
            format!("iscsi://127.0.0.1:{port}/iqn.2001-04.com.example:t/0"),
            "Failed to connect to LUN",
        ),
        (
            format!("iscsi://chap%pa,ss@127.0.0.1:{port}/iqn.2001-04.com.example:t/1"),
            "Failed to connect to LUN",
        ),
        (
            format!("ssh://us%3Aer@127.0.0.1:{port}/srv/i,m g.raw?host_key_check=no"),
            "Connection refused",
        ),
        (
            format!("http://127.0.0.1:{port}/a,b/c.img?x=1"),
            "Failed to connect to 127.0.0.1",
        ),
        (
            format!("https://me:pw,d@127.0.0.1:{port}/c.img"),
            "Failed to connect to 127.0.0.1",
        ),
        (
            format!("ftp://127.0.0.1:{port}/c.img"),
            "Failed to connect to 127.0.0.1",
        ),
    ];
    // libnfs asks the portmapper on 127.0.0.1:111 first; only when closed.
    if TcpStream::connect("127.0.0.1:111").is_err() {
        cases.push((
            "nfs://127.0.0.1/exp,ort/i m.img?uid=0&gid=0&readahead=131072".into(),
            "Failed to mount nfs share",
        ));
    } else {
        eprintln!("SKIP nfs: something listens on 127.0.0.1:111");
    }
    for (uri, marker) in cases {
        let mut src = Source::parse_legacy(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        // Options that have no place in the URI must reach QEMU as options.
        match &mut src {
            Source::Iscsi(i) => i.initiator_name = Some("iqn.2026-01.org.example:host".into()),
            Source::Curl(c) => {
                if c.scheme == CurlScheme::Https {
                    c.sslverify = Some(false);
                }
                c.readahead = Some(65536);
                c.timeout = Some(5);
            }
            _ => {}
        }
        let opts = DiskOptions {
            read_only: true,
            secret_dir: Some(secrets.path().to_path_buf()),
            ..DiskOptions::default()
        };
        let d = render_drive(&src, &opts, "d0").unwrap();
        write_secret_files(&d.secrets).unwrap();
        assert_connect_error(&format!("-drive {uri}"), &d.argv().unwrap(), marker);
        let b = render_blockdev(&src, &opts, "n0").unwrap();
        write_secret_files(&b.secrets).unwrap();
        assert_connect_error(&format!("-blockdev {uri}"), &b.argv().unwrap(), marker);
    }
}

#[test]
fn vhost_user_blk_cold_and_hot_plug() {
    let version = qemu_version();
    let dir = short_dir("vu");
    let img = dir.path().join("img");
    make_image(&img, 8 << 20, 0, 4096, 0x01);
    let sock0 = dir.path().join("v,0:a.sock");
    let sock1 = dir.path().join("v,1:b.sock");
    let _e0 = VhostExport::start(&img, &sock0, 2);
    let img1 = dir.path().join("img1");
    make_image(&img1, 8 << 20, 0, 4096, 0x02);
    let _e1 = VhostExport::start(&img1, &sock1, 1);

    let mut disk = VhostUserBlkDisk::new(&sock0, "vdisk0");
    disk.num_queues = Some(2);
    disk.queue_size = Some(128);
    disk.config_wce = Some(false);
    disk.bootindex = Some(1);
    disk.reconnect_ms = Some(1000);
    let mut args = SharedMemory {
        id: "mem".into(),
        size_mib: 256,
    }
    .qemu_args()
    .unwrap();
    args.extend(disk.qemu_args(version).unwrap());
    let get = |q: &mut Qemu, dev: &str, prop: &str| {
        q.execute(
            "qom-get",
            &json!({"path": format!("/machine/peripheral/{dev}"), "property": prop}),
        )
        .unwrap_or_else(|e| panic!("qom-get {dev}.{prop}: {e}"))
    };
    // Older QEMUs get `reconnect=<seconds>`: QEMU 10.0 still parses it.
    let older = extstorage_uri::QemuVersion::new(9, 1, 0);
    let old_args = disk.qemu_args(older).unwrap();
    assert!(
        old_args[1].to_string_lossy().ends_with(",reconnect=1"),
        "{old_args:?}"
    );
    if version < extstorage_uri::QemuVersion::new(10, 2, 0) {
        let mut a = args.clone();
        a.truncate(4);
        a.extend(old_args);
        let mut q = qemu_ok(a);
        assert_eq!(get(&mut q, "vdisk0", "num-queues"), 2);
    }
    let mut q = qemu_ok(args);
    assert_eq!(get(&mut q, "vdisk0", "num-queues"), 2);
    assert_eq!(get(&mut q, "vdisk0", "queue-size"), 128);
    assert_eq!(get(&mut q, "vdisk0", "config-wce"), false);
    assert_eq!(get(&mut q, "vdisk0", "chardev"), "vdisk0-chr");
    let chardevs = q.execute("query-chardev", &json!({})).unwrap();
    let chr = chardevs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "vdisk0-chr")
        .unwrap_or_else(|| panic!("no chardev vdisk0-chr: {chardevs:#}"));
    assert!(
        chr["filename"].as_str().unwrap().contains(path_str(&sock0)),
        "{chr:#}"
    );

    let mut hot = VhostUserBlkDisk::new(&sock1, "vdisk1");
    hot.num_queues = Some(1);
    hot.reconnect_ms = Some(2000);
    for cmd in hot.qmp_hotplug_commands(version).unwrap() {
        q.send(&cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }
    assert_eq!(get(&mut q, "vdisk1", "num-queues"), 1);
    assert_eq!(get(&mut q, "vdisk1", "chardev"), "vdisk1-chr");
}
