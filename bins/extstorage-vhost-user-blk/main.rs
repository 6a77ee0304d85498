//! `extstorage-vhost-user-blk`: serve a file or block device to QEMU over
//! vhost-user-blk.
//!
//! Thin: parses the command line (the device and socket options are the
//! serve API's, shared with `extstorage serve`), and calls the
//! `extstorage-vhost-user-blk` crate. Exit codes: 0 success (including a
//! SIGTERM/SIGINT shutdown), 1 runtime failure, 2 bad usage.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use extstorage_serve_api::control::{self, Request, ResizeReply, ServedConfig, StatusReport};
use extstorage_serve_api::{DeviceArgs, ListenArgs, RbdArgs, systemd};
use extstorage_vhost_user_blk::{Config, ServeSpec, Serving, control::Identity};
use nix::sys::signal::{SigSet, Signal};

const AFTER_HELP: &str = "\
Examples:
  extstorage-vhost-user-blk serve --path /dev/loop0 --socket /run/vol1.sock --num-queues 2 \\
      --control-socket /run/vol1.ctl
  extstorage-vhost-user-blk serve --rbd rbd/vm1.disk0 --rbd-conf /etc/ceph/ceph.conf \\
      --rbd-id ganeti --socket /run/vm1.sock --control-socket /run/vm1.ctl
  extstorage-vhost-user-blk resize --control-socket /run/vol1.ctl
  extstorage-vhost-user-blk status --control-socket /run/vol1.ctl

To serve an ExtStorage volume (attach, open, serve, close, detach), use
`extstorage serve`, which takes the same device and socket options.";

#[derive(Debug, Parser)]
#[command(
    name = "extstorage-vhost-user-blk",
    version,
    about = "Serve a file, block device or Ceph RBD image to QEMU over vhost-user-blk",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a file, block device or RBD image until SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Ask a running daemon to re-read the backing size and tell the guest.
    Resize(ControlArgs),
    /// Print a running daemon's per-queue counters (JSON).
    Status(ControlArgs),
    /// Print what a running daemon serves and how (JSON).
    Config(ControlArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or
    /// powershell.
    Completions(extstorage_clidoc::CompletionsArgs),
    /// Write a man page per command into a directory (for packaging).
    #[command(hide = true)]
    Man(extstorage_clidoc::ManArgs),
}

#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// The daemon's --control-socket.
    #[arg(long, value_name = "PATH")]
    control_socket: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["path", "rbd"]))]
struct ServeArgs {
    /// The regular file or block device to serve (or --rbd).
    #[arg(long, value_name = "PATH", conflicts_with = "rbd")]
    path: Option<PathBuf>,
    #[command(flatten)]
    rbd: RbdArgs,
    /// A unix socket answering resize, status and config requests.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    listen: ListenArgs,
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
        Cmd::Serve(args) => serve(*args),
        Cmd::Resize(c) => control::call::<ResizeReply>(&c.control_socket, Request::Resize)
            .map(|r| println!("{}", r.size_bytes))
            .context("resize failed"),
        Cmd::Status(c) => print_json::<StatusReport>(&c, Request::Status),
        Cmd::Config(c) => print_json::<ServedConfig>(&c, Request::Config),
        Cmd::Completions(a) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            extstorage_clidoc::write_completions(cmd, a.shell, &mut std::io::stdout())
                .map_err(Into::into)
        }
        Cmd::Man(a) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            extstorage_clidoc::write_man_pages(cmd, &a.dir)
                .map(|pages| {
                    for page in pages {
                        println!("{}", page.display());
                    }
                })
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extstorage-vhost-user-blk: {e:#}");
            std::process::ExitCode::from(if is_usage(&e) { 2 } else { 1 })
        }
    }
}

/// Whether `e` is a bad option value (exit 2) rather than a runtime
/// failure (exit 1).
fn is_usage(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<extstorage_serve_api::Error>(),
        Some(extstorage_serve_api::Error::InvalidOption { .. })
    ) || matches!(
        e.downcast_ref::<extstorage_vhost_user_blk::Error>(),
        Some(extstorage_vhost_user_blk::Error::InvalidConfig(
            extstorage_serve_api::Error::InvalidOption { .. }
        ))
    )
}

fn print_json<T: serde::de::DeserializeOwned + serde::Serialize>(
    c: &ControlArgs,
    request: Request,
) -> Result<()> {
    let value: T = control::call(&c.control_socket, request)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    // Every option is checked before anything is opened or bound.
    let device = args.device.resolve()?;
    let listen = args.listen.resolve()?;
    listen.check_on_host()?;
    if let Some(ctl) = &args.control_socket {
        extstorage_serve_api::listen::check_socket_path("control-socket", ctl)?;
    }
    let config = match (args.rbd.resolve()?, args.path) {
        (Some(src), _) => Config {
            device,
            ..Config::rbd(src)
        },
        (None, Some(path)) => Config {
            path,
            device,
            rbd: None,
        },
        (None, None) => anyhow::bail!("give --path PATH or --rbd POOL/IMAGE"),
    };
    // Block the shutdown signals in every thread; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;

    let serving = Serving::start(ServeSpec {
        config,
        listen,
        control_socket: args.control_socket,
        identity: Identity::default(),
    })?;

    let shutdown = serving.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "shutdown requested");
                let _ = systemd::notify("STOPPING=1");
            }
            shutdown.shutdown();
        })
        .context("starting the signal thread")?;
    if let Err(e) = systemd::notify("READY=1") {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
    serving.run()?;
    Ok(())
}
