//! `extstorage kvm-args`: the full QEMU argv fragment that gives a guest a
//! volume, in each access mode (kernelspace block device, userspace URI,
//! vhost-user socket).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use extstorage_core::{Access, ExtStorage};
use extstorage_uri::{AccessMode, DiskAccess, KvmDisk, QemuVersion};
use serde_json::json;

use crate::exit;
use crate::output::Output;
use crate::uri::{DiskArgs, argv_strings, parse_provider_uri, secrets_json, write_secrets};
use crate::volume::VolumeId;

/// Where vhost-user sockets go when `--socket` is not given.
pub const DEFAULT_SOCKET_DIR: &str = "/run/extstorage/vhost-user";

/// The version assumed when no `qemu-system-x86_64` is installed.
pub const ASSUMED_QEMU: QemuVersion = QemuVersion::new(10, 0, 0);

/// The backend daemon's binary name.
const DAEMON: &str = "extstorage-vhost-user-blk";

/// Arguments of `kvm-args`.
#[derive(Debug, clap::Args)]
pub struct KvmArgsArgs {
    #[command(flatten)]
    vol: VolumeId,
    /// Hypervisor whose URI to use for userspace access.
    #[arg(long, default_value = "kvm")]
    hypervisor: String,
    /// Access mode: kernelspace (QEMU opens the block device), userspace
    /// (the provider's URI) or vhost-user (a backend daemon serves the block
    /// device). Also sets EXTP_ACCESS for attach (userspace for userspace,
    /// kernelspace otherwise). [default: kernelspace when attach gives a
    /// device, else userspace]
    #[arg(long, value_name = "MODE")]
    access: Option<AccessMode>,
    /// vhost-user: the backend's unix socket (at most 107 bytes); by
    /// default /run/extstorage/vhost-user/PROVIDER@VOLUME.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Number of virtqueues.
    #[arg(long, value_name = "N")]
    num_queues: Option<u16>,
    /// Virtqueue size (a power of two up to 1024).
    #[arg(long, value_name = "N")]
    queue_size: Option<u16>,
    /// QEMU version the arguments are for (X.Y or X.Y.Z). [default: from
    /// `qemu-system-x86_64 --version`, else 10.0]
    #[arg(long, value_name = "X.Y")]
    qemu_version: Option<QemuVersion>,
    /// Guest device id and top block node name (ID-file is the protocol
    /// node, ID-chr the vhost-user chardev).
    #[arg(long, value_name = "ID", default_value = "disk0")]
    disk_id: String,
    /// Boot order of the device.
    #[arg(long, value_name = "N")]
    bootindex: Option<u32>,
    /// vhost-user: guest RAM in MiB (same as -m); adds the shared memory
    /// backend vhost-user needs to the argv.
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// vhost-user: reconnect to a restarted backend after this many ms.
    #[arg(long, value_name = "MS")]
    reconnect_ms: Option<u32>,
    #[command(flatten)]
    disk: DiskArgs,
}

/// The default vhost-user socket of a volume:
/// `DEFAULT_SOCKET_DIR/<provider>@<volume>.sock` (one unambiguous name per
/// volume, see `extstorage_core::names::volume_key`).
pub fn default_socket(provider: &str, volume: &str) -> PathBuf {
    Path::new(DEFAULT_SOCKET_DIR).join(format!(
        "{}.sock",
        extstorage_core::names::volume_key(provider, volume)
    ))
}

/// The QEMU version: `qemu-system-x86_64 --version` when it runs, else
/// [`ASSUMED_QEMU`].
fn detect_qemu_version() -> QemuVersion {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match QemuVersion::from_version_output(&text) {
                Ok(v) => {
                    tracing::debug!(version = %v, "detected QEMU version");
                    v
                }
                Err(e) => {
                    tracing::warn!(error = %e, assumed = %ASSUMED_QEMU, "cannot read the QEMU version; pass --qemu-version");
                    ASSUMED_QEMU
                }
            }
        }
        _ => {
            tracing::info!(assumed = %ASSUMED_QEMU, "qemu-system-x86_64 not runnable; assuming its version");
            ASSUMED_QEMU
        }
    }
}

/// The backend daemon: next to this binary when it is there, else by name
/// from PATH.
fn daemon_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(DAEMON)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(DAEMON))
}

/// The daemon command line that serves `device` on `socket` to match the
/// guest device: as many queues (QEMU refuses a backend with fewer), the
/// queue size, read-only, and the cache mode's write-back/write-through half.
fn serve_command(device: &Path, socket: &Path, disk: &KvmDisk) -> Vec<OsString> {
    let mut cmd: Vec<OsString> = vec![
        daemon_path().into_os_string(),
        "serve".into(),
        "--path".into(),
        device.as_os_str().to_owned(),
        "--socket".into(),
        socket.as_os_str().to_owned(),
    ];
    if let Some(n) = disk.num_queues {
        cmd.extend(["--num-queues".into(), n.to_string().into()]);
    }
    if let Some(q) = disk.queue_size {
        cmd.extend(["--queue-size".into(), q.to_string().into()]);
    }
    if disk.options.read_only {
        cmd.push("--read-only".into());
    }
    if !disk.options.cache.write_cache() {
        cmd.extend(["--write-cache".into(), "writethrough".into()]);
    }
    cmd
}

/// Runs `kvm-args`: attach, pick the access, render and print the argv.
pub fn run(es: &ExtStorage, args: KvmArgsArgs, out: &Output) -> anyhow::Result<u8> {
    let extp_access = match args.access {
        Some(AccessMode::Userspace) => Access::Userspace,
        _ => Access::Kernelspace,
    };
    let mut vol = es.volume(args.vol.spec(extp_access))?;
    let (provider, name) = (vol.provider().name.clone(), vol.name().to_owned());
    let info = vol.attach()?;
    let mode = args
        .access
        .unwrap_or_else(|| AccessMode::default_for(info.dev_path.is_some()));
    let access = match mode {
        AccessMode::Userspace => {
            // The core's error when the provider has no URI for this hypervisor.
            let uri = vol.userspace_uri(&args.hypervisor)?;
            DiskAccess::Userspace {
                source: parse_provider_uri(&vol, &uri)?,
            }
        }
        _ => {
            let socket = args
                .socket
                .clone()
                .unwrap_or_else(|| default_socket(&provider, &name));
            if info.dev_path.is_none() {
                // The core's error (exit 1): the provider offers no device.
                return Err(extstorage_core::Error::NoBlockDevice {
                    provider,
                    volume: name,
                    what: if mode == AccessMode::VhostUser {
                        "vhost-user access"
                    } else {
                        "kernelspace access"
                    },
                }
                .into());
            }
            DiskAccess::resolve(mode, info.dev_path.as_deref(), None, Some(&socket))?
        }
    };
    let qemu_version = args.qemu_version.unwrap_or_else(detect_qemu_version);
    let disk = KvmDisk {
        id: args.disk_id.clone(),
        options: args.disk.options(&provider, &name),
        bootindex: args.bootindex,
        num_queues: args.num_queues,
        queue_size: args.queue_size,
        reconnect_ms: args.reconnect_ms,
        memory_mib: args.memory_mib,
        qemu_version,
    };
    let rendered = disk.render(&access)?;
    write_secrets(&rendered.secrets)?;
    let serve = match &access {
        DiskAccess::VhostUser { device, socket } => Some(serve_command(device, socket, &disk)),
        _ => None,
    };
    tracing::info!(volume = %name, provider = %provider, access = %mode, "rendered KVM arguments");
    let argv = argv_strings(&rendered.argv);
    let value = json!({
        "access": mode.as_str(),
        "qemu_version": qemu_version.to_string(),
        "dev_path": info.dev_path,
        "node_name": rendered.node_name,
        "device_id": rendered.device_id,
        "argv": argv,
        "secrets": secrets_json(&rendered.secrets),
        "notes": rendered.notes,
        "serve_command": serve.as_deref().map(argv_strings),
        "socket": match &access {
            DiskAccess::VhostUser { socket, .. } => Some(socket),
            _ => None,
        },
    });
    if !out.json {
        for n in &rendered.notes {
            eprintln!("extstorage: note: {n}");
        }
        if let Some(cmd) = &serve {
            eprintln!(
                "extstorage: note: start the backend first: {}",
                argv_strings(cmd).join(" ")
            );
        }
    }
    out.print(&value, || argv.join("\n"));
    Ok(exit::OK)
}
