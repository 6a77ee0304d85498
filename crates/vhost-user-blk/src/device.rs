//! The served volume: backing store, capacity, cache mode and the channel
//! used to tell the frontend about a new size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use extstorage_blockio::{
    Backing, BackingKind, Completion, Engine, EnginePaths, OpenOptions, RbdEngine, RbdImage,
    RbdSpec, Request, SubmitError, SyncEngine,
};
use extstorage_virtio_blk::{BlkConfig, SECTOR_SHIFT, features};

use crate::channel::ConfigChannel;
use extstorage_serve_api::control::{ResizeReply, StatusReport};

use crate::stats::DeviceStats;
#[cfg(any(test, feature = "test-hooks"))]
use crate::testonly::{FaultEngine, HoldEngine, TestOptions};
use crate::{Config, Error, RbdSource, WriteCache, engine_kind};

/// Largest discard / write-zeroes segment offered, in sectors (2 GiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// The one conversion from the validated `--rbd` source (serve-api) to
/// what the rbd engine opens (blockio), `read_only` as the device is served.
/// The source is taken apart whole, so a field added to it does not compile
/// until it is carried over here.
fn rbd_spec(src: &RbdSource, read_only: bool) -> RbdSpec {
    let RbdSource {
        pool,
        namespace,
        image,
        snapshot,
        conf,
        id,
        keyring,
        timeout_secs,
    } = src.clone();
    RbdSpec {
        pool,
        namespace,
        image,
        snapshot,
        conf,
        id,
        keyring,
        timeout_secs,
        read_only,
    }
}

/// What the device reads and writes.
#[derive(Debug)]
enum Store {
    /// A file or block device.
    Local(Arc<Backing>),
    /// A Ceph RBD image (the rbd engine).
    Rbd(Arc<RbdImage>),
}

/// An engine that fails every request with `EIO`: a queue whose real
/// engine could not be created (no file descriptors left) still answers
/// its guest.
#[derive(Debug)]
struct FailingEngine {
    done: std::collections::VecDeque<Completion>,
    capacity: usize,
}

impl FailingEngine {
    fn new(capacity: usize) -> Self {
        Self {
            done: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }
}

impl Engine for FailingEngine {
    fn name(&self) -> &'static str {
        "failing"
    }

    unsafe fn submit(&mut self, _req: &Request<'_>, user_data: u64) -> Result<(), SubmitError> {
        if self.done.len() >= self.capacity {
            return Err(SubmitError::Full);
        }
        self.done.push_back(Completion {
            user_data,
            result: Err(libc::EIO),
        });
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn paths(&self) -> EnginePaths {
        EnginePaths {
            ring: "none",
            event_loop: false,
            discard: "none",
            write_zeroes: "none",
            write_through: "none",
        }
    }
}

/// One volume being served. Shared by every connection and queue; the I/O
/// path only reads its atomics.
#[derive(Debug)]
pub struct Device {
    cfg: Config,
    store: Store,
    capacity_sectors: AtomicU64,
    writeback: AtomicBool,
    channel: Mutex<Option<ConfigChannel>>,
    stats: DeviceStats,
    /// The fault-injection settings from the environment (feature
    /// `test-hooks` only: a release build has neither them nor the code).
    #[cfg(any(test, feature = "test-hooks"))]
    test: TestOptions,
}

impl Device {
    /// Validates `cfg` and opens the backing store (or connects to the
    /// Ceph cluster and opens the RBD image).
    pub fn open(cfg: Config) -> Result<Arc<Self>, Error> {
        cfg.validate()?;
        if let Some(src) = cfg.rbd.clone() {
            return Self::open_rbd(cfg, &src);
        }
        let backing = Backing::open(
            &cfg.path,
            OpenOptions {
                read_only: cfg.device.read_only,
                direct: cfg.device.direct_io,
                logical_block_size: cfg.device.logical_block_size,
            },
        )?;
        if cfg.device.direct_io && !backing.is_direct() {
            tracing::warn!(path = %cfg.path.display(), "direct I/O unsupported here; serving through the page cache");
        }
        let size = backing.size();
        let backing = Arc::new(backing);
        let dev = Self::new(cfg, Store::Local(Arc::clone(&backing)), size)?;
        tracing::info!(
            path = %dev.cfg.path.display(),
            size,
            read_only = dev.cfg.device.read_only,
            direct = backing.is_direct(),
            "backing store opened"
        );
        // Fail now, not at the first connection, if the engine cannot work here.
        let kind = engine_kind(dev.cfg.device.engine);
        let probe =
            extstorage_blockio::open_engine(kind, backing, usize::from(dev.cfg.device.queue_size))
                .map_err(|source| Error::Engine {
                    engine: kind,
                    source,
                })?;
        tracing::info!(requested = %kind, engine = probe.name(), "I/O engine");
        Ok(Arc::new(dev))
    }

    fn new(cfg: Config, store: Store, size: u64) -> Result<Self, Error> {
        Ok(Self {
            writeback: AtomicBool::new(cfg.device.write_cache == WriteCache::Writeback),
            capacity_sectors: AtomicU64::new(size >> SECTOR_SHIFT),
            store,
            channel: Mutex::new(None),
            stats: DeviceStats::new(cfg.device.num_queues),
            cfg,
            #[cfg(any(test, feature = "test-hooks"))]
            test: TestOptions::from_env()?,
        })
    }

    /// Whether VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD is offered: always,
    /// unless a test masks it (feature `test-hooks`).
    pub(crate) fn offers_inflight(&self) -> bool {
        #[cfg(any(test, feature = "test-hooks"))]
        if self.test.no_inflight {
            return false;
        }
        true
    }

    /// [`open`](Self::open) for an RBD image: one image handle for every
    /// queue, and an update watch that re-reads the size when the image
    /// changes (e.g. `rbd resize` by any client) and tells the frontend.
    fn open_rbd(cfg: Config, src: &RbdSource) -> Result<Arc<Self>, Error> {
        if cfg.device.engine != crate::Engine::Auto {
            tracing::warn!(engine = %cfg.device.engine, "--engine does not apply to an RBD image: it uses the rbd engine");
        }
        let spec = rbd_spec(src, cfg.device.read_only);
        tracing::info!(image = %spec, conf = ?spec.conf, id = ?spec.id, "connecting to the Ceph cluster");
        // librados starts its threads here: they must not take SIGTERM.
        let image =
            crate::threads::quietly(|| RbdImage::open(&spec)).map_err(|source| Error::Io {
                what: "blocking the stop signals",
                source,
            })??;
        let image = Arc::new(image);
        let size = image.size();
        let dev = Arc::new(Self::new(cfg, Store::Rbd(Arc::clone(&image)), size)?);
        tracing::info!(
            image = %spec,
            size,
            read_only = image.is_read_only(),
            engine = "rbd",
            "rbd image opened"
        );
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        image.watch_updates(move || {
            // On librbd's thread: only wake the watcher below.
            let _ = tx.send(());
        })?;
        let weak = Arc::downgrade(&dev);
        crate::threads::spawn_quiet("rbd-watch", move || {
            // Ends when the image (and with it the watch's sender) is gone.
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                let Some(dev) = weak.upgrade() else { break };
                if let Err(e) = dev.resize() {
                    tracing::warn!(error = %e, "cannot read the rbd image's new size");
                }
            }
        })
        .map_err(|source| Error::Io {
            what: "starting the rbd watch thread",
            source,
        })?;
        Ok(dev)
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The per-queue counters.
    pub fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    /// The open backing store (`None` for an RBD image).
    pub fn backing(&self) -> Option<&Arc<Backing>> {
        match &self.store {
            Store::Local(b) => Some(b),
            Store::Rbd(_) => None,
        }
    }

    /// Capacity in 512-byte sectors as the guest sees it.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors.load(Ordering::Acquire)
    }

    /// Whether the write cache is in writeback mode (else writethrough).
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    pub(crate) fn set_writeback(&self, on: bool) {
        tracing::info!(writeback = on, "guest changed the write cache mode");
        self.writeback.store(on, Ordering::Relaxed);
    }

    /// The virtio feature bits offered (device and ring features, without
    /// the vhost-user PROTOCOL_FEATURES bit).
    pub fn virtio_features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::TOPOLOGY
            | features::FLUSH
            | features::CONFIG_WCE
            | features::MQ;
        if self.cfg.device.read_only {
            f |= features::RO;
        } else {
            f |= features::DISCARD | features::WRITE_ZEROES;
        }
        f
    }

    /// Most data segments one request may have on this device's engine
    /// (`None`: no limit below the queue's).
    fn max_segments(&self) -> Option<usize> {
        match &self.store {
            Store::Rbd(_) => Some(RbdEngine::MAX_SEGMENTS),
            Store::Local(_) => None,
        }
    }

    /// The config space as it is now.
    pub fn blk_config(&self) -> BlkConfig {
        let lbs = self.cfg.device.logical_block_size;
        BlkConfig {
            capacity: self.capacity_sectors(),
            size_max: 0,
            seg_max: extstorage_virtio_blk::seg_max(
                self.cfg.device.queue_size,
                self.max_segments(),
            ),
            blk_size: lbs,
            physical_block_exp: 0,
            alignment_offset: 0,
            min_io_size: 1,
            opt_io_size: 0,
            writeback: u8::from(self.writeback()),
            num_queues: self.cfg.device.num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: 1,
            discard_sector_alignment: lbs >> SECTOR_SHIFT,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
        }
    }

    /// Creates the engine queue `queue` owns: the configured kind (`auto`
    /// is blockio's choice). Should io_uring fail now although it worked in
    /// `open` (e.g. the memlock limit is exhausted), the queue falls back to
    /// the sync engine with a warning rather than refusing the frontend.
    pub(crate) fn new_engine(&self, queue: usize) -> Box<dyn Engine> {
        let depth = usize::from(self.cfg.device.queue_size);
        let kind = engine_kind(self.cfg.device.engine);
        let engine: Box<dyn Engine> = match &self.store {
            Store::Local(backing) => {
                match extstorage_blockio::open_engine(kind, Arc::clone(backing), depth) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(queue, requested = %kind, error = %e, "cannot create the I/O engine; this queue uses the sync engine");
                        Box::new(SyncEngine::new(Arc::clone(backing), depth))
                    }
                }
            }
            Store::Rbd(image) => match RbdEngine::new(Arc::clone(image), depth) {
                Ok(e) => Box::new(e),
                Err(e) => {
                    tracing::error!(queue, error = %e, "cannot create the rbd engine; this queue fails its requests");
                    Box::new(FailingEngine::new(depth))
                }
            },
        };
        #[cfg(any(test, feature = "test-hooks"))]
        let engine = self.test_engine(engine, queue, depth);
        let paths = engine.paths();
        tracing::info!(
            queue,
            requested = %kind,
            engine = engine.name(),
            depth,
            ring = paths.ring,
            event_loop = paths.event_loop,
            discard = paths.discard,
            write_zeroes = paths.write_zeroes,
            write_through = paths.write_through,
            "queue engine"
        );
        engine
    }

    /// Wraps a queue's engine in the fault-injection engines the
    /// environment asks for (feature `test-hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
    fn test_engine(
        &self,
        mut engine: Box<dyn Engine>,
        queue: usize,
        depth: usize,
    ) -> Box<dyn Engine> {
        if let Some(hold) = self.test.hold {
            engine = match HoldEngine::new(engine, hold, queue) {
                Ok(e) => Box::new(e),
                Err(e) => {
                    // The inner engine went with the failed wrapper.
                    tracing::error!(queue, error = %e, "TEST-ONLY: cannot create the hold engine; this queue fails its requests");
                    Box::new(FailingEngine::new(depth))
                }
            };
        }
        if let Some(fault) = self.test.fault {
            engine = Box::new(FaultEngine::new(engine, fault, queue));
        }
        engine
    }

    /// Re-reads the backing size; if it changed, updates the capacity and
    /// notifies the connected frontend.
    pub fn resize(&self) -> Result<ResizeReply, Error> {
        let size = match &self.store {
            Store::Local(b) => b.refresh_size()?,
            Store::Rbd(img) => img.refresh_size()?,
        };
        let sectors = size >> SECTOR_SHIFT;
        let old = self.capacity_sectors.swap(sectors, Ordering::AcqRel);
        let changed = old != sectors;
        if changed {
            tracing::info!(
                path = %self.cfg.path.display(),
                old_sectors = old,
                new_sectors = sectors,
                "capacity changed"
            );
            self.notify_config_change();
        }
        Ok(ResizeReply {
            size_bytes: size,
            changed,
        })
    }

    /// The control socket's `status` answer.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            path: self.cfg.path.clone(),
            size_bytes: self.capacity_sectors() << SECTOR_SHIFT,
            read_only: self.cfg.device.read_only,
            connected: self.stats.connected(),
            connections: self.stats.connections(),
            uptime_secs: self.stats.uptime().as_secs(),
            queues: self.stats.snapshot(),
        }
    }

    /// Like [`resize`](Self::resize), only for regular files (a cheap
    /// `fstat`); block devices are resized on request.
    pub fn poll_size(&self) -> Result<(), Error> {
        if let Store::Local(b) = &self.store
            && b.kind() == BackingKind::File
        {
            self.resize()?;
        }
        Ok(())
    }

    pub(crate) fn set_channel(&self, ch: Option<ConfigChannel>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = ch;
    }

    fn notify_config_change(&self) {
        let mut guard = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ch) = guard.as_ref() else {
            tracing::debug!(
                "no backend channel: the frontend sees the new size when it re-reads the config"
            );
            return;
        };
        match ch.send_config_change() {
            Ok(()) => tracing::info!("config-change message sent to the frontend"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send the config-change message; dropping the backend channel");
                *guard = None;
            }
        }
    }
}
