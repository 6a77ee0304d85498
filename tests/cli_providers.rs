//! The `extstorage` CLI against the reference providers in `providers/`:
//! real loop devices (loopfile) and a real qemu-nbd export (qemunbd).

mod common_cli;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::process::{Command, Stdio};

use common_cli::{World, loop_devices_of};

/// A world with `provider` installed, and the arguments naming its volume
/// `vol`.
fn provider_volume(provider: &str, vol: &str) -> (World, Vec<String>) {
    let w = World::new();
    w.install(provider);
    let v = vol_args(&w, provider, vol);
    (w, v)
}

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
    let (w, v) = provider_volume("loopfile", "inst1.ext.disk0");
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
    let (w, v) = provider_volume("qemunbd", "nbd1");
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

/// Data at 60 MiB of a 64 MiB volume: what a shrink would lose.
const AT_60M: u64 = 60 << 20;

fn write_at(path: &std::path::Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut back = vec![0u8; len];
    f.read_exact(&mut back).unwrap();
    back
}

/// Runs a provider script directly, as any caller (Ganeti) would: clean
/// environment, provider directory as working directory.
fn run_script(dir: &std::path::Path, script: &str, env: &[(&str, &str)]) -> common_cli::Run {
    Command::new(dir.join(script))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
        .into()
}

#[test]
fn grow_with_a_stale_size_never_shrinks_a_loopfile_volume() {
    let w = World::new();
    let dir = w.install("loopfile");
    let v = vol_args(&w, "loopfile", "g1");
    let file = w.vols().join("g1.img");
    let info = run(&w, "create", &v, &["--size", "64M"]).ok().json();
    let dev = info["dev_path"].as_str().unwrap().to_owned();
    let data = pattern(60, 1 << 20);
    write_at(dev.as_ref(), AT_60M, &data);

    // The CLI measures the device and refuses the stale size.
    let r = run(&w, "grow", &v, &["--size", "8M", "--amount", "1M"]).code(2);
    assert!(
        r.stderr.contains("is 64 MiB (67108864 bytes, measured on")
            && r.stderr
                .contains("not the 8 MiB given with --size; omit --size"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), 64 << 20);
    assert!(
        read_at(&file, AT_60M, data.len()) == data,
        "data at 60 MiB lost"
    );

    // The grow script itself refuses a shrink, whoever passes the stale size.
    let vols = w.vols().display().to_string();
    let r = run_script(
        &dir,
        "grow",
        &[
            ("VOL_NAME", "g1"),
            ("EXTP_DIR", &vols),
            ("VOL_SIZE", "8"),
            ("VOL_NEW_SIZE", "12"),
        ],
    )
    .code(1);
    assert!(r.stderr.contains("refusing to shrink"), "{}", r.stderr);
    assert_eq!(fs::metadata(&file).unwrap().len(), 64 << 20);
    assert!(
        read_at(&file, AT_60M, data.len()) == data,
        "data at 60 MiB lost"
    );

    // Without --size the measured size is used: 64 + 4 (1M rounded up).
    let grown = run(&w, "grow", &v, &["--amount", "1M"]).ok().json();
    assert_eq!(grown["new_size_mib"], 68);
    assert_eq!(fs::metadata(&file).unwrap().len(), 68 << 20);
    assert!(
        read_at(&file, AT_60M, data.len()) == data,
        "data at 60 MiB lost"
    );
    assert!(read_at(dev.as_ref(), AT_60M, data.len()) == data);
}

#[test]
fn grow_with_a_stale_size_never_shrinks_a_qemunbd_volume() {
    let (w, v) = provider_volume("qemunbd", "g2");
    let file = w.vols().join("g2.img");
    run(&w, "create", &v, &["--size", "64M"]).ok();
    let uri = run(&w, "uri-lookup", &v, &[]).ok().json()["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 60M 1M", &uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // No block device to measure: the grow script refuses the shrink.
    let r = run(&w, "grow", &v, &["--size", "8M", "--amount", "1M"]).code(1);
    assert!(
        r.stderr.contains("refusing to shrink") && r.stderr.contains("67108864 bytes"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), 64 << 20);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5a 60M 1M", &uri])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "data at 60 MiB lost: {text}"
    );
    // The right size grows it.
    run(&w, "grow", &v, &["--size", "64M", "--amount", "1M"]).ok();
    assert_eq!(fs::metadata(&file).unwrap().len(), 68 << 20);
    run(&w, "remove", &v, &[]).ok();
}

/// The loop device's backing file as sysfs shows it, if it is bound.
fn backing_file(dev: &str) -> Option<String> {
    let name = dev.trim_start_matches("/dev/");
    fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Detaches `dev` on drop if it still holds `file` (deleted or not), so a
/// failing test does not leak it; a device reused by someone else is left
/// alone.
struct DetachIfOurs {
    dev: String,
    file: String,
}

impl DetachIfOurs {
    /// Guards loop device `dev` of volume file `file`.
    fn new(dev: &str, file: &std::path::Path) -> DetachIfOurs {
        DetachIfOurs {
            dev: dev.to_owned(),
            file: file.display().to_string(),
        }
    }
}

impl Drop for DetachIfOurs {
    fn drop(&mut self) {
        if backing_file(&self.dev)
            .is_some_and(|b| b == self.file || b == format!("{} (deleted)", self.file))
        {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }
}

/// A process holding `dev` open on its stdin (`exec sleep < dev`), killed
/// on drop.
struct Holder(std::process::Child);

impl Holder {
    fn new(dev: &str) -> Holder {
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec sleep 1000 < \"$0\"")
            .arg(dev)
            .spawn()
            .unwrap();
        let fd0 = format!("/proc/{}/fd/0", child.id());
        let start = std::time::Instant::now();
        // Wait until the shell has opened the device and become sleep.
        loop {
            let comm = fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
            if fs::read_link(&fd0).is_ok_and(|p| p == std::path::Path::new(dev))
                && comm.trim() == "sleep"
            {
                break;
            }
            assert!(start.elapsed().as_secs() < 30, "sleep never held {dev}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts a directory on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Ganeti 3.0 closes a disk only inside a live migration; shutdown and
/// deactivate-disks only detach. Detach forgets the open state, as close
/// does, so none is left behind a stopped instance.
#[test]
fn loopfile_detach_forgets_the_open_state() {
    let (w, v) = provider_volume("loopfile", "inst2");
    let marker = w.vols().join("inst2.img.open");
    run(&w, "create", &v, &["--size", "8M"]).ok();
    for extra in [&[][..], &["--shared"][..]] {
        // Instance start: attach, open; shutdown: detach, no close.
        run(&w, "attach", &v, &[]).ok();
        run(&w, "open", &v, extra).ok();
        assert!(marker.exists(), "open {extra:?} left no marker");
        run(&w, "detach", &v, &[]).ok();
        assert!(
            !marker.exists(),
            "detach after open {extra:?} left {}",
            marker.display()
        );
        assert_eq!(
            loop_devices_of(&w.vols().join("inst2.img")),
            Vec::<String>::new()
        );
    }
    // Idempotent, also run directly as Ganeti's retry would (no attach).
    run(&w, "detach", &v, &[]).ok();
    let r = run_script(
        &w.providers().join("loopfile"),
        "detach",
        &[
            ("VOL_NAME", "inst2"),
            ("EXTP_DIR", w.vols().to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{r:#?}");
    run(&w, "remove", &v, &[]).ok();
}

#[test]
fn loopfile_refuses_to_detach_or_remove_a_device_in_use() {
    let (w, v) = provider_volume("loopfile", "busy");
    let file = w.vols().join("busy.img");
    let info = run(&w, "create", &v, &["--size", "8M"]).ok().json();
    let dev = info["dev_path"].as_str().unwrap().to_owned();
    // Open (an instance runs): a refused detach keeps the open state.
    run(&w, "open", &v, &[]).ok();
    let marker = w.vols().join("busy.img.open");
    let holder = Holder::new(&dev);
    let pid = holder.0.id();
    for cmd in ["remove", "detach"] {
        let r = run(&w, cmd, &v, &[]).code(1);
        assert!(
            r.stderr.contains(&format!(
                "{dev} (volume file {}) is in use by: process {pid} (sleep)",
                file.display()
            )),
            "{cmd}: {}",
            r.stderr
        );
        assert!(file.exists(), "{cmd} deleted the file of a device in use");
        assert_eq!(loop_devices_of(&file), vec![dev.clone()], "{cmd}");
        assert_eq!(backing_file(&dev).as_deref(), Some(file.to_str().unwrap()));
        assert!(marker.exists(), "{cmd} refused but forgot the open state");
    }
    drop(holder);
    // A mounted file system is a user too.
    let out = Command::new("mkfs.ext4")
        .args(["-q", &dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mnt = w.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount").arg(&dev).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mounted = Unmount(mnt.clone());
    let r = run(&w, "detach", &v, &[]).code(1);
    assert!(
        r.stderr
            .contains(&format!("is in use by: mount on {}", mnt.display())),
        "{}",
        r.stderr
    );
    assert_eq!(loop_devices_of(&file), vec![dev.clone()]);
    drop(mounted);
    run(&w, "remove", &v, &[]).ok();
    assert!(!file.exists());
    assert_ne!(backing_file(&dev).as_deref(), Some(file.to_str().unwrap()));
}

#[test]
fn loopfile_volume_whose_file_was_deleted_is_released_with_force() {
    let (w, v) = provider_volume("loopfile", "gone");
    let file = w.vols().join("gone.img");
    let info = run(&w, "create", &v, &["--size", "8M"]).ok().json();
    let dev = info["dev_path"].as_str().unwrap().to_owned();
    let _guard = DetachIfOurs::new(&dev, &file);
    fs::remove_file(&file).unwrap();
    let deleted = format!("{} (deleted)", file.display());
    assert_eq!(backing_file(&dev), Some(deleted.clone()));

    // attach fails first; the error says what to do.
    for cmd in ["detach", "remove"] {
        let r = run(&w, cmd, &v, &[]).code(1);
        assert!(
            r.stderr
                .contains(&format!("retry with --force to run {cmd} anyway")),
            "{cmd}: {}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains(&format!("loop device(s) {dev} still hold the deleted file")),
            "{cmd}: {}",
            r.stderr
        );
        assert_eq!(backing_file(&dev), Some(deleted.clone()), "{cmd}");
    }
    // --force: detach finds the device on the deleted file and detaches it.
    let r = run(&w, "detach", &v, &["--force"]).ok();
    assert!(r.stderr.contains("attach failed"), "{}", r.stderr);
    assert_ne!(backing_file(&dev), Some(deleted.clone()));
    // remove --force of what is left (nothing) succeeds too.
    run(&w, "remove", &v, &["--force"]).ok();

    // remove --force does the same in one step.
    run(&w, "create", &v, &["--size", "8M"]).ok();
    let dev = loop_devices_of(&file).pop().unwrap();
    let _guard2 = DetachIfOurs::new(&dev, &file);
    fs::remove_file(&file).unwrap();
    run(&w, "remove", &v, &["--force"]).ok();
    assert_ne!(backing_file(&dev), Some(deleted));
}

/// Stops what a provider started for volume files in `dir` (qemu-nbd pid
/// files, loop devices), so a failing test leaks nothing.
struct CleanVolumes(std::path::PathBuf);

impl Drop for CleanVolumes {
    fn drop(&mut self) {
        let Ok(rd) = fs::read_dir(&self.0) else {
            return;
        };
        for path in rd.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = fs::read_to_string(&path) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            } else if path.is_file() {
                for dev in loop_devices_of(&path) {
                    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
                }
            }
        }
    }
}

#[test]
fn reference_providers_refuse_a_relative_dir() {
    let w = World::new();
    for provider in ["loopfile", "qemunbd"] {
        let dir = w.install(provider);
        let _clean = CleanVolumes(dir.join("vols"));
        for cmd in ["create", "attach", "remove"] {
            let r = w
                .run(&[
                    cmd,
                    "--provider",
                    provider,
                    "--volume",
                    "rel1",
                    "-p",
                    "dir=vols",
                    "--size",
                    "8",
                ])
                .code(1);
            assert!(
                r.stderr
                    .contains("the 'dir' parameter must be an absolute path, not 'vols'"),
                "{provider} {cmd}: {}",
                r.stderr
            );
            assert!(
                !dir.join("vols").exists(),
                "{provider} {cmd} wrote into the provider"
            );
        }
    }
}

#[test]
fn kvm_args_checks_its_options_before_attach_starts_a_daemon() {
    let (w, v) = provider_volume("qemunbd", "k1");
    run(&w, "create", &v, &["--size", "8M"]).ok();
    run(&w, "detach", &v, &[]).ok();
    let pidfile = w.vols().join("k1.nbd.pid");
    assert!(!pidfile.exists());
    for extra in [
        &["--disk-id", "a,b"][..],
        &["--queue-size", "3"],
        &["--cache", "unsafe"],
    ] {
        let r = run(&w, "kvm-args", &v, extra).code(2);
        assert_eq!(r.json()["exit_code"], 2, "{extra:?}");
        assert!(!pidfile.exists(), "{extra:?}: attach started qemu-nbd");
    }
    let r = run(&w, "uri", &v, &["--node-name", "a,b"]).code(2);
    assert!(r.stderr.contains("a,b"), "{}", r.stderr);
    assert!(!pidfile.exists(), "uri: attach started qemu-nbd");
    run(&w, "remove", &v, &[]).ok();
}

#[test]
fn backend_note_is_quoted_for_the_shell() {
    let (w, v) = provider_volume("loopfile", "q1");
    run(&w, "create", &v, &["--size", "8M"]).ok();
    let sock = w.path("s $(touch INJECTED).sock");
    let sock = sock.to_str().unwrap();
    let extra = [
        "--access",
        "vhost-user",
        "--socket",
        sock,
        "--qemu-version",
        "10.0",
    ];
    let json = run(&w, "kvm-args", &v, &extra).ok().json();
    let serve: Vec<String> = serde_json::from_value(json["serve_command"].clone()).unwrap();
    assert_eq!(serve[serve.len() - 1], sock);
    let mut args = vec!["kvm-args"];
    args.extend(v.iter().map(String::as_str));
    args.extend_from_slice(&extra);
    let r = w.run(&args).ok();
    let line = r
        .stderr
        .lines()
        .find_map(|l| l.split_once("start its backend first: ").map(|(_, c)| c))
        .unwrap_or_else(|| panic!("no backend note: {}", r.stderr));
    // The pasted line gives back exactly the argv, and runs nothing else.
    let script = format!("set -- {line}\nfor a; do printf '%s\\0' \"$a\"; done");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(w.out())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let words: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    assert_eq!(words, serve, "{line}");
    assert!(
        !w.out().join("INJECTED").exists(),
        "pasting {line} ran code"
    );
    run(&w, "remove", &v, &[]).ok();
}

/// A small tmpfs the test mounts (root only, as the loop devices), for a
/// filesystem that really fills up; on drop its loop devices and qemu-nbd
/// servers are stopped and it is unmounted.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: std::path::PathBuf, mib: u32) -> SmallFs {
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        SmallFs(dir)
    }

    fn resize(&self, mib: u32) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        drop(CleanVolumes(self.0.clone()));
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_snapshot_that_runs_out_of_space_leaves_nothing_and_a_retry_works() {
    for provider in ["loopfile", "qemunbd"] {
        let w = World::new();
        w.install(provider);
        let small = SmallFs::mount(w.path("small"), 12);
        let v = vec![
            "--provider".to_owned(),
            provider.into(),
            "--volume".into(),
            "full1".into(),
            "-p".into(),
            format!("dir={}", small.0.display()),
        ];
        run(&w, "create", &v, &["--size", "16M"]).ok();
        // Snapshot full1 as full1-s, 16 MiB.
        let snapshot = || {
            run(
                &w,
                "snapshot",
                &v,
                &["--snapshot-name", "full1-s", "--size", "16"],
            )
        };
        // 8 MiB of data in a 12 MiB filesystem: a copy cannot fit.
        let data = pattern(3, 8 << 20);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .open(small.0.join("full1.img"))
                .unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
        }
        let before = small.names();
        for attempt in 0..2 {
            let r = snapshot().code(1);
            assert_eq!(small.names(), before, "{provider} #{attempt}: left behind");
            assert!(
                r.stderr.contains("No space left") && r.stderr.contains("make room"),
                "{provider} #{attempt}: {}",
                r.stderr
            );
        }
        // Room made: the retry succeeds and holds the data.
        small.resize(64);
        snapshot().ok();
        let snap = fs::read(small.0.join("full1-s.img")).unwrap();
        assert_eq!(snap.len(), 16 << 20, "{provider}");
        assert!(snap[..data.len()] == data[..], "{provider}: snapshot data");
        let mut want = before.clone();
        want.push("full1-s.img".into());
        want.sort();
        assert_eq!(small.names(), want, "{provider}");
        // A second snapshot of that name is refused, changing nothing.
        let r = snapshot().code(1);
        assert!(r.stderr.contains("already exists"), "{}", r.stderr);
        run(&w, "detach", &v, &[]).ok();
    }
}

#[test]
fn snapshot_scripts_check_the_name_and_size_they_are_given() {
    // Ganeti runs the scripts directly: the provider checks what the CLI
    // would have refused.
    let w = World::new();
    for provider in ["loopfile", "qemunbd"] {
        let dir = w.install(provider);
        fs::write(w.vols().join("v1.img"), vec![1u8; 4096]).unwrap();
        for (name, size, needle) in [
            ("../escape", "", "snapshot name '../escape'"),
            ("-rf", "", "snapshot name '-rf'"),
            ("a b", "", "snapshot name 'a b'"),
            ("ok", "a[$(touch INJECTED)]", "is not a number of MiB"),
        ] {
            if provider == "qemunbd" && !size.is_empty() {
                continue;
            }
            let out = Command::new(dir.join("snapshot"))
                .current_dir(&dir)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("VOL_NAME", "v1")
                .env("EXTP_DIR", w.vols())
                .env("VOL_SNAPSHOT_NAME", name)
                .env("VOL_SNAPSHOT_SIZE", size)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{provider} {name:?}: {err}");
            assert!(err.contains(needle), "{provider} {name:?}: {err}");
        }
        let mut left: Vec<_> = fs::read_dir(w.vols())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["v1.img"], "{provider}");
        assert!(!w.path("escape.img").exists());
        assert!(!dir.join("INJECTED").exists());
    }
}

#[test]
fn qemunbd_detach_matches_its_socket_exactly() {
    let w = World::new();
    w.install("qemunbd");
    let vols = w.vols();
    // A process whose argument differs from volume a.b's socket only where
    // a regex '.' matches anything: not a.b's server, so it must survive.
    let other = format!("--socket={}/aXb.nbd.sock", vols.display());
    let mut bystander = Command::new("bash")
        .args(["-c", "sleep 60; :"])
        .arg(&other)
        .spawn()
        .unwrap();
    fs::write(vols.join("a.b.img"), "").unwrap();
    fs::write(vols.join("a.b.nbd.pid"), bystander.id().to_string()).unwrap();
    let v = vol_args(&w, "qemunbd", "a.b");
    run(&w, "detach", &v, &[]).ok();
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "detach killed a process that is not the volume's server"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn qemunbd_stop_tolerates_a_server_that_exits_before_the_kill() {
    let w = World::new();
    let dir = w.install("qemunbd");
    let vols = w.vols();
    // The server exits between the check and the kill: stop still succeeds
    // (a real shell runs the provider's own stop_server).
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -euo pipefail; . ./common.sh; server_pid() { echo 2147483646; }; stop_server; echo stopped-ok")
        .current_dir(&dir)
        .env("VOL_NAME", "gone")
        .env("EXTP_DIR", &vols)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped-ok"),
        "{out:?}"
    );
}
