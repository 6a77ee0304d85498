//! The guest device for a `-drive`/`-blockdev` disk: `virtio-blk-pci`.

use std::ffi::OsString;

use serde_json::{Map, Value, json};

use crate::error::{Result, UriError};
use crate::render::{BlockdevArgs, check_id, check_queues, escape_opt_value};

/// A `-device virtio-blk-pci` on top of a drive id or block node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioBlkDevice {
    /// The `-drive` id or the `-blockdev` top node name.
    pub drive: String,
    /// Device id.
    pub id: String,
    /// Boot order.
    pub bootindex: Option<u32>,
    /// Number of virtqueues.
    pub num_queues: Option<u16>,
    /// Virtqueue size (power of two, up to 1024).
    pub queue_size: Option<u16>,
    /// Serial the guest sees (at most 20 bytes, the virtio-blk ID size).
    pub serial: Option<String>,
    /// Guest-visible write cache; with `-blockdev` this carries the cache
    /// mode's write-back/write-through half.
    pub write_cache: Option<bool>,
}

impl VirtioBlkDevice {
    /// A device for `drive` with QEMU's defaults.
    pub fn new(drive: impl Into<String>, id: impl Into<String>) -> Self {
        VirtioBlkDevice {
            drive: drive.into(),
            id: id.into(),
            bootindex: None,
            num_queues: None,
            queue_size: None,
            serial: None,
            write_cache: None,
        }
    }

    /// A device for rendered `-blockdev` nodes, with `write-cache` from the
    /// cache mode.
    pub fn for_blockdev(args: &BlockdevArgs, id: impl Into<String>) -> Self {
        VirtioBlkDevice {
            write_cache: Some(args.device_write_cache),
            ..VirtioBlkDevice::new(args.node_name.clone(), id)
        }
    }

    fn validate(&self) -> Result<()> {
        check_id("drive", &self.drive, 31)?;
        check_id("device id", &self.id, 64)?;
        check_queues(self.num_queues, self.queue_size)?;
        if let Some(s) = &self.serial
            && (s.is_empty() || s.len() > 20 || s.chars().any(|c| c.is_control()))
        {
            return Err(UriError::InvalidValue {
                field: "serial",
                value: s.clone(),
                reason: "1 to 20 bytes of printable text (the virtio-blk ID size)".into(),
            });
        }
        Ok(())
    }

    /// `-device virtio-blk-pci,drive=..,id=..,...`.
    pub fn qemu_args(&self) -> Result<Vec<OsString>> {
        self.validate()?;
        let mut d = format!("virtio-blk-pci,drive={},id={}", self.drive, self.id);
        if let Some(b) = self.bootindex {
            d.push_str(&format!(",bootindex={b}"));
        }
        if let Some(n) = self.num_queues {
            d.push_str(&format!(",num-queues={n}"));
        }
        if let Some(q) = self.queue_size {
            d.push_str(&format!(",queue-size={q}"));
        }
        if let Some(s) = &self.serial {
            d.push_str(&format!(",serial={}", escape_opt_value(s)));
        }
        if let Some(w) = self.write_cache {
            d.push_str(&format!(",write-cache={}", if w { "on" } else { "off" }));
        }
        Ok(vec!["-device".into(), d.into()])
    }

    /// The QMP `device_add` that hot-plugs this device (numbers as JSON numbers).
    pub fn qmp_device_add(&self) -> Result<Value> {
        self.validate()?;
        let mut m = Map::new();
        m.insert("driver".into(), json!("virtio-blk-pci"));
        m.insert("drive".into(), json!(self.drive));
        m.insert("id".into(), json!(self.id));
        if let Some(b) = self.bootindex {
            m.insert("bootindex".into(), json!(b));
        }
        if let Some(n) = self.num_queues {
            m.insert("num-queues".into(), json!(n));
        }
        if let Some(q) = self.queue_size {
            m.insert("queue-size".into(), json!(q));
        }
        if let Some(s) = &self.serial {
            m.insert("serial".into(), json!(s));
        }
        if let Some(w) = self.write_cache {
            m.insert("write-cache".into(), json!(if w { "on" } else { "off" }));
        }
        Ok(json!({"execute": "device_add", "arguments": Value::Object(m)}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_args() {
        let mut d = VirtioBlkDevice::new("disk0", "vd0");
        d.serial = Some("ser,ial 1".into());
        d.num_queues = Some(2);
        d.write_cache = Some(false);
        d.bootindex = Some(0);
        assert_eq!(
            d.qemu_args().unwrap()[1],
            "virtio-blk-pci,drive=disk0,id=vd0,bootindex=0,num-queues=2,serial=ser,,ial 1,write-cache=off"
        );
        let q = d.qmp_device_add().unwrap();
        assert_eq!(q["arguments"]["num-queues"], 2);
        assert_eq!(q["arguments"]["serial"], "ser,ial 1");
        d.serial = Some("x".repeat(21));
        assert!(d.qemu_args().is_err());
        d.serial = None;
        d.drive = "a,b".into();
        assert!(d.qemu_args().is_err());
    }
}
