//! The full path: the blkio client over a real vhost-user-blk socket to a
//! backend daemon, 4 KiB requests on one queue.
//!
//! The backend comes from `EXTSTORAGE_BENCH_BACKEND`: `qsd` (default,
//! qemu-storage-daemon's documented export), `qsd-direct`, `ours` (our daemon,
//! `--engine auto`), `ours-uring`, `ours-sync` or `ours-poll` (`--poll-us 50`). Each iteration is one completed request,
//! so criterion's throughput is IOPS.

mod common;

use std::time::Duration;

use common::{Backend, Client, Daemon, Dir, Image, Pattern, Stop, Workload};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn workload(name: &'static str, dir: Dir, depth: usize) -> Workload {
    Workload {
        name,
        dir,
        pattern: Pattern::Random,
        bs: 4096,
        depth,
        queues: 1,
    }
}

fn vhost(c: &mut Criterion) {
    let name = std::env::var("EXTSTORAGE_BENCH_BACKEND").unwrap_or_else(|_| "qsd".to_owned());
    let Some(backend) = Backend::parse(&name) else {
        eprintln!(
            "EXTSTORAGE_BENCH_BACKEND={name:?} is unknown: use qsd, qsd-direct, ours, ours-uring, ours-sync or ours-poll"
        );
        std::process::exit(2);
    };
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let image = Image::create(dir.path().join("img"), 256 << 20).expect("bench image");
    let socket = dir.path().join("sock");
    let daemon = match Daemon::spawn(
        &backend.argv(&image.path, &socket, 1),
        &socket,
        Duration::from_secs(10),
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vhost_blkio bench: backend {name} unavailable: {e:#}");
            std::process::exit(1);
        }
    };
    let mut client = match Client::connect(&socket, 1, 256, 32, 4096, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "vhost_blkio bench: cannot connect to {name}: {e:#} ({})",
                daemon.output_tail()
            );
            std::process::exit(1);
        }
    };

    let mut g = c.benchmark_group(format!("vhost_blkio/{name}"));
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
                    .expect("the backend failed a request")
                    .elapsed
            })
        });
    }
    g.finish();
    drop(client);
    drop(daemon);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .noise_threshold(0.05);
    targets = vhost
}
criterion_main!(benches);
