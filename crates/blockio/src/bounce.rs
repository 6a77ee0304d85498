//! Bounce buffers: aligned memory an engine owns, for requests whose caller
//! memory breaks direct-I/O alignment.
//!
//! With `O_DIRECT` every read and write must go through the direct
//! descriptor: mixing direct and buffered I/O on one file makes the kernel
//! fail page cache invalidation (and a later fsync return `EIO`). A request
//! whose offset and total length are aligned but whose memory is not (odd
//! addresses, segments that are not a multiple of the block size) is copied
//! through one of these buffers instead, in chunks of at most
//! [`MAX_CHUNK`] bytes.

use std::alloc::Layout;
use std::ptr::NonNull;

use crate::IoBuf;

/// Largest bounce buffer, and so the largest piece of a bounced request
/// issued at once. An engine with `depth` slots holds at most
/// `depth * MAX_CHUNK` bytes of bounce buffers in flight.
pub(crate) const MAX_CHUNK: usize = 256 << 10;

/// Smallest bounce buffer (one page).
const MIN_SIZE: usize = 4096;

/// Idle buffers kept for reuse per engine; beyond this, freed buffers go back
/// to the allocator.
pub(crate) const IDLE_CAP: usize = 4 << 20;

/// Size classes: powers of two from [`MIN_SIZE`] to [`MAX_CHUNK`].
const CLASSES: usize = (MAX_CHUNK / MIN_SIZE).trailing_zeros() as usize + 1;

/// Heap memory aligned for direct I/O, owned by an engine.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain heap memory owned by this value alone.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Zeroed memory of `size` bytes aligned to `align` (a power of two);
    /// `None` when the allocator has nothing.
    fn new(size: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(size.max(1), align).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| Self { ptr, layout })
    }

    /// Start of the buffer, for the kernel.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Capacity in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    /// The first `n` bytes (at most [`len`](Self::len)).
    pub(crate) fn slice(&self, n: usize) -> &[u8] {
        // SAFETY: the allocation is `len()` initialised bytes owned by
        // `self`; `n` is clamped to it; `&self` keeps it alive and unshared
        // for writing.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), n.min(self.len())) }
    }

    /// The first `n` bytes, mutably (at most [`len`](Self::len)).
    pub(crate) fn slice_mut(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: as in `slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n.min(self.len())) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A per-engine pool of bounce buffers in power-of-two size classes, so a
/// steady stream of bounced requests allocates nothing.
#[derive(Debug)]
pub(crate) struct BouncePool {
    align: usize,
    classes: [Vec<AlignedBuf>; CLASSES],
    idle_bytes: usize,
}

impl BouncePool {
    /// A pool of buffers aligned to `align` (at least a page).
    pub(crate) fn new(align: usize) -> Self {
        Self {
            align: align.max(MIN_SIZE).next_power_of_two(),
            classes: std::array::from_fn(|_| Vec::new()),
            idle_bytes: 0,
        }
    }

    fn class(len: usize) -> (usize, usize) {
        let size = len.clamp(MIN_SIZE, MAX_CHUNK).next_power_of_two();
        (size, (size / MIN_SIZE).trailing_zeros() as usize)
    }

    /// A buffer of at least `min(len, MAX_CHUNK)` bytes; `None` when out of memory.
    pub(crate) fn get(&mut self, len: usize) -> Option<AlignedBuf> {
        let (size, class) = Self::class(len);
        match self.classes[class].pop() {
            Some(b) => {
                self.idle_bytes -= b.len();
                Some(b)
            }
            None => AlignedBuf::new(size, self.align),
        }
    }

    /// Returns a buffer for reuse, or frees it when the pool is at its cap.
    pub(crate) fn put(&mut self, buf: AlignedBuf) {
        let (size, class) = Self::class(buf.len());
        if size == buf.len() && self.idle_bytes + size <= IDLE_CAP {
            self.idle_bytes += size;
            self.classes[class].push(buf);
        }
    }

    /// Bytes held by idle buffers.
    #[cfg(test)]
    pub(crate) fn idle_bytes(&self) -> usize {
        self.idle_bytes
    }
}

/// Copies `dst.len()` bytes from the front of `bufs` (caller memory: guest
/// memory, which the guest may change meanwhile) into `dst`.
///
/// # Safety
/// Every buffer in `bufs` must be valid for reads of its length.
pub(crate) unsafe fn gather(bufs: &[IoBuf], dst: &mut [u8]) {
    let mut at = 0;
    for b in bufs {
        if at == dst.len() {
            break;
        }
        let n = b.len.min(dst.len() - at);
        // SAFETY: `b` is readable for `b.len >= n` bytes (the caller's
        // promise); `dst[at..at + n]` is in bounds and does not overlap
        // caller memory (it is engine-owned).
        unsafe { copy(b.addr, dst[at..].as_mut_ptr(), n, Side::Source) };
        at += n;
    }
}

/// Copies `src` into the front of `bufs` (caller memory: guest memory,
/// which the guest may read or change meanwhile).
///
/// # Safety
/// Every buffer in `bufs` must be valid for writes of its length.
pub(crate) unsafe fn scatter(src: &[u8], bufs: &[IoBuf]) {
    let mut at = 0;
    for b in bufs {
        if at == src.len() {
            break;
        }
        let n = b.len.min(src.len() - at);
        // SAFETY: `b` is writable for `b.len >= n` bytes (the caller's
        // promise); `src[at..at + n]` is in bounds and engine-owned.
        unsafe { copy(src[at..].as_ptr(), b.addr, n, Side::Destination) };
        at += n;
    }
}

/// Which side of a [`copy`] is caller (guest) memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Copies `n` bytes, touching the caller's side only with volatile loads or
/// stores: the guest is untrusted and may access its buffer while we copy,
/// so the compiler must neither assume it unchanged nor merge, repeat or
/// widen our accesses to it. The caller side is accessed in aligned 8-byte
/// words (bytes for an unaligned head and the tail); the engine side, which
/// only we touch, with plain unaligned accesses.
///
/// Not `memcpy` (nor vm-memory's copy, which is `memcpy` beyond 8 bytes):
/// besides not being volatile, glibc's `rep movsb` path runs at half speed
/// on some CPUs (measured here on AMD EPYC) when source and destination are
/// a few bytes apart modulo 4 KiB, exactly a page-aligned bounce buffer
/// against a caller buffer a few bytes off alignment.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the
/// two ranges must not overlap.
unsafe fn copy(src: *const u8, dst: *mut u8, n: usize, guest: Side) {
    const W: usize = std::mem::size_of::<u64>();
    let guest_addr = if guest == Side::Source {
        src as usize
    } else {
        dst as usize
    };
    let head = guest_addr
        .next_multiple_of(W)
        .wrapping_sub(guest_addr)
        .min(n);
    let words = (n - head) / W;
    let tail_start = head + words * W;
    let byte = |i: usize| {
        // SAFETY: `i < n`: within both ranges (the caller's promise); byte
        // accesses need no alignment.
        unsafe {
            if guest == Side::Source {
                dst.add(i).write(src.add(i).read_volatile());
            } else {
                dst.add(i).write_volatile(src.add(i).read());
            }
        }
    };
    (0..head).for_each(byte);
    for w in 0..words {
        let i = head + w * W;
        // SAFETY: `i + W <= n`: within both ranges. The guest-side address
        // `guest_addr + i` is 8-aligned (`head` aligned it), as volatile
        // u64 accesses need; the engine side is accessed unaligned.
        unsafe {
            if guest == Side::Source {
                let v = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_unaligned(v);
            } else {
                let v = src.add(i).cast::<u64>().read_unaligned();
                dst.add(i).cast::<u64>().write_volatile(v);
            }
        }
    }
    (tail_start..n).for_each(byte);
}

/// Drops `n` transferred bytes from the front of `bufs[*first..]`,
/// shortening a partly transferred buffer in place.
pub(crate) fn advance(bufs: &mut [IoBuf], first: &mut usize, mut n: usize) {
    while n > 0 && *first < bufs.len() {
        let b = &mut bufs[*first];
        if n >= b.len {
            n -= b.len;
            *first += 1;
        } else {
            b.addr = b.addr.wrapping_add(n);
            b.len -= n;
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_and_caps_idle_memory() {
        let mut pool = BouncePool::new(512);
        let a = pool.get(1000).unwrap();
        assert_eq!(a.len(), 4096);
        assert!((a.as_mut_ptr() as usize).is_multiple_of(4096));
        let addr = a.as_mut_ptr();
        pool.put(a);
        assert_eq!(pool.idle_bytes(), 4096);
        let b = pool.get(4096).unwrap();
        assert_eq!(b.as_mut_ptr(), addr, "the idle buffer is reused");
        assert_eq!(pool.idle_bytes(), 0);
        pool.put(b);
        // Larger than a chunk: capped at MAX_CHUNK (callers issue chunks).
        assert_eq!(pool.get(10 << 20).unwrap().len(), MAX_CHUNK);
        let many: Vec<_> = (0..2 * IDLE_CAP / MAX_CHUNK)
            .map(|_| pool.get(MAX_CHUNK).unwrap())
            .collect();
        for b in many {
            pool.put(b);
        }
        assert!(pool.idle_bytes() <= IDLE_CAP, "{}", pool.idle_bytes());
    }

    #[test]
    fn gather_scatter_and_advance_walk_segments() {
        let mut a = vec![1u8, 2, 3];
        let mut b = vec![4u8, 5, 6, 7];
        let mut bufs = [
            IoBuf {
                addr: a.as_mut_ptr(),
                len: 3,
            },
            IoBuf {
                addr: b.as_mut_ptr(),
                len: 4,
            },
        ];
        let mut out = [0u8; 5];
        // SAFETY: `a` and `b` outlive the call.
        unsafe { gather(&bufs, &mut out) };
        assert_eq!(out, [1, 2, 3, 4, 5]);
        let mut first = 0;
        advance(&mut bufs, &mut first, 4);
        assert_eq!((first, bufs[1].len), (1, 3));
        // SAFETY: as above; nobody else touches `a` or `b` meanwhile.
        unsafe { scatter(&[9, 9, 9], &bufs[first..]) };
        assert_eq!(b, [4, 9, 9, 9]);
        assert_eq!(a, [1, 2, 3]);
    }

    proptest::proptest! {
        /// Every alignment of either side and every length, with a head,
        /// words and a tail, copies exactly the bytes asked for.
        #[test]
        fn copies_any_alignment_and_length(
            src_off in 0usize..16,
            dst_off in 0usize..16,
            n in 0usize..300,
            fill in proptest::prelude::any::<u8>(),
        ) {
            let src: Vec<u8> = (0..n + 16).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
            for guest in [Side::Source, Side::Destination] {
                let mut dst = vec![0xeeu8; n + 32];
                // SAFETY: both ranges are in bounds of their vectors
                // (offsets < 16, vectors 16 longer) and do not overlap.
                unsafe {
                    copy(src.as_ptr().add(src_off), dst.as_mut_ptr().add(dst_off), n, guest)
                };
                proptest::prop_assert_eq!(&dst[dst_off..dst_off + n], &src[src_off..src_off + n]);
                proptest::prop_assert!(dst[..dst_off].iter().all(|&b| b == 0xee));
                proptest::prop_assert!(dst[dst_off + n..].iter().all(|&b| b == 0xee));
            }
        }
    }
}
