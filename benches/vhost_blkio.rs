//! The full per-request path under criterion: the blkio client over a real
//! vhost-user-blk socket to a backend daemon, 4 KiB requests on one queue,
//! on a loop device with direct I/O (the shape users serve) unless told
//! otherwise. Each iteration is one completed request, so criterion's
//! throughput is IOPS and a regression shows in `cargo bench`.
//!
//! - `EXTSTORAGE_BENCH_BACKEND`: comma-separated backend names (default
//!   `ours`): `qsd`, `qsd-native`, `qsd-uring`, `ours`, `ours-uring`,
//!   `ours-sync`, `ours-poll`, or a name defined by
//! - `EXTSTORAGE_BENCH_VARIANTS`: `;`-separated `NAME[@BINARY]=ARGS`, our
//!   daemon with extra arguments (see the comparison's `--variant`).
//! - `EXTSTORAGE_BENCH_BACKING`: `loop` (default: a loop device with direct
//!   I/O over a file in /dev/shm) or `tmpfs` (the file itself).
//!
//! Under `cargo test --all-targets` (no `--bench`) every benchmark runs once
//! on a 16 MiB loop device: a smoke test that needs only a loop device.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, Client, Daemon, Dir, Image, LoopDevice, Pattern, Stop, Workload};
use criterion::{Criterion, Throughput};

fn workload(name: &'static str, dir: Dir, depth: usize) -> Workload {
    Workload::new(name, dir, Pattern::Random, 4096, depth)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("vhost_blkio bench: {msg}");
    common::cleanup::run_all();
    std::process::exit(1);
}

fn backends() -> Vec<Backend> {
    let mut extra = Vec::new();
    if let Ok(v) = std::env::var("EXTSTORAGE_BENCH_VARIANTS") {
        for spec in v.split(';').filter(|s| !s.trim().is_empty()) {
            match Backend::parse_variant(spec.trim()) {
                Ok(b) => extra.push(b),
                Err(e) => fail(format!("EXTSTORAGE_BENCH_VARIANTS: {e:#}")),
            }
        }
    }
    let names = std::env::var("EXTSTORAGE_BENCH_BACKEND").unwrap_or_else(|_| "ours".to_owned());
    names
        .split(',')
        .map(|n| {
            extra
                .iter()
                .find(|b| b.name == n)
                .cloned()
                .or_else(|| Backend::named(n).filter(|b| b.is_daemon()))
                .unwrap_or_else(|| {
                    fail(format!(
                        "EXTSTORAGE_BENCH_BACKEND names {n:?}, which is neither a daemon \
(qsd, qsd-native, qsd-uring, ours, ours-uring, ours-sync, ours-poll) nor defined in EXTSTORAGE_BENCH_VARIANTS"
                    ))
                })
        })
        .collect()
}

/// The served target, kept alive for the whole run.
enum Target {
    Loop(LoopDevice),
    File(Image),
}

impl Target {
    fn path(&self) -> &std::path::Path {
        match self {
            Self::Loop(d) => &d.dev,
            Self::File(i) => &i.path,
        }
    }
}

fn vhost(c: &mut Criterion, bench_mode: bool) {
    let backends = backends();
    let backing = std::env::var("EXTSTORAGE_BENCH_BACKING").unwrap_or_else(|_| "loop".to_owned());
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap_or_else(|e| fail(format!("cannot make a temp dir: {e}")));
    common::cleanup::add_dir(dir.path().to_path_buf());
    let size: u64 = if bench_mode { 256 << 20 } else { 16 << 20 };
    let file: PathBuf = dir.path().join("img");
    let target = match backing.as_str() {
        "loop" => Target::Loop(
            LoopDevice::create(&file, size)
                .unwrap_or_else(|e| fail(format!("no loop device: {e:#}"))),
        ),
        "tmpfs" => Target::File(
            Image::create(file, size).unwrap_or_else(|e| fail(format!("no image: {e:#}"))),
        ),
        other => fail(format!(
            "EXTSTORAGE_BENCH_BACKING={other:?} is unknown: use loop or tmpfs"
        )),
    };
    for backend in &backends {
        let socket = dir.path().join(format!("{}.sock", backend.name));
        let argv = backend
            .argv(target.path(), &socket, 1)
            .unwrap_or_else(|| fail(format!("{} is not a daemon", backend.name)));
        let daemon = Daemon::spawn(&argv, &socket, Duration::from_secs(10))
            .unwrap_or_else(|e| fail(format!("backend {} unavailable: {e:#}", backend.name)));
        let mut client = Client::connect(&socket, 1, 256, 32, 4096, Duration::from_secs(5))
            .unwrap_or_else(|e| {
                fail(format!(
                    "cannot connect to {}: {e:#} ({})",
                    backend.name,
                    daemon.output_tail()
                ))
            });
        let mut g = c.benchmark_group(format!("vhost_blkio/{backing}/{}", backend.name));
        g.throughput(Throughput::Elements(1));
        for w in [
            workload("randread4k-qd1", Dir::Read, 1),
            workload("randread4k-qd32", Dir::Read, 32),
            workload("randwrite4k-qd32", Dir::Write, 32),
        ] {
            g.bench_function(w.name, |b| {
                b.iter_custom(|iters| {
                    client
                        .run(&w, Stop::Count(iters), iters ^ 0x9e37)
                        .unwrap_or_else(|e| {
                            fail(format!("{} failed a request: {e:#}", backend.name))
                        })
                        .elapsed
                })
            });
        }
        g.finish();
        drop(client);
        drop(daemon);
    }
    drop(target);
}

fn main() {
    if let Err(e) = common::install_cleanup_on_signals() {
        fail(format!("{e:#}"));
    }
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .noise_threshold(0.05)
        .configure_from_args();
    vhost(&mut c, bench_mode);
    c.final_summary();
    common::cleanup::run_all();
}
