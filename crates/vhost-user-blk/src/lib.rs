//! A vhost-user-blk backend: serves a file or block device to QEMU (or any
//! vhost-user frontend such as libblkio) over a unix socket.
//!
//! Layering: [`extstorage_virtio_blk`] parses descriptor chains,
//! [`extstorage_blockio`] moves bytes, and this crate glues them to
//! `vhost-user-backend`:
//!
//! - [`Device`] is the volume: the open backing store, its capacity, the
//!   write-cache mode and the channel for config-change messages. It lives
//!   as long as the daemon, across frontend connections.
//! - The backend (one per connection) implements the `&self`
//!   `VhostUserBackend` trait with one worker thread per queue; each queue
//!   owns its engine and its in-flight table behind its own mutex, so queues
//!   share no lock on the I/O path.
//! - [`Server`] accepts one frontend at a time on a listening socket and
//!   serves the next one when it disconnects, until [`ShutdownHandle::shutdown`].
//! - [`control`] is a small unix-socket protocol to ask a running daemon to
//!   re-read the backing size (resize).
#![warn(missing_docs)]

mod backend;
mod channel;
pub mod control;
mod device;
mod error;
mod server;

pub use device::Device;
pub use error::Error;
pub use server::{Server, ShutdownHandle};

/// The largest `--poll-us` accepted (10 ms): longer spins only waste CPU.
pub const MAX_POLL_US: u32 = 10_000;

/// Which I/O engine each queue uses: blockio's choice, passed through.
pub use extstorage_blockio::EngineKind;

/// The write cache mode the device starts in (the guest may change it
/// through the config space `wce` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteCache {
    /// Writes complete when they reach the host; FLUSH makes them durable.
    #[default]
    Writeback,
    /// Every write is made durable before it completes.
    Writethrough,
}

/// Everything needed to serve one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file or block device to serve.
    pub path: std::path::PathBuf,
    /// Export read-only (VIRTIO_BLK_F_RO; writes fail).
    pub read_only: bool,
    /// Number of request queues, each with its own worker thread (1..=64).
    pub num_queues: u16,
    /// Maximum queue size (a power of two, 2..=32768).
    pub queue_size: u16,
    /// Logical block size in bytes (a power of two, 512..=65536).
    pub logical_block_size: u32,
    /// The GET_ID answer (at most 20 bytes).
    pub serial: String,
    /// Use O_DIRECT where the filesystem allows it.
    pub direct_io: bool,
    /// Initial write cache mode.
    pub write_cache: WriteCache,
    /// The I/O engine.
    pub engine: EngineKind,
    /// Adaptive polling: after a batch, keep checking the avail ring (and
    /// the engine's completions) for up to this many microseconds before
    /// sleeping. 0 (the default) never spins; anything else burns CPU.
    pub poll_us: u32,
}

impl Config {
    /// A configuration with the documented defaults for `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            num_queues: 1,
            queue_size: 256,
            logical_block_size: 512,
            serial: String::new(),
            direct_io: true,
            write_cache: WriteCache::Writeback,
            engine: EngineKind::Auto,
            poll_us: 0,
        }
    }

    /// Checks the values a frontend or the kernel would choke on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, why: String| Err(Error::InvalidConfig { what, why });
        if self.num_queues == 0 || self.num_queues > 64 {
            return bad(
                "num-queues",
                format!("{} is not within 1..=64", self.num_queues),
            );
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 2 {
            return bad(
                "queue-size",
                format!("{} is not a power of two >= 2", self.queue_size),
            );
        }
        let lbs = self.logical_block_size;
        if !lbs.is_power_of_two() || !(512..=65536).contains(&lbs) {
            return bad(
                "logical-block-size",
                format!("{lbs} is not a power of two within 512..=65536"),
            );
        }
        if self.poll_us > MAX_POLL_US {
            return bad(
                "poll-us",
                format!("{} is above the maximum of {MAX_POLL_US}", self.poll_us),
            );
        }
        if self.serial.len() > extstorage_virtio_blk::SERIAL_LEN {
            return bad(
                "serial",
                format!("{:?} is longer than 20 bytes", self.serial),
            );
        }
        Ok(())
    }
}
