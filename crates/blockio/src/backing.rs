//! The backing store: a regular file or a block device, opened once and
//! shared by every queue's engine.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

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
    /// with [`Backing::is_direct`] reporting it, where the filesystem refuses.
    pub direct: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            direct: true,
        }
    }
}

/// An open backing store. Cheap to share behind an `Arc`; holds no lock.
#[derive(Debug)]
pub struct Backing {
    file: File,
    /// A second, buffered descriptor for requests that break direct-I/O
    /// alignment; the kernel keeps the page cache coherent with direct I/O.
    buffered: Option<File>,
    path: PathBuf,
    kind: BackingKind,
    read_only: bool,
    direct: bool,
    alignment: usize,
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
        let open = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(!opts.read_only);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(opts.direct) {
            Ok(f) => (f, opts.direct),
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused by the filesystem; using buffered I/O");
                (open(false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        let alignment = match kind {
            BackingKind::File if direct => probe_direct_alignment(&file),
            BackingKind::File => 512,
            BackingKind::BlockDevice => {
                let mut ssz: libc::c_int = 0;
                // SAFETY: `file` is an open block device and `ssz` is a valid
                // c_int the kernel writes the logical sector size into.
                match unsafe { ioctl_blksszget(file.as_raw_fd(), &mut ssz) } {
                    Ok(_) if ssz > 0 => usize::try_from(ssz).unwrap_or(512),
                    _ => 512,
                }
            }
        };
        let buffered = if direct {
            Some(open(false).map_err(open_err)?)
        } else {
            None
        };
        let backing = Self {
            file,
            buffered,
            path: path.to_path_buf(),
            kind,
            read_only: opts.read_only,
            direct,
            alignment,
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

    /// Byte alignment direct I/O needs for offsets, lengths and addresses
    /// (1 when buffered, where anything goes).
    pub fn alignment(&self) -> usize {
        if self.direct { self.alignment } else { 1 }
    }

    /// The raw fd, for engines. Valid as long as `self` lives.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The fd a read or write should use: the direct one when offset, every
    /// length and every address meet [`alignment`](Self::alignment), else a
    /// buffered one. Valid as long as `self` lives.
    pub fn fd_for(&self, offset: u64, bufs: &[crate::IoBuf]) -> RawFd {
        match &self.buffered {
            Some(buffered) if !is_aligned(self.alignment, offset, bufs) => buffered.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
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

/// Whether a request meets direct-I/O alignment.
fn is_aligned(align: usize, offset: u64, bufs: &[crate::IoBuf]) -> bool {
    let a = align as u64;
    offset.is_multiple_of(a)
        && bufs
            .iter()
            .all(|b| (b.addr as usize).is_multiple_of(align) && b.len.is_multiple_of(align))
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
                read_only: false,
                direct: false,
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
}
