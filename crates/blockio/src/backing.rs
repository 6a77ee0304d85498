//! The backing store: a regular file or a block device, opened once and
//! shared by every queue's engine.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, IoBuf};

nix::ioctl_read!(ioctl_blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(ioctl_blksszget, 0x1268, libc::c_int);
nix::ioctl_write_ptr_bad!(ioctl_blkdiscard, 0x1277, [u64; 2]);
nix::ioctl_write_ptr_bad!(ioctl_blkzeroout, 0x127f, [u64; 2]);

/// What kind of object backs the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// A regular file.
    File,
    /// A block device node.
    BlockDevice,
}

/// How to open a backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open read-only; writes are then refused by the caller.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`). Falls back to buffered I/O,
    /// with [`Backing::is_direct`] reporting it, where the filesystem refuses
    /// or where the backing's direct-I/O alignment is larger than
    /// `logical_block_size`.
    pub direct: bool,
    /// The logical block size the device advertises (a power of two, at
    /// least 512): requests are expected to be aligned to it.
    pub logical_block_size: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            direct: true,
            logical_block_size: 512,
        }
    }
}

/// How a read or write must be carried out on a backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// Hand the caller's memory to the kernel as it is.
    Direct,
    /// Offset and length are aligned but the memory is not: copy through an
    /// aligned bounce buffer.
    Bounce,
}

/// An open backing store. Cheap to share behind an `Arc`; holds no lock.
#[derive(Debug)]
pub struct Backing {
    /// The one descriptor every request uses: direct and buffered I/O are
    /// never mixed on one file.
    file: File,
    path: PathBuf,
    kind: BackingKind,
    read_only: bool,
    direct: bool,
    /// Direct I/O: the alignment of offsets and lengths.
    block_align: usize,
    /// Direct I/O: the alignment of memory addresses.
    mem_align: usize,
    size: AtomicU64,
}

impl Backing {
    /// Opens `path` as a file or block device.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let kind = if meta.is_file() {
            BackingKind::File
        } else if meta.file_type().is_block_device() {
            BackingKind::BlockDevice
        } else {
            return Err(Error::NotFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        };
        let lbs = opts.logical_block_size;
        if !lbs.is_power_of_two() || lbs < 512 {
            return Err(Error::LogicalBlockSize {
                path: path.to_path_buf(),
                size: lbs,
            });
        }
        // O_NOATIME: a read then skips the access-time check (2 % of the
        // daemon's CPU per 4 KiB read on a block device). Only the file's
        // owner (or CAP_FOWNER) may ask; anyone else opens without it.
        let open = |direct: bool| {
            let with = |flags: i32| {
                let mut o = std::fs::OpenOptions::new();
                o.read(true).write(!opts.read_only);
                o.custom_flags(flags | if direct { libc::O_DIRECT } else { 0 });
                o.open(path)
            };
            match with(libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => with(0),
                r => r,
            }
        };
        let (mut file, mut direct) = match open(opts.direct) {
            Ok(f) => (f, opts.direct),
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused by the filesystem; using buffered I/O");
                (open(false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        let (mut block_align, mut mem_align) = (1, 1);
        if direct {
            (block_align, mem_align) = direct_alignment(&file, kind);
            if block_align > lbs as usize {
                tracing::warn!(
                    path = %path.display(),
                    direct_io_alignment = block_align,
                    logical_block_size = lbs,
                    "direct I/O needs a larger alignment than the advertised logical block size; using buffered I/O for this backing (advertise a logical block size of at least the alignment to keep O_DIRECT)"
                );
                file = open(false).map_err(open_err)?;
                (direct, block_align, mem_align) = (false, 1, 1);
            }
        }
        let backing = Self {
            file,
            path: path.to_path_buf(),
            kind,
            read_only: opts.read_only,
            direct,
            block_align,
            mem_align,
            size: AtomicU64::new(0),
        };
        backing.refresh_size()?;
        Ok(backing)
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File or block device.
    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// Whether it was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `O_DIRECT` is in effect.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Byte alignment direct I/O needs for offsets and lengths (1 when
    /// buffered, where anything goes). Never larger than the logical block
    /// size given to [`open`](Self::open).
    pub fn alignment(&self) -> usize {
        self.block_align
    }

    /// Byte alignment direct I/O needs for memory addresses (1 when buffered).
    /// Requests whose memory breaks it are copied through a bounce buffer.
    pub fn mem_alignment(&self) -> usize {
        self.mem_align
    }

    /// The fd every request uses. Valid as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// How a read or write of `bufs` at `offset` must be carried out, or
    /// `EINVAL` when direct I/O is in effect and the offset or the total
    /// length breaks [`alignment`](Self::alignment): such a request cannot
    /// be served without mixing buffered and direct I/O on the file.
    pub(crate) fn transfer(
        &self,
        offset: u64,
        total: usize,
        bufs: &[IoBuf],
    ) -> Result<Transfer, i32> {
        if !self.direct {
            return Ok(Transfer::Direct);
        }
        let block = self.block_align;
        if !offset.is_multiple_of(block as u64) || !total.is_multiple_of(block) {
            return Err(libc::EINVAL);
        }
        let aligned = bufs.iter().all(|b| {
            (b.addr as usize).is_multiple_of(self.mem_align) && b.len.is_multiple_of(block)
        });
        Ok(if aligned {
            Transfer::Direct
        } else {
            Transfer::Bounce
        })
    }

    /// Size in bytes as last read by [`refresh_size`](Self::refresh_size).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Reads the current size from the file or device and caches it.
    pub fn refresh_size(&self) -> Result<u64, Error> {
        let size_err = |source| Error::Size {
            path: self.path.clone(),
            source,
        };
        let size = match self.kind {
            BackingKind::File => self.file.metadata().map_err(size_err)?.len(),
            BackingKind::BlockDevice => {
                let mut bytes: u64 = 0;
                // SAFETY: the fd is an open block device owned by `self`, and
                // `bytes` is a valid u64 for the kernel to write.
                unsafe { ioctl_blkgetsize64(self.fd(), &mut bytes) }
                    .map_err(|e| size_err(std::io::Error::from(e)))?;
                bytes
            }
        };
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a range; it reads back as zeroes afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match self.kind {
            BackingKind::File => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            BackingKind::BlockDevice => {
                let range = [offset, len];
                // SAFETY: the fd is an open block device owned by `self`;
                // `range` is a valid [u64; 2] the kernel only reads.
                unsafe { ioctl_blkdiscard(self.fd(), &range) }
                    .map(drop)
                    .map_err(std::io::Error::from)
            }
        }
    }

    /// Makes a range read back as zeroes; `unmap` allows deallocating it.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        match self.kind {
            BackingKind::File => {
                let zero_range = self.fallocate(
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                );
                match zero_range {
                    // tmpfs and some others lack ZERO_RANGE: a punched hole
                    // reads back as zeroes too.
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        let _ = unmap;
                        self.fallocate(
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            offset,
                            len,
                        )
                    }
                    other => other,
                }
            }
            BackingKind::BlockDevice => {
                // Unmapping allowed: a zero-out the device may do by
                // unmapping (fallocate PUNCH_HOLE: no fallback to writing
                // zeroes, EOPNOTSUPP if the device cannot).
                if unmap {
                    match self.fallocate(
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset,
                        len,
                    ) {
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                        other => return other,
                    }
                }
                let range = [offset, len];
                // SAFETY: the fd is an open block device owned by `self`;
                // `range` is a valid [u64; 2] the kernel only reads.
                unsafe { ioctl_blkzeroout(self.fd(), &range) }
                    .map(drop)
                    .map_err(std::io::Error::from)
            }
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| einval())?;
        let len = libc::off_t::try_from(len).map_err(|_| einval())?;
        // SAFETY: plain syscall on an fd owned by `self`; no memory is passed.
        let rc = unsafe { libc::fallocate(self.fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The (offset and length, memory) alignment direct I/O on `file` needs:
/// from `statx(STATX_DIOALIGN)` where the kernel reports it, else the
/// logical sector size of a block device, else probed on a file (512 or
/// 4096, whichever direct read succeeds first; memory aligned the same).
fn direct_alignment(file: &File, kind: BackingKind) -> (usize, usize) {
    if let Some(found) = statx_dio_align(file) {
        return found;
    }
    match kind {
        BackingKind::File => {
            let a = probe_direct_alignment(file);
            (a, a)
        }
        BackingKind::BlockDevice => {
            let mut ssz: libc::c_int = 0;
            // SAFETY: `file` is an open block device and `ssz` is a valid
            // c_int the kernel writes the logical sector size into.
            let a = match unsafe { ioctl_blksszget(file.as_raw_fd(), &mut ssz) } {
                Ok(_) if ssz > 0 => usize::try_from(ssz).unwrap_or(512),
                _ => 512,
            };
            (a, 512.min(a))
        }
    }
}

/// `statx(STATX_DIOALIGN)`: (offset, memory) alignment, when reported.
fn statx_dio_align(file: &File) -> Option<(usize, usize)> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open and owned by the caller, the path is an empty
    // C string (AT_EMPTY_PATH), and `stx` is valid for the kernel to fill.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let off = usize::try_from(stx.stx_dio_offset_align).ok()?;
    let mem = usize::try_from(stx.stx_dio_mem_align).ok()?;
    (off.is_power_of_two() && mem.is_power_of_two()).then_some((off, mem))
}

/// The smallest of 512 and 4096 that direct reads on `file` accept.
fn probe_direct_alignment(file: &File) -> usize {
    let mut page = vec![0u8; 8192];
    let start = page.as_ptr().align_offset(4096);
    let buf = &mut page[start..start + 4096];
    for align in [512usize, 4096] {
        // SAFETY: `buf` is 4096-aligned memory of at least `align` bytes that
        // we own for the duration of the call.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), align, 0) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return align;
        }
    }
    4096
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_file(len: u64) -> (tempfile::NamedTempFile, PathBuf) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file_mut().set_len(len).unwrap();
        let p = f.path().to_path_buf();
        (f, p)
    }

    #[test]
    fn open_file_reports_size_and_kind() {
        let (_f, p) = temp_file(1 << 20);
        let b = Backing::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(b.kind(), BackingKind::File);
        assert_eq!(b.size(), 1 << 20);
    }

    #[test]
    fn the_owner_opens_without_access_time_updates() {
        let (_f, p) = temp_file(4096);
        let b = Backing::open(&p, OpenOptions::default()).unwrap();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", b.fd())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(flags & libc::O_NOATIME, 0, "fdinfo flags {flags:o}");
    }

    #[test]
    fn refresh_size_sees_growth() {
        let (f, p) = temp_file(4096);
        let b = Backing::open(&p, OpenOptions::default()).unwrap();
        f.as_file().set_len(8192).unwrap();
        assert_eq!(b.size(), 4096);
        assert_eq!(b.refresh_size().unwrap(), 8192);
        assert_eq!(b.size(), 8192);
    }

    #[test]
    fn directory_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let err = Backing::open(d.path(), OpenOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NotFileOrBlockDevice { .. }), "{err}");
    }

    #[test]
    fn missing_path_is_an_open_error() {
        let err = Backing::open(Path::new("/nonexistent/x"), OpenOptions::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    }

    #[test]
    fn discard_and_write_zeroes_zero_the_range() {
        let (mut f, p) = temp_file(0);
        f.write_all(&[0xabu8; 16384]).unwrap();
        f.flush().unwrap();
        let b = Backing::open(
            &p,
            OpenOptions {
                direct: false,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        b.discard(0, 4096).unwrap();
        b.write_zeroes(8192, 4096, false).unwrap();
        let mut data = vec![0u8; 16384];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut data).unwrap();
        assert!(data[..4096].iter().all(|&x| x == 0));
        assert!(data[4096..8192].iter().all(|&x| x == 0xab));
        assert!(data[8192..12288].iter().all(|&x| x == 0));
        assert!(data[12288..].iter().all(|&x| x == 0xab));
    }

    #[test]
    fn logical_block_size_must_be_a_power_of_two_of_at_least_512() {
        let (_f, p) = temp_file(4096);
        for lbs in [0, 256, 1000] {
            let opts = OpenOptions {
                logical_block_size: lbs,
                ..OpenOptions::default()
            };
            let err = Backing::open(&p, opts).unwrap_err();
            assert!(matches!(err, Error::LogicalBlockSize { .. }), "{err}");
            assert!(err.to_string().contains("power of two"), "{err}");
        }
    }

    #[test]
    fn direct_file_reports_its_alignment_and_never_a_second_fd() {
        let (_f, p) = temp_file(1 << 20);
        let b = Backing::open(&p, OpenOptions::default()).unwrap();
        assert!(b.is_direct(), "O_DIRECT works on the temp dir's filesystem");
        assert!(b.alignment() <= 512 && b.mem_alignment() >= 1);
        let mem = vec![0u8; 8192];
        let start = mem.as_ptr().align_offset(4096);
        let buf = |off: usize, len: usize| IoBuf {
            addr: mem[start + off..].as_ptr().cast_mut(),
            len,
        };
        let a = b.alignment();
        assert_eq!(b.transfer(0, 4096, &[buf(0, 4096)]), Ok(Transfer::Direct));
        assert_eq!(
            b.transfer(0, 4096, &[buf(1, 100), buf(1000, 3996)]),
            Ok(Transfer::Bounce)
        );
        assert_eq!(
            b.transfer(a as u64 / 2 + 1, 4096, &[buf(0, 4096)]),
            Err(libc::EINVAL)
        );
        assert_eq!(b.transfer(0, 4095, &[buf(0, 4095)]), Err(libc::EINVAL));
        // Buffered: anything goes, through the same single descriptor.
        let b = Backing::open(
            &p,
            OpenOptions {
                direct: false,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        assert_eq!((b.alignment(), b.mem_alignment()), (1, 1));
        assert_eq!(b.transfer(7, 13, &[buf(3, 13)]), Ok(Transfer::Direct));
    }

    /// A loop device with 4096-byte sectors needs 4096-aligned direct I/O.
    /// Advertising 512-byte blocks over it would let requests arrive that
    /// direct I/O cannot take, so the backing falls back to buffered I/O;
    /// advertising 4096 keeps O_DIRECT.
    #[test]
    fn alignment_larger_than_the_logical_block_size_falls_back_to_buffered() {
        let (f, p) = temp_file(1 << 20);
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "--sector-size", "4096"])
            .arg(&p)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
            other => {
                extstorage_testbins::skip_or_fail(
                    extstorage_testbins::Facility::LoopDevices,
                    &format!("no loop device available ({other:?})"),
                );
                return;
            }
        };
        let result = std::panic::catch_unwind(|| {
            let open = |lbs| {
                Backing::open(
                    Path::new(&dev),
                    OpenOptions {
                        logical_block_size: lbs,
                        ..OpenOptions::default()
                    },
                )
                .unwrap()
            };
            let small = open(512);
            assert_eq!(small.kind(), BackingKind::BlockDevice);
            assert!(
                !small.is_direct(),
                "4096-byte sectors behind 512-byte blocks"
            );
            assert_eq!(small.alignment(), 1);
            let big = open(4096);
            assert!(big.is_direct());
            assert_eq!(big.alignment(), 4096);
            // A (buggy) caller's 512-aligned request is refused, not rerouted.
            let mut mem = vec![0u8; 16384];
            let start = mem.as_ptr().align_offset(4096);
            let io = [IoBuf {
                addr: mem[start..].as_mut_ptr(),
                len: 4096,
            }];
            assert_eq!(big.transfer(512, 4096, &io), Err(libc::EINVAL));
            assert_eq!(big.transfer(4096, 4096, &io), Ok(Transfer::Direct));
        });
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();
        drop(f);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
