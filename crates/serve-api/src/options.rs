//! The device options of a served volume: one clap definition
//! ([`DeviceArgs`]) for every program that takes them, one validated type
//! ([`DeviceOptions`]) that renders back to the arguments that produce it.

use std::ffi::OsString;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Most request queues a backend serves (each has its own worker thread).
pub const MAX_QUEUES: u16 = 64;
/// Queues used when neither `--num-queues` nor `--vcpus` says otherwise:
/// one per vCPU up to this many (more rarely pays on one volume).
pub const DEFAULT_MAX_QUEUES: u16 = 4;
/// Default maximum virtqueue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest virtqueue size a backend accepts.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Default logical block size in bytes.
pub const DEFAULT_LOGICAL_BLOCK_SIZE: u32 = 512;
/// Longest GET_ID serial in bytes (virtio-blk).
pub const SERIAL_LEN: usize = 20;
/// The largest `--poll-us` accepted (10 ms): longer spins only waste CPU.
pub const MAX_POLL_US: u32 = 10_000;

/// Which I/O engine each queue uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// io_uring where the kernel and the backing allow it (on a backing
    /// without non-blocking I/O, e.g. tmpfs, small requests synchronously
    /// and large ones on io_uring); the synchronous engine elsewhere.
    #[default]
    Auto,
    /// Synchronous reads and writes on the queue's worker thread.
    Sync,
    /// io_uring; refuse to start where it is unavailable.
    Uring,
}

impl Engine {
    /// The keyword used on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Sync => "sync",
            Engine::Uring => "uring",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The write cache mode a device starts in (the guest may change it through
/// the config space `wce` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WriteCache {
    /// Writes complete when they reach the host; FLUSH makes them durable.
    #[default]
    Writeback,
    /// Every write is made durable before it completes.
    Writethrough,
}

impl WriteCache {
    /// The keyword used on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteCache::Writeback => "writeback",
            WriteCache::Writethrough => "writethrough",
        }
    }
}

impl fmt::Display for WriteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The highest CPU number a [`CpuList`] may name (the kernel's
/// `CPU_SETSIZE` is 1024).
pub const MAX_CPU: u16 = 1023;

/// Host CPUs in the order given, written as Linux lists them (`0-3,8`):
/// queue `i`'s worker runs on the `i mod len`-th. Parsing refuses an empty
/// list, a number above [`MAX_CPU`], a backwards range and a CPU named
/// twice; rendering joins ascending runs into ranges, so a list parses
/// back to itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuList(Vec<u16>);

impl CpuList {
    /// The CPUs, in order.
    pub fn cpus(&self) -> &[u16] {
        &self.0
    }

    /// The CPU queue `queue`'s worker runs on.
    pub fn for_queue(&self, queue: usize) -> u16 {
        self.0[queue % self.0.len()]
    }
}

impl std::str::FromStr for CpuList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |t: &str| -> Result<u16, String> {
            let n: u32 = t
                .trim()
                .parse()
                .map_err(|_| format!("{t:?} is not a CPU number (a list reads like 0-3,8)"))?;
            u16::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_CPU)
                .ok_or_else(|| format!("CPU {n} is above the highest, {MAX_CPU}"))
        };
        let mut cpus: Vec<u16> = Vec::new();
        for part in text.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if first > last {
                return Err(format!(
                    "range {part:?} runs backwards: write {last}-{first}"
                ));
            }
            for cpu in first..=last {
                if cpus.contains(&cpu) {
                    return Err(format!("CPU {cpu} is named twice"));
                }
                cpus.push(cpu);
            }
        }
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            if j > i {
                write!(f, "{}-{}", self.0[i], self.0[j])?;
            } else {
                write!(f, "{}", self.0[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

impl TryFrom<String> for CpuList {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<CpuList> for String {
    fn from(list: CpuList) -> String {
        list.to_string()
    }
}

/// `on` or `off`, as QEMU spells booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl From<bool> for OnOff {
    fn from(b: bool) -> Self {
        if b { OnOff::On } else { OnOff::Off }
    }
}

/// The device options as typed on a command line. Flatten this into a
/// clap command, then [`resolve`](Self::resolve) it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Device options")]
pub struct DeviceArgs {
    /// Number of request queues the backend offers, each with its own
    /// worker thread (1-64); QEMU's num-queues is set to the same.
    /// [default: min(VCPUS, 4)]
    #[arg(long, value_name = "N")]
    pub num_queues: Option<u16>,
    /// vCPUs of the VM, used only for the default --num-queues.
    /// [default: this host's CPUs]
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u16>,
    /// Maximum virtqueue size, a power of two (QEMU takes at most 1024).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_SIZE)]
    pub queue_size: u16,
    /// Export read-only: writes, discards and write-zeroes fail.
    #[arg(long)]
    pub read_only: bool,
    /// Logical block size in bytes (a power of two, 512-65536).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_LOGICAL_BLOCK_SIZE)]
    pub logical_block_size: u32,
    /// Serial number the guest reads (GET_ID), at most 20 bytes.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub serial: String,
    /// Bypass the host page cache (O_DIRECT; falls back with a warning
    /// where the filesystem refuses it).
    #[arg(long, value_name = "ON|OFF", value_enum, default_value = "on")]
    pub direct_io: OnOff,
    /// Initial write cache mode (the guest can switch it).
    #[arg(long, value_name = "MODE", value_enum, default_value = "writeback")]
    pub write_cache: WriteCache,
    /// I/O engine: auto (io_uring where it pays), sync or uring.
    #[arg(long, value_name = "ENGINE", value_enum, default_value = "auto")]
    pub engine: Engine,
    /// Adaptive polling: after a batch, spin for more requests and
    /// completions until this many microseconds pass with none (0 = never
    /// spin). Lowers latency at the cost of up to a CPU per busy queue;
    /// the window must outlast the device's latency (e.g. 200).
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub poll_us: u32,
    /// Pin queue workers to host CPUs: queue i runs on the (i mod N)-th
    /// CPU of LIST, in the order written (e.g. 2,3 or 0-3). A worker that
    /// shares a CPU with the thread that kicks it wakes without a
    /// cross-CPU interrupt. [default: unpinned, the scheduler places them]
    #[arg(long, value_name = "LIST")]
    pub queue_cpus: Option<CpuList>,
}

/// Validated device options: what a backend serves and what the QEMU
/// arguments for it must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOptions {
    /// Request queues offered (1-64).
    pub num_queues: u16,
    /// Maximum virtqueue size (a power of two, 2-32768).
    pub queue_size: u16,
    /// Export read-only (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Logical block size in bytes (a power of two, 512-65536).
    pub logical_block_size: u32,
    /// The GET_ID answer (at most 20 bytes).
    pub serial: String,
    /// Use O_DIRECT where the filesystem allows it.
    pub direct_io: bool,
    /// Initial write cache mode.
    pub write_cache: WriteCache,
    /// The I/O engine.
    pub engine: Engine,
    /// Adaptive polling window in microseconds (0: never spin).
    pub poll_us: u32,
    /// Host CPUs the queue workers are pinned to (None: unpinned, and
    /// left out of the JSON, which then reads as before the option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_cpus: Option<CpuList>,
}

impl Default for DeviceOptions {
    /// The documented defaults, with one queue.
    fn default() -> Self {
        DeviceOptions {
            num_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
            read_only: false,
            logical_block_size: DEFAULT_LOGICAL_BLOCK_SIZE,
            serial: String::new(),
            direct_io: true,
            write_cache: WriteCache::Writeback,
            engine: Engine::Auto,
            poll_us: 0,
            queue_cpus: None,
        }
    }
}

/// The number of CPUs this process may run on (at least 1).
fn host_cpus() -> u16 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u16::try_from(n.get()).ok())
        .unwrap_or(1)
}

/// The default queue count for a VM with `vcpus` vCPUs: one per vCPU, at
/// most [`DEFAULT_MAX_QUEUES`], at least one.
pub fn default_num_queues(vcpus: Option<u16>) -> u16 {
    vcpus.unwrap_or_else(host_cpus).clamp(1, DEFAULT_MAX_QUEUES)
}

impl DeviceArgs {
    /// Applies the defaults that depend on other options and validates.
    pub fn resolve(&self) -> Result<DeviceOptions, Error> {
        if self.vcpus == Some(0) {
            return Err(Error::InvalidOption {
                option: "vcpus",
                reason: "0 is not a number of vCPUs; give the VM's -smp count".into(),
            });
        }
        let opts = DeviceOptions {
            num_queues: self
                .num_queues
                .unwrap_or_else(|| default_num_queues(self.vcpus)),
            queue_size: self.queue_size,
            read_only: self.read_only,
            logical_block_size: self.logical_block_size,
            serial: self.serial.clone(),
            direct_io: self.direct_io == OnOff::On,
            write_cache: self.write_cache,
            engine: self.engine,
            poll_us: self.poll_us,
            queue_cpus: self.queue_cpus.clone(),
        };
        opts.validate()?;
        Ok(opts)
    }
}

impl DeviceOptions {
    /// Checks every value a frontend, the kernel or the backend would
    /// refuse later, with a message saying what is allowed.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |option, reason: String| Err(Error::InvalidOption { option, reason });
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return bad(
                "num-queues",
                format!("{} is not within 1-{MAX_QUEUES}", self.num_queues),
            );
        }
        if !self.queue_size.is_power_of_two() || !(2..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            return bad(
                "queue-size",
                format!(
                    "{} is not a power of two within 2-{MAX_QUEUE_SIZE}",
                    self.queue_size
                ),
            );
        }
        let lbs = self.logical_block_size;
        if !lbs.is_power_of_two() || !(512..=65536).contains(&lbs) {
            return bad(
                "logical-block-size",
                format!("{lbs} is not a power of two within 512-65536"),
            );
        }
        if self.poll_us > MAX_POLL_US {
            return bad(
                "poll-us",
                format!("{} is above the maximum of {MAX_POLL_US}", self.poll_us),
            );
        }
        if self.serial.len() > SERIAL_LEN {
            return bad(
                "serial",
                format!(
                    "{:?} is {} bytes; at most {SERIAL_LEN} fit",
                    self.serial,
                    self.serial.len()
                ),
            );
        }
        if self.serial.contains('\0') {
            return bad("serial", "it contains a NUL byte".into());
        }
        Ok(())
    }

    /// The arguments that [`DeviceArgs`] parses back into exactly these
    /// options: `--num-queues` always (its default depends on the host),
    /// everything else only when it differs from the default. Values are
    /// joined with `=` so one starting with `-` stays a value.
    pub fn to_args(&self) -> Vec<OsString> {
        let d = DeviceOptions::default();
        let mut args: Vec<OsString> = vec![format!("--num-queues={}", self.num_queues).into()];
        if self.queue_size != d.queue_size {
            args.push(format!("--queue-size={}", self.queue_size).into());
        }
        if self.read_only {
            args.push("--read-only".into());
        }
        if self.logical_block_size != d.logical_block_size {
            args.push(format!("--logical-block-size={}", self.logical_block_size).into());
        }
        if !self.serial.is_empty() {
            args.push(format!("--serial={}", self.serial).into());
        }
        if !self.direct_io {
            args.push("--direct-io=off".into());
        }
        if self.write_cache != d.write_cache {
            args.push(format!("--write-cache={}", self.write_cache).into());
        }
        if self.engine != d.engine {
            args.push(format!("--engine={}", self.engine).into());
        }
        if self.poll_us != d.poll_us {
            args.push(format!("--poll-us={}", self.poll_us).into());
        }
        if let Some(cpus) = &self.queue_cpus {
            args.push(format!("--queue-cpus={cpus}").into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(args: &[OsString]) -> Result<DeviceOptions, String> {
        crate::testutil::parse(args).map(|(device, _)| device)
    }

    #[test]
    fn defaults_follow_vcpus() {
        let o = parse(&["--vcpus".into(), "2".into()]).unwrap();
        assert_eq!(o.num_queues, 2);
        assert_eq!(parse(&["--vcpus=16".into()]).unwrap().num_queues, 4);
        assert_eq!(
            parse(&["--vcpus=16".into(), "--num-queues=9".into()])
                .unwrap()
                .num_queues,
            9
        );
        let host = parse(&[]).unwrap().num_queues;
        assert!((1..=DEFAULT_MAX_QUEUES).contains(&host));
        assert!(parse(&["--vcpus=0".into()]).unwrap_err().contains("vCPUs"));
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        for (args, needle) in [
            (vec!["--num-queues=0"], "1-64"),
            (vec!["--num-queues=65"], "1-64"),
            (vec!["--queue-size=100"], "power of two"),
            (vec!["--logical-block-size=256"], "512-65536"),
            (vec!["--poll-us=20000"], "maximum"),
            (vec!["--serial=123456789012345678901"], "at most 20"),
            (vec!["--engine=fast"], "auto"),
            (vec!["--queue-cpus="], "not a CPU number"),
            (vec!["--queue-cpus=x"], "not a CPU number"),
            (vec!["--queue-cpus=3-1"], "write 1-3"),
            (vec!["--queue-cpus=0,0-2"], "named twice"),
            (vec!["--queue-cpus=1024"], "highest"),
        ] {
            let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
            let err = parse(&args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    fn options() -> impl Strategy<Value = DeviceOptions> {
        (
            1..=MAX_QUEUES,
            1u32..=15,
            any::<bool>(),
            9u32..=16,
            "[ -~]{0,20}",
            any::<bool>(),
            prop_oneof![Just(WriteCache::Writeback), Just(WriteCache::Writethrough)],
            prop_oneof![Just(Engine::Auto), Just(Engine::Sync), Just(Engine::Uring)],
            0..=MAX_POLL_US,
            proptest::option::of(cpu_list()),
        )
            .prop_map(
                |(nq, qs, ro, lbs, serial, direct, wc, engine, poll, cpus)| DeviceOptions {
                    num_queues: nq,
                    queue_size: 1 << qs,
                    read_only: ro,
                    logical_block_size: 1 << lbs,
                    serial,
                    direct_io: direct,
                    write_cache: wc,
                    engine,
                    poll_us: poll,
                    queue_cpus: cpus,
                },
            )
    }

    /// Lists of distinct CPUs in any order, so runs and gaps both occur.
    fn cpu_list() -> impl Strategy<Value = CpuList> {
        proptest::sample::subsequence((0..=MAX_CPU).collect::<Vec<_>>(), 1..12)
            .prop_flat_map(|v| Just(v).prop_shuffle())
            .prop_map(CpuList)
    }

    #[test]
    fn cpu_lists_read_and_write_as_linux_does() {
        let list: CpuList = "0-3,8,5-6".parse().unwrap();
        assert_eq!(list.cpus(), &[0, 1, 2, 3, 8, 5, 6]);
        assert_eq!(list.to_string(), "0-3,8,5-6");
        assert_eq!("2,1".parse::<CpuList>().unwrap().to_string(), "2,1");
        assert_eq!(" 4 ".parse::<CpuList>().unwrap().for_queue(3), 4);
        let two: CpuList = "6,7".parse().unwrap();
        assert_eq!(
            (0..4).map(|q| two.for_queue(q)).collect::<Vec<_>>(),
            [6, 7, 6, 7]
        );
    }

    proptest! {
        /// What one program renders, another parses back to the same options.
        #[test]
        fn render_then_parse_is_identity(opts in options()) {
            prop_assert_eq!(parse(&opts.to_args()).unwrap(), opts);
        }

        /// The JSON form (the control socket's `config` reply) round-trips too.
        #[test]
        fn json_round_trip(opts in options()) {
            let text = serde_json::to_string(&opts).unwrap();
            prop_assert_eq!(serde_json::from_str::<DeviceOptions>(&text).unwrap(), opts);
        }
    }
}
