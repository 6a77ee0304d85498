//! `extstorage status`: a served volume's counters, from its control socket.

use std::fmt::Write as _;

use extstorage_serve_api::RunDir;
use extstorage_serve_api::control::{self, QueueStatus, Request, StatusReport};

use crate::exit;
use crate::output::Output;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Provider name.
    #[arg(long)]
    provider: String,
    /// Volume name.
    #[arg(long)]
    volume: String,
}

/// The control socket of a served volume, after checking the names.
pub fn control_socket(
    run_dir: &RunDir,
    provider: &str,
    volume: &str,
) -> anyhow::Result<std::path::PathBuf> {
    extstorage_core::names::validate_provider_name(provider)?;
    extstorage_core::names::validate_volume_name(volume)?;
    Ok(run_dir.control_socket(&crate::volume_key(provider, volume)))
}

fn latency_text(q: &QueueStatus) -> String {
    let total: u64 = q.latency.iter().map(|b| b.count).sum();
    if total == 0 {
        return "-".into();
    }
    // The bucket holding the median and the 99th percentile.
    let pick = |frac: f64| {
        let want = (total as f64 * frac).ceil() as u64;
        let mut seen = 0;
        for b in &q.latency {
            seen += b.count;
            if seen >= want {
                return b
                    .lt_us
                    .map_or_else(|| "slower".to_owned(), |us| format!("<{us}us"));
            }
        }
        "-".into()
    };
    format!("p50 {} p99 {}", pick(0.5), pick(0.99))
}

fn report_text(r: &StatusReport) -> String {
    let mut t = format!(
        "{} ({} bytes{}), {}, {} connection(s), up {} s\n",
        r.path.display(),
        r.size_bytes,
        if r.read_only { ", read-only" } else { "" },
        if r.connected {
            "frontend connected"
        } else {
            "no frontend"
        },
        r.connections,
        r.uptime_secs
    );
    let _ = writeln!(
        t,
        "queue  requests    reads   writes  flushes  bytes-read  bytes-written  errors  in-flight  latency"
    );
    for q in &r.queues {
        let _ = writeln!(
            t,
            "{:>5}  {:>8} {:>8} {:>8} {:>8} {:>11} {:>14} {:>7} {:>10}  {}",
            q.index,
            q.requests.total(),
            q.requests.read,
            q.requests.write,
            q.requests.flush,
            q.bytes_read,
            q.bytes_written,
            q.errors,
            q.in_flight,
            latency_text(q)
        );
    }
    for q in &r.queues {
        if let Some(why) = &q.stopped {
            let _ = writeln!(t, "queue {} stopped: {why}", q.index);
        }
    }
    t.trim_end().to_owned()
}

/// Runs `status`.
pub fn run(args: &StatusArgs, run_dir: &RunDir, out: &Output) -> anyhow::Result<u8> {
    let path = control_socket(run_dir, &args.provider, &args.volume)?;
    let report: StatusReport = control::call(&path, Request::Status)?;
    out.print(&report, || report_text(&report))?;
    Ok(exit::OK)
}
