//! In-flight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) for split
//! virtqueues, in the shared-memory layout of QEMU's
//! `docs/interop/vhost-user.rst` ("Inflight I/O tracking").
//!
//! The backend creates the region (`GET_INFLIGHT_FD`: a sealed memfd) and
//! the frontend keeps it: it hands it back (`SET_INFLIGHT_FD`) to every
//! backend process that serves the device after this one, so a daemon
//! killed with requests in flight leaves a record of them. Per queue the
//! region holds a 16-byte header and one 16-byte entry per descriptor:
//!
//! - a head is marked in flight, with a counter giving the order it was
//!   taken off the available ring in, when it is popped ([`QueueInflight::get`]);
//! - before its used entry is published it becomes the last batch
//!   ([`QueueInflight::pre_put`]); after the used index is published its mark
//!   is cleared and the region's copy of the used index updated
//!   ([`QueueInflight::post_put`]);
//! - when the ring (re)starts, a region whose used index lags the ring's
//!   was interrupted between the two: the last batch was returned, so its
//!   marks are cleared. Every head still marked was taken and never
//!   returned: the next available index is the used index plus their
//!   number, and they are resubmitted in counter order before new work
//!   ([`QueueInflight::start`]).
//!
//! Packed rings are not offered by this device (no `VIRTIO_F_RING_PACKED`),
//! so only the split layout is implemented.
//!
//! Everything the frontend sends is checked (shape, sizes, the file's
//! length and seals) and refused with an [`InflightError`]; the mapping is a
//! `vm-memory` [`MmapRegion`] accessed through bounds-checked atomics, with
//! no unsafe code here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

/// The region version this code writes and understands.
pub(crate) const VERSION: u16 = 1;
/// Per-queue regions start on this boundary (as libvhost-user lays them out).
const ALIGN: u64 = 64;
/// The largest split virtqueue.
const MAX_QUEUE_SIZE: u16 = 32768;

// Queue header: features u64, version u16, desc_num u16, last_batch_head
// u16, used_idx u16.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const HEADER_LEN: u64 = 16;
// Descriptor entry: inflight u8, padding [u8; 5], next u16, counter u64.
const DESC_LEN: u64 = 16;
const OFF_DESC_INFLIGHT: usize = 0;
const OFF_DESC_NEXT: usize = 6;
const OFF_DESC_COUNTER: usize = 8;

/// What is wrong with an in-flight region or a request about one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InflightError {
    /// The frontend asked for a shape the device does not have.
    #[error(
        "in-flight region for {num_queues} queue(s) of {queue_size} descriptors refused: this device \
         has 1 to {max_queues} queues of 1 to 32768 descriptors (the frontend must describe the queues \
         it configures)"
    )]
    Shape {
        /// Queues asked for.
        num_queues: u16,
        /// Descriptors per queue asked for.
        queue_size: u16,
        /// Queues the device has.
        max_queues: usize,
    },
    /// The region given is smaller than its described queues need.
    #[error(
        "in-flight region of {size} bytes is too small for {num_queues} queue(s) of {queue_size} \
         descriptors ({needed} bytes): pass back the region GET_INFLIGHT_FD returned"
    )]
    TooSmall {
        /// Bytes given.
        size: u64,
        /// Bytes needed.
        needed: u64,
        /// Queues described.
        num_queues: u16,
        /// Descriptors per queue described.
        queue_size: u16,
    },
    /// The region would extend past the end of its file.
    #[error(
        "in-flight region at offset {offset} of {size} bytes extends past the end of its file \
         ({file_len} bytes): pass back the region GET_INFLIGHT_FD returned"
    )]
    PastEnd {
        /// Offset in the file.
        offset: u64,
        /// Bytes described.
        size: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The file could be shrunk under the mapping (a fault on access).
    #[error(
        "in-flight region file is not sealed against shrinking (F_SEAL_SHRINK): pass back the \
         sealed memfd GET_INFLIGHT_FD returned"
    )]
    NotSealed,
    /// A system call failed.
    #[error("cannot {what} the in-flight region")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The region could not be mapped.
    #[error("cannot map the in-flight region (offset must be page-aligned)")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// A queue outside the region was started.
    #[error(
        "queue {queue} is not in the in-flight region ({num_queues} queue(s)): the frontend \
         described fewer queues than it started"
    )]
    NoQueue {
        /// The queue started.
        queue: usize,
        /// Queues in the region.
        num_queues: u16,
    },
    /// The ring has more descriptors than the region tracks.
    #[error(
        "queue {queue} has {size} descriptors but its in-flight region tracks {desc_num}: the \
         frontend must describe the queue size it configures"
    )]
    RingTooBig {
        /// The queue.
        queue: usize,
        /// The ring's size.
        size: u16,
        /// Entries in the region.
        desc_num: u16,
    },
    /// The region was written by something that lays it out differently.
    #[error(
        "in-flight region of queue {queue} has version {version}, this backend knows version 1: \
         restart the guest (a new region) to serve it"
    )]
    Version {
        /// The queue.
        queue: usize,
        /// The version found.
        version: u16,
    },
}

impl From<InflightError> for std::io::Error {
    fn from(e: InflightError) -> Self {
        std::io::Error::other(e)
    }
}

/// Bytes of one queue's region for `queue_size` descriptors.
fn queue_region_len(queue_size: u16) -> u64 {
    (HEADER_LEN + DESC_LEN * u64::from(queue_size)).next_multiple_of(ALIGN)
}

fn check_shape(num_queues: u16, queue_size: u16, max_queues: usize) -> Result<(), InflightError> {
    if num_queues == 0
        || usize::from(num_queues) > max_queues
        || queue_size == 0
        || queue_size > MAX_QUEUE_SIZE
    {
        return Err(InflightError::Shape {
            num_queues,
            queue_size,
            max_queues,
        });
    }
    Ok(())
}

/// Answers `GET_INFLIGHT_FD`: a zeroed, sealed memfd laid out for the
/// queues `req` describes, and its description.
pub(crate) fn create(
    req: &VhostUserInflight,
    max_queues: usize,
) -> Result<(VhostUserInflight, File), InflightError> {
    check_shape(req.num_queues, req.queue_size, max_queues)?;
    let size = u64::from(req.num_queues) * queue_region_len(req.queue_size);
    let io = |what| {
        move |e: nix::Error| InflightError::Io {
            what,
            source: std::io::Error::from(e),
        }
    };
    let fd = memfd_create(
        c"extstorage-inflight",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(io("create"))?;
    let file = File::from(fd);
    file.set_len(size).map_err(|source| InflightError::Io {
        what: "size",
        source,
    })?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(io("seal"))?;
    tracing::info!(
        num_queues = req.num_queues,
        queue_size = req.queue_size,
        size,
        "in-flight region created"
    );
    Ok((
        VhostUserInflight::new(size, 0, req.num_queues, req.queue_size),
        file,
    ))
}

/// The in-flight region of every queue, as mapped on `SET_INFLIGHT_FD`.
pub(crate) struct Region {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("len", &self.map.size())
            .finish()
    }
}

impl Region {
    /// Maps the region the frontend passes with `SET_INFLIGHT_FD`, after
    /// checking its description against the device and the file.
    pub(crate) fn map(
        msg: &VhostUserInflight,
        file: File,
        max_queues: usize,
    ) -> Result<Arc<Region>, InflightError> {
        check_shape(msg.num_queues, msg.queue_size, max_queues)?;
        let needed = u64::from(msg.num_queues) * queue_region_len(msg.queue_size);
        if msg.mmap_size < needed {
            return Err(InflightError::TooSmall {
                size: msg.mmap_size,
                needed,
                num_queues: msg.num_queues,
                queue_size: msg.queue_size,
            });
        }
        let file_len = file
            .metadata()
            .map_err(|source| InflightError::Io {
                what: "inspect",
                source,
            })?
            .len();
        if msg
            .mmap_offset
            .checked_add(msg.mmap_size)
            .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::PastEnd {
                offset: msg.mmap_offset,
                size: msg.mmap_size,
                file_len,
            });
        }
        // A file the frontend could truncate would fault us on access.
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(InflightError::NotSealed);
        }
        // `needed` is at most 65535 queues of 32768 descriptors: 32 GiB,
        // which fits a 64-bit usize.
        let len = usize::try_from(needed).map_err(|_| InflightError::Shape {
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
            max_queues,
        })?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file, msg.mmap_offset), len)
            .map_err(InflightError::Map)?;
        tracing::info!(
            num_queues = msg.num_queues,
            queue_size = msg.queue_size,
            size = msg.mmap_size,
            "in-flight region mapped"
        );
        Ok(Arc::new(Region {
            map,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
        }))
    }

    /// Queue `queue`'s part of the region, with `desc_num` set to the
    /// region's queue size (as the frontend described it).
    pub(crate) fn queue(self: &Arc<Self>, queue: usize) -> Result<QueueInflight, InflightError> {
        if queue >= usize::from(self.num_queues) {
            return Err(InflightError::NoQueue {
                queue,
                num_queues: self.num_queues,
            });
        }
        // In range: `queue` < num_queues and the map holds num_queues
        // regions (checked in `map`).
        let base = usize::try_from(queue_region_len(self.queue_size)).unwrap_or(usize::MAX);
        let q = QueueInflight {
            region: Arc::clone(self),
            queue,
            base: base.saturating_mul(queue),
            desc_num: self.queue_size,
            counter: 0,
        };
        q.store16(OFF_DESC_NUM, self.queue_size);
        Ok(q)
    }
}

/// One queue's in-flight record, owned by the queue's worker.
#[derive(Debug)]
pub(crate) struct QueueInflight {
    region: Arc<Region>,
    queue: usize,
    /// Offset of the queue's header in the map.
    base: usize,
    desc_num: u16,
    /// The counter the next popped head gets.
    counter: u64,
}

impl QueueInflight {
    fn a8(&self, off: usize) -> Option<&AtomicU8> {
        self.region
            .map
            .get_atomic_ref(self.base.checked_add(off)?)
            .ok()
    }

    fn a16(&self, off: usize) -> Option<&AtomicU16> {
        self.region
            .map
            .get_atomic_ref(self.base.checked_add(off)?)
            .ok()
    }

    fn a64(&self, off: usize) -> Option<&AtomicU64> {
        self.region
            .map
            .get_atomic_ref(self.base.checked_add(off)?)
            .ok()
    }

    fn load16(&self, off: usize) -> u16 {
        self.a16(off).map_or(0, |a| a.load(Ordering::Acquire))
    }

    fn store16(&self, off: usize, v: u16) {
        if let Some(a) = self.a16(off) {
            a.store(v, Ordering::Release);
        }
    }

    /// Offset of descriptor `head`'s entry, if `head` is tracked.
    fn desc(&self, head: u16) -> Option<usize> {
        if head >= self.desc_num {
            return None;
        }
        usize::try_from(HEADER_LEN + DESC_LEN * u64::from(head)).ok()
    }

    fn inflight(&self, head: u16) -> Option<&AtomicU8> {
        self.a8(self.desc(head)? + OFF_DESC_INFLIGHT)
    }

    fn next(&self, head: u16) -> Option<&AtomicU16> {
        self.a16(self.desc(head)? + OFF_DESC_NEXT)
    }

    fn counter_of(&self, head: u16) -> Option<&AtomicU64> {
        self.a64(self.desc(head)? + OFF_DESC_COUNTER)
    }

    /// Reconciles the record with the ring when it (re)starts: `used_idx`
    /// is the used ring's index, `ring_size` its size. Returns the heads
    /// to resubmit, oldest first; the ring's next available index is
    /// `used_idx` plus their number.
    pub(crate) fn start(
        &mut self,
        used_idx: u16,
        ring_size: u16,
    ) -> Result<Vec<u16>, InflightError> {
        if ring_size > self.desc_num {
            return Err(InflightError::RingTooBig {
                queue: self.queue,
                size: ring_size,
                desc_num: self.desc_num,
            });
        }
        self.counter = 0;
        match self.load16(OFF_VERSION) {
            0 => {
                // A new region: nothing was ever in flight.
                self.store16(OFF_LAST_BATCH_HEAD, 0);
                self.store16(OFF_USED_IDX, used_idx);
                self.store16(OFF_VERSION, VERSION);
                return Ok(Vec::new());
            }
            VERSION => {}
            version => {
                return Err(InflightError::Version {
                    queue: self.queue,
                    version,
                });
            }
        }
        let recorded = self.load16(OFF_USED_IDX);
        if recorded != used_idx {
            // Interrupted between publishing the last batch's used entries
            // and clearing their marks: that batch was returned.
            let batch = used_idx.wrapping_sub(recorded);
            let mut head = self.load16(OFF_LAST_BATCH_HEAD);
            for _ in 0..batch.min(self.desc_num) {
                let Some(mark) = self.inflight(head) else {
                    break;
                };
                mark.store(0, Ordering::Release);
                head = self
                    .next(head)
                    .map_or(u16::MAX, |n| n.load(Ordering::Acquire));
            }
            tracing::info!(
                queue = self.queue,
                batch,
                last_batch_head = self.load16(OFF_LAST_BATCH_HEAD),
                "in-flight region: the last batch was returned before the backend stopped"
            );
            self.store16(OFF_USED_IDX, used_idx);
        }
        let mut pending: Vec<(u64, u16)> = Vec::new();
        for head in 0..self.desc_num {
            let Some(mark) = self.inflight(head) else {
                continue;
            };
            if mark.load(Ordering::Acquire) == 0 {
                continue;
            }
            if head >= ring_size {
                // Cannot be a head of this ring: forget it.
                tracing::warn!(
                    queue = self.queue,
                    head,
                    ring_size,
                    "in-flight mark beyond the ring dropped"
                );
                mark.store(0, Ordering::Release);
                continue;
            }
            let counter = self
                .counter_of(head)
                .map_or(0, |c| c.load(Ordering::Acquire));
            pending.push((counter, head));
        }
        pending.sort_unstable();
        self.counter = pending.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Ok(pending.into_iter().map(|(_, h)| h).collect())
    }

    /// Marks `head` in flight: it was just taken off the available ring.
    pub(crate) fn get(&mut self, head: u16) {
        if let Some(c) = self.counter_of(head) {
            c.store(self.counter, Ordering::Release);
        }
        self.counter = self.counter.wrapping_add(1);
        if let Some(m) = self.inflight(head) {
            m.store(1, Ordering::Release);
        }
    }

    /// Records `head` as the last batch: call before publishing its used
    /// entry.
    pub(crate) fn pre_put(&self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let last = self.load16(OFF_LAST_BATCH_HEAD);
        if let Some(n) = self.next(head) {
            n.store(last, Ordering::Release);
        }
        self.store16(OFF_LAST_BATCH_HEAD, head);
    }

    /// Clears `head`'s mark and records the used index: call after
    /// publishing its used entry (`used_idx` is the ring's index now).
    pub(crate) fn post_put(&self, head: u16, used_idx: u16) {
        if let Some(m) = self.inflight(head) {
            m.store(0, Ordering::Release);
        }
        self.store16(OFF_USED_IDX, used_idx);
    }

    /// How many heads are marked in flight.
    #[cfg(test)]
    pub(crate) fn marked(&self) -> usize {
        (0..self.desc_num)
            .filter(|&h| {
                self.inflight(h)
                    .is_some_and(|m| m.load(Ordering::Acquire) != 0)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(num_queues: u16, queue_size: u16) -> VhostUserInflight {
        VhostUserInflight::new(0, 0, num_queues, queue_size)
    }

    fn region(num_queues: u16, queue_size: u16) -> Arc<Region> {
        let (desc, file) = create(&req(num_queues, queue_size), 4).unwrap();
        Region::map(&desc, file, 4).unwrap()
    }

    #[test]
    fn create_lays_out_aligned_queue_regions_in_a_sealed_memfd() {
        let (desc, file) = create(&req(2, 128), 2).unwrap();
        // 16 + 128 * 16 = 2064, rounded up to 2112 per queue.
        assert_eq!(desc.mmap_size, 2 * 2112);
        assert_eq!(desc.mmap_offset, 0);
        assert_eq!((desc.num_queues, desc.queue_size), (2, 128));
        assert_eq!(file.metadata().unwrap().len(), 2 * 2112);
        assert!(file.set_len(10).is_err(), "sealed against shrinking");
    }

    #[test]
    fn bad_shapes_sizes_and_files_are_refused() {
        for (n, s) in [(0, 128), (3, 128), (1, 0), (1, 32769)] {
            let Err(e) = create(&req(n, s), 2) else {
                panic!("{n} queues of {s} accepted");
            };
            assert!(matches!(e, InflightError::Shape { .. }), "{e}");
        }
        let (desc, file) = create(&req(2, 64), 2).unwrap();
        let small = VhostUserInflight::new(desc.mmap_size - 1, 0, 2, 64);
        let e = Region::map(&small, file.try_clone().unwrap(), 2).unwrap_err();
        assert!(matches!(e, InflightError::TooSmall { .. }), "{e}");
        let past = VhostUserInflight::new(desc.mmap_size, 4096, 2, 64);
        let e = Region::map(&past, file.try_clone().unwrap(), 2).unwrap_err();
        assert!(matches!(e, InflightError::PastEnd { .. }), "{e}");
        let huge = VhostUserInflight::new(u64::MAX, u64::MAX, 2, 64);
        let e = Region::map(&huge, file.try_clone().unwrap(), 2).unwrap_err();
        assert!(matches!(e, InflightError::PastEnd { .. }), "{e}");
        let e = Region::map(&desc, file.try_clone().unwrap(), 1).unwrap_err();
        assert!(matches!(e, InflightError::Shape { .. }), "{e}");
        let plain = tempfile::tempfile().unwrap();
        plain.set_len(desc.mmap_size).unwrap();
        let e = Region::map(&desc, plain, 2).unwrap_err();
        assert!(matches!(e, InflightError::NotSealed), "{e}");
        let r = Region::map(&desc, file, 2).unwrap();
        assert!(matches!(r.queue(2), Err(InflightError::NoQueue { .. })));
        let mut q = r.queue(1).unwrap();
        assert!(matches!(
            q.start(0, 128),
            Err(InflightError::RingTooBig { .. })
        ));
    }

    #[test]
    fn a_new_region_has_nothing_in_flight_and_records_the_used_index() {
        let r = region(1, 8);
        let mut q = r.queue(0).unwrap();
        assert_eq!(q.start(5, 8).unwrap(), Vec::<u16>::new());
        assert_eq!(q.load16(OFF_VERSION), VERSION);
        assert_eq!(q.load16(OFF_USED_IDX), 5);
        assert_eq!(q.load16(OFF_DESC_NUM), 8);
    }

    #[test]
    fn restart_resubmits_what_was_taken_and_not_returned_in_taking_order() {
        let r = region(2, 8);
        let mut q = r.queue(1).unwrap();
        q.start(0, 8).unwrap();
        for h in [3, 1, 6, 0] {
            q.get(h);
        }
        // 1 and 0 complete (out of order), used index 0 -> 2.
        for (i, h) in [1u16, 0].into_iter().enumerate() {
            q.pre_put(h);
            q.post_put(h, i as u16 + 1);
        }
        // A new process maps the same region.
        let mut again = r.queue(1).unwrap();
        assert_eq!(again.start(2, 8).unwrap(), vec![3, 6]);
        // New heads are ordered after the resubmitted ones.
        again.get(2);
        assert_eq!(again.start(2, 8).unwrap(), vec![3, 6, 2]);
        // Queue 0 is untouched.
        assert_eq!(r.queue(0).unwrap().start(0, 8).unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn a_batch_returned_but_not_cleared_is_not_resubmitted() {
        let r = region(1, 8);
        let mut q = r.queue(0).unwrap();
        q.start(10, 8).unwrap();
        q.get(4);
        q.get(5);
        // Head 5's used entry was published (used index 10 -> 11), then
        // the backend died before post_put.
        q.pre_put(5);
        let mut again = r.queue(0).unwrap();
        assert_eq!(again.start(11, 8).unwrap(), vec![4]);
        assert_eq!(again.load16(OFF_USED_IDX), 11);
        assert_eq!(again.marked(), 1);
    }

    #[test]
    fn a_corrupt_region_neither_panics_nor_resubmits_impossible_heads() {
        let r = region(1, 16);
        let mut q = r.queue(0).unwrap();
        q.start(0, 16).unwrap();
        // Marks everywhere, a last batch head past the table, a used index
        // far from the ring's: the ring is 8 descriptors now.
        for h in 0..16 {
            q.get(h);
        }
        q.store16(OFF_LAST_BATCH_HEAD, 999);
        q.store16(OFF_USED_IDX, 40_000);
        let mut again = r.queue(0).unwrap();
        let heads = again.start(3, 8).unwrap();
        assert_eq!(heads, (0..8).collect::<Vec<u16>>());
        q.store16(OFF_VERSION, 7);
        assert!(matches!(
            again.start(3, 8),
            Err(InflightError::Version { version: 7, .. })
        ));
    }
}
