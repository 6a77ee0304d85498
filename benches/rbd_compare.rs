//! Issue 12's benchmark: our daemon's rbd engine against
//! qemu-storage-daemon exporting the same RBD image (`driver=rbd`) over
//! vhost-user-blk, side by side in interleaved rounds of one run, on one
//! throwaway single-node cluster (`scripts/ceph-cluster.sh`: one mon, one
//! memstore OSD). The same libblkio client drives both (benches/common).
//! Prints a markdown table (median IOPS, daemon CPU per request, ours/qsd
//! ratio) and writes it to `target/bench-rbd/results.md`.
//!
//! ```text
//! cargo bench --bench rbd_compare -- [--secs S] [--warmup S] [--repeat N] [--size-mib N] [--queues N]
//! ```
//! Without `--bench` (as under `cargo test --all-targets`) it does nothing:
//! a cluster is too heavy for a smoke run; `tests/vhost_rbd.rs` covers the
//! engine's correctness.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Client, Daemon, Dir, Pattern, Stop, Workload};

/// The issue's workloads: 4k random at QD1 and QD32, 128k sequential.
const WORKLOADS: [Workload; 6] = [
    Workload::new("randread-4k-qd1", Dir::Read, Pattern::Random, 4096, 1),
    Workload::new("randwrite-4k-qd1", Dir::Write, Pattern::Random, 4096, 1),
    Workload::new("randread-4k-qd32", Dir::Read, Pattern::Random, 4096, 32),
    Workload::new("randwrite-4k-qd32", Dir::Write, Pattern::Random, 4096, 32),
    Workload::new(
        "seqread-128k-qd8",
        Dir::Read,
        Pattern::Sequential,
        128 * 1024,
        8,
    ),
    Workload::new(
        "seqwrite-128k-qd8",
        Dir::Write,
        Pattern::Sequential,
        128 * 1024,
        8,
    ),
];

#[derive(Debug)]
struct Args {
    warmup: Duration,
    measure: Duration,
    repeat: usize,
    size_mib: u64,
    queues: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        warmup: Duration::from_secs(2),
        measure: Duration::from_secs(5),
        repeat: 3,
        size_mib: 256,
        queues: 1,
    };
    let mut bench = false;
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> Result<u64> {
        v.with_context(|| format!("{what} needs a value"))?
            .parse()
            .with_context(|| format!("{what} takes a whole number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--secs" => a.measure = Duration::from_secs(num(it.next(), "--secs")?),
            "--warmup" => a.warmup = Duration::from_secs(num(it.next(), "--warmup")?),
            "--repeat" => a.repeat = usize::try_from(num(it.next(), "--repeat")?)?.max(1),
            "--size-mib" => a.size_mib = num(it.next(), "--size-mib")?.max(64),
            "--queues" => a.queues = usize::try_from(num(it.next(), "--queues")?)?.max(1),
            other => bail!(
                "unknown argument {other:?}: cargo bench --bench rbd_compare -- [--secs S] [--warmup S] [--repeat N] [--size-mib N] [--queues N]"
            ),
        }
    }
    Ok(bench.then_some(a))
}

/// The throwaway cluster; stopped (and its directory removed) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh");
        let dir = tempfile::Builder::new()
            .prefix("esrbd-bench-")
            .tempdir_in("/tmp")?;
        let c = Cluster { dir, script };
        let out = Command::new(&c.script)
            .arg("start")
            .arg(c.dir.path())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "scripts/ceph-cluster.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(c)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("ceph.conf")
    }

    fn rbd(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("rbd")
            .arg("--conf")
            .arg(self.conf())
            .arg("--admin-socket=")
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output();
    }
}

/// The two backends, serving `rbd/bench` on `sock` with `queues` queues.
fn argv(name: &str, conf: &Path, sock: &Path, queues: usize) -> Vec<String> {
    let conf = conf.display().to_string();
    let sock = sock.display().to_string();
    match name {
        "qsd" => vec![
            "qemu-storage-daemon".into(),
            "--blockdev".into(),
            // The default cache mode: cache.direct=on would turn librbd's
            // cache off, which ours keeps on (librbd's default).
            format!("driver=rbd,node-name=r0,pool=rbd,image=bench,conf={conf}"),
            "--export".into(),
            format!(
                "type=vhost-user-blk,id=e0,node-name=r0,addr.type=unix,addr.path={sock},writable=on,num-queues={queues}"
            ),
        ],
        _ => vec![
            common::our_daemon().display().to_string(),
            "serve".into(),
            "--rbd=rbd/bench".into(),
            format!("--rbd-conf={conf}"),
            "--socket".into(),
            sock,
            "--num-queues".into(),
            queues.to_string(),
            "--queue-size".into(),
            "256".into(),
        ],
    }
}

/// IOPS and daemon CPU µs per request of one measured window.
fn measure(daemon: &Daemon, w: &Workload, a: &Args) -> Result<(f64, f64)> {
    let mut client = Client::connect(
        &daemon.socket,
        w.queues,
        256,
        w.depth,
        w.bs,
        Duration::from_secs(10),
    )
    .with_context(|| format!("cannot use the socket: {}", daemon.output_tail()))?;
    let pid = daemon.pid();
    let stop = Stop::Time {
        warmup: a.warmup,
        measure: a.measure,
    };
    let (t, cpu) = std::thread::scope(|s| {
        let sampler = s.spawn(|| -> Result<Duration> {
            std::thread::sleep(a.warmup);
            let cpu0 = common::cpu_time(pid)?;
            std::thread::sleep(a.measure);
            Ok(common::cpu_time(pid)?.saturating_sub(cpu0))
        });
        let t = client.run(w, stop, 0x5eed);
        (t, sampler.join())
    });
    let t = t?;
    let requests = t.iops() * a.measure.as_secs_f64();
    let cpu = match cpu {
        Ok(Ok(c)) if requests > 0.0 => c.as_secs_f64() * 1e6 / requests,
        _ => f64::NAN,
    };
    Ok((t.iops(), cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let Some(a) = parse_args()? else {
        println!("rbd_compare: run with `cargo bench --bench rbd_compare` (starts a Ceph cluster)");
        return Ok(());
    };
    let cluster = Cluster::start()?;
    let size = format!("{}M", a.size_mib);
    cluster.rbd(&["create", "--size", &size, "rbd/bench"])?;
    // Every object written once, so reads hit data, not holes.
    cluster.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-threads",
        "4",
        "--io-total",
        &size,
        "--io-pattern",
        "seq",
        "rbd/bench",
    ])?;
    let sockdir = tempfile::tempdir()?;
    let sock = sockdir.path().join("vhost.sock");
    let names = ["qsd", "ours"];
    // results[backend][workload] = rounds of (iops, cpu)
    let mut results = vec![vec![Vec::new(); WORKLOADS.len()]; names.len()];
    for round in 0..a.repeat {
        for (bi, name) in names.iter().enumerate() {
            let argv = argv(name, &cluster.conf(), &sock, a.queues);
            let daemon = Daemon::spawn(&argv, &sock, Duration::from_secs(60))?;
            for (wi, w) in WORKLOADS.iter().enumerate() {
                let w = w.on_queues(a.queues);
                let (iops, cpu) =
                    measure(&daemon, &w, &a).with_context(|| format!("{name} on {}", w.name))?;
                eprintln!(
                    "round {round} {name:5} {:20} {iops:10.0} IOPS {cpu:7.1} µs CPU/req",
                    w.name
                );
                results[bi][wi].push((iops, cpu));
            }
            drop(daemon);
        }
    }
    let mut md = format!(
        "Ceph RBD, one mon + one memstore OSD on this host (scripts/ceph-cluster.sh), image of {} MiB written once; \
         {} queue(s); median of {} rounds of {} s (after {} s warm-up), backends interleaved.\n\n\
         | workload | qsd IOPS | ours IOPS | ours/qsd | qsd CPU µs/req | ours CPU µs/req |\n|---|---:|---:|---:|---:|---:|\n",
        a.size_mib,
        a.queues,
        a.repeat,
        a.measure.as_secs(),
        a.warmup.as_secs()
    );
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let iops = |bi: usize| median(results[bi][wi].iter().map(|r| r.0).collect());
        let cpu = |bi: usize| median(results[bi][wi].iter().map(|r| r.1).collect());
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} |\n",
            w.name,
            iops(0),
            iops(1),
            iops(1) / iops(0),
            cpu(0),
            cpu(1)
        ));
    }
    md.push_str(&format!(
        "\nqsd: `{}`\n\nours: `{}`\n",
        argv("qsd", Path::new("CONF"), Path::new("SOCK"), a.queues).join(" "),
        argv("ours", Path::new("CONF"), Path::new("SOCK"), a.queues)[1..].join(" ")
    ));
    println!("{md}");
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-rbd");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), &md)?;
    eprintln!("written to {}", out.join("results.md").display());
    Ok(())
}
