//! The `extstorage` CLI against the reference providers in `providers/`:
//! real loop devices (loopfile) and a real qemu-nbd export (qemunbd).

mod common_cli;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::process::{Command, Stdio};

use common_cli::{World, loop_devices_of};

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

fn run(w: &World, cmd: &str, base: &[String], extra: &[&str]) -> common_cli::Run {
    let mut args = vec!["--json", cmd];
    args.extend(base.iter().map(String::as_str));
    args.extend_from_slice(extra);
    w.run(&args)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn loopfile_lifecycle_on_real_loop_devices() {
    let w = World::new();
    w.install("loopfile");
    let v = vol_args(&w, "loopfile", "inst1.ext.disk0");
    let file = w.vols().join("inst1.ext.disk0.img");

    let info = run(&w, "create", &v, &["--size", "64M"]).ok().json();
    let dev = info["dev_path"].as_str().unwrap().to_owned();
    assert!(dev.starts_with("/dev/loop"), "{info}");
    assert_eq!(info["major"], 7);
    let meta = fs::metadata(&dev).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(loop_devices_of(&file), vec![dev.clone()]);
    assert_eq!(fs::metadata(&file).unwrap().len(), 64 << 20);

    // Data written through the device lands in the volume and reads back.
    let data = pattern(7, 1 << 20);
    {
        let mut d = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        d.seek(SeekFrom::Start(3 << 20)).unwrap();
        d.write_all(&data).unwrap();
        d.sync_all().unwrap();
        let mut back = vec![0u8; data.len()];
        d.seek(SeekFrom::Start(3 << 20)).unwrap();
        d.read_exact(&mut back).unwrap();
        assert!(back == data, "read back differs");
    }

    // attach and assemble are idempotent: same device, no second loop device.
    for cmd in ["attach", "assemble"] {
        let again = run(&w, cmd, &v, &[]).ok().json();
        assert_eq!(again["dev_path"], dev.as_str(), "{cmd}");
    }
    assert_eq!(loop_devices_of(&file).len(), 1);

    let size = run(&w, "size", &v, &[]).ok().json();
    assert_eq!(size["size_bytes"], 64u64 << 20);
    assert_eq!(size["spindles"], serde_json::Value::Null);

    // Dry run measures the size on the device and changes nothing.
    let dry = run(&w, "grow", &v, &["--amount", "32M", "--dry-run"])
        .ok()
        .json();
    assert_eq!(dry["new_size_mib"], 96);
    assert_eq!(fs::metadata(&file).unwrap().len(), 64 << 20);
    let grown = run(&w, "grow", &v, &["--size", "64", "--amount", "32M"])
        .ok()
        .json();
    assert_eq!(grown["new_size_mib"], 96);
    assert_eq!(fs::metadata(&file).unwrap().len(), 96 << 20);
    let size = run(&w, "size", &v, &[]).ok().json();
    assert_eq!(
        size["size_bytes"],
        96u64 << 20,
        "loop device did not see the new size"
    );

    let st = run(&w, "sync-status", &v, &[]).ok().json();
    assert_eq!(st["dev_path"], dev.as_str());
    assert_eq!(st["is_degraded"], false);
    assert_eq!(st["ldisk_status"], "ok");

    run(&w, "setinfo", &v, &["--metadata", "originstname+inst1"]).ok();
    assert_eq!(
        fs::read_to_string(w.vols().join("inst1.ext.disk0.img.meta")).unwrap(),
        "originstname+inst1\n"
    );
    run(&w, "open", &v, &["--shared"]).ok();
    assert_eq!(
        fs::read_to_string(w.vols().join("inst1.ext.disk0.img.open")).unwrap(),
        "exclusive=False\n"
    );
    run(&w, "close", &v, &[]).ok();
    assert!(!w.vols().join("inst1.ext.disk0.img.open").exists());
    run(&w, "verify", &v, &[]).ok();

    let snap = run(&w, "snapshot", &v, &[]).ok().json();
    assert_eq!(snap["name"], "inst1.ext.disk0.snap");
    let snap_file = w.vols().join("inst1.ext.disk0.snap.img");
    let mut s = fs::File::open(&snap_file).unwrap();
    s.seek(SeekFrom::Start(3 << 20)).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert!(back == data, "snapshot lacks the data");
    assert_eq!(fs::metadata(&snap_file).unwrap().len(), 96 << 20);

    // The export command copies the whole (grown) volume; import writes it.
    let export: Vec<String> =
        serde_json::from_value(run(&w, "export-command", &v, &[]).ok().json()).unwrap();
    assert_eq!(
        export,
        [
            "dd".to_owned(),
            format!("if={dev}"),
            "bs=1048576".into(),
            "count=96".into(),
            "iflag=direct".into()
        ]
    );
    let out = Command::new(&export[0])
        .args(&export[1..])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 96 << 20);
    assert!(out.stdout[3 << 20..4 << 20] == data[..]);
    let import: Vec<String> =
        serde_json::from_value(run(&w, "import-command", &v, &[]).ok().json()).unwrap();
    assert_eq!(import[1], format!("of={dev}"));
    let newdata = pattern(99, 1 << 20);
    let mut child = Command::new(&import[0])
        .args(&import[1..])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&newdata).unwrap();
    assert!(child.wait().unwrap().success());
    let mut f = fs::File::open(&file).unwrap();
    let mut back = vec![0u8; newdata.len()];
    f.read_exact(&mut back).unwrap();
    assert!(back == newdata, "import did not reach the volume");

    // Detach twice (idempotent), re-attach after detach, remove.
    run(&w, "detach", &v, &[]).ok();
    assert!(loop_devices_of(&file).is_empty());
    run(&w, "shutdown", &v, &[]).ok();
    assert!(loop_devices_of(&file).is_empty());
    let again = run(&w, "attach", &v, &[]).ok().json();
    assert!(again["dev_path"].as_str().unwrap().starts_with("/dev/loop"));
    run(&w, "remove", &v, &[]).ok();
    assert!(!file.exists());
    assert!(loop_devices_of(&file).is_empty());

    // Operations on a removed volume fail with the script's words.
    let r = run(&w, "attach", &v, &[]).code(1);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    // The required parameter is enforced by the script.
    let r = w
        .run(&["attach", "--provider", "loopfile", "--volume", "x"])
        .code(1);
    assert!(
        r.stderr.contains("dir parameter is required"),
        "{}",
        r.stderr
    );
}

#[test]
fn loopfile_scripts_print_usage_and_source_settings() {
    let w = World::new();
    let dir = w.install("loopfile");
    let out = Command::new(dir.join("attach")).arg("-h").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("loopfile ExtStorage provider"));
    // etc/settings.sh, relative to the provider directory, is sourced: here
    // it supplies the directory when no param is given.
    fs::create_dir(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/settings.sh"),
        format!("EXTP_DIR={}\n", w.vols().display()),
    )
    .unwrap();
    let r = w
        .run(&[
            "--json",
            "create",
            "--provider",
            "loopfile",
            "--volume",
            "s1",
            "--size",
            "8",
        ])
        .ok();
    assert!(
        r.json()["dev_path"]
            .as_str()
            .unwrap()
            .starts_with("/dev/loop")
    );
    assert!(w.vols().join("s1.img").exists());
    w.run(&["remove", "--provider", "loopfile", "--volume", "s1"])
        .ok();
    assert!(!w.vols().join("s1.img").exists());
}

#[test]
fn qemunbd_serves_userspace_only_volumes_over_a_real_socket() {
    let w = World::new();
    w.install("qemunbd");
    let v = vol_args(&w, "qemunbd", "nbd1");
    let file = w.vols().join("nbd1.img");
    let sock = w.vols().join("nbd1.nbd.sock");

    let info = run(
        &w,
        "create",
        &v,
        &["--size", "16M", "--access", "userspace"],
    )
    .ok()
    .json();
    assert_eq!(info["dev_path"], serde_json::Value::Null);
    let want = format!("kvm:nbd+unix:///nbd1?socket={}", sock.display());
    assert_eq!(info["uris"], serde_json::json!([want]));
    // Idempotent attach: same server.
    let pid = fs::read_to_string(w.vols().join("nbd1.nbd.pid")).unwrap();
    run(&w, "attach", &v, &[]).ok();
    assert_eq!(
        fs::read_to_string(w.vols().join("nbd1.nbd.pid")).unwrap(),
        pid
    );

    let uri = run(&w, "uri-lookup", &v, &["--hypervisor", "KVM"])
        .ok()
        .json()["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(uri, format!("nbd+unix:///nbd1?socket={}", sock.display()));

    // Write through NBD with qemu-io, read the backing file directly.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k", &uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut f = fs::File::open(&file).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    let mut back = vec![0u8; 64 << 10];
    f.read_exact(&mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0x5a),
        "NBD write did not reach the file"
    );
    // And the other way: data in the file is read through NBD.
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 1M 64k",
            "-c",
            "read -P 0 0 64k",
            &uri,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "{text}"
    );
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", &uri])
        .output()
        .unwrap();
    let img: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(img["virtual-size"], 16u64 << 20);

    // No block device: size needs one; open/close are absent (success).
    let r = run(&w, "size", &v, &[]).code(1);
    assert!(r.stderr.contains("no block device"), "{}", r.stderr);
    assert_eq!(run(&w, "open", &v, &[]).ok().json()["script_ran"], false);
    run(&w, "setinfo", &v, &["--metadata", "x"]).ok();
    run(&w, "verify", &v, &[]).ok();
    run(&w, "grow", &v, &["--size", "16", "--amount", "16"]).ok();
    assert_eq!(fs::metadata(&file).unwrap().len(), 32 << 20);
    run(&w, "snapshot", &v, &["--size", "32"]).ok();
    assert!(w.vols().join("nbd1.snap.img").exists());

    run(&w, "detach", &v, &[]).ok();
    let pid: i32 = pid.trim().parse().unwrap();
    assert!(
        common_cli::process_gone(pid),
        "qemu-nbd {pid} survived detach"
    );
    assert!(!sock.exists());
    run(&w, "detach", &v, &[]).ok();
    run(&w, "remove", &v, &[]).ok();
    assert!(!file.exists());
    assert!(!w.vols().join("nbd1.nbd.pid").exists());
}
