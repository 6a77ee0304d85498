//! `extstorage kvm-args`: the full QEMU argv fragment that gives a guest a
//! volume, in each access mode (kernelspace block device, userspace URI,
//! vhost-user socket).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use extstorage_core::{Access, ExtStorage};
use extstorage_serve_api::control::{self, Request, ServedConfig};
use extstorage_serve_api::{DeviceArgs, DeviceOptions, RunDir};
use extstorage_uri::{AccessMode, DiskAccess, KvmDisk, QemuVersion};
use serde_json::json;

use crate::exit;
use crate::output::{Output, note};

/// How long QEMU waits before reconnecting to a restarted vhost-user
/// server, by default: a restart (an upgrade, `systemctl restart`) then
/// costs the guest a pause, not its disk.
const DEFAULT_RECONNECT_MS: u32 = 1000;
use crate::uri::{DiskArgs, argv_strings, parse_provider_uri, secrets_json, write_secrets};
use crate::volume::{VolumeId, check_hypervisor};

/// The version assumed when no `qemu-system-x86_64` is installed.
pub const ASSUMED_QEMU: QemuVersion = QemuVersion::new(10, 0, 0);

/// What `kvm-args` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvmFormat {
    /// QEMU arguments, one per line.
    Argv,
    /// A libvirt `<disk type='vhostuser'>` element (vhost-user only).
    LibvirtXml,
}

/// Arguments of `kvm-args`.
#[derive(Debug, clap::Args)]
pub struct KvmArgsArgs {
    #[command(flatten)]
    vol: VolumeId,
    /// Hypervisor whose URI to use for userspace access.
    #[arg(long, default_value = "kvm")]
    hypervisor: String,
    /// Access mode: kernelspace (QEMU opens the block device), userspace
    /// (the provider's URI) or vhost-user (`extstorage serve` serves the
    /// block device). Also sets EXTP_ACCESS for attach (userspace for
    /// userspace, kernelspace otherwise). [default: kernelspace when attach
    /// gives a device, else userspace]
    #[arg(long, value_name = "MODE")]
    access: Option<AccessMode>,
    /// vhost-user: the backend's unix socket (at most 107 bytes). When the
    /// volume is served on this node, its socket. [default:
    /// RUN_DIR/vhost-user/PROVIDER.VOLUME.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
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
    /// vhost-user: QEMU reconnects to a restarted server after this many
    /// ms, and the guest carries on without an I/O error (the server
    /// resubmits what was in flight); 0: no reconnection, a server restart
    /// leaves the disk dead.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_RECONNECT_MS)]
    reconnect_ms: u32,
    /// Output form: argv (one QEMU argument per line) or libvirt-xml (a
    /// `<disk type='vhostuser'>` element; vhost-user access only).
    #[arg(long, value_enum, default_value = "argv")]
    format: KvmFormat,
    /// libvirt-xml: the guest disk name (`vda`, `vdb`, ...).
    #[arg(long, value_name = "DEV", default_value = "vda")]
    target_dev: String,
    #[command(flatten)]
    disk: DiskArgs,
    /// The device options: for vhost-user they must match the server's, and
    /// do when the volume is served on this node (its options are used); the
    /// same flags as `extstorage serve` take, so a printed serve command and
    /// these arguments agree.
    #[command(flatten)]
    device: DeviceArgs,
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

/// The vhost-user side of the disk: the socket and device options QEMU's
/// arguments must match, and, when nothing serves the volume yet, the
/// `extstorage serve` command that will.
struct VhostUserPlan {
    socket: PathBuf,
    device: DeviceOptions,
    served: bool,
    serve_command: Option<Vec<OsString>>,
}

/// Asks the volume's server on this node for what it serves; otherwise
/// plans from the arguments (same defaults as `extstorage serve`).
fn plan_vhost_user(args: &KvmArgsArgs, run_dir: &RunDir) -> anyhow::Result<VhostUserPlan> {
    let key = crate::volume_key(&args.vol.provider, &args.vol.volume);
    let control_socket = run_dir.control_socket(&key);
    match control::call::<ServedConfig>(&control_socket, Request::Config) {
        Ok(served) => {
            let Some(socket) = served.socket else {
                anyhow::bail!(
                    "volume {:?} is served on an inherited socket whose path is unknown; \
                     pass the socket QEMU should use with --socket",
                    args.vol.volume
                );
            };
            let conflicts = [
                args.socket.as_ref().is_some_and(|s| *s != socket).then(|| {
                    format!(
                        "--socket {} (served on {})",
                        s_display(&args.socket),
                        socket.display()
                    )
                }),
                args.device
                    .num_queues
                    .is_some_and(|n| n != served.device.num_queues)
                    .then(|| {
                        format!(
                            "--num-queues {} (served with {})",
                            args.device.num_queues.unwrap_or(0),
                            served.device.num_queues
                        )
                    }),
            ];
            let conflicts: Vec<String> = conflicts.into_iter().flatten().collect();
            if !conflicts.is_empty() {
                anyhow::bail!(
                    "volume {:?} is served (pid {}) with other settings: {}; drop the options to \
                     use the server's, or restart `extstorage serve` with them",
                    args.vol.volume,
                    served.pid,
                    conflicts.join(", ")
                );
            }
            Ok(VhostUserPlan {
                socket,
                device: served.device,
                served: true,
                serve_command: None,
            })
        }
        Err(extstorage_serve_api::Error::NotServing { .. }) => {
            let device = args.device.resolve()?;
            let socket = args
                .socket
                .clone()
                .unwrap_or_else(|| run_dir.vhost_user_socket(&key));
            let serve_command = serve_command(args, &device, &socket);
            Ok(VhostUserPlan {
                socket,
                device,
                served: false,
                serve_command: Some(serve_command),
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn s_display(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The `extstorage serve` command line that serves the volume with
/// `device` on `socket`: this binary, the global options that locate
/// providers, locks and the run directory, the volume and the device
/// options, rendered by the serve API so `serve` parses them back exactly.
fn serve_command(args: &KvmArgsArgs, device: &DeviceOptions, socket: &Path) -> Vec<OsString> {
    let exe = std::env::current_exe()
        .map(PathBuf::into_os_string)
        .unwrap_or_else(|_| "extstorage".into());
    let mut cmd: Vec<OsString> = vec![exe];
    cmd.extend(crate::global_args());
    cmd.push("serve".into());
    cmd.extend(args.vol.to_args());
    cmd.extend(device.to_args());
    cmd.push("--socket".into());
    cmd.push(socket.as_os_str().to_owned());
    cmd
}

/// Runs `kvm-args`: check every option, attach, pick the access, render
/// and print the argv.
pub fn run(
    es: &ExtStorage,
    args: &KvmArgsArgs,
    run_dir: &RunDir,
    out: &Output,
) -> anyhow::Result<u8> {
    // Options first: nothing runs when one is wrong (attach may start a
    // daemon).
    check_hypervisor(&args.hypervisor)?;
    args.disk.check()?;
    // As in Ganeti, an `access` disk parameter picks the access mode when
    // --access does not (a bad value is the core's error, below).
    let param_mode = match args.vol.param("access").map(str::parse::<Access>) {
        Some(Ok(Access::Userspace)) => Some(AccessMode::Userspace),
        Some(Ok(Access::Kernelspace)) => Some(AccessMode::Kernelspace),
        _ => None,
    };
    let chosen = args.access.or(param_mode);
    let extp_access = args.access.map(|mode| match mode {
        AccessMode::Userspace => Access::Userspace,
        _ => Access::Kernelspace,
    });
    let device = args.device.resolve()?;
    if args.format == KvmFormat::LibvirtXml && args.access != Some(AccessMode::VhostUser) {
        anyhow::bail!(
            "--format libvirt-xml renders a vhost-user disk: add --access vhost-user (for the \
             other access modes use the argv form)"
        );
    }
    let qemu_version = args.qemu_version.unwrap_or_else(detect_qemu_version);
    let mut vol = es.volume(args.vol.clone().spec(extp_access))?;
    let (provider, name) = (vol.provider().name.clone(), vol.name().to_owned());
    let options = args.disk.options(&provider, &name, device.read_only);
    let vhost = match args.access {
        Some(AccessMode::VhostUser) => Some(plan_vhost_user(args, run_dir)?),
        _ => None,
    };
    let mut disk = KvmDisk {
        id: args.disk_id.clone(),
        options,
        bootindex: args.bootindex,
        // QEMU's own virtio-blk: only when asked for; vhost-user: always
        // what the server offers.
        num_queues: args.device.num_queues,
        queue_size: None,
        reconnect_ms: (args.reconnect_ms > 0).then_some(args.reconnect_ms),
        memory_mib: args.memory_mib,
        qemu_version,
    };
    if let Some(plan) = &vhost {
        disk.num_queues = Some(plan.device.num_queues);
        // QEMU's queue-size is at most 1024, and at most the server's.
        disk.queue_size = Some(plan.device.queue_size.min(1024));
        disk.options.read_only = plan.device.read_only;
    }
    disk.validate_for(chosen, vhost.as_ref().map(|p| p.socket.as_path()))?;
    // The libvirt disk depends on the server's settings only: rendered (and
    // so checked) before attach too.
    let libvirt_xml = match (&vhost, args.format) {
        (Some(plan), KvmFormat::LibvirtXml) => Some(extstorage_uri::libvirt::vhost_user_disk_xml(
            &plan.socket,
            plan.device.num_queues,
            disk.queue_size,
            (args.reconnect_ms > 0).then_some(args.reconnect_ms),
            &args.target_dev,
        )?),
        _ => None,
    };
    let info = vol.attach()?;
    let mode = chosen.unwrap_or_else(|| AccessMode::default_for(info.dev_path.is_some()));
    let rbd = rbd_image(&info.uris);
    let access = if let (AccessMode::VhostUser, Some(plan), None, Some(image)) =
        (mode, &vhost, &info.dev_path, rbd)
    {
        // No block device, but an RBD image: `extstorage serve` serves it
        // through the rbd engine.
        extstorage_uri::kvm::check_socket_path(&plan.socket)?;
        DiskAccess::VhostUser {
            device: PathBuf::from(image),
            socket: plan.socket.clone(),
        }
    } else {
        match mode {
            AccessMode::Userspace => {
                // The core's error when the provider has no URI for this hypervisor.
                let uri = vol.userspace_uri(&args.hypervisor)?;
                DiskAccess::Userspace {
                    source: parse_provider_uri(&vol, &uri)?,
                }
            }
            _ => {
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
                let socket = vhost.as_ref().map(|p| p.socket.as_path());
                DiskAccess::resolve(mode, info.dev_path.as_deref(), None, socket)?
            }
        }
    };
    if let (Some(xml), Some(plan)) = (libvirt_xml, &vhost) {
        let value = json!({
            "access": mode.as_str(),
            "libvirt_xml": xml,
            "memory_backing": extstorage_uri::libvirt::SHARED_MEMORY_BACKING,
            "served": plan.served,
            "socket": plan.socket,
            "num_queues": plan.device.num_queues,
            "serve_command": plan.serve_command.as_deref().map(argv_strings),
        });
        if !out.json {
            note(&format!(
                "note: the domain needs shared memory: {}",
                extstorage_uri::libvirt::SHARED_MEMORY_BACKING.replace('\n', "")
            ));
            if let Some(cmd) = &plan.serve_command {
                note(&format!(
                    "note: the volume is not served on this node; start its backend first: {}",
                    crate::shell::quote_args(cmd)
                ));
            }
        }
        out.print(&value, || xml.trim_end().to_owned())?;
        return Ok(exit::OK);
    }
    let rendered = disk.render(&access)?;
    write_secrets(&rendered.secrets)?;
    tracing::info!(volume = %name, provider = %provider, access = %mode, "rendered KVM arguments");
    let argv = argv_strings(&rendered.argv);
    let serve_command = vhost
        .as_ref()
        .and_then(|p| p.serve_command.as_deref())
        .map(argv_strings);
    let value = json!({
        "access": mode.as_str(),
        "qemu_version": qemu_version.to_string(),
        "dev_path": info.dev_path,
        "node_name": rendered.node_name,
        "device_id": rendered.device_id,
        "argv": argv,
        "secrets": secrets_json(&rendered.secrets),
        "notes": rendered.notes,
        "served": vhost.as_ref().map(|p| p.served),
        "serve_command": serve_command,
        "socket": vhost.as_ref().map(|p| &p.socket),
        "num_queues": vhost.as_ref().map(|p| p.device.num_queues),
    });
    if !out.json {
        for n in &rendered.notes {
            note(&format!("note: {n}"));
        }
        if let Some(cmd) = &serve_command {
            note(&format!(
                "note: the volume is not served on this node; start its backend first: {}",
                crate::shell::quote_args(cmd)
            ));
        }
    }
    out.print(&value, || argv.join("\n"))?;
    Ok(exit::OK)
}

/// `rbd:POOL/IMAGE` when a `kvm:rbd:...` attach line names an RBD image,
/// which `extstorage serve` can serve without a block device.
fn rbd_image(uris: &[String]) -> Option<String> {
    uris.iter()
        .find_map(|line| match extstorage_uri::parse_attach_line(line) {
            Ok((hv, extstorage_uri::Source::Rbd(r))) if hv == "kvm" => {
                Some(format!("rbd:{}/{}", r.pool, r.image))
            }
            _ => None,
        })
}
