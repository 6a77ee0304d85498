//! `extstorage serve`: attach, open and serve a volume over vhost-user-blk
//! in the foreground until SIGTERM/SIGINT/SIGHUP, then close and detach.

use anyhow::Context;
use extstorage_core::{Access, ExtStorage, interrupt};
use extstorage_serve::{ServeRequest, StopHandle, VolumeServer};
use extstorage_serve_api::{DeviceArgs, ListenArgs, RunDir, systemd};
use serde_json::json;

use crate::exit;
use crate::output::Output;
use crate::volume::VolumeId;

/// Examples and exit codes under `serve --help`.
pub const AFTER_HELP: &str = "\
Examples:
  extstorage serve --provider loopfile --volume vm1.disk0 -p dir=/srv/vols --vcpus 4
  extstorage kvm-args --access vhost-user --provider loopfile --volume vm1.disk0 \\
      -p dir=/srv/vols --memory-mib 2048        # QEMU arguments matching the server
  extstorage grow --provider loopfile --volume vm1.disk0 -p dir=/srv/vols --amount 10G
  extstorage status --provider loopfile --volume vm1.disk0
  systemctl start extstorage-serve@loopfile.vm1.disk0   # as a unit (docs/operations.md)

Ready when the first line is printed (and READY=1 under systemd). A volume is
served at most once per node: a second serve exits 4. If the server dies the
volume stays attached, and the next serve picks it up.";

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    vol: VolumeId,
    /// Open the volume shared (VOL_OPEN_EXCLUSIVE=False): the target of a
    /// live migration, while the source still serves it.
    #[arg(long)]
    shared: bool,
    /// On stop, leave the volume open and attached (e.g. to restart the
    /// server under a running guest that reconnects).
    #[arg(long)]
    keep_attached: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    listen: ListenArgs,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread and starts the thread
/// that waits for them and stops the server. Started once the server runs:
/// until then the process has one thread, so `--user` can fork its I/O
/// process. (Until then the CLI's handlers catch the signals: one during
/// attach or open is forwarded to the script and fails the start.)
///
/// The first signal stops the server, which then runs close and detach. A
/// further one is handed to the core ([`interrupt::request`]): the close or
/// detach script running then gets it forwarded to its process group, and
/// no further script starts.
fn signal_thread(stop: StopHandle) -> anyhow::Result<()> {
    let signals = extstorage_vhost_user_blk::threads::stop_signals();
    signals
        .thread_block()
        .context("blocking SIGTERM/SIGINT/SIGHUP")?;
    // A signal the CLI's handler caught between the start and the block
    // above is a stop request too; cleared so close and detach still run.
    let early = interrupt::pending();
    if let Some(sig) = early {
        interrupt::clear();
        tracing::info!(signal = %sig, "stop requested");
        let _ = systemd::notify("STOPPING=1");
        stop.stop();
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = early.is_some();
            while let Ok(sig) = signals.wait() {
                if stopping {
                    tracing::warn!(signal = %sig, "stop requested again: interrupting the running script");
                    interrupt::request(sig);
                    continue;
                }
                stopping = true;
                tracing::info!(signal = %sig, "stop requested");
                let _ = systemd::notify("STOPPING=1");
                stop.stop();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Runs `serve`.
pub fn run(es: &ExtStorage, args: ServeArgs, run_dir: RunDir, out: &Output) -> anyhow::Result<u8> {
    // Every option is checked before anything runs.
    let device = args.device.resolve()?;
    let listen = args.listen.resolve()?;
    let server = VolumeServer::start(
        es,
        ServeRequest {
            volume: args.vol.spec(Some(Access::Kernelspace)),
            shared: args.shared,
            keep_attached: args.keep_attached,
            device,
            listen,
            run_dir,
        },
    )?;
    signal_thread(server.stop_handle())?;
    let opts = server.device_options();
    let ready = json!({
        "ok": true,
        "serving": server.device_path(),
        "socket": server.socket(),
        "control_socket": server.control_socket(),
        "num_queues": opts.num_queues,
        "queue_size": opts.queue_size,
        "read_only": opts.read_only,
    });
    out.print_line(&ready, || {
        format!(
            "serving {} on {} ({} queues); stop with SIGTERM or Ctrl-C",
            server.device_path().display(),
            server.socket().map_or_else(
                || "the inherited socket".into(),
                |s| s.display().to_string()
            ),
            opts.num_queues
        )
    });
    if let Err(e) = systemd::notify("READY=1") {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
    server.run()?;
    Ok(exit::OK)
}
