//! The volume subcommands: one `extstorage-core` call each.

use extstorage_core::{Access, ExtStorage, VolumeSpec, parse_size_mib};
use extstorage_serve_api::RunDir;
use extstorage_serve_api::control::{self, Request, ResizeReply};
use serde_json::json;

use crate::exit;
use crate::output::Output;
use crate::shell::quote_args;

/// Which volume: the options every volume command takes, except the access mode.
#[derive(Debug, Clone, clap::Args)]
pub struct VolumeId {
    /// Provider name (a directory in the search path).
    #[arg(long)]
    pub provider: String,
    /// Volume name (Ganeti: UUID.ext.diskN); letters, digits, '_', '.', '+', '-'.
    #[arg(long)]
    pub volume: String,
    /// Volume size as in Ganeti's ParseUnit: a number (fractions allowed)
    /// with M, G or T (MiB, GB, ...; any case), a plain number is MiB,
    /// rounded up to a multiple of 4 MiB (1.5G, 512M, 10G). Needed by
    /// create; elsewhere measured on the attached device, and refused when
    /// it disagrees with the device.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    size: Option<u64>,
    /// An ext param, checked against the provider's parameters.list; repeat.
    /// As in Ganeti, `access` and `provider` are disk parameters:
    /// access=kernelspace|userspace becomes EXTP_ACCESS, provider= must
    /// name --provider.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = param_arg)]
    params: Vec<(String, String)>,
    /// Human-readable disk name (VOL_CNAME).
    #[arg(long)]
    cname: Option<String>,
    /// Disk UUID (VOL_UUID).
    #[arg(long)]
    uuid: Option<String>,
}

impl VolumeId {
    /// The arguments that parse back into this volume (for printed
    /// command lines); `=` joins values so none is taken for an option.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            format!("--provider={}", self.provider).into(),
            format!("--volume={}", self.volume).into(),
        ];
        for (k, v) in &self.params {
            args.push(format!("--param={k}={v}").into());
        }
        if let Some(c) = &self.cname {
            args.push(format!("--cname={c}").into());
        }
        if let Some(u) = &self.uuid {
            args.push(format!("--uuid={u}").into());
        }
        args
    }

    /// The value of ext param `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The core's volume spec with `EXTP_ACCESS` chosen as `access` (`None`:
    /// from `-p access=`, else kernelspace).
    pub fn spec(self, access: Option<Access>) -> VolumeSpec {
        VolumeSpec {
            provider: self.provider,
            name: self.volume,
            size_mib: self.size,
            params: self.params,
            cname: self.cname,
            uuid: self.uuid,
            access,
        }
    }
}

/// Which volume, as every volume command takes it.
#[derive(Debug, clap::Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    id: VolumeId,
    /// Access mode exported as EXTP_ACCESS: kernelspace or userspace.
    /// [default: the value of -p access=, else kernelspace]
    #[arg(long, value_name = "MODE", value_parser = access_arg)]
    access: Option<Access>,
}

/// Which volume, for detach and remove.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    #[command(flatten)]
    vol: VolumeArgs,
    /// Run detach (and remove) even when the attach that comes first fails,
    /// e.g. for a volume whose backing storage was deleted by hand.
    #[arg(long)]
    force: bool,
}

pub(crate) fn size_arg(s: &str) -> Result<u64, String> {
    parse_size_mib(s).map_err(|e| e.to_string())
}

fn access_arg(s: &str) -> Result<Access, String> {
    s.parse().map_err(|e: extstorage_core::Error| e.to_string())
}

pub(crate) fn param_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The volume subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (needs --size), then attach it.
    Create(VolumeArgs),
    /// Attach: print the block device (and userspace URIs).
    Attach(VolumeArgs),
    /// Assemble: attach, nothing more (as Ganeti).
    Assemble(VolumeArgs),
    /// Run the open script (absent = success).
    Open {
        #[command(flatten)]
        vol: VolumeArgs,
        /// Open shared (VOL_OPEN_EXCLUSIVE=False, as during live migration).
        #[arg(long)]
        shared: bool,
    },
    /// Run the close script (absent = success).
    Close(VolumeArgs),
    /// Detach (shutdown): attach (as Ganeti), then run detach.
    #[command(alias = "shutdown")]
    Detach(DetachArgs),
    /// Detach (attach first, as Ganeti), then remove the volume.
    Remove(DetachArgs),
    /// Grow by --amount: VOL_SIZE is the current size (measured on the
    /// device when there is one), VOL_NEW_SIZE the new one.
    Grow {
        #[command(flatten)]
        vol: VolumeArgs,
        /// How much to add, as --size (512M, 1G; plain number = MiB; rounded
        /// up to a multiple of 4 MiB).
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        amount: u64,
        /// Attach and compute the new size, but do not run grow.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rename: not supported by the ExtStorage interface (always fails).
    Rename {
        #[command(flatten)]
        vol: VolumeArgs,
        /// The new name.
        #[arg(long)]
        new_name: Option<String>,
    },
    /// Run setinfo with sanitised metadata (VOL_METADATA, at most 128 chars).
    Setinfo {
        #[command(flatten)]
        vol: VolumeArgs,
        /// Metadata text, e.g. originstname+inst1.
        #[arg(long, allow_hyphen_values = true)]
        metadata: String,
    },
    /// Run snapshot (VOL_SNAPSHOT_NAME, VOL_SNAPSHOT_SIZE).
    Snapshot {
        #[command(flatten)]
        vol: VolumeArgs,
        /// Snapshot name; empty means the default, as in Ganeti.
        /// [default: VOLUME.snap]
        #[arg(long)]
        snapshot_name: Option<String>,
        /// Snapshot size, as --size; 0 means the default, as in Ganeti.
        /// [default: the volume size]
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        snapshot_size: Option<u64>,
    },
    /// Attach and print the userspace URI for a hypervisor (prefix removed).
    UriLookup {
        #[command(flatten)]
        vol: VolumeArgs,
        /// Hypervisor prefix to look for (case-insensitive).
        #[arg(long, default_value = "kvm")]
        hypervisor: String,
    },
    /// Run verify; CHECKs are passed as arguments (Ganeti passes none).
    Verify {
        #[command(flatten)]
        vol: VolumeArgs,
        /// Check names passed to the script as arguments.
        checks: Vec<String>,
    },
    /// Attach and print the device size in bytes (BLKGETSIZE64).
    Size(VolumeArgs),
    /// Attach and print the sync status (always in sync).
    SyncStatus(VolumeArgs),
    /// Print the dd command that exports the volume to stdout (quoted for
    /// a POSIX shell).
    ExportCommand(VolumeArgs),
    /// Print the dd command that imports the volume from stdin (quoted for
    /// a POSIX shell).
    ImportCommand(VolumeArgs),
}

fn spec(v: VolumeArgs) -> VolumeSpec {
    v.id.spec(v.access)
}

fn attach_text(info: &extstorage_core::AttachInfo) -> String {
    let mut lines = Vec::new();
    match (&info.dev_path, info.major, info.minor) {
        (Some(dev), Some(maj), Some(min)) => {
            lines.push(format!("device: {} ({maj}:{min})", dev.display()));
        }
        _ => lines.push("device: none (userspace access only)".to_owned()),
    }
    for uri in &info.uris {
        lines.push(format!("uri: {uri}"));
    }
    lines.join("\n")
}

/// After a grow, tells the backend serving the volume on this node (if
/// any) to re-read the size, so the running guest sees it at once.
/// `None`: the volume is not served here.
fn notify_served(
    run_dir: &RunDir,
    provider: &str,
    volume: &str,
    new_mib: u64,
) -> anyhow::Result<Option<ResizeReply>> {
    let path = run_dir.control_socket(&crate::volume_key(provider, volume));
    match control::call::<ResizeReply>(&path, Request::Resize) {
        Ok(r) => Ok(Some(r)),
        Err(extstorage_serve_api::Error::NotServing { .. }) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the volume was grown to {new_mib} MiB, but its server could not be told; \
             run `extstorage-vhost-user-blk resize --control-socket {}`",
            path.display()
        ))),
    }
}

/// Checks a `--hypervisor` name before anything runs: it is the prefix of
/// an attach line (`kvm:...`), so it cannot be empty or hold a ':'.
pub(crate) fn check_hypervisor(hypervisor: &str) -> anyhow::Result<()> {
    if hypervisor.is_empty() || hypervisor.contains(':') || hypervisor.contains(char::is_whitespace)
    {
        anyhow::bail!(
            "--hypervisor {hypervisor:?} is not a hypervisor name (e.g. kvm): it must be \
             non-empty, without ':' or spaces"
        );
    }
    Ok(())
}

/// Runs one volume subcommand.
pub fn run(
    es: &ExtStorage,
    cmd: VolumeCommand,
    run_dir: &RunDir,
    out: &Output,
) -> anyhow::Result<u8> {
    use VolumeCommand as C;
    match cmd {
        C::Create(v) => {
            let size =
                v.id.size
                    .ok_or_else(|| anyhow::anyhow!("create needs --size (e.g. --size 1G)"))?;
            let mut vol = es.volume(spec(v))?;
            let info = vol.create(size)?;
            out.print(&info, || attach_text(&info))?;
        }
        C::Attach(v) | C::Assemble(v) => {
            let mut vol = es.volume(spec(v))?;
            let info = vol.attach()?;
            out.print(&info, || attach_text(&info))?;
        }
        C::Open { vol, shared } => {
            let mut vol = es.volume(spec(vol))?;
            let ran = vol.open(!shared)?;
            out.print(&json!({"ok": true, "script_ran": ran}), || {
                if ran {
                    "opened"
                } else {
                    "no open script: nothing to do"
                }
                .into()
            })?;
        }
        C::Close(v) => {
            let mut vol = es.volume(spec(v))?;
            let ran = vol.close()?;
            out.print(&json!({"ok": true, "script_ran": ran}), || {
                if ran {
                    "closed"
                } else {
                    "no close script: nothing to do"
                }
                .into()
            })?;
        }
        C::Detach(DetachArgs { vol, force }) => {
            let mut vol = es.volume(spec(vol))?;
            if force {
                vol.shutdown_forced()?;
            } else {
                vol.shutdown()?;
            }
            out.print(&json!({"ok": true}), || "detached".into())?;
        }
        C::Remove(DetachArgs { vol, force }) => {
            let mut vol = es.volume(spec(vol))?;
            if force {
                vol.remove_forced()?;
            } else {
                vol.remove()?;
            }
            out.print(&json!({"ok": true}), || "removed".into())?;
        }
        C::Grow {
            vol,
            amount,
            dry_run,
        } => {
            let mut vol = es.volume(spec(vol))?;
            let new = vol.grow(amount, dry_run)?;
            let served = if dry_run {
                None
            } else {
                notify_served(run_dir, &vol.provider().name, vol.name(), new)?
            };
            out.print(
                &json!({
                    "ok": true,
                    "new_size_mib": new,
                    "dry_run": dry_run,
                    "served_size_bytes": served.map(|r| r.size_bytes),
                }),
                || {
                    if dry_run {
                        format!("dry run: would grow to {new} MiB")
                    } else if let Some(r) = served {
                        format!(
                            "grown to {new} MiB; the running guest now sees {} bytes",
                            r.size_bytes
                        )
                    } else {
                        format!("grown to {new} MiB")
                    }
                },
            )?;
        }
        C::Rename { vol, new_name } => {
            let mut vol = es.volume(spec(vol))?;
            vol.rename(new_name.as_deref().unwrap_or(""))?;
        }
        C::Setinfo { vol, metadata } => {
            let mut vol = es.volume(spec(vol))?;
            let passed = vol.setinfo(&metadata)?;
            out.print(&json!({"ok": true, "metadata": passed}), || {
                format!("metadata set: {passed}")
            })?;
        }
        C::Snapshot {
            vol,
            snapshot_name,
            snapshot_size,
        } => {
            let mut vol = es.volume(spec(vol))?;
            let snap = vol.snapshot(snapshot_name.as_deref(), snapshot_size)?;
            out.print(&snap, || {
                format!("snapshot {} taken (provider {})", snap.name, snap.provider)
            })?;
        }
        C::UriLookup { vol, hypervisor } => {
            check_hypervisor(&hypervisor)?;
            let mut vol = es.volume(spec(vol))?;
            let uri = vol.userspace_uri(&hypervisor)?;
            out.print(&json!({"hypervisor": hypervisor, "uri": uri}), || {
                uri.clone()
            })?;
        }
        C::Verify { vol, checks } => {
            let mut vol = es.volume(spec(vol))?;
            vol.verify(&checks)?;
            out.print(&json!({"ok": true}), || "verified".into())?;
        }
        C::Size(v) => {
            let mut vol = es.volume(spec(v))?;
            let dims = vol.dimensions()?;
            out.print(&dims, || dims.size_bytes.to_string())?;
        }
        C::SyncStatus(v) => {
            let mut vol = es.volume(spec(v))?;
            let st = vol.sync_status()?;
            out.print(&st, || {
                let dev = st
                    .dev_path
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |d| d.display().to_string());
                format!("device: {dev}\nin sync, not degraded, ldisk ok")
            })?;
        }
        C::ExportCommand(v) => {
            let mut vol = es.volume(spec(v))?;
            let argv = vol.export_command()?;
            out.print(&argv, || quote_args(&argv))?;
        }
        C::ImportCommand(v) => {
            let mut vol = es.volume(spec(v))?;
            let argv = vol.import_command()?;
            out.print(&argv, || quote_args(&argv))?;
        }
    }
    Ok(exit::OK)
}
