//! The comparison harness (issues 4 and 10): the same blkio client, the same
//! backing, the same workloads, against qemu-storage-daemon (three
//! configurations), our daemon (its variants) and, as the ceiling without
//! virtualisation, fio on the backing itself, in interleaved rounds of one
//! run. Two backings: a loop device with direct I/O over a tmpfs file (the
//! primary: users serve block devices) and the tmpfs file itself. Prints the
//! tables with the ratios the targets are stated in, and writes markdown,
//! JSON and one SVG bar chart per backing to `target/bench-compare/`.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--secs S] [--warmup S] [--repeat N] [--size-mib N]
//!     [--backing loop|tmpfs|both] [--backends NAME,...] [--variant NAME[@BINARY]=ARGS]...
//!     [--workloads NAME,...] [--primary NAME] [--primary-poll NAME] [--perf] [--no-rss] [--out DIR]
//! ```
//! Without `--bench` (as under `cargo test --all-targets`) it runs a smoke
//! test instead: one short workload on small backings, which fails unless
//! fio, qemu-storage-daemon and our daemon all produced numbers on the loop
//! device, then checks that SIGINT in the middle of a run stops the daemon
//! and detaches the loop device.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::{
    Backend, Client, Daemon, Image, Kind, LoopDevice, PerfCounts, Stop, WORKLOADS, Workload,
};
use extstorage_testbins::splitmix64;

/// What is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Backing {
    /// A loop device with direct I/O over a file in /dev/shm.
    Loop,
    /// The file in /dev/shm itself.
    Tmpfs,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Self::Loop => "loop",
            Self::Tmpfs => "tmpfs",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Loop => "loop device, direct I/O, over a file in /dev/shm",
            Self::Tmpfs => "file in /dev/shm",
        }
    }
}

/// One measured round of one backend on one workload.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Sample {
    iops: f64,
    /// Daemon CPU (user + system, all threads) per request, µs.
    cpu_us: Option<f64>,
    /// Daemon context switches (all threads) per request.
    ctx_per_req: Option<f64>,
    /// `perf stat` counts per request (with `--perf`).
    perf_per_req: Option<PerfCounts>,
}

/// What one backend did on one workload of one backing: the median of the
/// rounds, and every round.
#[derive(Debug, Clone, serde::Serialize)]
struct Cell {
    backing: Backing,
    backend: String,
    workload: String,
    /// Median IOPS; None when skipped or failed (`note` says why).
    iops: Option<f64>,
    mib_s: Option<f64>,
    /// Median daemon CPU per request, µs (None for fio).
    cpu_us_per_req: Option<f64>,
    /// Median daemon context switches per request.
    ctx_per_req: Option<f64>,
    /// Median system calls per request (with `--perf`).
    syscalls_per_req: Option<f64>,
    /// Every round, in order.
    samples: Vec<Sample>,
    note: Option<String>,
}

/// Daemon memory while serving 4 queues of 256.
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
    backings: Vec<Backing>,
    backends: Vec<Backend>,
    workloads: Vec<Workload>,
    primary: String,
    primary_poll: String,
    perf: bool,
    rss: bool,
    out: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench compare -- [--quick] [--secs S] [--warmup S] [--repeat N] \
[--size-mib N] [--backing loop|tmpfs|both] [--backends NAME,...] [--variant NAME[@BINARY]=ARGS]... \
[--workloads NAME,...] [--primary NAME] [--primary-poll NAME] [--perf] [--no-rss] [--out DIR]";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn builtin_names() -> String {
    Backend::builtin()
        .iter()
        .map(|b| b.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let bench = argv.iter().any(|a| a == "--bench");
    let test = argv.iter().any(|a| a == "--test");
    let smoke = !bench || test;
    let mut a = Args {
        smoke,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(5),
        repeat: 3,
        size_mib: 1024,
        backings: vec![Backing::Loop, Backing::Tmpfs],
        backends: Backend::builtin(),
        workloads: WORKLOADS.to_vec(),
        primary: "ours".into(),
        primary_poll: "ours-poll".into(),
        perf: false,
        rss: true,
        out: target_dir().join("bench-compare"),
    };
    if smoke {
        a.warmup = Duration::ZERO;
        a.measure = Duration::from_millis(200);
        a.repeat = 1;
        a.size_mib = 64;
        a.backends = ["fio", "qsd", "ours"]
            .iter()
            .filter_map(|n| Backend::named(n))
            .collect();
        a.workloads = WORKLOADS[..1].to_vec();
        a.rss = false;
        a.out = a.out.join("smoke");
    }
    let secs = |v: Option<&String>| -> Result<Duration> {
        let v = v.context(USAGE)?;
        let s = v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .with_context(|| format!("not a number of seconds: {v:?}"))?;
        Ok(Duration::from_secs_f64(s))
    };
    let mut variants = Vec::new();
    let mut primary_given = Vec::new();
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
            "--secs" => {
                a.measure = secs(it.next())?;
                if a.measure.is_zero() {
                    bail!("--secs must be more than 0");
                }
            }
            "--warmup" => a.warmup = secs(it.next())?,
            "--size-mib" => {
                let v = it.next().context(USAGE)?;
                a.size_mib = v.parse().with_context(|| format!("bad --size-mib {v:?}"))?;
                if a.size_mib < 4 {
                    bail!("--size-mib must be at least 4");
                }
            }
            "--backing" => {
                a.backings = match it.next().context(USAGE)?.as_str() {
                    "loop" => vec![Backing::Loop],
                    "tmpfs" => vec![Backing::Tmpfs],
                    "both" => vec![Backing::Loop, Backing::Tmpfs],
                    other => bail!("unknown --backing {other:?}: use loop, tmpfs or both"),
                }
            }
            "--backends" => {
                let v = it.next().context(USAGE)?;
                a.backends = v
                    .split(',')
                    .map(|n| {
                        Backend::named(n).with_context(|| {
                            format!(
                                "unknown backend {n:?}: use {} (or define one with --variant)",
                                builtin_names()
                            )
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--variant" => variants.push(Backend::parse_variant(it.next().context(USAGE)?)?),
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
            "--primary" => {
                a.primary = it.next().context(USAGE)?.clone();
                primary_given.push(a.primary.clone());
            }
            "--primary-poll" => {
                a.primary_poll = it.next().context(USAGE)?.clone();
                primary_given.push(a.primary_poll.clone());
            }
            "--perf" => a.perf = true,
            "--no-rss" => a.rss = false,
            "--out" => a.out = PathBuf::from(it.next().context(USAGE)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    a.backends.extend(variants);
    let mut seen = std::collections::BTreeSet::new();
    for b in &a.backends {
        if !seen.insert(b.name.clone()) {
            bail!(
                "backend {:?} is named twice: give each --variant its own name",
                b.name
            );
        }
    }
    for p in primary_given {
        if !a.backends.iter().any(|b| b.name == p && b.is_ours()) {
            bail!(
                "--primary/--primary-poll {p:?} is not one of our daemons in this run: \
name one from --backends or --variant"
            );
        }
    }
    Ok(a)
}

/// Checks that bad command lines are refused with a message naming the
/// problem (run by the smoke test: a bench binary has no unit tests).
fn smoke_bad_args() -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["--backends", "qsd,nope"], "unknown backend \"nope\""),
        (&["--backing", "nvme"], "unknown --backing \"nvme\""),
        (&["--variant", "no-equals-sign"], "is not NAME=ARGS"),
        (&["--variant", "bad name=--x"], "must be letters"),
        (&["--variant", "x@/nonexistent/bin="], "does not exist"),
        (&["--variant", "ours=--poll-us 9"], "named twice"),
        (&["--primary", "qsd"], "is not one of our daemons"),
        (&["--repeat", "0"], "at least 1"),
        (&["--secs", "-1"], "not a number of seconds"),
        (&["--size-mib", "1"], "at least 4"),
        (&["--workloads", "randread"], "unknown workload"),
        (&["--frobnicate"], "unknown argument"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["--bench".to_owned()];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        match parse_args(&argv) {
            Ok(_) => bail!("smoke run: {args:?} was accepted"),
            Err(e) if format!("{e:#}").contains(want) => {}
            Err(e) => bail!("smoke run: {args:?} said {e:#}, expected it to mention {want:?}"),
        }
    }
    // And a good one: a variant with a binary, checked on as the primary.
    let exe = std::env::current_exe()?.display().to_string();
    let argv: Vec<String> = [
        "--bench",
        "--variant",
        &format!("mine@{exe}=--poll-us 5 --engine uring"),
        "--primary",
        "mine",
    ]
    .map(String::from)
    .to_vec();
    let a = parse_args(&argv)?;
    let mine = a
        .backends
        .iter()
        .find(|b| b.name == "mine")
        .context("smoke run: --variant mine is missing")?;
    let cmd = mine
        .argv(Path::new("/dev/x"), Path::new("/s"), 2)
        .context("a daemon")?;
    if cmd[0] != exe || !cmd.ends_with(&["--poll-us", "5", "--engine", "uring"].map(String::from)) {
        bail!("smoke run: --variant built {cmd:?}");
    }
    Ok(())
}

/// The order in which round `round` runs the `n` backends of workload
/// `workload`: a shuffle seeded by the two, so a run is reproducible. A
/// fixed order gave one backend the same neighbours in every round, and
/// the slot right after fio was favoured: at 4k QD1 on the loop device the
/// daemon run there was sometimes 1.5x faster (24-26k against 16-17k
/// IOPS, the same binary in two slots), as the scheduler kept its worker
/// on the client's vCPU, where waking each other needs no IPI. Shuffled,
/// the favoured slot falls on a different backend from round to round, and
/// the median of the rounds shrugs it off.
fn run_order(n: usize, round: usize, workload: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let seed = ((round as u64) << 32) ^ ((workload as u64) << 16);
    for i in (1..n).rev() {
        let j = splitmix64(seed ^ i as u64) % (i as u64 + 1);
        order.swap(i, j as usize);
    }
    order
}

/// Checks that `run_order` is a permutation and moves the backend after
/// fio (the first) from round to round (run by the smoke test).
fn smoke_run_order() -> Result<()> {
    let n = Backend::builtin().len();
    let mut after_fio = std::collections::BTreeSet::new();
    for round in 1..=5 {
        let order = run_order(n, round, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if sorted != (0..n).collect::<Vec<_>>() {
            bail!("smoke run: run_order({n}, {round}, 0) = {order:?} is not a permutation");
        }
        let at = order.iter().position(|&b| b == 0).context("fio")?;
        after_fio.insert(order.get(at + 1).copied());
    }
    if after_fio.len() < 3 {
        bail!("smoke run: over 5 rounds fio is followed by only {after_fio:?}");
    }
    Ok(())
}

/// Runs one workload against one daemon.
fn run_daemon(b: &Backend, target: &Path, dir: &Path, w: &Workload, a: &Args) -> Result<Sample> {
    let socket = dir.join(format!("{}.sock", b.name));
    let argv = b.argv(target, &socket, w.queues).context("not a daemon")?;
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
    // Sample the daemon at the start and the end of the measured window
    // while the client runs (the client's own window starts within a
    // millisecond of this one).
    let pid = daemon.pid();
    type Window = (Duration, u64, Option<PerfCounts>);
    let (t, counters) = std::thread::scope(|s| {
        let sampler = s.spawn(|| -> Result<Window> {
            std::thread::sleep(a.warmup);
            let cpu0 = common::cpu_time(pid)?;
            let ctx0 = common::context_switches(pid)?;
            let perf = if a.perf {
                Some(common::perf_stat(pid, a.measure)?)
            } else {
                std::thread::sleep(a.measure);
                None
            };
            let cpu = common::cpu_time(pid)?.saturating_sub(cpu0);
            let ctx = common::context_switches(pid)?.saturating_sub(ctx0);
            Ok((cpu, ctx, perf))
        });
        let t = client.run(w, stop, 0x5eed);
        (t, sampler.join())
    });
    let t = t?;
    let requests = t.iops() * a.measure.as_secs_f64();
    let mut s = Sample {
        iops: t.iops(),
        ..Sample::default()
    };
    match counters {
        Ok(Ok((cpu, ctx, perf))) if requests > 0.0 => {
            s.cpu_us = Some(cpu.as_secs_f64() * 1e6 / requests);
            s.ctx_per_req = Some(ctx as f64 / requests);
            s.perf_per_req = perf.map(|p| PerfCounts {
                syscalls: p.syscalls / requests,
                context_switches: p.context_switches / requests,
                cpu_migrations: p.cpu_migrations / requests,
            });
        }
        Ok(Err(e)) if a.perf => eprintln!("  counters of {} unavailable: {e:#}", b.name),
        _ => {}
    }
    drop(client);
    drop(daemon);
    Ok(s)
}

/// Memory of a daemon serving 4 queues of 256 after a short 4-queue load.
fn measure_rss(b: &Backend, target: &Path, dir: &Path) -> Result<(u64, u64)> {
    let socket = dir.join(format!("{}-rss.sock", b.name));
    let argv = b.argv(target, &socket, 4).context("not a daemon")?;
    let daemon = Daemon::spawn(&argv, &socket, Duration::from_secs(10))?;
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

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
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

/// The numbers of one backing, either the medians or one round.
struct View<'a> {
    cells: &'a [Cell],
    backing: Backing,
    backends: &'a [Backend],
    /// None: the medians; Some(i): round i.
    round: Option<usize>,
}

impl View<'_> {
    fn cell(&self, w: &str, b: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.backing == self.backing && c.workload == w && c.backend == b)
    }

    fn iops(&self, w: &str, b: &str) -> Option<f64> {
        let c = self.cell(w, b)?;
        match self.round {
            None => c.iops,
            Some(i) => c.samples.get(i).map(|s| s.iops),
        }
    }

    fn cpu(&self, w: &str, b: &str) -> Option<f64> {
        let c = self.cell(w, b)?;
        match self.round {
            None => c.cpu_us_per_req,
            Some(i) => c.samples.get(i).and_then(|s| s.cpu_us),
        }
    }

    fn qsds(&self) -> impl Iterator<Item = &str> {
        self.backends
            .iter()
            .filter(|b| b.is_qsd())
            .map(|b| b.name.as_str())
    }

    /// The qsd variant with the most IOPS on `w`, and its IOPS.
    fn best_qsd(&self, w: &str) -> Option<(String, f64)> {
        self.qsds()
            .filter_map(|q| self.iops(w, q).map(|v| (q.to_owned(), v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The lowest CPU per request of any qsd variant on `w`.
    fn qsd_cpu(&self, w: &str) -> Option<f64> {
        self.qsds()
            .filter_map(|q| self.cpu(w, q))
            .min_by(f64::total_cmp)
    }
}

/// A quantity the targets and ratio tables are stated in, computed from a
/// view (the medians, or one round) for one of our variants.
struct Quantity {
    name: &'static str,
    eval: fn(&View, &str) -> Option<f64>,
}

const RR32: &str = "randread-4k-qd32";
const RW32: &str = "randwrite-4k-qd32";
const RR1: &str = "randread-4k-qd1";
const RR32_2Q: &str = "randread-4k-qd32-2q";
const SEQ: &str = "seqread-128k-qd8";

fn vs_fio(v: &View, w: &str, ours: &str) -> Option<f64> {
    ratio(v.iops(w, ours), v.iops(w, "fio"))
}

fn vs_qsd(v: &View, w: &str, ours: &str) -> Option<f64> {
    ratio(v.iops(w, ours), v.best_qsd(w).map(|q| q.1))
}

fn cpu_vs_qsd(v: &View, w: &str, ours: &str) -> Option<f64> {
    ratio(v.cpu(w, ours), v.qsd_cpu(w))
}

const QUANTITIES: &[Quantity] = &[
    Quantity {
        name: "randread 4k QD32: ours / fio",
        eval: |v, o| vs_fio(v, RR32, o),
    },
    Quantity {
        name: "randread 4k QD32: ours / best qsd",
        eval: |v, o| vs_qsd(v, RR32, o),
    },
    Quantity {
        name: "randwrite 4k QD32: ours / fio",
        eval: |v, o| vs_fio(v, RW32, o),
    },
    Quantity {
        name: "randwrite 4k QD32: ours / best qsd",
        eval: |v, o| vs_qsd(v, RW32, o),
    },
    Quantity {
        name: "randread 4k QD1: ours / fio",
        eval: |v, o| vs_fio(v, RR1, o),
    },
    Quantity {
        name: "randread 4k QD1: ours / best qsd",
        eval: |v, o| vs_qsd(v, RR1, o),
    },
    Quantity {
        name: "randread 4k QD32: 2 queues / 1 queue",
        eval: |v, o| ratio(v.iops(RR32_2Q, o), v.iops(RR32, o)),
    },
    Quantity {
        name: "seqread 128k QD8: ours / fio",
        eval: |v, o| vs_fio(v, SEQ, o),
    },
    Quantity {
        name: "seqread 128k QD8: ours / best qsd",
        eval: |v, o| vs_qsd(v, SEQ, o),
    },
    Quantity {
        name: "CPU per request, randread 4k QD32: ours / qsd",
        eval: |v, o| cpu_vs_qsd(v, RR32, o),
    },
    Quantity {
        name: "CPU per request, randwrite 4k QD32: ours / qsd",
        eval: |v, o| cpu_vs_qsd(v, RW32, o),
    },
    Quantity {
        name: "CPU per request, randread 4k QD1: ours / qsd",
        eval: |v, o| cpu_vs_qsd(v, RR1, o),
    },
    Quantity {
        name: "CPU per request, randread 4k QD32 2q: ours / qsd",
        eval: |v, o| cpu_vs_qsd(v, RR32_2Q, o),
    },
];

fn quantity(name: &str) -> &'static Quantity {
    QUANTITIES
        .iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no quantity {name:?}"))
}

/// A target of issue 10: a quantity, for the primary or the poll variant,
/// at least (or at most) a bound.
struct Target {
    quantity: &'static str,
    /// Measured on `--primary-poll` instead of `--primary`.
    poll: bool,
    /// True: the quantity must be at most `bound` (CPU); else at least.
    at_most: bool,
    bound: f64,
}

const fn at_least(quantity: &'static str, bound: f64) -> Target {
    Target {
        quantity,
        poll: false,
        at_most: false,
        bound,
    }
}

const fn at_most(quantity: &'static str, bound: f64) -> Target {
    Target {
        quantity,
        poll: false,
        at_most: true,
        bound,
    }
}

/// Issue 10's targets on the loop device.
const LOOP_TARGETS: &[Target] = &[
    at_least("randread 4k QD32: ours / fio", 0.75),
    at_least("randread 4k QD32: ours / best qsd", 1.4),
    at_least("randwrite 4k QD32: ours / fio", 0.75),
    at_least("randwrite 4k QD32: ours / best qsd", 1.4),
    at_least("randread 4k QD1: ours / fio", 0.40),
    Target {
        quantity: "randread 4k QD1: ours / fio",
        poll: true,
        at_most: false,
        bound: 0.75,
    },
    at_least("randread 4k QD32: 2 queues / 1 queue", 1.6),
    at_least("seqread 128k QD8: ours / fio", 0.9),
    at_most("CPU per request, randread 4k QD32: ours / qsd", 0.25),
    at_most("CPU per request, randwrite 4k QD32: ours / qsd", 0.25),
    at_most("CPU per request, randread 4k QD1: ours / qsd", 0.25),
    at_most("CPU per request, randread 4k QD32 2q: ours / qsd", 0.25),
];

/// Issue 10's target on the tmpfs file.
const TMPFS_TARGETS: &[Target] = &[at_least("randread 4k QD32: ours / fio", 0.6)];

/// The quantity's value in the medians, and its range over the rounds
/// (each round's ratio from that round's numbers: the rounds interleave the
/// backends, so a round's numbers share the machine's load).
fn evaluate(
    cells: &[Cell],
    backing: Backing,
    backends: &[Backend],
    rounds: usize,
    q: &Quantity,
    ours: &str,
) -> (Option<f64>, Option<(f64, f64)>) {
    let view = |round| View {
        cells,
        backing,
        backends,
        round,
    };
    let med = (q.eval)(&view(None), ours);
    let per_round: Vec<f64> = (0..rounds)
        .filter_map(|r| (q.eval)(&view(Some(r)), ours))
        .collect();
    let range = (per_round.len() > 1).then(|| {
        (
            per_round.iter().copied().fold(f64::INFINITY, f64::min),
            per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    });
    (med, range)
}

fn fmt_range(r: Option<(f64, f64)>) -> String {
    r.map_or_else(|| "—".to_owned(), |(a, b)| format!("{a:.2}-{b:.2}"))
}

/// The markdown of one backing: IOPS, CPU, context switches, ratios per
/// variant of ours, the targets and the rounds.
fn backing_tables(a: &Args, cells: &[Cell], backing: Backing) -> (String, Vec<serde_json::Value>) {
    let view = View {
        cells,
        backing,
        backends: &a.backends,
        round: None,
    };
    let mut md = format!("### {}\n\n", backing.title());
    md += "IOPS, median of the rounds:\n\n| workload |";
    for b in &a.backends {
        md += &format!(" {} |", b.name);
    }
    md += " best qsd |\n|---|";
    for _ in &a.backends {
        md += "---:|";
    }
    md += "---|\n";
    for w in &a.workloads {
        md += &format!("| {} |", w.name);
        for b in &a.backends {
            let v = view.iops(w.name, &b.name);
            md += &match v {
                Some(v) if w.bs >= 64 * 1024 => format!(
                    " {} ({:.0} MiB/s) |",
                    fmt_iops(Some(v)),
                    v * w.bs as f64 / f64::from(1u32 << 20)
                ),
                Some(v) => format!(" {} |", fmt_iops(Some(v))),
                None => " skipped |".to_owned(),
            };
        }
        md += &format!(
            " {} |\n",
            view.best_qsd(w.name).map_or("—".to_owned(), |q| q.0)
        );
    }

    let daemons: Vec<&Backend> = a.backends.iter().filter(|b| b.is_daemon()).collect();
    let per_daemon = |title: &str, f: &dyn Fn(&Cell) -> Option<f64>, digits: usize| {
        let mut md = format!("\n{title}\n\n| workload |");
        for b in &daemons {
            md += &format!(" {} |", b.name);
        }
        md += "\n|---|";
        for _ in &daemons {
            md += "---:|";
        }
        md += "\n";
        for w in &a.workloads {
            md += &format!("| {} |", w.name);
            for b in &daemons {
                md += &view
                    .cell(w.name, &b.name)
                    .and_then(f)
                    .map_or_else(|| " — |".to_owned(), |v| format!(" {v:.digits$} |"));
            }
            md += "\n";
        }
        md
    };
    md += &per_daemon(
        "Daemon CPU per request, µs (user + system, all threads, /proc/PID/stat over the measured window; median):",
        &|c| c.cpu_us_per_req,
        2,
    );
    md += &per_daemon(
        "Daemon context switches per request (all threads, /proc/PID/task/*/status; median):",
        &|c| c.ctx_per_req,
        2,
    );
    if a.perf {
        md += &per_daemon(
            "Daemon system calls per request (`perf stat -e raw_syscalls:sys_enter`; median):",
            &|c| c.syscalls_per_req,
            2,
        );
    }

    // Every ratio for every variant of ours: what the other columns would
    // score against the targets.
    let ours: Vec<&Backend> = a.backends.iter().filter(|b| b.is_ours()).collect();
    if !ours.is_empty() {
        md += "\nRatios (median; each round's own ratio in brackets, min-max):\n\n| ratio |";
        for b in &ours {
            md += &format!(" {} |", b.name);
        }
        md += "\n|---|";
        for _ in &ours {
            md += "---:|";
        }
        md += "\n";
        for q in QUANTITIES {
            let row: Vec<String> = ours
                .iter()
                .map(|b| {
                    let (m, r) = evaluate(cells, backing, &a.backends, a.repeat, q, &b.name);
                    match (m, r) {
                        (None, _) => "—".to_owned(),
                        (m, None) => fmt_ratio(m),
                        (m, r) => format!("{} [{}]", fmt_ratio(m), fmt_range(r)),
                    }
                })
                .collect();
            if row.iter().any(|c| c != "—") {
                md += &format!("| {} | {} |\n", q.name, row.join(" | "));
            }
        }
    }

    let targets = match backing {
        Backing::Loop => LOOP_TARGETS,
        Backing::Tmpfs => TMPFS_TARGETS,
    };
    md += &format!(
        "\nTargets of issue 10 ({}; `{}` is ours, `{}` the opt-in poll mode):\n\n\
| target | measured on | needs | median | rounds | met |\n|---|---|---:|---:|---:|---|\n",
        backing.name(),
        a.primary,
        a.primary_poll
    );
    let mut json = Vec::new();
    for t in targets {
        let who = if t.poll { &a.primary_poll } else { &a.primary };
        let q = quantity(t.quantity);
        let (m, r) = evaluate(cells, backing, &a.backends, a.repeat, q, who);
        let met = m.map(|m| {
            if t.at_most {
                m <= t.bound
            } else {
                m >= t.bound
            }
        });
        let need = format!("{} {:.2}x", if t.at_most { "<=" } else { ">=" }, t.bound);
        md += &format!(
            "| {} | {who} | {need} | {} | {} | {} |\n",
            t.quantity,
            fmt_ratio(m),
            fmt_range(r),
            match met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            }
        );
        json.push(serde_json::json!({
            "backing": backing,
            "target": t.quantity,
            "backend": who,
            "needs": need,
            "median": m,
            "rounds_min_max": r,
            "met": met,
        }));
    }

    if a.repeat > 1 {
        md += "\nRounds (k IOPS, in order):\n\n| workload |";
        for b in &a.backends {
            md += &format!(" {} |", b.name);
        }
        md += "\n|---|";
        for _ in &a.backends {
            md += "---|";
        }
        md += "\n";
        for w in &a.workloads {
            md += &format!("| {} |", w.name);
            for b in &a.backends {
                let s: Vec<String> = view
                    .cell(w.name, &b.name)
                    .map(|c| {
                        c.samples
                            .iter()
                            .map(|s| format!("{:.0}", s.iops / 1000.0))
                            .collect()
                    })
                    .unwrap_or_default();
                md += &format!(" {} |", s.join(" "));
            }
            md += "\n";
        }
    }
    (md, json)
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

/// One bar chart per workload side by side, a bar per backend (absolute
/// IOPS, labelled), a shared legend on top; SVG text is left to the viewer.
fn plot(
    path: &Path,
    title: &str,
    workloads: &[Workload],
    backends: &[Backend],
    view: &View,
) -> Result<()> {
    use plotters::prelude::*;
    const PALETTE: [RGBColor; 10] = [
        RGBColor(0x4e, 0x79, 0xa7),
        RGBColor(0xf2, 0x8e, 0x2b),
        RGBColor(0xe1, 0x57, 0x59),
        RGBColor(0x76, 0xb7, 0xb2),
        RGBColor(0x59, 0xa1, 0x4f),
        RGBColor(0xed, 0xc9, 0x48),
        RGBColor(0xb0, 0x7a, 0xa1),
        RGBColor(0xff, 0x9d, 0xa7),
        RGBColor(0x9c, 0x75, 0x5f),
        RGBColor(0xba, 0xb0, 0xac),
    ];
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let panel_w = 60 + 34 * backends.len() as u32;
    let width = (panel_w * workloads.len().max(1) as u32).max(8 * 130 + 20);
    let legend_rows = backends.len().div_ceil(8) as u32;
    let top = 40 + 18 * legend_rows;
    let height = top + 330;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    root.draw(&Text::new(
        title.to_owned(),
        (10, 8),
        ("sans-serif", 16).into_font(),
    ))
    .map_err(|e| err(&e))?;
    for (i, b) in backends.iter().enumerate() {
        let x = 10 + (i as i32 % 8) * 130;
        let y = 32 + (i as i32 / 8) * 18;
        root.draw(&Rectangle::new(
            [(x, y), (x + 12, y + 12)],
            color(i).filled(),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&Text::new(
            b.name.clone(),
            (x + 16, y),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(|e| err(&e))?;
    }
    let (_, body) = root.split_vertically(top);
    let panels = body.split_evenly((1, workloads.len().max(1)));
    for (w, area) in workloads.iter().zip(panels.iter()) {
        let values: Vec<Option<f64>> = backends
            .iter()
            .map(|b| view.iops(w.name, &b.name).map(|v| v / 1000.0))
            .collect();
        let max = values.iter().flatten().fold(1.0f64, |m, &v| m.max(v)) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(w.name, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(8)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..backends.len() as f64, 0.0..max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc("k IOPS")
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, v) in values.iter().enumerate() {
            let x0 = i as f64 + 0.1;
            let x1 = i as f64 + 0.9;
            match v {
                Some(v) => {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, 0.0), (x1, *v)],
                            color(i).filled(),
                        )))
                        .map_err(|e| err(&e))?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{v:.0}"),
                            // Text hangs below its anchor: lift it over the bar.
                            (x0, *v + max * 0.06),
                            ("sans-serif", 10).into_font(),
                        )))
                        .map_err(|e| err(&e))?;
                }
                None => {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "n/a".to_owned(),
                            (x0, max * 0.02),
                            ("sans-serif", 10)
                                .into_font()
                                .color(&RGBColor(0x88, 0x88, 0x88)),
                        )))
                        .map_err(|e| err(&e))?;
                }
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The backings of this run, made in `dir` and torn down on drop.
struct Targets {
    loop_dev: Option<LoopDevice>,
    file: Option<Image>,
}

impl Targets {
    fn path(&self, b: Backing) -> &Path {
        match b {
            Backing::Loop => &self.loop_dev.as_ref().expect("made for this run").dev,
            Backing::Tmpfs => &self.file.as_ref().expect("made for this run").path,
        }
    }
}

fn run(a: &Args) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let shm = Path::new("/dev/shm");
    let dir = tempfile::Builder::new()
        .prefix("extstorage-bench-")
        .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") })?;
    common::cleanup::add_dir(dir.path().to_path_buf());
    eprintln!(
        "compare: {} MiB backings in {}, {:?} warm-up + {:?} per workload and backend, {} round(s)",
        a.size_mib,
        dir.path().display(),
        a.warmup,
        a.measure,
        a.repeat
    );
    let size = a.size_mib << 20;
    let targets = Targets {
        loop_dev: if a.backings.contains(&Backing::Loop) {
            let d = LoopDevice::create(&dir.path().join("loop.img"), size)
                .context("the loop backing needs a loop device (or run with --backing tmpfs)")?;
            eprintln!(
                "compare: loop device {} (direct I/O {})",
                d.dev.display(),
                if d.direct_io {
                    "on"
                } else {
                    "OFF: the kernel refused it"
                }
            );
            Some(d)
        } else {
            None
        },
        file: if a.backings.contains(&Backing::Tmpfs) {
            Some(Image::create(dir.path().join("img"), size)?)
        } else {
            None
        },
    };
    let machine = machine();
    let started = Instant::now();

    // Rounds interleave every backing, workload and backend, so a change
    // in machine load (the machines are shared) hits all of them; within a
    // round each workload runs its backends in a shuffled order (see
    // `run_order`).
    let mut samples: BTreeMap<(usize, usize, usize), Vec<Sample>> = BTreeMap::new();
    let mut errors: BTreeMap<(usize, usize, usize), String> = BTreeMap::new();
    // A daemon that cannot start is skipped for the rest of the run.
    let mut broken: Vec<(String, String)> = Vec::new();
    for round in 1..=a.repeat {
        for (gi, &backing) in a.backings.iter().enumerate() {
            let target = targets.path(backing);
            for (wi, w) in a.workloads.iter().enumerate() {
                for bi in run_order(a.backends.len(), round, wi) {
                    let b = &a.backends[bi];
                    let known = broken.iter().find(|(n, _)| *n == b.name);
                    let result = if let Some((_, e)) = known {
                        Err(anyhow!("unavailable: {e}"))
                    } else if b.kind == Kind::Fio {
                        common::fio(target, w, a.warmup, a.measure).map(|iops| Sample {
                            iops,
                            ..Sample::default()
                        })
                    } else {
                        let r = run_daemon(b, target, dir.path(), w, a);
                        if let Err(e) = &r {
                            broken.push((b.name.clone(), format!("{e:#}")));
                        }
                        r
                    };
                    eprintln!(
                        "  round {round}/{} {:<5} {:<20} {:<12} {:>9} {}",
                        a.repeat,
                        backing.name(),
                        w.name,
                        b.name,
                        fmt_iops(result.as_ref().ok().map(|s| s.iops)),
                        result
                            .as_ref()
                            .err()
                            .map(|e| format!("{e:#}"))
                            .unwrap_or_default()
                    );
                    match result {
                        Ok(s) => samples.entry((gi, wi, bi)).or_default().push(s),
                        Err(e) => {
                            errors.insert((gi, wi, bi), format!("skipped: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    let mut cells: Vec<Cell> = Vec::new();
    for (gi, &backing) in a.backings.iter().enumerate() {
        for (wi, w) in a.workloads.iter().enumerate() {
            for (bi, b) in a.backends.iter().enumerate() {
                let s = samples.get(&(gi, wi, bi)).cloned().unwrap_or_default();
                let iops = median(s.iter().map(|s| s.iops).collect());
                cells.push(Cell {
                    backing,
                    backend: b.name.clone(),
                    workload: w.name.to_owned(),
                    iops,
                    mib_s: iops.map(|v| v * w.bs as f64 / f64::from(1u32 << 20)),
                    cpu_us_per_req: median(s.iter().filter_map(|s| s.cpu_us).collect()),
                    ctx_per_req: median(s.iter().filter_map(|s| s.ctx_per_req).collect()),
                    syscalls_per_req: median(
                        s.iter()
                            .filter_map(|s| s.perf_per_req.map(|p| p.syscalls))
                            .collect(),
                    ),
                    note: if iops.is_none() {
                        errors.get(&(gi, wi, bi)).cloned()
                    } else {
                        None
                    },
                    samples: s,
                });
            }
        }
    }

    let mut rss = Vec::new();
    if a.rss {
        // On the primary backing: the loop device unless only tmpfs runs.
        let backing = a.backings[0];
        for b in a.backends.iter().filter(|b| b.is_daemon()) {
            let r = match broken.iter().find(|(n, _)| *n == b.name) {
                Some((_, e)) => Err(anyhow!(e.clone())),
                None => measure_rss(b, targets.path(backing), dir.path()),
            };
            rss.push(match r {
                Ok((cur, hwm)) => Rss {
                    backend: b.name.clone(),
                    vm_rss_kib: Some(cur),
                    vm_hwm_kib: Some(hwm),
                    note: None,
                },
                Err(e) => Rss {
                    backend: b.name.clone(),
                    vm_rss_kib: None,
                    vm_hwm_kib: None,
                    note: Some(format!("skipped: {e:#}")),
                },
            });
        }
    }

    let mut md = String::new();
    let mut target_json = Vec::new();
    let mut plots = Vec::new();
    for &backing in &a.backings {
        let (t, j) = backing_tables(a, &cells, backing);
        md += &t;
        md += "\n";
        target_json.extend(j);
        let file = a.out.join(format!("iops-{}.svg", backing.name()));
        let view = View {
            cells: &cells,
            backing,
            backends: &a.backends,
            round: None,
        };
        plot(
            &file,
            &format!(
                "IOPS (thousands) by workload: {}, blkio client, median of {} round(s)",
                backing.title(),
                a.repeat
            ),
            &a.workloads,
            &a.backends,
            &view,
        )?;
        plots.push(file);
    }
    if !rss.is_empty() {
        md += &format!(
            "Memory of each daemon serving 4 queues x 256 on the {} backing (issue 4 asks < 64 MiB for ours):\n\n\
| daemon | VmRSS | VmHWM |\n|---|---:|---:|\n",
            a.backings[0].name()
        );
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
        md += "\n";
    }
    md += "Commands (TARGET: the loop device or the file; N: the workload's queues):\n\n";
    for b in &a.backends {
        md += &format!("- `{}`: `{}`\n", b.name, b.describe());
    }
    if !broken.is_empty() {
        md += "\n";
        for (b, e) in &broken {
            md += &format!("- {b} skipped: {e}\n");
        }
    }
    println!("\n{md}");

    let json = serde_json::json!({
        "machine": machine,
        "loadavg_at_end": read_trim("/proc/loadavg"),
        "wall_clock_s": started.elapsed().as_secs_f64(),
        "backing_mib": a.size_mib,
        "backings": a.backings,
        "loop_direct_io": targets.loop_dev.as_ref().map(|d| d.direct_io),
        "warmup_s": a.warmup.as_secs_f64(),
        "measure_s": a.measure.as_secs_f64(),
        "rounds": a.repeat,
        "primary": a.primary,
        "primary_poll": a.primary_poll,
        "client": "blkio 0.5 (virtio-blk-vhost-user), queue-size 256, one thread per queue",
        "workloads": a.workloads,
        "commands": a.backends.iter().map(|b| (b.name.clone(), b.describe())).collect::<BTreeMap<_, _>>(),
        "results": cells,
        "targets": target_json,
        "rss": rss,
    });
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(a.out.join("results.md"), &md)?;
    eprintln!(
        "compare: wrote results.md, results.json and {} to {}",
        plots
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        a.out.display()
    );

    if a.smoke {
        // The smoke run proves the harness measures every kind of backend
        // on the block device and draws the chart.
        for b in &a.backends {
            let v = View {
                cells: &cells,
                backing: Backing::Loop,
                backends: &a.backends,
                round: None,
            }
            .iops(WORKLOADS[0].name, &b.name);
            if v.is_none_or(|v| v <= 0.0) {
                bail!(
                    "smoke run: {} produced no IOPS on the loop device; see the notes above",
                    b.name
                );
            }
        }
        for p in &plots {
            let svg = std::fs::read_to_string(p)?;
            if !svg.contains("<rect") || !svg.contains(WORKLOADS[0].name) {
                bail!(
                    "smoke run: {} has no bars or no workload title",
                    p.display()
                );
            }
        }
    }
    let dev = targets.loop_dev.as_ref().map(|d| d.dev.clone());
    drop(targets);
    if a.smoke
        && let Some(dev) = dev
    {
        let name = dev
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let backing = read_trim(&format!("/sys/block/{name}/loop/backing_file"));
        if backing.contains(&*dir.path().to_string_lossy()) {
            bail!(
                "smoke run: {} is still attached to {backing} at the end of the run",
                dev.display()
            );
        }
    }
    Ok(())
}

/// Runs this binary on a long workload, interrupts it with SIGINT once its
/// daemon serves, and checks that the daemon stopped, the loop device was
/// detached and the images removed.
fn smoke_interrupt(out: &Path) -> Result<()> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(&exe)
        .args([
            "--bench",
            "--backing",
            "loop",
            "--backends",
            "ours",
            "--workloads",
            "randread-4k-qd1",
            "--warmup",
            "0",
            "--secs",
            "60",
            "--repeat",
            "1",
            "--no-rss",
            "--size-mib",
            "16",
            "--out",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot re-run the bench binary")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let kill = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let mut dev = None;
    let mut dir = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.is_none() || dir.is_none() {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            kill(&mut child);
            bail!("smoke interrupt: the run never reported its loop device");
        };
        if let Some(rest) = line.strip_prefix("compare: loop device ") {
            dev = rest.split_whitespace().next().map(PathBuf::from);
        }
        if let Some(rest) = line.strip_prefix("compare: 16 MiB backings in ") {
            dir = rest.split(',').next().map(PathBuf::from);
        }
    }
    let (dev, dir) = (dev.unwrap_or_default(), dir.unwrap_or_default());
    // Wait for the daemon (a child of the run) to be serving.
    let child_pid = child.id();
    let daemon = loop {
        let kids = std::fs::read_to_string(format!("/proc/{child_pid}/task/{child_pid}/children"))
            .unwrap_or_default();
        let mut found = None;
        for task in std::fs::read_dir(format!("/proc/{child_pid}/task"))? {
            let kids = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
            found = found.or_else(|| kids.split_whitespace().next().map(String::from));
        }
        if let Some(pid) = found.or_else(|| kids.split_whitespace().next().map(String::from)) {
            break pid;
        }
        if Instant::now() > deadline {
            kill(&mut child);
            bail!("smoke interrupt: no daemon started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child_pid)?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let waited = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if waited.elapsed() > Duration::from_secs(20) {
            kill(&mut child);
            bail!("smoke interrupt: the run did not exit within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.code() != Some(130) {
        bail!("smoke interrupt: the run exited with {status}, expected 130 after SIGINT");
    }
    let name = dev
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let backing = read_trim(&format!("/sys/block/{name}/loop/backing_file"));
    if backing.contains(&dir.to_string_lossy().into_owned()) {
        bail!(
            "smoke interrupt: {} is still attached to {backing} after SIGINT",
            dev.display()
        );
    }
    if dir.exists() {
        bail!(
            "smoke interrupt: {} was not removed after SIGINT",
            dir.display()
        );
    }
    let cmdline = std::fs::read(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
        bail!("smoke interrupt: daemon {daemon} still runs after SIGINT");
    }
    eprintln!(
        "compare: SIGINT stopped daemon {daemon}, detached {} and removed {}",
        dev.display(),
        dir.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    common::install_cleanup_on_signals()?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = parse_args(&argv)?;
    let result = run(&a);
    // Whatever failed, leave no daemon, loop device or image behind.
    common::cleanup::run_all();
    result?;
    if a.smoke {
        smoke_bad_args()?;
        smoke_run_order()?;
        smoke_interrupt(&a.out.join("interrupt"))?;
    }
    Ok(())
}
