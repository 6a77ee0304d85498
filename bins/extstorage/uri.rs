//! `extstorage uri`: a volume's userspace URI rendered as QEMU arguments
//! (`-drive`, `-blockdev`, argv), with secrets written to files. The
//! volume and disk options shared with `kvm-args` live here too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use extstorage_core::{Access, ExtStorage, Volume};
use extstorage_uri::secret_files::write_secret_files;
use extstorage_uri::{
    Aio, CacheMode, Discard, DiskOptions, SecretFormat, SecretObject, Source, render_blockdev,
    render_drive,
};
use serde_json::{Value, json};

use crate::exit;
use crate::output::{Output, note};
use crate::volume::{VolumeId, check_hypervisor};

/// Where secret files go when `--secret-dir` is not given: a directory per
/// volume below this one.
pub const DEFAULT_SECRET_ROOT: &str = "/run/extstorage/secrets";

/// The default secret directory of a volume:
/// `DEFAULT_SECRET_ROOT/<provider>.<volume>` (one unambiguous name per
/// volume, see `extstorage_core::names::volume_key`).
pub fn default_secret_dir(provider: &str, volume: &str) -> PathBuf {
    Path::new(DEFAULT_SECRET_ROOT).join(extstorage_core::names::volume_key(provider, volume))
}

/// How QEMU opens the disk.
#[derive(Debug, clap::Args)]
pub struct DiskArgs {
    /// Cache mode. Ext disks are shared storage: Ganeti's rule is
    /// cache=none, and other modes are refused.
    #[arg(long, value_name = "MODE", default_value = "none")]
    cache: CacheMode,
    /// I/O engine: threads, native or io_uring (block devices and files only).
    #[arg(long, value_name = "ENGINE")]
    aio: Option<Aio>,
    /// Guest discard requests: unmap (pass down) or ignore.
    #[arg(long, value_name = "MODE", default_value = "ignore")]
    discard: Discard,
    /// Directory for secret files (rbd keys, passwords), mode 0700, files
    /// 0600; by default /run/extstorage/secrets/PROVIDER.VOLUME.
    #[arg(long, value_name = "DIR", env = "EXTSTORAGE_SECRET_DIR")]
    secret_dir: Option<PathBuf>,
}

impl DiskArgs {
    /// Checks what can be checked before attach: the secret directory must
    /// be absolute (it is created later, when a URI has a secret).
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.secret_dir
            && !dir.is_absolute()
        {
            anyhow::bail!(
                "--secret-dir {} is not an absolute path; give one like /run/extstorage/secrets/vol1",
                dir.display()
            );
        }
        Ok(())
    }

    /// The uri crate's options: Ganeti's ext-disk rules plus these flags
    /// and `read_only`; secrets go to `--secret-dir` or a per-volume default
    /// directory.
    pub fn options(&self, provider: &str, volume: &str, read_only: bool) -> DiskOptions {
        let secret_dir = self
            .secret_dir
            .clone()
            .unwrap_or_else(|| default_secret_dir(provider, volume));
        DiskOptions {
            cache: self.cache,
            aio: self.aio,
            discard: self.discard,
            read_only,
            secret_dir: Some(secret_dir),
            ..DiskOptions::ganeti_ext()
        }
    }
}

/// Parses the URI a provider's attach printed; a bad one is bad attach
/// output (exit 1), the provider's fault rather than the caller's.
pub fn parse_provider_uri(vol: &Volume<'_>, uri: &str) -> anyhow::Result<Source> {
    Source::parse_legacy(uri).map_err(|e| {
        extstorage_core::Error::BadAttachOutput {
            provider: vol.provider().name.clone(),
            volume: vol.name().to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Writes each distinct secret file once (the forms rendered for one disk
/// share their secret objects).
pub fn write_secrets(secrets: &[SecretObject]) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    let unique: Vec<SecretObject> = secrets
        .iter()
        .filter(|s| seen.insert(s.path.clone()))
        .cloned()
        .collect();
    write_secret_files(&unique)?;
    for s in &unique {
        tracing::info!(secret_id = %s.id, path = %s.path.display(), "wrote secret file");
    }
    Ok(())
}

/// The secrets as JSON: id, file and format, never the secret itself.
pub fn secrets_json(secrets: &[SecretObject]) -> Value {
    secrets
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "path": s.path,
                "format": match s.format {
                    SecretFormat::Raw => "raw",
                    SecretFormat::Base64 => "base64",
                },
            })
        })
        .collect()
}

/// Lossless text of argv elements (QEMU arguments are UTF-8 here: the uri
/// crate refuses non-UTF-8 paths).
pub fn argv_strings(argv: &[std::ffi::OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// What `extstorage uri` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The `-drive` option string.
    Drive,
    /// The `-blockdev` JSON nodes, one per line.
    Blockdev,
    /// The argv elements (`-object`, `secret,...`, `-blockdev`, `{...}`), one per line.
    Args,
}

/// Arguments of `uri`.
#[derive(Debug, clap::Args)]
pub struct UriArgs {
    #[command(flatten)]
    vol: VolumeId,
    /// Hypervisor whose URI to take from the attach output.
    #[arg(long, default_value = "kvm")]
    hypervisor: String,
    /// Output form (--json prints all of them).
    #[arg(long, value_enum, default_value = "args")]
    format: Format,
    /// Drive id / top block node name (the protocol node is NAME-file).
    #[arg(long, value_name = "NAME", default_value = "disk0")]
    node_name: String,
    /// Open the disk read-only.
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    disk: DiskArgs,
}

/// Runs `uri`: attach, take the hypervisor's URI, render it.
pub fn run(es: &ExtStorage, args: UriArgs, out: &Output) -> anyhow::Result<u8> {
    let UriArgs {
        vol,
        hypervisor,
        format,
        node_name,
        read_only,
        disk,
    } = args;
    check_hypervisor(&hypervisor)?;
    disk.check()?;
    let mut vol = es.volume(vol.spec(Some(Access::Userspace)))?;
    let opts = disk.options(&vol.provider().name, vol.name(), read_only);
    check_before_attach(format, out.json, &opts, &node_name)?;
    let uri = vol.userspace_uri(&hypervisor)?;
    let source = parse_provider_uri(&vol, &uri)?;
    tracing::debug!(volume = %vol.name(), provider = %vol.provider().name, driver = source.driver(), "parsed userspace URI");
    let node = node_name.as_str();
    if out.json {
        // -drive can express things -blockdev cannot (raw Ceph options) and
        // the other way round: report each form, or why it is missing.
        let drive = render_drive(&source, &opts, node);
        let blockdev = render_blockdev(&source, &opts, node);
        let mut secrets = Vec::new();
        let mut value = json!({
            "hypervisor": hypervisor.to_ascii_lowercase(),
            "driver": source.driver(),
            "node_name": node,
        });
        if let (Err(e), Err(_)) = (&drive, &blockdev) {
            return Err(e.clone().into());
        }
        match drive {
            Ok(d) => {
                value["drive"] = json!(d.drive);
                value["drive_args"] = json!(argv_strings(&d.argv()?));
                secrets.extend(d.secrets);
            }
            Err(e) => value["drive_error"] = json!(e.to_string()),
        }
        match blockdev {
            Ok(b) => {
                value["blockdev"] = json!(b.json_nodes);
                value["args"] = json!(argv_strings(&b.argv()?));
                value["device_write_cache"] = json!(b.device_write_cache);
                secrets.extend(b.secrets);
            }
            Err(e) => value["blockdev_error"] = json!(e.to_string()),
        }
        write_secrets(&secrets)?;
        let mut seen = BTreeSet::new();
        secrets.retain(|s| seen.insert(s.path.clone()));
        value["secrets"] = secrets_json(&secrets);
        out.print(&value, String::new)?;
        return Ok(exit::OK);
    }
    let (lines, secrets) = match format {
        Format::Drive => {
            let d = render_drive(&source, &opts, node)?;
            for s in &d.secrets {
                note(&format!(
                    "note: the drive needs -object {}",
                    s.object_arg()?
                ));
            }
            (vec![d.drive.clone()], d.secrets)
        }
        Format::Blockdev => {
            let b = render_blockdev(&source, &opts, node)?;
            for s in &b.secrets {
                note(&format!("note: the nodes need -object {}", s.object_arg()?));
            }
            (b.json_nodes.clone(), b.secrets)
        }
        Format::Args => {
            let b = render_blockdev(&source, &opts, node)?;
            (argv_strings(&b.argv()?), b.secrets)
        }
    };
    write_secrets(&secrets)?;
    out.print(&Value::Null, || lines.join("\n"))?;
    Ok(exit::OK)
}

/// Refuses, before the volume is attached, the options and node names that
/// the chosen output form would refuse whatever the URI: rendering a
/// stand-in block device runs those checks. With `--json` one of the two
/// forms is enough.
fn check_before_attach(
    format: Format,
    json: bool,
    opts: &DiskOptions,
    node: &str,
) -> anyhow::Result<()> {
    let stand_in = Source::from_block_device("/dev/null")?;
    let drive = || render_drive(&stand_in, opts, node).map(drop);
    let blockdev = || render_blockdev(&stand_in, opts, node).map(drop);
    match format {
        _ if json => drive().or_else(|e| blockdev().map_err(|_| e))?,
        Format::Drive => drive()?,
        Format::Blockdev | Format::Args => blockdev()?,
    }
    Ok(())
}
