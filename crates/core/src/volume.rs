//! Volume operations: the `ExtStorageDevice` behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::lock::{DEFAULT_LOCK_DIR, VolumeLock, lock_volume};
use crate::names::{validate_snapshot_name, validate_volume_name};
use crate::provider::{DEFAULT_SEARCH_PATH, Diagnosis, Provider, SearchPath};
use crate::runner::{RunnerConfig, ScriptRun, run_script};

/// Longest metadata text passed to setinfo.
pub const MAX_METADATA_LEN: usize = 128;

/// How the volume will be accessed (`EXTP_ACCESS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Through a block device on the host (Ganeti's default).
    #[default]
    Kernelspace,
    /// Through a hypervisor URI.
    Userspace,
}

impl Access {
    /// The text Ganeti uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Kernelspace => "kernelspace",
            Access::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for Access {
    type Err = Error;
    fn from_str(s: &str) -> Result<Access> {
        match s {
            "kernelspace" => Ok(Access::Kernelspace),
            "userspace" => Ok(Access::Userspace),
            other => Err(Error::InvalidArgument(format!(
                "access {other:?} is neither 'kernelspace' nor 'userspace'"
            ))),
        }
    }
}

/// Configuration shared by all operations.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where providers are looked up.
    pub search_path: SearchPath,
    /// How scripts are run.
    pub runner: RunnerConfig,
    /// Directory of the per-volume lock files.
    pub lock_dir: PathBuf,
    /// How long to wait for a busy volume's lock.
    pub lock_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            search_path: SearchPath::new(vec![PathBuf::from(DEFAULT_SEARCH_PATH)]),
            runner: RunnerConfig::default(),
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
            lock_wait: Duration::from_secs(60),
        }
    }
}

/// Entry point: providers and volumes under one configuration.
#[derive(Debug, Clone, Default)]
pub struct ExtStorage {
    config: Config,
}

/// Which volume, and what Ganeti would know about it.
#[derive(Debug, Clone, Default)]
pub struct VolumeSpec {
    /// Provider name.
    pub provider: String,
    /// Volume name (Ganeti: `UUID.ext.diskN`).
    pub name: String,
    /// Size in MiB, when known.
    pub size_mib: Option<u64>,
    /// Ext params (`-p name=value`), checked against parameters.list.
    pub params: Vec<(String, String)>,
    /// Human-readable disk name (`VOL_CNAME`).
    pub cname: Option<String>,
    /// Disk UUID (`VOL_UUID`).
    pub uuid: Option<String>,
    /// Access mode chosen by the caller (`EXTP_ACCESS`). `None`: the
    /// `access` ext param when one is given (as in Ganeti, where `access` is
    /// a disk parameter), else kernelspace. Both given and different is an
    /// error.
    pub access: Option<Access>,
}

/// The result of attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttachInfo {
    /// The block device, if the provider offers one.
    pub dev_path: Option<PathBuf>,
    /// Its major number.
    pub major: Option<u32>,
    /// Its minor number (0 is valid).
    pub minor: Option<u32>,
    /// Userspace URIs, each `<hypervisor>:<uri>`.
    pub uris: Vec<String>,
}

/// The sync status of a volume (always in sync: no children).
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    /// The block device.
    pub dev_path: Option<PathBuf>,
    /// Its major number.
    pub major: Option<u32>,
    /// Its minor number.
    pub minor: Option<u32>,
    /// Always none.
    pub sync_percent: Option<f64>,
    /// Always none.
    pub estimated_time: Option<u64>,
    /// Always false.
    pub is_degraded: bool,
    /// Always "ok".
    pub ldisk_status: &'static str,
}

/// Dimensions of a volume.
#[derive(Debug, Clone, Serialize)]
pub struct Dimensions {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Always none for ExtStorage.
    pub spindles: Option<u64>,
}

/// A snapshot that was taken.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The provider.
    pub provider: String,
    /// The snapshot name.
    pub name: String,
}

/// A volume of a provider, ready for operations. Every operation takes the
/// volume's lock for its whole duration.
#[derive(Debug)]
pub struct Volume<'a> {
    es: &'a ExtStorage,
    provider: Provider,
    spec: VolumeSpec,
    params: BTreeMap<String, String>,
    access: Access,
    attached: Option<AttachInfo>,
}

impl ExtStorage {
    /// A new instance over `config`.
    pub fn new(config: Config) -> ExtStorage {
        ExtStorage { config }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Diagnoses every provider in the search path.
    pub fn diagnose(&self) -> Vec<Diagnosis> {
        self.config.search_path.diagnose()
    }

    /// Finds a valid provider.
    pub fn provider(&self, name: &str) -> Result<Provider> {
        self.config.search_path.find(name)
    }

    /// Validates names and parameters and returns a handle on the volume.
    /// Nothing runs yet.
    pub fn volume(&self, spec: VolumeSpec) -> Result<Volume<'_>> {
        crate::names::validate_provider_name(&spec.provider)?;
        validate_volume_name(&spec.name)?;
        let provider = self.provider(&spec.provider)?;
        let (params, access) = check_params(&provider, &spec)?;
        for (what, value) in [("cname", &spec.cname), ("uuid", &spec.uuid)] {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                return Err(Error::InvalidArgument(format!(
                    "{what} contains a NUL byte"
                )));
            }
        }
        Ok(Volume {
            es: self,
            provider,
            spec,
            params,
            access,
            attached: None,
        })
    }
}

/// Checks ext params against the provider's parameters.list and returns
/// them with the access mode.
///
/// `provider` and `access` are Ganeti disk parameters rather than provider
/// parameters, so they are accepted whether or not parameters.list lists
/// them: `provider` must name the volume's provider and `access` becomes
/// `EXTP_ACCESS` (it must agree with [`VolumeSpec::access`] when both are
/// given). Every other name must be listed, must make a valid environment
/// variable name (`EXTP_<NAME>`: ASCII letters, digits, `_`) and must not
/// collide with another after upper-casing (`dir` and `DIR`).
fn check_params(
    provider: &Provider,
    spec: &VolumeSpec,
) -> Result<(BTreeMap<String, String>, Access)> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    // Upper-cased name -> the name that claimed EXTP_<NAME>.
    let mut env_names: BTreeMap<String, &str> = BTreeMap::from([
        ("PROVIDER".to_owned(), "provider"),
        ("ACCESS".to_owned(), "access"),
    ]);
    let mut access_param = None;
    for (name, value) in &spec.params {
        let invalid = |reason: String| Error::InvalidParameter {
            name: name.clone(),
            reason,
        };
        if !seen.insert(name.as_str()) {
            return Err(invalid("it is given twice".into()));
        }
        if value.contains('\0') {
            return Err(invalid("the value contains a NUL byte".into()));
        }
        match name.as_str() {
            "provider" => {
                if *value != provider.name {
                    return Err(invalid(format!(
                        "it names provider {value:?}, but the volume's provider is {:?}; \
                         drop -p provider= or make it equal to --provider",
                        provider.name
                    )));
                }
                continue;
            }
            "access" => {
                let access = value.parse::<Access>().map_err(|_| {
                    invalid(format!(
                        "{value:?} is neither 'kernelspace' nor 'userspace' (it becomes \
                         EXTP_ACCESS)"
                    ))
                })?;
                access_param = Some(access);
                continue;
            }
            _ => {}
        }
        if !provider.parameters.iter().any(|p| &p.name == name) {
            return Err(Error::UnknownParameter {
                provider: provider.name.clone(),
                name: name.clone(),
                known: provider.known_parameters(),
            });
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(
                "EXTP_<NAME> would not be a valid environment variable name; a parameter \
                 name may hold ASCII letters, digits and '_' only"
                    .into(),
            ));
        }
        let upper = name.to_ascii_uppercase();
        if let Some(other) = env_names.get(&upper) {
            return Err(invalid(format!(
                "it and {other:?} would both be passed as EXTP_{upper}; give only one of them"
            )));
        }
        env_names.insert(upper, name);
        out.insert(name.clone(), value.clone());
    }
    let access = match (spec.access, access_param) {
        (Some(chosen), Some(param)) if chosen != param => {
            return Err(Error::InvalidArgument(format!(
                "-p access={} conflicts with the access mode {} chosen by --access or by the \
                 command; drop one of them",
                param.as_str(),
                chosen.as_str()
            )));
        }
        (Some(chosen), _) => chosen,
        (None, Some(param)) => param,
        (None, None) => Access::Kernelspace,
    };
    Ok((out, access))
}

/// Sanitises setinfo metadata as Ganeti does: a first character outside
/// `[A-Za-z0-9_+.]` becomes `_`, any later one outside `[-A-Za-z0-9_+.]`
/// becomes `_`, and the result is cut to 128 characters.
pub fn sanitize_metadata(text: &str) -> String {
    text.chars()
        .take(MAX_METADATA_LEN)
        .enumerate()
        .map(|(i, c)| {
            let ok =
                c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.') || (i > 0 && c == '-');
            if ok { c } else { '_' }
        })
        .collect()
}

/// Parses attach output: line 1 the device (or empty), then URIs. Lines
/// end at `\n`, `\r\n` or a lone `\r` (Ganeti 3 reads script output with
/// Python's universal newlines, so its split on `\n` sees the same lines);
/// surrounding whitespace is trimmed and blank URI lines are ignored.
pub fn parse_attach_output(
    stdout: &[u8],
) -> std::result::Result<(Option<PathBuf>, Vec<String>), String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "output is not valid UTF-8".to_owned())?;
    // "\r\n" splits into a line and an empty one: only URI lines can be
    // empty that way, and those are ignored.
    let mut lines = text.split(['\n', '\r']);
    let dev = lines.next().map(str::trim).unwrap_or("");
    let uris: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let dev = (!dev.is_empty()).then(|| PathBuf::from(dev));
    if dev.is_none() && uris.is_empty() {
        return Err("Neither a block device nor a userspace URI is available".into());
    }
    Ok((dev, uris))
}

/// Finds the first URI for `hypervisor` (prefix `hypervisor:`, any case) and
/// returns it without the prefix.
pub fn find_uri<'u>(uris: &'u [String], hypervisor: &str) -> Option<&'u str> {
    uris.iter().find_map(|u| {
        let (prefix, rest) = u.split_once(':')?;
        prefix.eq_ignore_ascii_case(hypervisor).then_some(rest)
    })
}

mod ioctl {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t) from <linux/fs.h>.
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
}
use ioctl::blkgetsize64;

/// The size in bytes of a block device (BLKGETSIZE64).
pub fn block_device_size(path: &Path) -> Result<u64> {
    let file =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the whole call (we own `file`), and `size`
    // is a valid, writable u64, which is what BLKGETSIZE64 writes.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(|e| {
        Error::io(
            format!("BLKGETSIZE64 on {} failed", path.display()),
            e.into(),
        )
    })?;
    Ok(size)
}

impl Volume<'_> {
    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The volume name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The size in MiB as currently known (given, or recorded after grow).
    pub fn size_mib(&self) -> Option<u64> {
        self.spec.size_mib
    }

    /// The access mode passed as `EXTP_ACCESS`.
    pub fn access(&self) -> Access {
        self.access
    }

    fn lock(&self) -> Result<VolumeLock> {
        let cfg = &self.es.config;
        lock_volume(
            &cfg.lock_dir,
            &self.provider.name,
            &self.spec.name,
            cfg.lock_wait,
        )
    }

    /// The environment every script gets.
    fn base_env(&self, with_ids: bool) -> Vec<(String, String)> {
        let mut env = vec![("VOL_NAME".to_owned(), self.spec.name.clone())];
        for (k, v) in &self.params {
            env.push((format!("EXTP_{}", k.to_ascii_uppercase()), v.clone()));
        }
        env.push(("EXTP_PROVIDER".into(), self.provider.name.clone()));
        env.push(("EXTP_ACCESS".into(), self.access.as_str().into()));
        if with_ids {
            if let Some(c) = &self.spec.cname {
                env.push(("VOL_CNAME".into(), c.clone()));
            }
            if let Some(u) = &self.spec.uuid {
                env.push(("VOL_UUID".into(), u.clone()));
            }
        }
        env
    }

    fn run(
        &self,
        action: &str,
        env: Vec<(String, String)>,
        args: Vec<OsString>,
        stdout_is_result: bool,
    ) -> Result<crate::runner::ScriptOutput> {
        tracing::info!(action, volume = %self.spec.name, provider = %self.provider.name, "running ExtStorage action");
        run_script(
            &self.es.config.runner,
            &ScriptRun {
                provider: &self.provider,
                action,
                volume: &self.spec.name,
                env,
                args,
                stdout_is_result,
            },
        )
    }

    fn attach_locked(&mut self) -> Result<AttachInfo> {
        let out = self.run("attach", self.base_env(true), Vec::new(), true)?;
        let bad = |reason: String| Error::BadAttachOutput {
            provider: self.provider.name.clone(),
            volume: self.spec.name.clone(),
            reason: crate::redact::redact(&reason).into_owned(),
        };
        if out.stdout_truncated {
            return Err(bad("stdout is larger than the result limit".into()));
        }
        let (dev, uris) = parse_attach_output(&out.stdout).map_err(bad)?;
        let mut info = AttachInfo {
            dev_path: None,
            major: None,
            minor: None,
            uris,
        };
        if let Some(dev) = dev {
            let meta = std::fs::metadata(&dev)
                .map_err(|e| bad(format!("cannot stat {}: {e}", dev.display())))?;
            if !meta.file_type().is_block_device() {
                return Err(bad(format!("{} is not a block device", dev.display())));
            }
            let rdev = meta.rdev();
            info.major = Some(nix::sys::stat::major(rdev) as u32);
            info.minor = Some(nix::sys::stat::minor(rdev) as u32);
            info.dev_path = Some(dev);
        }
        let uris: Vec<_> = info.uris.iter().map(|u| crate::redact::redact(u)).collect();
        tracing::debug!(volume = %self.spec.name, provider = %self.provider.name, dev = ?info.dev_path, uris = ?uris, "attached");
        self.attached = Some(info.clone());
        Ok(info)
    }

    fn ensure_attached(&mut self) -> Result<AttachInfo> {
        match &self.attached {
            Some(info) => Ok(info.clone()),
            None => self.attach_locked(),
        }
    }

    /// The volume size in MiB for `what`. When the volume is attached (or
    /// must be, because no size was given) and has a block device, the size
    /// is measured on the device, and a given size that disagrees is an
    /// error: a stale size passed on as `VOL_SIZE` could make grow shrink
    /// the volume. Without a device, the given size is all there is.
    fn require_size(&mut self, what: &'static str) -> Result<u64> {
        let info = match (&self.attached, self.spec.size_mib) {
            (None, Some(given)) => return Ok(given),
            (Some(info), _) => info.clone(),
            (None, None) => self.attach_locked()?,
        };
        let Some(dev) = info.dev_path else {
            return self.spec.size_mib.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{what} needs the volume size and volume {:?} has no block device to \
                     measure; pass --size",
                    self.spec.name
                ))
            });
        };
        let bytes = block_device_size(&dev)?;
        let measured = bytes / (1024 * 1024);
        if let Some(given) = self.spec.size_mib
            && given != measured
        {
            return Err(Error::SizeMismatch {
                provider: self.provider.name.clone(),
                volume: self.spec.name.clone(),
                device: dev,
                bytes,
                measured_mib: measured,
                given_mib: given,
            });
        }
        Ok(measured)
    }

    fn require_device(&mut self, what: &'static str) -> Result<PathBuf> {
        self.ensure_attached()?
            .dev_path
            .ok_or_else(|| Error::NoBlockDevice {
                provider: self.provider.name.clone(),
                volume: self.spec.name.clone(),
                what,
            })
    }

    /// Runs create with `VOL_SIZE`, then attaches.
    pub fn create(&mut self, size_mib: u64) -> Result<AttachInfo> {
        if size_mib == 0 {
            return Err(Error::InvalidArgument(
                "a volume size of 0 MiB is not allowed; pass --size".into(),
            ));
        }
        let _lock = self.lock()?;
        self.spec.size_mib = Some(size_mib);
        let mut env = self.base_env(true);
        env.push(("VOL_SIZE".into(), size_mib.to_string()));
        self.run("create", env, Vec::new(), false)?;
        self.attach_locked()
    }

    /// Runs attach and checks its output.
    pub fn attach(&mut self) -> Result<AttachInfo> {
        let _lock = self.lock()?;
        self.attach_locked()
    }

    /// Assemble: attach (which makes the volume usable); nothing else.
    pub fn assemble(&mut self) -> Result<AttachInfo> {
        self.attach()
    }

    /// Runs open with `VOL_OPEN_EXCLUSIVE`; an absent script is success.
    /// Returns whether a script ran.
    pub fn open(&mut self, exclusive: bool) -> Result<bool> {
        let _lock = self.lock()?;
        if !self.provider.has_optional("open") {
            tracing::debug!(volume = %self.spec.name, provider = %self.provider.name, "no open script, nothing to do");
            return Ok(false);
        }
        let mut env = self.base_env(true);
        env.push((
            "VOL_OPEN_EXCLUSIVE".into(),
            if exclusive { "True" } else { "False" }.into(),
        ));
        self.run("open", env, Vec::new(), false)?;
        Ok(true)
    }

    /// Runs close; an absent script is success. Returns whether it ran.
    pub fn close(&mut self) -> Result<bool> {
        let _lock = self.lock()?;
        if !self.provider.has_optional("close") {
            return Ok(false);
        }
        self.run("close", self.base_env(true), Vec::new(), false)?;
        Ok(true)
    }

    /// Ganeti's Shutdown: attach, then detach. When attach fails, `force`
    /// runs detach anyway (the way out for a half-gone volume, e.g. one
    /// whose backing file was deleted); without it the error says so.
    fn shutdown_locked(&mut self, operation: &'static str, force: bool) -> Result<()> {
        if let Err(err) = self.ensure_attached() {
            if matches!(err, Error::Interrupted { .. }) {
                // Not a half-gone volume: stop, and say why.
                return Err(err);
            }
            if !force {
                return Err(Error::AttachFailedFirst {
                    operation,
                    provider: self.provider.name.clone(),
                    volume: self.spec.name.clone(),
                    source: Box::new(err),
                });
            }
            tracing::warn!(volume = %self.spec.name, provider = %self.provider.name, operation, error = %err, "attach failed; forced: running detach anyway");
        }
        self.run("detach", self.base_env(true), Vec::new(), false)?;
        self.attached = None;
        Ok(())
    }

    /// Shutdown (detach): attach if needed, then run detach.
    pub fn shutdown(&mut self) -> Result<()> {
        let _lock = self.lock()?;
        self.shutdown_locked("detach", false)
    }

    /// Shutdown, but run detach even when attach fails (`detach --force`).
    pub fn shutdown_forced(&mut self) -> Result<()> {
        let _lock = self.lock()?;
        self.shutdown_locked("detach", true)
    }

    /// Shutdown, then run remove.
    pub fn remove(&mut self) -> Result<()> {
        self.remove_inner(false)
    }

    /// Remove, but run detach and remove even when attach fails
    /// (`remove --force`).
    pub fn remove_forced(&mut self) -> Result<()> {
        self.remove_inner(true)
    }

    fn remove_inner(&mut self, force: bool) -> Result<()> {
        let _lock = self.lock()?;
        self.shutdown_locked("remove", force)?;
        self.run("remove", self.base_env(true), Vec::new(), false)?;
        Ok(())
    }

    /// Grows by `amount_mib`: attach; with `dry_run` stop there; else run
    /// grow with `VOL_SIZE` (current) and `VOL_NEW_SIZE`, and record the new
    /// size. Returns the new size in MiB.
    pub fn grow(&mut self, amount_mib: u64, dry_run: bool) -> Result<u64> {
        if amount_mib == 0 {
            return Err(Error::InvalidArgument(
                "grow amount must be more than 0 MiB".into(),
            ));
        }
        let _lock = self.lock()?;
        self.ensure_attached()?;
        let current = self.require_size("grow")?;
        let new = current
            .checked_add(amount_mib)
            .ok_or_else(|| Error::InvalidArgument("grow amount makes the size overflow".into()))?;
        if dry_run {
            return Ok(new);
        }
        let mut env = self.base_env(true);
        env.push(("VOL_SIZE".into(), current.to_string()));
        env.push(("VOL_NEW_SIZE".into(), new.to_string()));
        self.run("grow", env, Vec::new(), false)?;
        self.spec.size_mib = Some(new);
        Ok(new)
    }

    /// Rename is not supported by the ExtStorage interface.
    pub fn rename(&mut self, _new_name: &str) -> Result<()> {
        Err(Error::NotSupported {
            operation: "rename",
            provider: self.provider.name.clone(),
        })
    }

    /// Runs setinfo with the sanitised metadata; returns what was passed.
    pub fn setinfo(&mut self, metadata: &str) -> Result<String> {
        let _lock = self.lock()?;
        let clean = sanitize_metadata(metadata);
        let mut env = self.base_env(true);
        env.push(("VOL_METADATA".into(), clean.clone()));
        self.run("setinfo", env, Vec::new(), false)?;
        Ok(clean)
    }

    /// Runs snapshot with `VOL_SNAPSHOT_NAME` (default `<vol>.snap`) and
    /// `VOL_SNAPSHOT_SIZE` (default: the volume size). As in Ganeti, an
    /// empty name and a size of 0 mean the default.
    pub fn snapshot(&mut self, name: Option<&str>, size_mib: Option<u64>) -> Result<Snapshot> {
        let name = name.filter(|n| !n.is_empty());
        let size_mib = size_mib.filter(|&s| s != 0);
        if !self.provider.has_optional("snapshot") {
            return Err(Error::NotSupported {
                operation: "snapshot",
                provider: self.provider.name.clone(),
            });
        }
        let snap = match name {
            Some(n) => n.to_owned(),
            None => format!("{}.snap", self.spec.name),
        };
        validate_snapshot_name(&snap)?;
        let _lock = self.lock()?;
        let size = match size_mib {
            Some(s) => s,
            None => self.require_size("snapshot")?,
        };
        let mut env = self.base_env(false);
        env.push(("VOL_SNAPSHOT_NAME".into(), snap.clone()));
        env.push(("VOL_SNAPSHOT_SIZE".into(), size.to_string()));
        self.run("snapshot", env, Vec::new(), false)?;
        Ok(Snapshot {
            provider: self.provider.name.clone(),
            name: snap,
        })
    }

    /// Attaches and returns the URI for `hypervisor`, prefix removed.
    pub fn userspace_uri(&mut self, hypervisor: &str) -> Result<String> {
        let _lock = self.lock()?;
        let info = self.ensure_attached()?;
        find_uri(&info.uris, hypervisor)
            .map(str::to_owned)
            .ok_or_else(|| Error::NoUserspaceUri {
                provider: self.provider.name.clone(),
                hypervisor: hypervisor.to_owned(),
            })
    }

    /// Runs verify. Ganeti passes no arguments; `checks` become arguments
    /// when given (the man page's suggestion).
    pub fn verify(&mut self, checks: &[String]) -> Result<()> {
        let _lock = self.lock()?;
        let args = checks.iter().map(OsString::from).collect();
        self.run("verify", self.base_env(true), args, false)?;
        Ok(())
    }

    /// Attaches and returns the device size in bytes (BLKGETSIZE64).
    pub fn actual_size(&mut self) -> Result<u64> {
        let _lock = self.lock()?;
        let dev = self.require_device("size")?;
        block_device_size(&dev)
    }

    /// Size in bytes and spindles (always none).
    pub fn dimensions(&mut self) -> Result<Dimensions> {
        Ok(Dimensions {
            size_bytes: self.actual_size()?,
            spindles: None,
        })
    }

    /// Attaches and returns the (trivial) sync status.
    pub fn sync_status(&mut self) -> Result<SyncStatus> {
        let _lock = self.lock()?;
        let info = self.ensure_attached()?;
        Ok(SyncStatus {
            dev_path: info.dev_path,
            major: info.major,
            minor: info.minor,
            sync_percent: None,
            estimated_time: None,
            is_degraded: false,
            ldisk_status: "ok",
        })
    }

    /// The command that exports the volume to stdout.
    pub fn export_command(&mut self) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let dev = self.require_device("export")?;
        let size = self.require_size("export")?;
        Ok(vec![
            "dd".into(),
            format!("if={}", dev.display()),
            "bs=1048576".into(),
            format!("count={size}"),
            "iflag=direct".into(),
        ])
    }

    /// The command that imports the volume from stdin.
    pub fn import_command(&mut self) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let dev = self.require_device("import")?;
        Ok(vec![
            "dd".into(),
            format!("of={}", dev.display()),
            "bs=1048576".into(),
            "oflag=direct".into(),
            "conv=notrunc".into(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_sanitising() {
        assert_eq!(
            sanitize_metadata("originstname+inst1.example.com"),
            "originstname+inst1.example.com"
        );
        assert_eq!(sanitize_metadata("-a-b c/d"), "_a-b_c_d");
        assert_eq!(sanitize_metadata("éx"), "_x");
        assert_eq!(sanitize_metadata(&"a".repeat(300)).len(), 128);
        assert_eq!(sanitize_metadata(""), "");
    }

    #[test]
    fn attach_output() {
        let (dev, uris) = parse_attach_output(b"/dev/loop0\r\n\nkvm:rbd:p/v\r\n  \n").unwrap();
        assert_eq!(dev.as_deref(), Some(Path::new("/dev/loop0")));
        assert_eq!(uris, ["kvm:rbd:p/v"]);
        let (dev, uris) = parse_attach_output(b"\nKVM:nbd:x").unwrap();
        assert!(dev.is_none());
        assert_eq!(uris, ["KVM:nbd:x"]);
        assert!(parse_attach_output(b"").is_err());
        assert!(parse_attach_output(b"\n\n  \n").is_err());
        assert!(parse_attach_output(b"/dev/x").unwrap().1.is_empty());
        assert!(parse_attach_output(b"\xff\xfe").is_err());
        // A lone \r ends a line too, as in Ganeti 3.
        let (dev, uris) = parse_attach_output(b"/dev/loop1\rkvm:a\r\rkvm:b").unwrap();
        assert_eq!(dev.as_deref(), Some(Path::new("/dev/loop1")));
        assert_eq!(uris, ["kvm:a", "kvm:b"]);
        let (dev, uris) = parse_attach_output(b"\r\nkvm:c\r\n").unwrap();
        assert!(dev.is_none());
        assert_eq!(uris, ["kvm:c"]);
    }

    #[test]
    fn uri_lookup() {
        let uris = vec![
            "Xen:a".to_owned(),
            "KvM:nbd:unix:/s".to_owned(),
            "kvm:second".to_owned(),
        ];
        assert_eq!(find_uri(&uris, "kvm"), Some("nbd:unix:/s"));
        assert_eq!(find_uri(&uris, "XEN"), Some("a"));
        assert_eq!(find_uri(&uris, "lxc"), None);
        assert_eq!(find_uri(&uris, "kv"), None);
    }
}
