//! The real `extstorage-vhost-user-blk` daemon driven by libblkio.

mod vhost_support;

use blkio::ReqFlags;
use nix::sys::signal::Signal;
use vhost_support::*;

const MIB: u64 = 1 << 20;

/// The engines every data-path test runs with (the image lives on the temp
/// dir's disk filesystem, where both work).
const ENGINES: [&str; 2] = ["sync", "uring"];

#[test]
fn written_data_reads_back_and_reaches_the_file() {
    for engine in ENGINES {
        written_data_reads_back(&["--engine", engine]);
    }
}

fn written_data_reads_back(args: &[&str]) {
    let d = Daemon::start(16 * MIB, args);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    let data = pattern(7, 64 * 1024);
    assert_eq!(write(q, mem, 3 * MIB, &data), 0);
    assert_eq!(flush(q), 0);
    let (ret, back) = read(q, mem, 3 * MIB, data.len());
    assert_eq!(ret, 0);
    assert_eq!(back, data);
    assert_eq!(d.file_bytes(3 * MIB, data.len()), data);
    // Unaligned-to-4K but sector-aligned I/O also works.
    let small = pattern(9, 512);
    assert_eq!(write(q, mem, 512 * 3, &small), 0);
    assert_eq!(read(q, mem, 512 * 3, 512), (0, small.clone()));
    assert_eq!(d.file_bytes(512 * 3, 512), small);
}

#[test]
fn reads_past_the_end_fail_and_the_daemon_keeps_serving() {
    let d = Daemon::start(MIB, &[]);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    let (ret, _) = read(q, mem, MIB - 512, 1024);
    assert!(ret < 0, "read across the end must fail, got {ret}");
    let (ret, _) = read(q, mem, 1 << 40, 512);
    assert!(ret < 0, "read far past the end must fail, got {ret}");
    assert!(write(q, mem, MIB, &[1u8; 512]) < 0);
    // Still serving.
    assert_eq!(write(q, mem, MIB - 512, &[3u8; 512]), 0);
    assert_eq!(read(q, mem, MIB - 512, 512), (0, vec![3u8; 512]));
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    for engine in ENGINES {
        discard_and_write_zeroes(&["--engine", engine]);
    }
}

fn discard_and_write_zeroes(args: &[&str]) {
    let d = Daemon::start(8 * MIB, args);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    assert!(c.blkio.get_u64("max-discard-len").unwrap() >= MIB);
    assert!(c.blkio.get_u64("max-write-zeroes-len").unwrap() >= MIB);
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    let ones = vec![0xabu8; 256 * 1024];
    assert_eq!(write(q, mem, 0, &ones), 0);

    q.discard(0, 64 * 1024, 4, ReqFlags::empty());
    assert_eq!(wait_one(q), 0);
    q.write_zeroes(128 * 1024, 64 * 1024, 5, ReqFlags::empty());
    assert_eq!(wait_one(q), 0);
    q.write_zeroes(192 * 1024, 4096, 6, ReqFlags::NO_UNMAP);
    assert_eq!(wait_one(q), 0);

    let (ret, back) = read(q, mem, 0, ones.len());
    assert_eq!(ret, 0);
    let zero = |r: std::ops::Range<usize>| back[r].iter().all(|&b| b == 0);
    let ab = |r: std::ops::Range<usize>| back[r].iter().all(|&b| b == 0xab);
    assert!(zero(0..64 * 1024));
    assert!(ab(64 * 1024..128 * 1024));
    assert!(zero(128 * 1024..196 * 1024));
    assert!(ab(196 * 1024..256 * 1024));
    assert_eq!(d.file_bytes(0, ones.len()), back);

    // Out of range discards fail.
    q.discard(8 * MIB, 4096, 7, ReqFlags::empty());
    assert!(wait_one(q) < 0);
}

#[test]
fn config_space_reports_the_options() {
    let d = Daemon::start(
        32 * MIB,
        &[
            "--logical-block-size",
            "4096",
            "--num-queues",
            "3",
            "--queue-size",
            "64",
            "--write-cache",
            "writethrough",
        ],
    );
    let mut c = Client::connect_with(&d.sock, 1, false, Some(64)).unwrap();
    assert_eq!(c.capacity(), 32 * MIB);
    assert_eq!(c.blkio.get_i32("request-alignment").unwrap(), 4096);
    assert_eq!(c.blkio.get_i32("max-queues").unwrap(), 3);
    assert_eq!(c.blkio.get_i32("max-segments").unwrap(), 62);
    assert!(!c.blkio.get_bool("flush-needed").unwrap(), "writethrough");
    // Writethrough writes still land.
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    let data = pattern(1, 8192);
    assert_eq!(write(q, mem, 4096, &data), 0);
    assert_eq!(d.file_bytes(4096, 8192), data);
    drop(c);

    let d2 = Daemon::start(MIB, &[]);
    let c2 = Client::connect(&d2.sock, 1, false).unwrap();
    assert!(c2.blkio.get_bool("flush-needed").unwrap(), "writeback");
    assert_eq!(c2.blkio.get_i32("request-alignment").unwrap(), 512);
}

#[test]
fn read_only_export_refuses_writable_clients_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ro.img");
    std::fs::write(&img, pattern(5, MIB as usize)).unwrap();
    let d = Daemon::start_in(dir, img, &["--read-only"]);
    let err = Client::connect(&d.sock, 1, false)
        .err()
        .expect("a writable client must be refused by a read-only device");
    assert_eq!(err.errno(), blkio::Errno::ROFS, "{}", err.message());
    let mut c = Client::connect(&d.sock, 1, true).unwrap();
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    let (ret, back) = read(q, mem, 0, 4096);
    assert_eq!(ret, 0);
    assert_eq!(back, pattern(5, MIB as usize)[..4096].to_vec());
    q.write(0, mem, 512, 9, ReqFlags::empty());
    assert!(wait_one(q) < 0, "writes to a read-only export fail");
}

#[test]
fn several_queues_serve_threads_in_parallel() {
    for engine in ENGINES {
        several_queues_in_parallel(&["--num-queues", "4", "--engine", engine]);
    }
}

fn several_queues_in_parallel(args: &[&str]) {
    let d = Daemon::start(64 * MIB, args);
    let mut c = Client::connect(&d.sock, 4, false).unwrap();
    let mems: Vec<usize> = (0..4).map(|i| c.mem(i) as usize).collect();
    let queues = std::mem::take(&mut c.queues);
    let handles: Vec<_> = queues
        .into_iter()
        .zip(mems)
        .enumerate()
        .map(|(i, (mut q, mem))| {
            std::thread::spawn(move || {
                let mem = mem as *mut u8;
                for round in 0..20u64 {
                    let data = pattern((i as u8) * 16 + round as u8, 128 * 1024);
                    let off = (i as u64) * 16 * MIB + round * 256 * 1024;
                    assert_eq!(write(&mut q, mem, off, &data), 0);
                    assert_eq!(read(&mut q, mem, off, data.len()), (0, data));
                }
                q
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for i in 0..4u64 {
        let data = pattern((i as u8) * 16 + 19, 128 * 1024);
        assert_eq!(
            d.file_bytes(i * 16 * MIB + 19 * 256 * 1024, data.len()),
            data
        );
    }
}

#[test]
fn a_new_client_is_served_after_the_previous_disconnects() {
    let d = Daemon::start(4 * MIB, &["--num-queues", "2"]);
    let mut after_first = 0;
    for round in 0..4u8 {
        if round == 1 {
            d.wait_disconnects(1);
            after_first = d.fd_count();
        }
        let mut c = Client::connect(&d.sock, 2, false).unwrap();
        let mem = c.mem(1);
        let q = &mut c.queues[1];
        if round > 0 {
            let prev = pattern(round - 1, 4096);
            assert_eq!(read(q, mem, 4096 * u64::from(round - 1), 4096), (0, prev));
        }
        assert_eq!(
            write(q, mem, 4096 * u64::from(round), &pattern(round, 4096)),
            0
        );
        // Dropped without any goodbye, as a crashing frontend would.
    }
    assert!(d.sock.exists());
    // Wait until the last connection has been torn down, then check that
    // connections leave no descriptors behind.
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    assert_eq!(read(&mut c.queues[0], mem, 0, 4096), (0, pattern(0, 4096)));
    drop(c);
    d.wait_disconnects(5);
    assert_eq!(
        d.fd_count(),
        after_first,
        "descriptors leaked across reconnects"
    );
}

#[test]
fn resize_command_updates_capacity_for_a_connected_client() {
    let d = Daemon::start(4 * MIB, &[]);
    let c = Client::connect(&d.sock, 1, false).unwrap();
    assert_eq!(c.capacity(), 4 * MIB);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&d.img)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();
    let out = d.resize_cmd();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (12 * MIB).to_string()
    );
    // libblkio re-reads the config space for "capacity".
    assert_eq!(c.capacity(), 12 * MIB);
    // The new space is usable after reconnecting too.
    drop(c);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    assert_eq!(c.capacity(), 12 * MIB);
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 11 * MIB, &[4u8; 4096]), 0);
}

#[test]
fn a_grown_file_is_noticed_without_a_command() {
    let d = Daemon::start(2 * MIB, &[]);
    let c = Client::connect(&d.sock, 1, false).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&d.img)
        .unwrap()
        .set_len(6 * MIB)
        .unwrap();
    // The daemon checks about once a second; wait up to a deadline.
    let start = std::time::Instant::now();
    while c.capacity() != 6 * MIB {
        assert!(start.elapsed().as_secs() < 30, "capacity never changed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn resize_without_a_daemon_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["resize", "--control-socket"])
        .arg(dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the backend running"), "{err}");
}

#[test]
fn sigterm_exits_zero_idle_and_with_a_client() {
    let mut d = Daemon::start(MIB, &[]);
    assert!(d.signal_and_wait(Signal::SIGTERM).success());
    assert!(!d.sock.exists(), "socket removed on exit");

    let mut d = Daemon::start(MIB, &[]);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 0, &[1u8; 4096]), 0);
    let st = d.signal_and_wait(Signal::SIGINT);
    assert!(st.success(), "{st}: {}", d.log());
    assert_eq!(d.file_bytes(0, 4096), vec![1u8; 4096]);
}

/// `--queue-cpus`: each queue's worker thread is pinned to its CPU of the
/// list (queue i to the (i mod N)-th), the daemon's own other threads are
/// not.
#[test]
fn queue_workers_run_on_the_cpus_given() {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    // Queue 0 on the last CPU we may use, queue 1 on the first (the same
    // one on a single-CPU machine).
    let (first, last) = (cpus[0], *cpus.last().unwrap());
    let list = if first == last {
        format!("{last}")
    } else {
        format!("{last},{first}")
    };
    let d = Daemon::start(16 * MIB, &["--num-queues", "2", "--queue-cpus", &list]);
    let mut c = Client::connect(&d.sock, 2, false).unwrap();
    for i in 0..2 {
        let mem = c.mem(i);
        let data = pattern(i as u8, 4096);
        assert_eq!(write(&mut c.queues[i], mem, MIB, &data), 0);
        assert_eq!(read(&mut c.queues[i], mem, MIB, 4096), (0, data));
    }
    // Threads, by name, with the CPUs each may run on.
    let mut workers = Vec::new();
    let mut others = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let may = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        if name.trim() == "vring_worker" {
            workers.push(may);
        } else if !name.starts_with("iou-") {
            // (io_uring's kernel workers for a queue take its CPU.)
            others.push((name.trim().to_owned(), may));
        }
    }
    workers.sort();
    let mut want = vec![first.to_string(), last.to_string()];
    want.sort();
    assert_eq!(workers, want, "the queue workers' CPUs");
    if first != last {
        for (name, may) in &others {
            assert_ne!(may, &last.to_string(), "thread {name} was pinned too");
        }
    }
    drop(c);
}

#[test]
fn bad_options_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(bin())
            .args(["serve", "--path"])
            .arg(&img)
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--poll-us", "1000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("poll-us"));
    let out = run(&["--serial", "this-serial-is-longer-than-twenty"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serial"));
    let out = run(&["--logical-block-size", "1000"]);
    assert_eq!(out.status.code(), Some(2));
    // No machine here has CPU 1023 to offer.
    let out = run(&["--queue-cpus", "1023"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CPU 1023") && err.contains("allowed"), "{err}");
    let out = std::process::Command::new(bin())
        .args(["serve", "--path"])
        .arg(dir.path().join("missing.img"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.img"));
}

/// A second daemon started on a live daemon's sockets is refused and
/// leaves them alone: the first keeps serving on both, and a socket another
/// server put in place is not removed when the first exits.
#[test]
fn a_second_daemon_on_the_same_sockets_is_refused() {
    let mut d = Daemon::start(MIB, &[]);
    for (vhost, control) in [
        (d.sock.clone(), d.dir.path().join("other.ctl")),
        (d.dir.path().join("other.sock"), d.ctl.clone()),
    ] {
        let out = std::process::Command::new(bin())
            .args(["serve", "--path"])
            .arg(&d.img)
            .arg("--socket")
            .arg(&vhost)
            .arg("--control-socket")
            .arg(&control)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("another server is listening"), "{err}");
    }
    // The first still serves on its sockets.
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 0, &[7u8; 512]), 0);
    drop(c);
    assert!(d.resize_cmd().status.success());
    // Someone replaces the vhost socket; the first daemon's exit leaves it.
    std::fs::remove_file(&d.sock).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&d.sock).unwrap();
    assert!(d.signal_and_wait(Signal::SIGTERM).success());
    assert!(
        d.sock.exists(),
        "the exiting daemon removed a socket it did not bind"
    );
    assert!(!d.ctl.exists());
}

/// A socket directory any user may write to (without the sticky bit) is
/// refused: another user could swap the socket and receive guest memory.
#[test]
fn a_socket_in_a_directory_anyone_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--path"])
        .arg(&img)
        .arg("--socket")
        .arg(open.join("s.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("writable by every user"), "{err}");
    assert!(!open.join("s.sock").exists());
}

/// A loop device over a file, detached on drop.
struct Loop {
    dev: std::path::PathBuf,
}

impl Loop {
    fn attach(file: &std::path::Path) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8(out.stdout).unwrap().trim().into(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
fn serves_a_loop_device_and_resizes_it_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let lo = Loop::attach(&file);
    let d = Daemon::start_in(dir, lo.dev.clone(), &["--num-queues", "2"]);
    let mut c = Client::connect(&d.sock, 2, false).unwrap();
    assert_eq!(c.capacity(), 8 * MIB);
    let mem = c.mem(1);
    let q = &mut c.queues[1];
    let data = pattern(11, 128 * 1024);
    assert_eq!(write(q, mem, 2 * MIB, &data), 0);
    assert_eq!(flush(q), 0);
    assert_eq!(read(q, mem, 2 * MIB, data.len()), (0, data.clone()));
    q.write_zeroes(2 * MIB, 4096, 8, ReqFlags::empty());
    assert_eq!(wait_one(q), 0);
    let (ret, back) = read(q, mem, 2 * MIB, 8192);
    assert_eq!(ret, 0);
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert_eq!(back[4096..], data[4096..8192]);

    // Grow the file, tell the loop driver, then the daemon.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(20 * MIB)
        .unwrap();
    let st = std::process::Command::new("losetup")
        .arg("-c")
        .arg(&lo.dev)
        .status()
        .unwrap();
    assert!(st.success());
    let out = d.resize_cmd();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (20 * MIB).to_string()
    );
    assert_eq!(c.capacity(), 20 * MIB);
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 19 * MIB, &[6u8; 4096]), 0);
    drop(c);
    drop(d);
}

/// Discard and write-zeroes on a block device through each engine: small
/// and large (>= 1 MiB: io_uring's workers) write-zeroes, with and
/// without unmap, and discards (the io_uring discard command where the
/// kernel has it) zero exactly their range, seen by the guest and in the
/// backing file; the paths are in the queue's log line.
#[test]
fn loop_device_discard_and_write_zeroes_through_each_engine() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backing.img");
        std::fs::write(&file, vec![0xc5u8; 8 * MIB as usize]).unwrap();
        let lo = Loop::attach(&file);
        let d = Daemon::start_in(dir, lo.dev.clone(), &["--engine", engine]);
        let mut c = Client::connect(&d.sock, 1, false).unwrap();
        let q = &mut c.queues[0];
        let ops: [(u64, u64, Option<ReqFlags>); 6] = [
            (0, 64 * 1024, None),
            (256 * 1024, 4096, Some(ReqFlags::NO_UNMAP)),
            (512 * 1024, 4096, Some(ReqFlags::empty())),
            (MIB, MIB, Some(ReqFlags::NO_UNMAP)),
            (3 * MIB, 2 * MIB, Some(ReqFlags::empty())),
            (6 * MIB, 1024 * 1024, None),
        ];
        for (i, &(at, len, zeroes)) in ops.iter().enumerate() {
            match zeroes {
                Some(flags) => q.write_zeroes(at, len, i, flags),
                None => q.discard(at, len, i, ReqFlags::empty()),
            }
            assert_eq!(wait_one(q), 0, "{engine}: op {i}\n{}", d.log());
        }
        drop(c);
        let back = std::fs::read(&file).unwrap();
        let mut want = vec![0xc5u8; 8 * MIB as usize];
        for &(at, len, _) in &ops {
            want[at as usize..(at + len) as usize].fill(0);
        }
        assert!(back == want, "{engine}: the zeroed ranges, and only they");
        let log = d.log();
        let discard = if engine == "sync" {
            "discard=\"ioctl\""
        } else {
            "discard=\"uring_cmd\""
        };
        let uring_cmd_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| {
                let mut v = r.trim().split(['.', '-']).map(|x| x.parse::<u32>().ok());
                Some((v.next()??, v.next()??))
            })
            .is_some_and(|v| v >= (6, 12));
        if engine == "sync" || uring_cmd_kernel {
            assert!(log.contains(discard), "{engine}: {discard} logged: {log}");
        }
        drop(d);
        drop(lo);
    }
}

#[test]
fn serves_on_an_inherited_listening_fd() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let sock = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    // Let the child inherit it, as a service manager would.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--path"])
        .arg(&img)
        .args(["--listen-fd", &fd.to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    drop(listener);
    let mut c = Client::connect(&sock, 1, false).unwrap();
    let mem = c.mem(0);
    assert_eq!(write(&mut c.queues[0], mem, 0, &[8u8; 512]), 0);
    assert_eq!(read(&mut c.queues[0], mem, 0, 512), (0, vec![8u8; 512]));
    drop(c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut child, &log).success());
}

#[test]
fn a_listen_fd_that_is_not_a_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--path"])
        .arg(&img)
        .args(["--listen-fd", "0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a listening unix socket"));
}

/// Fills the whole queue (256 requests in flight) with 4 KiB writes, then
/// reads, round after round, and checks every byte: the batching, the
/// engine's completion eventfd and the used-ring notifications under load.
fn full_queue_round_trips(args: &[&str], want_engine: &str) {
    const DEPTH: usize = 256;
    const BS: usize = 4096;
    let d = Daemon::start(64 * MIB, args);
    let mut c = Client::connect(&d.sock, 1, false).unwrap();
    let mem = c.mem(0);
    let q = &mut c.queues[0];
    // Slot i of round r goes to a distinct 4 KiB block of the 64 MiB image.
    let block = |r: usize, i: usize| ((r * 7919 + i * 61) % (16384 / DEPTH) * DEPTH + i) as u64;
    for round in 0..8 {
        // SAFETY: nothing is in flight on this queue's memory.
        let buf = unsafe { slice(mem) };
        for i in 0..DEPTH {
            buf[i * BS..(i + 1) * BS].copy_from_slice(&pattern((round * 3 + i) as u8, BS));
        }
        for i in 0..DEPTH {
            let at = mem.wrapping_add(i * BS);
            q.write(block(round, i) * BS as u64, at, BS, i, ReqFlags::empty());
        }
        assert_eq!(wait_all(q, DEPTH), vec![0; DEPTH], "{}", d.log());
        // SAFETY: every write completed.
        let buf = unsafe { slice(mem) };
        buf[..DEPTH * BS].fill(0);
        for i in 0..DEPTH {
            let at = mem.wrapping_add(i * BS);
            q.read(block(round, i) * BS as u64, at, BS, i, ReqFlags::empty());
        }
        assert_eq!(wait_all(q, DEPTH), vec![0; DEPTH], "{}", d.log());
        // SAFETY: every read completed.
        let buf = unsafe { slice(mem) };
        for i in 0..DEPTH {
            let want = pattern((round * 3 + i) as u8, BS);
            assert!(
                buf[i * BS..(i + 1) * BS] == want[..],
                "round {round} slot {i}"
            );
            assert_eq!(d.file_bytes(block(round, i) * BS as u64, BS), want);
        }
    }
    let log = d.log();
    assert!(
        log.contains(&format!("engine=\"{want_engine}\"")),
        "the queue engine is logged: {log}"
    );
}

/// Waits for `n` completions; returns their `ret` values ordered by user_data.
fn wait_all(q: &mut blkio::Blkioq, n: usize) -> Vec<i32> {
    let mut rets = vec![i32::MIN; n];
    let mut got = 0;
    while got < n {
        let mut c: Vec<_> = (got..n).map(|_| std::mem::MaybeUninit::uninit()).collect();
        let mut timeout = std::time::Duration::from_secs(30);
        let k = q.do_io(&mut c, 1, Some(&mut timeout), None).unwrap();
        assert!(k > 0, "no completion within 30 s");
        for done in &c[..k] {
            // SAFETY: do_io initialised the first `k` completions.
            let done = unsafe { done.assume_init_read() };
            rets[done.user_data] = done.ret;
        }
        got += k;
    }
    rets
}

#[test]
fn a_full_queue_completes_correctly_with_the_sync_engine() {
    full_queue_round_trips(&["--engine", "sync"], "sync");
}

#[test]
fn a_full_queue_completes_correctly_with_io_uring() {
    full_queue_round_trips(&["--engine", "uring"], "io_uring");
}

#[test]
fn a_full_queue_completes_correctly_in_poll_mode() {
    full_queue_round_trips(&["--engine", "uring", "--poll-us", "50"], "io_uring");
    full_queue_round_trips(&["--engine", "sync", "--poll-us", "50"], "sync");
}
