//! `extstorage serve`: attach, open and serve a volume over vhost-user-blk
//! in the foreground until SIGTERM/SIGINT/SIGHUP, then close and detach.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use extstorage_core::{Access, ExtStorage};
use extstorage_serve::{ServeRequest, VolumeServer};
use extstorage_serve_api::{DeviceArgs, ListenArgs, RunDir, systemd};
use extstorage_vhost_user_blk::ShutdownHandle;
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use crate::exit;
use crate::output::Output;
use crate::volume::VolumeId;

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

/// What the signal thread stops: the server once it runs, and whether a
/// stop was asked for before it did.
#[derive(Default)]
struct StopState {
    handle: Option<ShutdownHandle>,
    requested: bool,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread and starts the thread
/// that waits for them.
fn signal_thread(state: Arc<Mutex<StopState>>) -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .context("blocking SIGTERM/SIGINT/SIGHUP")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "stop requested");
                let _ = systemd::notify("STOPPING=1");
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.requested = true;
                if let Some(h) = &st.handle {
                    h.shutdown();
                }
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
    let state = Arc::new(Mutex::new(StopState::default()));
    signal_thread(Arc::clone(&state))?;
    let server = VolumeServer::start(
        es,
        ServeRequest {
            volume: args.vol.spec(Access::Kernelspace),
            shared: args.shared,
            keep_attached: args.keep_attached,
            device,
            listen,
            run_dir,
        },
    )?;
    {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.handle = Some(server.shutdown_handle());
        if st.requested {
            server.shutdown_handle().shutdown();
        }
    }
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
