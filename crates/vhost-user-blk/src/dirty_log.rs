//! Dirty-page logging for live migration: the guest memory's bitmap type,
//! and marking of memory written outside vm-memory.
//!
//! The log itself is vhost-user-backend's [`BitmapMmapRegion`]: SET_LOG_BASE
//! maps the frontend's log and installs it in every region's bitmap, which
//! then marks each page written through vm-memory. Used bare, it costs on
//! every guest memory access even when no migration ever runs: each slice
//! clones an `Arc`, each write takes a read lock. [`LogBitmap`] wraps it so
//! that, until a log is installed, an access costs one atomic load, and
//! slices borrow the region's bitmap instead of cloning it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_user_backend::bitmap::{AtomicBitmapMmap, BitmapMmapRegion, BitmapReplace};
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// A region's dirty-page bitmap: [`BitmapMmapRegion`] behind a lock-free
/// check for an installed log.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogBitmap {
    /// Writes are marked: a log is installed and logging was not withdrawn
    /// since (VHOST_F_LOG_ALL dropped: a cancelled or failed migration).
    /// Shared by clones, as `inner`'s log is.
    logged: Arc<AtomicBool>,
    /// A log was installed (SET_LOG_BASE), so marking can resume when
    /// VHOST_F_LOG_ALL is acked again.
    installed: Arc<AtomicBool>,
    inner: BitmapMmapRegion,
}

impl LogBitmap {
    fn logged(&self) -> bool {
        self.logged.load(Ordering::Acquire)
    }
}

impl<'a> WithBitmapSlice<'a> for LogBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for LogBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if self.logged() {
            self.inner.mark_dirty(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.logged() && self.inner.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for LogBitmap {
    fn with_len(len: usize) -> Self {
        Self {
            logged: Arc::new(AtomicBool::new(false)),
            installed: Arc::new(AtomicBool::new(false)),
            inner: BitmapMmapRegion::with_len(len),
        }
    }
}

impl BitmapReplace for LogBitmap {
    type InnerBitmap = AtomicBitmapMmap;

    fn replace(&self, bitmap: AtomicBitmapMmap) {
        self.inner.replace(bitmap);
        self.installed.store(true, Ordering::Release);
        self.logged.store(true, Ordering::Release);
    }
}

/// Turns marking on or off in every region of `mem`, as the frontend acks
/// or withdraws VHOST_F_LOG_ALL. Off, writes leave the log alone (it may be
/// gone on the frontend's side after a cancelled migration); on again, a
/// region marks only if a log was installed in it.
pub(crate) fn set_marking(mem: &GuestMemoryMmap<LogBitmap>, on: bool) {
    for region in mem.iter() {
        // The mapping's own bitmap, not a slice of it.
        let b: &LogBitmap = std::ops::Deref::deref(region).bitmap();
        b.logged
            .store(on && b.installed.load(Ordering::Acquire), Ordering::Release);
    }
}

/// Marks `len` bytes of guest memory at `addr` dirty in the frontend's log
/// (nothing while no log is installed): for memory written outside
/// vm-memory. A range outside guest memory is ignored (no such request is
/// ever submitted).
pub(crate) fn mark(mem: &GuestMemoryMmap<LogBitmap>, mut addr: GuestAddress, mut len: u64) {
    while len > 0 {
        let Some(region) = mem.find_region(addr) else {
            return;
        };
        let Some(start) = region.to_region_addr(addr) else {
            return;
        };
        let n = len.min(region.len() - start.raw_value());
        let (Ok(off), Ok(n_bytes)) = (usize::try_from(start.raw_value()), usize::try_from(n))
        else {
            return;
        };
        region.bitmap().mark_dirty(off, n_bytes);
        addr = addr.unchecked_add(n);
        len -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a log nothing is marked or reported, through the region
    /// and through slices of it.
    #[test]
    fn without_a_log_nothing_is_marked() {
        let b = LogBitmap::with_len(1 << 20);
        b.mark_dirty(0, 4096);
        b.slice_at(8192).mark_dirty(0, 4096);
        assert!(!b.dirty_at(0));
        assert!(!b.slice_at(8192).dirty_at(0));
        assert!(!b.logged());
    }

    /// Clones share the installed-log flag, as they share the log.
    #[test]
    fn clones_share_the_flag() {
        let b = LogBitmap::with_len(4096);
        let c = b.clone();
        b.logged.store(true, Ordering::Release);
        assert!(c.logged());
    }

    /// Marking stops when logging is withdrawn and resumes, into the log
    /// installed before, when it is acked again; a region without a log
    /// never marks.
    #[test]
    fn marking_follows_log_all() {
        let mem = GuestMemoryMmap::<LogBitmap>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
        ])
        .unwrap();
        let first: LogBitmap = std::ops::Deref::deref(mem.iter().next().unwrap())
            .bitmap()
            .clone();
        first.installed.store(true, Ordering::Release);
        first.logged.store(true, Ordering::Release);
        set_marking(&mem, false);
        let logged = |m: &GuestMemoryMmap<LogBitmap>| -> Vec<bool> {
            m.iter()
                .map(|r| std::ops::Deref::deref(r).bitmap().logged())
                .collect()
        };
        assert_eq!(logged(&mem), [false, false]);
        set_marking(&mem, true);
        let on = logged(&mem);
        assert_eq!(on, [true, false]);
    }
}
