//! virtio-blk without vhost: feature bits, status codes, the config space
//! and parsing of descriptor chains into typed requests.
//!
//! A request chain is laid out as the virtio 1.x spec says: a 16-byte
//! device-readable header (`type`, `reserved`, `sector`), zero or more data
//! descriptors, and a device-writable status byte at the very end of the
//! last descriptor. [`Request::parse`] checks every part of that layout
//! against guest memory and returns either a typed [`Request`] or a
//! [`ParseError`] that says whether a status can still be reported.
//!
//! Nothing here does I/O on the backing store; the vhost-user backend turns
//! requests into engine submissions.
#![warn(missing_docs)]

mod config;
mod request;

pub use config::{BlkConfig, CONFIG_SIZE, WCE_OFFSET, seg_max};
pub use request::{
    DISCARD_SEGMENT_SIZE, DiscardSegment, ParseError, Request, RequestType, SECTOR_SHIFT,
    SECTOR_SIZE, SERIAL_LEN, Segment,
};

/// Feature bits (virtio 1.x, section 5.2.3 and the reserved feature bits).
pub mod features {
    /// Maximum size of a segment is in `size_max`.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// The logical block size is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The device supports the flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology information is in the config space.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// The write cache mode can be read and set in the config space (`wce`).
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// The device has several request queues (`num_queues`).
    pub const MQ: u64 = 1 << 12;
    /// The device supports discard.
    pub const DISCARD: u64 = 1 << 13;
    /// The device supports write zeroes.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// Descriptors may point to indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Compliance with virtio 1.0 or later.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Status byte values written at the end of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The request failed (I/O error, malformed or out-of-range request).
    IoErr = 1,
    /// The request type is not supported.
    Unsupp = 2,
}

impl Status {
    /// The byte as written into guest memory.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}
