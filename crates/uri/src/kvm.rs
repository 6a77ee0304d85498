//! The whole KVM argv fragment for one ExtStorage volume, in each access
//! mode: a host block device (`kernelspace`), the attach script's URI
//! (`userspace`) or a vhost-user-blk socket served by a backend daemon
//! (`vhost-user`).
//!
//! ```
//! use extstorage_uri::kvm::{AccessMode, DiskAccess, KvmDisk};
//! use extstorage_uri::QemuVersion;
//! let access = DiskAccess::resolve(AccessMode::Kernelspace, Some("/dev/loop3".as_ref()), None, None).unwrap();
//! let args = KvmDisk::new("disk0", QemuVersion::new(10, 0, 0)).render(&access).unwrap();
//! assert_eq!(args.argv.last().unwrap(), "virtio-blk-pci,drive=disk0,id=disk0,write-cache=on");
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::device::VirtioBlkDevice;
use crate::error::{Result, UriError};
use crate::model::{Source, check_abs, path_str};
use crate::options::{CacheMode, DiskOptions};
use crate::render::{SecretObject, check_queues, render_blockdev};
use crate::vhost::{QemuVersion, SharedMemory, VhostUserBlkDisk};

/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How the guest reaches the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// The block device attach printed, opened by QEMU (`host_device`).
    Kernelspace,
    /// The `<hypervisor>:` URI attach printed, opened by QEMU's own driver.
    Userspace,
    /// The block device served over a vhost-user-blk socket by a daemon.
    VhostUser,
}

impl AccessMode {
    /// The keyword used on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Kernelspace => "kernelspace",
            AccessMode::Userspace => "userspace",
            AccessMode::VhostUser => "vhost-user",
        }
    }

    /// The default, as Ganeti: kernelspace when attach gave a block device,
    /// userspace otherwise.
    pub fn default_for(has_device: bool) -> AccessMode {
        if has_device {
            AccessMode::Kernelspace
        } else {
            AccessMode::Userspace
        }
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessMode {
    type Err = UriError;
    fn from_str(s: &str) -> Result<AccessMode> {
        match s {
            "kernelspace" => Ok(AccessMode::Kernelspace),
            "userspace" => Ok(AccessMode::Userspace),
            "vhost-user" => Ok(AccessMode::VhostUser),
            _ => Err(UriError::InvalidValue {
                field: "access mode",
                value: s.to_string(),
                reason: "expected one of: kernelspace, userspace, vhost-user".into(),
            }),
        }
    }
}

/// A volume's access, resolved from what attach returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskAccess {
    /// QEMU opens the block device itself.
    Kernelspace {
        /// The `host_device` source.
        source: Source,
    },
    /// QEMU opens the attach URI.
    Userspace {
        /// The parsed URI.
        source: Source,
    },
    /// A vhost-user-blk backend serves `device` on `socket`.
    VhostUser {
        /// The block device the backend serves.
        device: PathBuf,
        /// The backend's unix socket.
        socket: PathBuf,
    },
}

impl DiskAccess {
    /// Builds the access for `mode` from attach's block device and the
    /// hypervisor's URI (prefix removed). `socket` is needed for vhost-user.
    pub fn resolve(
        mode: AccessMode,
        device: Option<&Path>,
        uri: Option<&str>,
        socket: Option<&Path>,
    ) -> Result<DiskAccess> {
        let need_device = || UriError::NoBlockDevice {
            mode: mode.as_str(),
        };
        match mode {
            AccessMode::Kernelspace => Ok(DiskAccess::Kernelspace {
                source: Source::from_block_device(device.ok_or_else(need_device)?)?,
            }),
            AccessMode::Userspace => {
                let uri = uri.ok_or(UriError::Empty)?;
                Ok(DiskAccess::Userspace {
                    source: Source::parse_legacy(uri)?,
                })
            }
            AccessMode::VhostUser => {
                let device = device.ok_or_else(need_device)?;
                check_abs(&path_str(device)?)?;
                let socket = socket.ok_or_else(|| UriError::InvalidValue {
                    field: "vhost-user socket",
                    value: String::new(),
                    reason: "give the unix socket path the backend listens on".into(),
                })?;
                check_socket_path(socket)?;
                Ok(DiskAccess::VhostUser {
                    device: device.to_path_buf(),
                    socket: socket.to_path_buf(),
                })
            }
        }
    }

    /// The access mode.
    pub fn mode(&self) -> AccessMode {
        match self {
            DiskAccess::Kernelspace { .. } => AccessMode::Kernelspace,
            DiskAccess::Userspace { .. } => AccessMode::Userspace,
            DiskAccess::VhostUser { .. } => AccessMode::VhostUser,
        }
    }
}

/// Checks a unix socket path: absolute, UTF-8, at most [`MAX_SOCKET_PATH`] bytes.
pub fn check_socket_path(socket: &Path) -> Result<()> {
    let s = path_str(socket)?;
    check_abs(&s)?;
    if s.len() > MAX_SOCKET_PATH {
        return Err(UriError::InvalidValue {
            field: "vhost-user socket",
            value: s.clone(),
            reason: format!(
                "{} bytes is longer than a unix socket path can be ({MAX_SOCKET_PATH}); \
                 choose a shorter path",
                s.len()
            ),
        });
    }
    Ok(())
}

/// The guest disk: ids, device properties and disk options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmDisk {
    /// Disk id: the top block node and the guest device (`ID-file` is the
    /// protocol node, `ID-chr` the vhost-user chardev).
    pub id: String,
    /// Cache, aio, discard, read-only, secret directory. For vhost-user
    /// only the cache mode matters (the guest's write cache).
    pub options: DiskOptions,
    /// Boot order.
    pub bootindex: Option<u32>,
    /// Number of virtqueues.
    pub num_queues: Option<u16>,
    /// Virtqueue size.
    pub queue_size: Option<u16>,
    /// vhost-user: reconnect to a restarted backend after this many ms.
    pub reconnect_ms: Option<u32>,
    /// vhost-user: guest RAM in MiB (same as `-m`); when given, the shared
    /// memory backend is part of the argv, otherwise a note says to add it.
    pub memory_mib: Option<u64>,
    /// The QEMU that will run the argv.
    pub qemu_version: QemuVersion,
}

/// A rendered disk: the argv fragment and what the caller must do around it.
#[derive(Debug, Clone, PartialEq)]
pub struct KvmArgs {
    /// The argv elements, in order.
    pub argv: Vec<OsString>,
    /// Secret files to write before starting QEMU.
    pub secrets: Vec<SecretObject>,
    /// The top block node (`None` for vhost-user).
    pub node_name: Option<String>,
    /// The guest device id.
    pub device_id: String,
    /// Things the caller must know (e.g. shared guest memory for vhost-user).
    pub notes: Vec<String>,
}

impl KvmDisk {
    /// A disk with Ganeti's ext-disk options (`cache=none`) and QEMU's
    /// defaults for everything else.
    pub fn new(id: impl Into<String>, qemu_version: QemuVersion) -> KvmDisk {
        KvmDisk {
            id: id.into(),
            options: DiskOptions::ganeti_ext(),
            bootindex: None,
            num_queues: None,
            queue_size: None,
            reconnect_ms: None,
            memory_mib: None,
            qemu_version,
        }
    }

    /// Checks what can be checked before the volume is attached: the ids,
    /// queue count and size, and the memory size, in every access mode.
    /// [`render`](Self::render) checks again, with the source.
    pub fn validate(&self) -> Result<()> {
        crate::render::check_id("disk id", &self.id, 26)?;
        check_queues(self.num_queues, self.queue_size)?;
        if self.memory_mib == Some(0) {
            return Err(UriError::InvalidValue {
                field: "memory size",
                value: "0".into(),
                reason: "give the guest RAM size in MiB (same as -m)".into(),
            });
        }
        Ok(())
    }

    /// Renders the argv for `access`: `-blockdev` nodes plus
    /// `-device virtio-blk-pci` for kernelspace and userspace; the shared
    /// memory (when `memory_mib` is set), `-chardev socket` and
    /// `-device vhost-user-blk-pci` for vhost-user.
    pub fn render(&self, access: &DiskAccess) -> Result<KvmArgs> {
        match access {
            DiskAccess::Kernelspace { source } | DiskAccess::Userspace { source } => {
                let bd = render_blockdev(source, &self.options, &self.id)?;
                let mut dev = VirtioBlkDevice::for_blockdev(&bd, self.id.clone());
                dev.bootindex = self.bootindex;
                dev.num_queues = self.num_queues;
                dev.queue_size = self.queue_size;
                let mut argv = bd.argv()?;
                argv.extend(dev.qemu_args()?);
                Ok(KvmArgs {
                    argv,
                    secrets: bd.secrets,
                    node_name: Some(bd.node_name),
                    device_id: self.id.clone(),
                    notes: Vec::new(),
                })
            }
            DiskAccess::VhostUser { socket, .. } => self.render_vhost_user(socket),
        }
    }

    /// [`validate`](Self::validate), plus every other check of
    /// [`render`](Self::render) that does not depend on what attach
    /// returns (cache and aio rules, the vhost-user socket), so a caller
    /// can refuse bad options before it attaches the volume. `mode` is the
    /// access mode when known (`None`: kernelspace or userspace, decided by
    /// attach); `socket` is the vhost-user socket. Rules about the source
    /// itself (aio on a network URI, read-only sources, secrets) are left to
    /// `render`.
    pub fn validate_for(&self, mode: Option<AccessMode>, socket: Option<&Path>) -> Result<()> {
        self.validate()?;
        if mode == Some(AccessMode::VhostUser) {
            let socket = socket.ok_or_else(|| UriError::InvalidValue {
                field: "vhost-user socket",
                value: String::new(),
                reason: "give the unix socket path the backend listens on".into(),
            })?;
            return self.render_vhost_user(socket).map(drop);
        }
        // A stand-in block device: rendering it runs the checks of the
        // block nodes and the guest device, which userspace shares.
        let stand_in = DiskAccess::Kernelspace {
            source: Source::from_block_device("/dev/null")?,
        };
        self.render(&stand_in).map(drop)
    }

    fn render_vhost_user(&self, socket: &Path) -> Result<KvmArgs> {
        check_socket_path(socket)?;
        let o = &self.options;
        if o.aio.is_some() || o.detect_zeroes.is_some() {
            return Err(UriError::Conflict(
                "aio and detect-zeroes belong to the backend daemon, not to a vhost-user \
                 disk; remove them"
                    .into(),
            ));
        }
        if o.shared && o.cache != CacheMode::None {
            return Err(UriError::Conflict(format!(
                "shared (ext) disks must use cache=none so live migration stays consistent, \
                 not cache={}",
                o.cache
            )));
        }
        let mut disk = VhostUserBlkDisk::new(socket, self.id.clone());
        disk.num_queues = self.num_queues;
        disk.queue_size = self.queue_size;
        disk.bootindex = self.bootindex;
        disk.reconnect_ms = self.reconnect_ms;
        disk.config_wce = Some(o.cache.write_cache());
        let mut argv = Vec::new();
        let mut notes = Vec::new();
        match self.memory_mib {
            Some(size_mib) => argv.extend(
                SharedMemory {
                    id: format!("{}-mem", self.id),
                    size_mib,
                }
                .qemu_args()?,
            ),
            None => notes.push(
                "vhost-user needs shared guest RAM: add -object \
                 memory-backend-memfd,id=mem,size=<RAM>M,share=on -numa node,memdev=mem \
                 (size equal to -m)"
                    .to_string(),
            ),
        }
        if o.read_only {
            notes.push(
                "read-only is enforced by the backend: start it read-only; the guest \
                 device has no read-only property"
                    .to_string(),
            );
        }
        argv.extend(disk.qemu_args(self.qemu_version)?);
        Ok(KvmArgs {
            argv,
            secrets: Vec::new(),
            node_name: None,
            device_id: self.id.clone(),
            notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Aio;

    const V10: QemuVersion = QemuVersion::new(10, 0, 0);

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn validate_checks_before_attach() {
        let mut d = KvmDisk::new("disk0", V10);
        d.validate().unwrap();
        for bad in ["a,b", "0disk", "", &"d".repeat(27)] {
            d.id = bad.to_string();
            assert!(d.validate().is_err(), "{bad:?}");
        }
        d.id = "disk0".into();
        d.queue_size = Some(100);
        assert!(d.validate().is_err());
        d.queue_size = Some(128);
        d.num_queues = Some(0);
        assert!(d.validate().is_err());
    }

    #[test]
    fn modes_parse_and_default() {
        for m in [
            AccessMode::Kernelspace,
            AccessMode::Userspace,
            AccessMode::VhostUser,
        ] {
            assert_eq!(m.as_str().parse::<AccessMode>().unwrap(), m);
        }
        let e = "vhost".parse::<AccessMode>().unwrap_err().to_string();
        assert!(e.contains("vhost-user") && e.contains("'vhost'"), "{e}");
        assert_eq!(AccessMode::default_for(true), AccessMode::Kernelspace);
        assert_eq!(AccessMode::default_for(false), AccessMode::Userspace);
    }

    #[test]
    fn resolve_needs_what_the_mode_uses() {
        let dev = Path::new("/dev/loop7");
        let k = DiskAccess::resolve(AccessMode::Kernelspace, Some(dev), None, None).unwrap();
        assert_eq!(
            k,
            DiskAccess::Kernelspace {
                source: Source::HostDevice {
                    path: "/dev/loop7".into()
                }
            }
        );
        let e =
            DiskAccess::resolve(AccessMode::Kernelspace, None, Some("rbd:p/i"), None).unwrap_err();
        assert_eq!(
            e,
            UriError::NoBlockDevice {
                mode: "kernelspace"
            }
        );
        let u =
            DiskAccess::resolve(AccessMode::Userspace, Some(dev), Some("rbd:p/i"), None).unwrap();
        assert!(matches!(
            u,
            DiskAccess::Userspace {
                source: Source::Rbd(_)
            }
        ));
        assert!(
            DiskAccess::resolve(AccessMode::Userspace, Some(dev), Some("rel/x"), None).is_err()
        );
        let sock = Path::new("/run/vu/a.sock");
        let v = DiskAccess::resolve(AccessMode::VhostUser, Some(dev), None, Some(sock)).unwrap();
        assert_eq!(v.mode(), AccessMode::VhostUser);
        assert!(DiskAccess::resolve(AccessMode::VhostUser, None, None, Some(sock)).is_err());
        assert!(DiskAccess::resolve(AccessMode::VhostUser, Some(dev), None, None).is_err());
        let long = PathBuf::from(format!("/{}", "s".repeat(MAX_SOCKET_PATH)));
        let e = DiskAccess::resolve(AccessMode::VhostUser, Some(dev), None, Some(&long))
            .unwrap_err()
            .to_string();
        assert!(e.contains("108 bytes") && e.contains("shorter"), "{e}");
    }

    #[test]
    fn kernelspace_argv() {
        let access = DiskAccess::resolve(
            AccessMode::Kernelspace,
            Some(Path::new("/dev/loop1")),
            None,
            None,
        )
        .unwrap();
        let mut disk = KvmDisk::new("d1", V10);
        disk.bootindex = Some(2);
        disk.num_queues = Some(2);
        disk.options.aio = Some(Aio::Native);
        let a = disk.render(&access).unwrap();
        let argv = strs(&a.argv);
        assert_eq!(argv.len(), 6, "{argv:?}");
        assert_eq!(argv[0], "-blockdev");
        let proto: serde_json::Value = serde_json::from_str(argv[1]).unwrap();
        assert_eq!(proto["driver"], "host_device");
        assert_eq!(proto["filename"], "/dev/loop1");
        assert_eq!(proto["aio"], "native");
        assert_eq!(proto["cache"]["direct"], true);
        let raw: serde_json::Value = serde_json::from_str(argv[3]).unwrap();
        assert_eq!(raw["node-name"], "d1");
        assert_eq!(raw["file"], "d1-file");
        assert_eq!(
            argv[4..],
            [
                "-device",
                "virtio-blk-pci,drive=d1,id=d1,bootindex=2,num-queues=2,write-cache=on"
            ]
        );
        assert_eq!(a.node_name.as_deref(), Some("d1"));
        assert!(a.secrets.is_empty() && a.notes.is_empty());
    }

    #[test]
    fn userspace_secret_stays_in_a_file() {
        let access = DiskAccess::resolve(
            AccessMode::Userspace,
            None,
            Some("rbd:rbd/vol:id=admin:key=QVFBQUFBPT0="),
            None,
        )
        .unwrap();
        let mut disk = KvmDisk::new("disk0", V10);
        assert!(matches!(
            disk.render(&access),
            Err(UriError::MissingSecretDir { protocol: "rbd" })
        ));
        disk.options.secret_dir = Some("/run/s".into());
        let a = disk.render(&access).unwrap();
        let all = strs(&a.argv).join(" ");
        assert!(!all.contains("QVFBQUFBPT0="), "{all}");
        assert!(
            all.starts_with("-object secret,id=disk0-secret,file=/run/s/disk0-secret"),
            "{all}"
        );
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.secrets[0].data.expose(), "QVFBQUFBPT0=");
    }

    #[test]
    fn validate_for_refuses_what_render_refuses_without_a_device() {
        let mut disk = KvmDisk::new("disk0", V10);
        disk.validate_for(None, None).unwrap();
        disk.validate_for(Some(AccessMode::Userspace), None)
            .unwrap();
        let sock = Path::new("/run/vu/a.sock");
        disk.validate_for(Some(AccessMode::VhostUser), Some(sock))
            .unwrap();
        assert!(
            disk.validate_for(Some(AccessMode::VhostUser), None)
                .is_err()
        );
        let long = PathBuf::from(format!("/{}", "s".repeat(MAX_SOCKET_PATH)));
        assert!(
            disk.validate_for(Some(AccessMode::VhostUser), Some(&long))
                .is_err()
        );
        disk.id = "a,b".into();
        for mode in [
            None,
            Some(AccessMode::Kernelspace),
            Some(AccessMode::VhostUser),
        ] {
            assert!(disk.validate_for(mode, Some(sock)).is_err(), "{mode:?}");
        }
        disk.id = "disk0".into();
        disk.queue_size = Some(3);
        assert!(disk.validate_for(None, None).is_err());
        disk.queue_size = None;
        disk.options.cache = CacheMode::Writeback;
        assert!(disk.validate_for(None, None).is_err());
        disk.options.cache = CacheMode::None;
        disk.options.aio = Some(Aio::Native);
        disk.validate_for(None, None).unwrap();
        assert!(
            disk.validate_for(Some(AccessMode::VhostUser), Some(sock))
                .is_err()
        );
    }

    #[test]
    fn vhost_user_argv_and_rules() {
        let access = DiskAccess::resolve(
            AccessMode::VhostUser,
            Some(Path::new("/dev/loop2")),
            None,
            Some(Path::new("/run/vu/d,0.sock")),
        )
        .unwrap();
        let mut disk = KvmDisk::new("vd0", V10);
        disk.num_queues = Some(2);
        let a = disk.render(&access).unwrap();
        assert_eq!(
            strs(&a.argv),
            [
                "-chardev",
                "socket,id=vd0-chr,path=/run/vu/d,,0.sock",
                "-device",
                "vhost-user-blk-pci,chardev=vd0-chr,id=vd0,num-queues=2,config-wce=on"
            ]
        );
        assert!(a.notes[0].contains("share=on"), "{:?}", a.notes);
        assert_eq!(a.node_name, None);
        disk.memory_mib = Some(512);
        disk.reconnect_ms = Some(1000);
        let a = disk.render(&access).unwrap();
        assert_eq!(
            strs(&a.argv[..4]),
            [
                "-object",
                "memory-backend-memfd,id=vd0-mem,size=512M,share=on",
                "-numa",
                "node,memdev=vd0-mem"
            ]
        );
        assert!(a.argv[5].to_str().unwrap().ends_with(",reconnect-ms=1000"));
        assert!(a.notes.is_empty());
        disk.options.aio = Some(Aio::IoUring);
        assert!(matches!(disk.render(&access), Err(UriError::Conflict(_))));
        disk.options.aio = None;
        disk.options.cache = CacheMode::Writeback;
        assert!(matches!(disk.render(&access), Err(UriError::Conflict(_))));
        disk.options.shared = false;
        disk.options.cache = CacheMode::Writethrough;
        let a = disk.render(&access).unwrap();
        assert!(a.argv[7].to_str().unwrap().contains("config-wce=off"));
    }
}
