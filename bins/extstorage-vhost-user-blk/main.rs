//! `extstorage-vhost-user-blk`: serve a volume to QEMU over vhost-user-blk.
//!
//! Thin: parses the command line, builds a [`Config`], and calls the
//! `extstorage-vhost-user-blk` crate. Exit codes: 0 success (including a
//! SIGTERM/SIGINT shutdown), 1 runtime failure, 2 bad usage (clap).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use extstorage_vhost_user_blk::{Config, Device, EngineKind, Server, WriteCache, control};
use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Serve a file or block device to QEMU over vhost-user-blk"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a volume until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Ask a running daemon to re-read the backing size and tell the guest.
    Resize {
        /// The daemon's --control-socket.
        #[arg(long)]
        control_socket: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CacheArg {
    Writeback,
    Writethrough,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineArg {
    Auto,
    Sync,
    Uring,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The regular file or block device to serve.
    #[arg(long)]
    path: PathBuf,
    /// The vhost-user unix socket to listen on (a stale file is removed).
    #[arg(
        long,
        required_unless_present = "listen_fd",
        conflicts_with = "listen_fd"
    )]
    socket: Option<PathBuf>,
    /// An inherited listening unix socket (socket activation).
    #[arg(long)]
    listen_fd: Option<RawFd>,
    /// Export read-only.
    #[arg(long)]
    read_only: bool,
    /// Number of request queues (one worker thread each).
    #[arg(long, default_value_t = 1)]
    num_queues: u16,
    /// Maximum queue size (power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Logical block size in bytes.
    #[arg(long, default_value_t = 512)]
    logical_block_size: u32,
    /// Serial number returned by GET_ID (at most 20 bytes).
    #[arg(long, default_value = "")]
    serial: String,
    /// Bypass the host page cache (falls back with a warning where unsupported).
    #[arg(long, value_enum, default_value = "on")]
    direct_io: OnOff,
    /// Initial write cache mode.
    #[arg(long, value_enum, default_value = "writeback")]
    write_cache: CacheArg,
    /// Unix socket accepting "resize" requests.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// I/O engine: auto (io_uring; on a backing without non-blocking I/O,
    /// e.g. tmpfs, small requests synchronously and large ones on io_uring),
    /// sync or uring.
    #[arg(long, value_enum, default_value = "auto")]
    engine: EngineArg,
    /// Adaptive polling: after a batch, spin up to this many microseconds
    /// for more requests before sleeping (0 = off). Lowers latency, costs
    /// CPU: a queue worker spins for this long after every batch.
    #[arg(long, default_value_t = 0)]
    poll_us: u32,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Resize { control_socket } => control::request_resize(&control_socket)
            .map(|size| println!("{size}"))
            .with_context(|| "resize failed".to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extstorage-vhost-user-blk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    // Block the shutdown signals in every thread; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;

    let cfg = Config {
        path: args.path,
        read_only: args.read_only,
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        logical_block_size: args.logical_block_size,
        serial: args.serial,
        direct_io: matches!(args.direct_io, OnOff::On),
        write_cache: match args.write_cache {
            CacheArg::Writeback => WriteCache::Writeback,
            CacheArg::Writethrough => WriteCache::Writethrough,
        },
        engine: match args.engine {
            EngineArg::Auto => EngineKind::Auto,
            EngineArg::Sync => EngineKind::Sync,
            EngineArg::Uring => EngineKind::Uring,
        },
        poll_us: args.poll_us,
    };
    let dev = Device::open(cfg)?;
    let server = match (&args.socket, args.listen_fd) {
        (Some(sock), _) => Server::bind(Arc::clone(&dev), sock)?,
        (None, Some(fd)) => Server::from_listen_fd(Arc::clone(&dev), fd)?,
        (None, None) => anyhow::bail!("give --socket PATH or --listen-fd FD"),
    };
    if let Some(path) = &args.control_socket {
        control::spawn(Arc::clone(&dev), path)?;
    }

    let shutdown = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "shutdown requested");
            }
            shutdown.shutdown();
        })
        .context("starting the signal thread")?;

    let watch_dev = Arc::clone(&dev);
    let watch_stop = server.shutdown_handle();
    std::thread::Builder::new()
        .name("size-watch".into())
        .spawn(move || {
            while !watch_stop.is_requested() {
                std::thread::sleep(Duration::from_secs(1));
                if let Err(e) = watch_dev.poll_size() {
                    tracing::warn!(error = %e, "cannot check the backing size");
                }
            }
        })
        .context("starting the size watcher")?;

    server.run()?;
    if let Some(path) = &args.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
