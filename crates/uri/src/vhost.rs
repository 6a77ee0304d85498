//! QEMU arguments and QMP commands for a vhost-user-blk disk, and the QEMU
//! version that decides between them.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::error::{Result, UriError};
use crate::model::{check_abs, path_str};
use crate::render::{check_id, check_queues, escape_opt_value};

/// A QEMU version, `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

impl QemuVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// Reads the version from `qemu-system-x86_64 --version` (or `qemu-img
    /// --version`) output: the first `version X.Y[.Z]` in the text.
    pub fn from_version_output(text: &str) -> Result<Self> {
        let err = || UriError::Version(text.lines().next().unwrap_or("").to_string());
        let at = text.find("version ").ok_or_else(err)?;
        let word = text[at + 8..].split_whitespace().next().ok_or_else(err)?;
        word.parse().map_err(|_| err())
    }

    /// Whether `-chardev socket` takes `reconnect-ms` (9.2+) rather than
    /// `reconnect` (seconds; removed in 10.2).
    pub fn has_reconnect_ms(self) -> bool {
        self >= QemuVersion::new(9, 2, 0)
    }
}

impl FromStr for QemuVersion {
    type Err = UriError;

    /// Parses `X.Y` or `X.Y.Z` (a `-suffix` or `+suffix` on the last part is ignored).
    fn from_str(s: &str) -> Result<Self> {
        let err = || UriError::Version(s.to_string());
        let core = s.split(['-', '+', '(']).next().unwrap_or("");
        let mut it = core.split('.');
        let mut num = |required: bool| -> Result<u32> {
            match it.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| err())
                }
                None if !required => Ok(0),
                _ => Err(err()),
            }
        };
        let v = QemuVersion::new(num(true)?, num(true)?, num(false)?);
        if it.next().is_some() {
            return Err(err());
        }
        Ok(v)
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Guest RAM that a vhost-user backend can map: a shared memfd backend
/// (`-object memory-backend-memfd,...,share=on -numa node,memdev=ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMemory {
    /// Object id.
    pub id: String,
    /// Size in MiB; must equal the VM's `-m`.
    pub size_mib: u64,
}

impl SharedMemory {
    /// The argv fragment. Give QEMU `-m SIZE` with the same size.
    pub fn qemu_args(&self) -> Result<Vec<OsString>> {
        check_id("memory backend id", &self.id, 64)?;
        if self.size_mib == 0 {
            return Err(UriError::InvalidValue {
                field: "memory size",
                value: "0".into(),
                reason: "give the guest RAM size in MiB (same as -m)".into(),
            });
        }
        Ok(vec![
            "-object".into(),
            format!(
                "memory-backend-memfd,id={},size={}M,share=on",
                self.id, self.size_mib
            )
            .into(),
            "-numa".into(),
            format!("node,memdev={}", self.id).into(),
        ])
    }
}

/// A vhost-user-blk disk: a unix socket served by a backend daemon and the
/// guest device that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserBlkDisk {
    /// The backend's unix socket.
    pub socket: PathBuf,
    /// Device id; the chardev is `ID-chr`.
    pub id: String,
    /// Number of virtqueues (`None`: QEMU's default, one per vCPU).
    pub num_queues: Option<u16>,
    /// Virtqueue size (power of two, up to 1024).
    pub queue_size: Option<u16>,
    /// Expose a guest-controllable write cache (`config-wce`).
    pub config_wce: Option<bool>,
    /// Boot order.
    pub bootindex: Option<u32>,
    /// Reconnect to a restarted backend after this many milliseconds
    /// (`None`: no reconnect).
    pub reconnect_ms: Option<u32>,
}

impl VhostUserBlkDisk {
    /// A disk with QEMU's defaults for everything but socket and id.
    pub fn new(socket: impl Into<PathBuf>, id: impl Into<String>) -> Self {
        VhostUserBlkDisk {
            socket: socket.into(),
            id: id.into(),
            num_queues: None,
            queue_size: None,
            config_wce: None,
            bootindex: None,
            reconnect_ms: None,
        }
    }

    /// The chardev id (`ID-chr`).
    pub fn chardev_id(&self) -> String {
        format!("{}-chr", self.id)
    }

    fn validate(&self) -> Result<String> {
        check_id("device id", &self.id, 27)?;
        let socket = path_str(&self.socket)?;
        check_abs(&socket)?;
        check_queues(self.num_queues, self.queue_size)?;
        Ok(socket)
    }

    fn reconnect(&self, version: QemuVersion) -> Option<(&'static str, u64)> {
        let ms = self.reconnect_ms.filter(|&ms| ms > 0)?;
        if version.has_reconnect_ms() {
            Some(("reconnect-ms", u64::from(ms)))
        } else {
            Some(("reconnect", u64::from(ms).div_ceil(1000)))
        }
    }

    /// The `-chardev` and `-device` arguments for QEMU `version`. Guest RAM
    /// must be shared too: add [`SharedMemory::qemu_args`].
    pub fn qemu_args(&self, version: QemuVersion) -> Result<Vec<OsString>> {
        let socket = self.validate()?;
        let mut chardev = format!(
            "socket,id={},path={}",
            self.chardev_id(),
            escape_opt_value(&socket)
        );
        if let Some((k, v)) = self.reconnect(version) {
            chardev.push_str(&format!(",{k}={v}"));
        }
        let mut device = format!(
            "vhost-user-blk-pci,chardev={},id={}",
            self.chardev_id(),
            self.id
        );
        if let Some(n) = self.num_queues {
            device.push_str(&format!(",num-queues={n}"));
        }
        if let Some(q) = self.queue_size {
            device.push_str(&format!(",queue-size={q}"));
        }
        if let Some(w) = self.config_wce {
            device.push_str(&format!(",config-wce={}", if w { "on" } else { "off" }));
        }
        if let Some(b) = self.bootindex {
            device.push_str(&format!(",bootindex={b}"));
        }
        Ok(vec![
            "-chardev".into(),
            chardev.into(),
            "-device".into(),
            device.into(),
        ])
    }

    /// The QMP commands that hot-plug the disk: `chardev-add` (a client
    /// socket: `server` is false) then `device_add` with numbers as JSON
    /// numbers.
    pub fn qmp_hotplug_commands(&self, version: QemuVersion) -> Result<Vec<Value>> {
        let socket = self.validate()?;
        let mut data = Map::new();
        data.insert(
            "addr".into(),
            json!({"type": "unix", "data": {"path": socket}}),
        );
        data.insert("server".into(), json!(false));
        if let Some((k, v)) = self.reconnect(version) {
            data.insert(k.into(), json!(v));
        }
        let mut dev = Map::new();
        dev.insert("driver".into(), json!("vhost-user-blk-pci"));
        dev.insert("id".into(), json!(self.id));
        dev.insert("chardev".into(), json!(self.chardev_id()));
        if let Some(n) = self.num_queues {
            dev.insert("num-queues".into(), json!(n));
        }
        if let Some(q) = self.queue_size {
            dev.insert("queue-size".into(), json!(q));
        }
        if let Some(w) = self.config_wce {
            dev.insert("config-wce".into(), json!(w));
        }
        if let Some(b) = self.bootindex {
            dev.insert("bootindex".into(), json!(b));
        }
        Ok(vec![
            json!({"execute": "chardev-add", "arguments": {
                "id": self.chardev_id(),
                "backend": {"type": "socket", "data": Value::Object(data)},
            }}),
            json!({"execute": "device_add", "arguments": Value::Object(dev)}),
        ])
    }

    /// The QMP commands that unplug the disk. `device_del` only starts the
    /// removal: wait for the `DEVICE_DELETED` event before `chardev-remove`.
    pub fn qmp_unplug_commands(&self) -> Result<Vec<Value>> {
        check_id("device id", &self.id, 27)?;
        Ok(vec![
            json!({"execute": "device_del", "arguments": {"id": self.id}}),
            json!({"execute": "chardev-remove", "arguments": {"id": self.chardev_id()}}),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = QemuVersion::from_version_output(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright",
        )
        .unwrap();
        assert_eq!(v, QemuVersion::new(10, 0, 2));
        assert_eq!(
            "9.2".parse::<QemuVersion>().unwrap(),
            QemuVersion::new(9, 2, 0)
        );
        assert_eq!(
            "8.2.50-rc1".parse::<QemuVersion>().unwrap(),
            QemuVersion::new(8, 2, 50)
        );
        assert!(QemuVersion::new(9, 1, 9) < QemuVersion::new(9, 2, 0));
        for bad in ["", "10", "a.b", "1.2.3.4", "1..2"] {
            assert!(bad.parse::<QemuVersion>().is_err(), "{bad}");
        }
        assert!(QemuVersion::from_version_output("no such thing").is_err());
    }

    #[test]
    fn args_by_version() {
        let mut d = VhostUserBlkDisk::new("/run/vu/a,b.sock", "vdisk0");
        d.num_queues = Some(4);
        d.queue_size = Some(256);
        d.config_wce = Some(true);
        d.reconnect_ms = Some(1500);
        let new = d.qemu_args(QemuVersion::new(10, 0, 2)).unwrap();
        assert_eq!(
            new,
            vec![
                "-chardev",
                "socket,id=vdisk0-chr,path=/run/vu/a,,b.sock,reconnect-ms=1500",
                "-device",
                "vhost-user-blk-pci,chardev=vdisk0-chr,id=vdisk0,num-queues=4,queue-size=256,config-wce=on",
            ]
        );
        let old = d.qemu_args(QemuVersion::new(8, 2, 0)).unwrap();
        assert_eq!(
            old[1],
            "socket,id=vdisk0-chr,path=/run/vu/a,,b.sock,reconnect=2"
        );
    }

    #[test]
    fn hotplug_json() {
        let mut d = VhostUserBlkDisk::new("/s", "v1");
        d.num_queues = Some(2);
        d.reconnect_ms = Some(1000);
        let c = d.qmp_hotplug_commands(QemuVersion::new(10, 0, 0)).unwrap();
        assert_eq!(c[0]["arguments"]["backend"]["data"]["server"], false);
        assert_eq!(c[0]["arguments"]["backend"]["data"]["reconnect-ms"], 1000);
        assert_eq!(c[1]["arguments"]["num-queues"], 2);
        let c = d.qmp_hotplug_commands(QemuVersion::new(9, 1, 0)).unwrap();
        assert_eq!(c[0]["arguments"]["backend"]["data"]["reconnect"], 1);
    }

    #[test]
    fn bad_disks() {
        let v = QemuVersion::new(10, 0, 0);
        assert!(VhostUserBlkDisk::new("rel.sock", "d").qemu_args(v).is_err());
        assert!(VhostUserBlkDisk::new("/s", "1d").qemu_args(v).is_err());
        let mut d = VhostUserBlkDisk::new("/s", "d");
        d.queue_size = Some(100);
        assert!(d.qemu_args(v).is_err());
        d.queue_size = None;
        d.num_queues = Some(0);
        assert!(d.qemu_args(v).is_err());
        let m = SharedMemory {
            id: "mem".into(),
            size_mib: 512,
        };
        assert_eq!(
            m.qemu_args().unwrap(),
            vec![
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-numa",
                "node,memdev=mem"
            ]
        );
    }
}
