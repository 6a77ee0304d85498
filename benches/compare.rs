//! The comparison harness of issue 4: the same blkio client, the same image
//! in /dev/shm, the same workloads, against qemu-storage-daemon, our daemon
//! and (for a ceiling without virtualisation) fio on the raw file, back to
//! back in one run. Prints a table with ratios and writes markdown, JSON and
//! an SVG plot to `target/bench-compare/`.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--secs S] [--warmup S] [--repeat N] [--size-mib N]
//!     [--backends qsd,qsd-direct,fio,ours,ours-uring,ours-sync,ours-poll] [--workloads NAME,...]
//!     [--no-rss] [--out DIR]
//! ```
//! Without `--bench` (as under `cargo test --all-targets`) it runs a smoke
//! test instead: one short workload on a small image, and fails unless
//! qemu-storage-daemon and fio both produced numbers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Backend, Client, Daemon, Image, Stop, WORKLOADS, Workload};

/// What one backend did on one workload.
#[derive(Debug, Clone, serde::Serialize)]
struct Cell {
    backend: String,
    workload: String,
    /// None when skipped or failed; `note` says why.
    iops: Option<f64>,
    mib_s: Option<f64>,
    /// IOPS of each round; `iops` is their median.
    samples: Vec<f64>,
    /// The daemon's CPU time (user + system, every thread) per million
    /// requests in the measured window: median of the rounds (None for fio,
    /// which is not a daemon).
    cpu_s_per_mio: Option<f64>,
    /// CPU-seconds per million requests of each round.
    cpu_samples: Vec<f64>,
    note: Option<String>,
}

/// Daemon memory while serving 4 queues of 256 entries.
#[derive(Debug, Clone, serde::Serialize)]
struct Rss {
    backend: String,
    vm_rss_kib: Option<u64>,
    vm_hwm_kib: Option<u64>,
    note: Option<String>,
}

#[derive(Debug)]
struct Args {
    smoke: bool,
    warmup: Duration,
    measure: Duration,
    repeat: usize,
    size_mib: u64,
    backends: Vec<String>,
    workloads: Vec<Workload>,
    rss: bool,
    out: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench compare -- [--quick] [--secs S] [--warmup S] [--repeat N] \
[--size-mib N] [--backends qsd,qsd-direct,fio,ours,ours-uring,ours-sync,ours-poll] [--workloads NAME,...] [--no-rss] [--out DIR]";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn parse_args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let test = argv.iter().any(|a| a == "--test");
    let smoke = !bench || test;
    let mut a = Args {
        smoke,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(5),
        repeat: 3,
        size_mib: 1024,
        backends: [
            "qsd",
            "qsd-direct",
            "fio",
            "ours",
            "ours-uring",
            "ours-sync",
            "ours-poll",
        ]
        .map(String::from)
        .to_vec(),
        workloads: WORKLOADS.to_vec(),
        rss: true,
        out: target_dir().join("bench-compare"),
    };
    if smoke {
        a.warmup = Duration::ZERO;
        a.measure = Duration::from_millis(200);
        a.repeat = 1;
        a.size_mib = 64;
        a.workloads = WORKLOADS[..1].to_vec();
        a.rss = false;
        a.out = a.out.join("smoke");
    }
    let secs = |v: Option<&String>| -> Result<Duration> {
        let v = v.context(USAGE)?;
        Ok(Duration::from_secs_f64(v.parse::<f64>().with_context(
            || format!("not a number of seconds: {v:?}"),
        )?))
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" | "--test" => {}
            "--quick" => {
                a.warmup = Duration::from_millis(500);
                a.measure = Duration::from_secs(2);
                a.repeat = 1;
            }
            "--repeat" => {
                let v = it.next().context(USAGE)?;
                a.repeat = v.parse().with_context(|| format!("bad --repeat {v:?}"))?;
                if a.repeat == 0 {
                    bail!("--repeat must be at least 1");
                }
            }
            "--secs" => a.measure = secs(it.next())?,
            "--warmup" => a.warmup = secs(it.next())?,
            "--size-mib" => {
                let v = it.next().context(USAGE)?;
                a.size_mib = v.parse().with_context(|| format!("bad --size-mib {v:?}"))?;
            }
            "--backends" => {
                let v = it.next().context(USAGE)?;
                a.backends = v.split(',').map(String::from).collect();
                for b in &a.backends {
                    if b != "fio" && Backend::parse(b).is_none() {
                        bail!(
                            "unknown backend {b:?}: use qsd, qsd-direct, fio, ours, ours-uring, ours-sync, ours-poll"
                        );
                    }
                }
            }
            "--workloads" => {
                let v = it.next().context(USAGE)?;
                a.workloads = v
                    .split(',')
                    .map(|n| {
                        WORKLOADS
                            .iter()
                            .copied()
                            .find(|w| w.name == n)
                            .with_context(|| {
                                let names: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                                format!("unknown workload {n:?}: use one of {}", names.join(", "))
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            "--no-rss" => a.rss = false,
            "--out" => a.out = PathBuf::from(it.next().context(USAGE)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Runs one workload against one daemon backend. Returns its IOPS and the
/// daemon's CPU-seconds per million requests over the measured window.
fn run_daemon(
    b: Backend,
    image: &Path,
    dir: &Path,
    w: &Workload,
    a: &Args,
) -> Result<(f64, Option<f64>)> {
    let socket = dir.join(format!("{}.sock", b.name()));
    let argv = b.argv(image, &socket, w.queues);
    let daemon = Daemon::spawn(&argv, &socket, Duration::from_secs(10))?;
    let mut client = Client::connect(
        &socket,
        w.queues,
        256,
        w.depth,
        w.bs,
        Duration::from_secs(5),
    )
    .with_context(|| format!("cannot use the socket: {}", daemon.output_tail()))?;
    let stop = Stop::Time {
        warmup: a.warmup,
        measure: a.measure,
    };
    // Sample the daemon's CPU time at the start and end of the measured
    // window while the client runs (the client's own window starts within
    // a millisecond of this one).
    let pid = daemon.pid();
    let (t, cpu) = std::thread::scope(|s| {
        let sampler = s.spawn(|| -> Result<Duration> {
            std::thread::sleep(a.warmup);
            let before = common::cpu_time(pid)?;
            std::thread::sleep(a.measure);
            Ok(common::cpu_time(pid)?.saturating_sub(before))
        });
        let t = client.run(w, stop, 0x5eed);
        (t, sampler.join())
    });
    let t = t?;
    let per_mio = match cpu {
        Ok(Ok(cpu)) if t.ops > 0 => {
            Some(cpu.as_secs_f64() / (t.iops() * a.measure.as_secs_f64()) * 1e6)
        }
        _ => None,
    };
    drop(client);
    drop(daemon);
    Ok((t.iops(), per_mio))
}

/// Memory of a daemon serving 4 queues of 256 after a short 4-queue load.
fn measure_rss(b: Backend, image: &Path, dir: &Path) -> Result<(u64, u64)> {
    let socket = dir.join(format!("{}-rss.sock", b.name()));
    let daemon = Daemon::spawn(&b.argv(image, &socket, 4), &socket, Duration::from_secs(10))?;
    let w = Workload {
        name: "rss",
        queues: 4,
        ..WORKLOADS[0]
    };
    let mut client = Client::connect(&socket, 4, 256, w.depth, w.bs, Duration::from_secs(5))
        .with_context(|| format!("cannot use the socket: {}", daemon.output_tail()))?;
    client.run(
        &w,
        Stop::Time {
            warmup: Duration::ZERO,
            measure: Duration::from_secs(1),
        },
        7,
    )?;
    let rss = daemon.rss_kib()?;
    drop(client);
    Ok(rss)
}

fn fmt_iops(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{:.1}k", v / 1000.0))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}x"))
}

/// The targets of issue 4, checked against the stricter of the two qsd
/// configurations (the documented command and `cache.direct=on,aio=io_uring`).
fn targets_table(get: &dyn Fn(&str, &str) -> Option<f64>, rss: &[Rss]) -> String {
    let best_qsd = |w: &str| match (get(w, "qsd"), get(w, "qsd-direct")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let ours = |w: &str| get(w, "ours");
    let rows: Vec<(String, f64, Option<f64>)> = vec![
        (
            "randread 4k QD32: ours / best qsd".into(),
            2.5,
            ratio(ours("randread-4k-qd32"), best_qsd("randread-4k-qd32")),
        ),
        (
            "randread 4k QD32: ours / fio".into(),
            0.60,
            ratio(ours("randread-4k-qd32"), get("randread-4k-qd32", "fio")),
        ),
        (
            "randwrite 4k QD32: ours / best qsd".into(),
            2.5,
            ratio(ours("randwrite-4k-qd32"), best_qsd("randwrite-4k-qd32")),
        ),
        (
            "randwrite 4k QD32: ours / fio".into(),
            0.55,
            ratio(ours("randwrite-4k-qd32"), get("randwrite-4k-qd32", "fio")),
        ),
        (
            "randread 4k QD1: ours / best qsd".into(),
            3.0,
            ratio(ours("randread-4k-qd1"), best_qsd("randread-4k-qd1")),
        ),
        (
            "2 queues QD32 / 1 queue QD32 (ours)".into(),
            1.3,
            ratio(ours("randread-4k-qd32-2q"), ours("randread-4k-qd32")),
        ),
        (
            "seqread 128k QD8: ours / best qsd".into(),
            1.0,
            ratio(ours("seqread-128k-qd8"), best_qsd("seqread-128k-qd8")),
        ),
    ];
    let mut md = String::from("\n| target | needs | measured | met |\n|---|---:|---:|---|\n");
    for (name, need, got) in rows {
        let met = match got {
            Some(g) if g >= need => "yes",
            Some(_) => "NO",
            None => "pending",
        };
        md += &format!("| {name} | >= {need:.2}x | {} | {met} |\n", fmt_ratio(got));
    }
    let ours_rss = rss
        .iter()
        .find(|r| r.backend == "ours")
        .and_then(|r| r.vm_hwm_kib);
    md += &format!(
        "| RSS of ours serving 4 queues x 256 (VmHWM) | < 64 MiB | {} | {} |\n",
        ours_rss.map_or_else(
            || "—".to_owned(),
            |k| format!("{:.1} MiB", k as f64 / 1024.0)
        ),
        match ours_rss {
            Some(k) if k < 64 * 1024 => "yes",
            Some(_) => "NO",
            None => "pending",
        }
    );
    md
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn machine() -> serde_json::Value {
    let cpuinfo = read_trim("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let mem = read_trim("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|e| format!("unavailable: {e}"))
    };
    serde_json::json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "qemu_storage_daemon": version("qemu-storage-daemon", "--version"),
        "fio": version("fio", "--version"),
        "loadavg_at_start": read_trim("/proc/loadavg"),
    })
}

/// A grouped bar chart, one group per workload, bars scaled to the
/// workload's best backend (absolute IOPS printed on each bar).
fn svg(workloads: &[Workload], backends: &[String], cells: &[Cell]) -> String {
    const COLORS: [&str; 7] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948",
    ];
    let bar_w = 26.0;
    let gap = 30.0;
    let group_w = bar_w * backends.len() as f64 + gap;
    let (left, top, plot_h) = (20.0, 50.0, 260.0);
    let width = left * 2.0 + group_w * workloads.len() as f64;
    let height = top + plot_h + 90.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"{left}\" y=\"20\" font-size=\"14\">IOPS by workload and backend (blkio client, 1 GiB image on /dev/shm; bars scaled per workload)</text>\n"
    );
    for (i, b) in backends.iter().enumerate() {
        let x = left + i as f64 * 110.0;
        s += &format!(
            "<rect x=\"{x}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"39\">{b}</text>\n",
            COLORS[i % COLORS.len()],
            x + 14.0
        );
    }
    let base = top + plot_h;
    s += &format!(
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>\n",
        width - left
    );
    for (wi, w) in workloads.iter().enumerate() {
        let gx = left + gap / 2.0 + wi as f64 * group_w;
        let values: Vec<Option<f64>> = backends
            .iter()
            .map(|b| {
                cells
                    .iter()
                    .find(|c| c.workload == w.name && &c.backend == b)
                    .and_then(|c| c.iops)
            })
            .collect();
        let max = values.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
        for (bi, v) in values.iter().enumerate() {
            let x = gx + bi as f64 * bar_w;
            match v {
                Some(v) if max > 0.0 => {
                    let h = plot_h * v / max;
                    s += &format!(
                        "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\n\
<text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(-90 {:.1} {:.1})\" font-size=\"10\">{:.1}k</text>\n",
                        base - h,
                        bar_w - 3.0,
                        COLORS[bi % COLORS.len()],
                        x + bar_w / 2.0 + 3.0,
                        base - 4.0,
                        x + bar_w / 2.0 + 3.0,
                        base - 4.0,
                        v / 1000.0
                    );
                }
                _ => {
                    s += &format!(
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#888\">n/a</text>\n",
                        x,
                        base - 4.0
                    );
                }
            }
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            gx + bar_w * backends.len() as f64 / 2.0,
            base + 18.0,
            w.name
        );
    }
    s += "</svg>\n";
    s
}

fn main() -> Result<()> {
    let a = parse_args()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let shm = Path::new("/dev/shm");
    let dir = tempfile::Builder::new()
        .prefix("extstorage-bench-")
        .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") })?;
    eprintln!(
        "compare: {} MiB image in {}, {:?} warm-up + {:?} per workload and backend",
        a.size_mib,
        dir.path().display(),
        a.warmup,
        a.measure
    );
    let image = Image::create(dir.path().join("img"), a.size_mib << 20)?;
    let machine = machine();

    // Rounds interleave the backends, so a change in machine load (the
    // machines are shared) hits all of them; each cell reports the median.
    let mut samples: Vec<Vec<Vec<f64>>> =
        vec![vec![Vec::new(); a.backends.len()]; a.workloads.len()];
    let mut cpu_samples = samples.clone();
    let mut errors: Vec<Vec<Option<String>>> =
        vec![vec![None; a.backends.len()]; a.workloads.len()];
    // A daemon that cannot start is skipped for the rest of the run.
    let mut broken: Vec<(String, String)> = Vec::new();
    for round in 1..=a.repeat {
        for (wi, w) in a.workloads.iter().enumerate() {
            for (bi, b) in a.backends.iter().enumerate() {
                let known_broken = broken.iter().any(|(n, _)| n == b);
                let result = if known_broken {
                    Err(anyhow::anyhow!("daemon unavailable (see the notes)"))
                } else if b == "fio" {
                    common::fio(&image.path, w, a.warmup, a.measure).map(|v| (v, None))
                } else {
                    let backend = Backend::parse(b).context("backend checked in parse_args")?;
                    let r = run_daemon(backend, &image.path, dir.path(), w, &a);
                    if let Err(e) = &r {
                        broken.push((b.clone(), format!("{e:#}")));
                    }
                    r
                };
                match &result {
                    Ok((iops, cpu)) => {
                        samples[wi][bi].push(*iops);
                        cpu_samples[wi][bi].extend(*cpu);
                    }
                    Err(e) => errors[wi][bi] = Some(format!("skipped: {e:#}")),
                }
                eprintln!(
                    "  round {round}/{} {:<20} {:<11} {:>9} {}",
                    a.repeat,
                    w.name,
                    b,
                    fmt_iops(result.as_ref().ok().map(|r| r.0)),
                    result
                        .as_ref()
                        .err()
                        .map(|e| format!("{e:#}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let mut cells: Vec<Cell> = Vec::new();
    for (wi, w) in a.workloads.iter().enumerate() {
        for (bi, b) in a.backends.iter().enumerate() {
            let mut v = samples[wi][bi].clone();
            v.sort_by(f64::total_cmp);
            let median = (!v.is_empty()).then(|| v[v.len() / 2]);
            let mut c = cpu_samples[wi][bi].clone();
            c.sort_by(f64::total_cmp);
            let cpu_median = (!c.is_empty()).then(|| c[c.len() / 2]);
            cells.push(Cell {
                backend: b.clone(),
                workload: w.name.to_owned(),
                iops: median,
                mib_s: median.map(|iops| iops * w.bs as f64 / f64::from(1u32 << 20)),
                samples: samples[wi][bi].clone(),
                cpu_s_per_mio: cpu_median,
                cpu_samples: cpu_samples[wi][bi].clone(),
                note: if median.is_none() {
                    errors[wi][bi].clone()
                } else {
                    None
                },
            });
        }
    }

    let mut rss = Vec::new();
    if a.rss {
        for b in a.backends.iter().filter_map(|b| Backend::parse(b)) {
            let r = match broken.iter().find(|(n, _)| n == b.name()) {
                Some((_, e)) => Err(anyhow::anyhow!(e.clone())),
                None => measure_rss(b, &image.path, dir.path()),
            };
            rss.push(match r {
                Ok((cur, hwm)) => Rss {
                    backend: b.name().to_owned(),
                    vm_rss_kib: Some(cur),
                    vm_hwm_kib: Some(hwm),
                    note: None,
                },
                Err(e) => Rss {
                    backend: b.name().to_owned(),
                    vm_rss_kib: None,
                    vm_hwm_kib: None,
                    note: Some(format!("skipped: {e:#}")),
                },
            });
        }
    }

    let get = |w: &str, b: &str| {
        cells
            .iter()
            .find(|c| c.workload == w && c.backend == b)
            .and_then(|c| c.iops)
    };
    let mut md = String::new();
    md += "| workload |";
    for b in &a.backends {
        md += &format!(" {b} IOPS |");
    }
    md += " ours/qsd | ours/qsd-direct | ours/fio |\n|---|";
    for _ in &a.backends {
        md += "---:|";
    }
    md += "---:|---:|---:|\n";
    for w in &a.workloads {
        md += &format!("| {} |", w.name);
        for b in &a.backends {
            let c = cells
                .iter()
                .find(|c| c.workload == w.name && &c.backend == b);
            let mib = c.and_then(|c| c.mib_s);
            md += &match (c.and_then(|c| c.iops), mib) {
                (Some(_), Some(m)) => {
                    format!(" {} ({m:.0} MiB/s) |", fmt_iops(c.and_then(|c| c.iops)))
                }
                _ => " skipped |".to_owned(),
            };
        }
        let ours = get(w.name, "ours");
        md += &format!(
            " {} | {} | {} |\n",
            fmt_ratio(ratio(ours, get(w.name, "qsd"))),
            fmt_ratio(ratio(ours, get(w.name, "qsd-direct"))),
            fmt_ratio(ratio(ours, get(w.name, "fio")))
        );
    }
    md += "\nDaemon CPU-seconds (user + system, all threads) per million requests, \
from /proc/PID/stat over the measured window:\n\n| workload |";
    let daemons: Vec<&String> = a.backends.iter().filter(|b| *b != "fio").collect();
    for b in &daemons {
        md += &format!(" {b} |");
    }
    md += "\n|---|";
    for _ in &daemons {
        md += "---:|";
    }
    md += "\n";
    for w in &a.workloads {
        md += &format!("| {} |", w.name);
        for b in &daemons {
            let c = cells
                .iter()
                .find(|c| c.workload == w.name && &c.backend == *b)
                .and_then(|c| c.cpu_s_per_mio);
            md += &c.map_or_else(|| " — |".to_owned(), |v| format!(" {v:.2} |"));
        }
        md += "\n";
    }
    let scaling: Vec<String> = a
        .backends
        .iter()
        .filter_map(|b| {
            ratio(get("randread-4k-qd32-2q", b), get("randread-4k-qd32", b))
                .map(|r| format!("{b} {r:.2}x"))
        })
        .collect();
    if !scaling.is_empty() {
        md += &format!(
            "\n2 queues / 1 queue (randread 4k QD32): {}\n",
            scaling.join(", ")
        );
    }
    md += &targets_table(&get, &rss);
    if !rss.is_empty() {
        md += "\n| daemon serving 4 queues x 256 | VmRSS | VmHWM |\n|---|---:|---:|\n";
        for r in &rss {
            match (r.vm_rss_kib, r.vm_hwm_kib) {
                (Some(c), Some(h)) => {
                    md += &format!(
                        "| {} | {:.1} MiB | {:.1} MiB |\n",
                        r.backend,
                        c as f64 / 1024.0,
                        h as f64 / 1024.0
                    )
                }
                _ => md += &format!("| {} | skipped | skipped |\n", r.backend),
            }
        }
    }
    let notes: Vec<String> = broken
        .iter()
        .map(|(b, e)| format!("- {b} skipped: {e}"))
        .collect();
    if !notes.is_empty() {
        md += &format!("\n{}\n", notes.join("\n"));
    }
    println!("\n{md}");

    let json = serde_json::json!({
        "machine": machine,
        "loadavg_at_end": read_trim("/proc/loadavg"),
        "image_mib": a.size_mib,
        "warmup_s": a.warmup.as_secs_f64(),
        "measure_s": a.measure.as_secs_f64(),
        "rounds": a.repeat,
        "client": "blkio 0.5 (virtio-blk-vhost-user), queue-size 256, one thread per queue",
        "workloads": a.workloads,
        "commands": a.backends.iter().filter_map(|b| Backend::parse(b)).map(|b| {
            (b.name().to_owned(), b.argv(Path::new("IMG"), Path::new("SOCK"), 1).join(" "))
        }).collect::<std::collections::BTreeMap<_, _>>(),
        "results": cells,
        "rss": rss,
    });
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(a.out.join("results.md"), &md)?;
    std::fs::write(
        a.out.join("iops.svg"),
        svg(&a.workloads, &a.backends, &cells),
    )?;
    eprintln!(
        "compare: wrote results.md, results.json and iops.svg to {}",
        a.out.display()
    );

    if a.smoke {
        // The smoke run proves the harness measures something; our daemon
        // may legitimately be skipped while it is a placeholder.
        for b in ["qsd", "fio"] {
            if a.backends.iter().any(|x| x == b)
                && get(WORKLOADS[0].name, b).is_none_or(|v| v <= 0.0)
            {
                bail!("smoke run: {b} produced no IOPS; see the notes above");
            }
        }
    }
    Ok(())
}
