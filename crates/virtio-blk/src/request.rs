//! Parsing a descriptor chain into a typed virtio-blk request.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// log2 of the virtio-blk sector size.
pub const SECTOR_SHIFT: u32 = 9;
/// The virtio-blk sector: 512 bytes whatever the logical block size.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the GET_ID answer (the serial, zero padded).
pub const SERIAL_LEN: usize = 20;
/// Size of one discard / write-zeroes segment descriptor.
pub const DISCARD_SEGMENT_SIZE: usize = 16;
/// Bytes of the request header (`type`, `reserved`, `sector`).
const HEADER_SIZE: u32 = 16;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// The request types this device understands, and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into device-writable buffers.
    In,
    /// Write sectors from device-readable buffers.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Return the 20-byte serial.
    GetId,
    /// Deallocate the ranges given in the data.
    Discard,
    /// Zero the ranges given in the data.
    WriteZeroes,
    /// Any other type: answered with UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            T_IN => Self::In,
            T_OUT => Self::Out,
            T_FLUSH => Self::Flush,
            T_GET_ID => Self::GetId,
            T_DISCARD => Self::Discard,
            T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// One piece of guest memory holding request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (the guest reads it).
    pub writable: bool,
}

/// A parsed request. Its data segments are in the vector given to
/// [`Request::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What the guest asks for.
    pub ty: RequestType,
    /// First 512-byte sector (read, write; ignored otherwise).
    pub sector: u64,
    /// Total bytes of the data segments.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
    /// Index of the chain's head descriptor, for `add_used`.
    pub head_index: u16,
}

/// A malformed chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No status byte to report into: the chain is empty, ends early (a
    /// loop, a `next` index past the table, a bad indirect table), its last
    /// descriptor is not device-writable or empty, or it lies outside guest
    /// memory. The request can only be returned unanswered.
    #[error("descriptor chain has no device-writable status byte in guest memory")]
    NoStatus,
    /// The request is malformed; IOERR can be reported at `status`.
    #[error("malformed virtio-blk request: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
        /// Where the status byte goes.
        status: GuestAddress,
    },
}

impl ParseError {
    /// Where IOERR can be reported, if anywhere.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        match self {
            Self::NoStatus => None,
            Self::Malformed { status, .. } => Some(*status),
        }
    }
}

/// One `virtio_blk_discard_write_zeroes` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of 512-byte sectors.
    pub num_sectors: u32,
    /// Flags; bit 0 is UNMAP (write zeroes only).
    pub flags: u32,
}

impl DiscardSegment {
    /// The UNMAP flag.
    pub const FLAG_UNMAP: u32 = 1;

    /// Reads the first entry from the data segments of a discard or
    /// write-zeroes request (the entry may straddle descriptors).
    pub fn read_first<M: GuestMemory + ?Sized>(mem: &M, segments: &[Segment]) -> Option<Self> {
        let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
        let mut filled = 0usize;
        for seg in segments {
            if filled == raw.len() {
                break;
            }
            let n = (raw.len() - filled).min(usize::try_from(seg.len).ok()?);
            mem.read_slice(&mut raw[filled..filled + n], seg.addr)
                .ok()?;
            filled += n;
        }
        if filled < raw.len() {
            return None;
        }
        Some(Self {
            sector: u64::from_le_bytes(raw[0..8].try_into().ok()?),
            num_sectors: u32::from_le_bytes(raw[8..12].try_into().ok()?),
            flags: u32::from_le_bytes(raw[12..16].try_into().ok()?),
        })
    }
}

#[cold]
fn malformed(reason: &'static str, status: GuestAddress) -> ParseError {
    ParseError::Malformed { reason, status }
}

impl Request {
    /// Parses `chain`, putting its data segments into `segments` (cleared
    /// first; reuse the vector to avoid allocating per request).
    ///
    /// Checks the header, the status byte, the direction of every data
    /// segment for the request type, that every segment lies in guest
    /// memory, and that read/write lengths are whole sectors. Range checks
    /// against the capacity are the caller's (see [`Request::byte_range`]).
    pub fn parse<M>(
        chain: &DescriptorChain<M>,
        segments: &mut Vec<Segment>,
    ) -> Result<Request, ParseError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        segments.clear();
        let head_index = chain.head_index();
        let mem = chain.memory();
        let mut descs = chain.clone();
        let Some(first) = descs.next() else {
            return Err(ParseError::NoStatus);
        };
        // virtio-queue's iterator stops early, without an error, on a loop,
        // a `next` past the table, an unreadable descriptor or a bad
        // indirect table. Then the last descriptor seen still has NEXT set
        // and is not the real end of the chain: no trustworthy status byte.
        let mut ends_early = first.has_next();
        let first = Segment {
            addr: first.addr(),
            len: first.len(),
            writable: first.is_write_only(),
        };
        for d in descs {
            ends_early = d.has_next();
            segments.push(Segment {
                addr: d.addr(),
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        if ends_early {
            segments.clear();
            return Err(ParseError::NoStatus);
        }

        // The status byte is the last byte of the last descriptor.
        let last = segments.last().copied().unwrap_or(first);
        if !last.writable || last.len == 0 {
            return Err(ParseError::NoStatus);
        }
        let status = last
            .addr
            .checked_add(u64::from(last.len) - 1)
            .ok_or(ParseError::NoStatus)?;
        if !GuestMemory::check_range(mem, status, 1, Permissions::Write) {
            return Err(ParseError::NoStatus);
        }
        if segments.is_empty() {
            return Err(malformed("the chain has no request header", status));
        }
        if let Some(l) = segments.last_mut() {
            l.len -= 1;
            if l.len == 0 {
                segments.pop();
            }
        }

        // The header: 16 device-readable bytes at the start of the first descriptor.
        if first.writable || first.len < HEADER_SIZE {
            return Err(malformed(
                "the request header is device-writable or shorter than 16 bytes",
                status,
            ));
        }
        let mut hdr = [0u8; HEADER_SIZE as usize];
        mem.read_slice(&mut hdr, first.addr)
            .map_err(|_| malformed("the request header is outside guest memory", status))?;
        if first.len > HEADER_SIZE {
            let addr = first
                .addr
                .checked_add(u64::from(HEADER_SIZE))
                .ok_or_else(|| malformed("the request header wraps around", status))?;
            segments.insert(
                0,
                Segment {
                    addr,
                    len: first.len - HEADER_SIZE,
                    writable: false,
                },
            );
        }
        let raw_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let ty = RequestType::from_raw(raw_type);

        let want_writable = match ty {
            RequestType::In | RequestType::GetId => Some(true),
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes => Some(false),
            RequestType::Flush | RequestType::Unsupported(_) => None,
        };
        let mut data_len: u64 = 0;
        for seg in segments.iter() {
            if let Some(w) = want_writable
                && seg.writable != w
            {
                return Err(malformed(
                    "a data descriptor has the wrong direction for the request type",
                    status,
                ));
            }
            let access = if seg.writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            let len = usize::try_from(seg.len)
                .map_err(|_| malformed("a data segment is too long", status))?;
            if !GuestMemory::check_range(mem, seg.addr, len, access) {
                return Err(malformed(
                    "a data segment lies outside guest memory",
                    status,
                ));
            }
            data_len = data_len
                .checked_add(u64::from(seg.len))
                .ok_or_else(|| malformed("the data length overflows", status))?;
        }
        match ty {
            RequestType::In | RequestType::Out if !data_len.is_multiple_of(SECTOR_SIZE) => {
                return Err(malformed(
                    "read/write length is not a multiple of 512 bytes",
                    status,
                ));
            }
            RequestType::Discard | RequestType::WriteZeroes
                if data_len == 0 || !data_len.is_multiple_of(DISCARD_SEGMENT_SIZE as u64) =>
            {
                return Err(malformed(
                    "discard/write-zeroes data is not a whole number of 16-byte segments",
                    status,
                ));
            }
            RequestType::GetId if data_len == 0 => {
                return Err(malformed("GET_ID has no buffer for the serial", status));
            }
            _ => {}
        }
        Ok(Request {
            ty,
            sector,
            data_len,
            status_addr: status,
            head_index,
        })
    }

    /// Byte offset and length of a read or write, if they fit within
    /// `capacity_sectors` (checked arithmetic; `None` when out of range).
    pub fn byte_range(&self, capacity_sectors: u64) -> Option<(u64, u64)> {
        sector_range(self.sector, self.data_len, capacity_sectors)
    }
}

/// Byte offset and length of `len` bytes from `sector`, if they fit within
/// `capacity_sectors`.
pub(crate) fn sector_range(sector: u64, len: u64, capacity_sectors: u64) -> Option<(u64, u64)> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    let cap = capacity_sectors.checked_mul(SECTOR_SIZE)?;
    (end <= cap).then_some((offset, len))
}

impl DiscardSegment {
    /// Byte offset and length, if within `capacity_sectors`.
    pub fn byte_range(&self, capacity_sectors: u64) -> Option<(u64, u64)> {
        let len = u64::from(self.num_sectors).checked_mul(SECTOR_SIZE)?;
        sector_range(self.sector, len, capacity_sectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const MEM_END: u64 = 0x100_0000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn header(mem: &GuestMemoryMmap<()>, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn parse(mem: &GuestMemoryMmap<()>, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let mut segs = Vec::new();
        Request::parse(&chain, &mut segs)
    }

    fn malformed_at_status(r: Result<Request, ParseError>) {
        let e = r.unwrap_err();
        assert_eq!(e.status_addr(), Some(GuestAddress(STATUS)), "{e}");
    }

    #[test]
    fn read_request_parses() {
        let m = mem();
        header(&m, T_IN, 8);
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[
                desc(HDR, 16, 0),
                desc(DATA, 4096, F_WRITE),
                desc(DATA + 4096, 512, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ])
            .unwrap();
        let mut segs = Vec::new();
        let r = Request::parse(&chain, &mut segs).unwrap();
        assert_eq!(r.ty, RequestType::In);
        assert_eq!(r.sector, 8);
        assert_eq!(r.data_len, 4608);
        assert_eq!(r.status_addr, GuestAddress(STATUS));
        assert_eq!(segs.len(), 2);
        assert!(segs.iter().all(|s| s.writable));
        assert_eq!(r.byte_range(100), Some((4096, 4608)));
        assert_eq!(r.byte_range(16), None);
    }

    #[test]
    fn status_inside_last_data_descriptor_and_data_after_header() {
        let m = mem();
        header(&m, T_OUT, 0);
        // Header and 512 data bytes in one descriptor; status in its own.
        let r = parse(&m, &[desc(HDR, 16 + 512, 0), desc(STATUS, 1, F_WRITE)]).unwrap();
        assert_eq!((r.ty, r.data_len), (RequestType::Out, 512));
        // Read data and status sharing the last descriptor.
        header(&m, T_IN, 0);
        let r = parse(&m, &[desc(HDR, 16, 0), desc(STATUS - 512, 513, F_WRITE)]).unwrap();
        assert_eq!((r.data_len, r.status_addr), (512, GuestAddress(STATUS)));
    }

    #[test]
    fn out_of_range_sectors_are_rejected_without_overflow() {
        let m = mem();
        header(&m, T_IN, u64::MAX / 256);
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ],
        )
        .unwrap();
        assert_eq!(r.byte_range(u64::MAX), None);
        assert_eq!(sector_range(u64::MAX, 1, u64::MAX), None);
        assert_eq!(sector_range(1, 512, 2), Some((512, 512)));
        assert_eq!(sector_range(1, 513, 2), None);
    }

    #[test]
    fn missing_status_byte() {
        let m = mem();
        header(&m, T_IN, 0);
        // Last descriptor is device-readable: nowhere to put a status.
        let e = parse(&m, &[desc(HDR, 16, 0), desc(DATA, 512, 0)]).unwrap_err();
        assert_eq!(e, ParseError::NoStatus);
        // Last descriptor is empty.
        let e = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 0, F_WRITE)]).unwrap_err();
        assert_eq!(e, ParseError::NoStatus);
        // Status outside guest memory.
        let e = parse(&m, &[desc(HDR, 16, 0), desc(MEM_END + 10, 1, F_WRITE)]).unwrap_err();
        assert_eq!(e, ParseError::NoStatus);
    }

    #[test]
    fn chain_too_short_for_a_header() {
        let m = mem();
        // Only a status descriptor.
        malformed_at_status(parse(&m, &[desc(STATUS, 1, F_WRITE)]));
        // Header shorter than 16 bytes.
        malformed_at_status(parse(&m, &[desc(HDR, 8, 0), desc(STATUS, 1, F_WRITE)]));
    }

    #[test]
    fn header_in_writable_descriptor() {
        let m = mem();
        header(&m, T_IN, 0);
        malformed_at_status(parse(
            &m,
            &[desc(HDR, 16, F_WRITE), desc(STATUS, 1, F_WRITE)],
        ));
    }

    #[test]
    fn header_outside_guest_memory() {
        let m = mem();
        malformed_at_status(parse(
            &m,
            &[desc(MEM_END + 0x1000, 16, 0), desc(STATUS, 1, F_WRITE)],
        ));
    }

    #[test]
    fn wrong_data_direction() {
        let m = mem();
        header(&m, T_IN, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, 0),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
        header(&m, T_OUT, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
        header(&m, T_DISCARD, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 16, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
    }

    #[test]
    fn data_outside_guest_memory() {
        let m = mem();
        header(&m, T_IN, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(MEM_END - 512, 1024, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
        header(&m, T_OUT, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(u64::MAX - 100, 512, 0),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
    }

    #[test]
    fn partial_sector_reads_and_bad_discard_payloads() {
        let m = mem();
        header(&m, T_IN, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 100, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
        header(&m, T_WRITE_ZEROES, 0);
        malformed_at_status(parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 15, 0),
                desc(STATUS, 1, F_WRITE),
            ],
        ));
        malformed_at_status(parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)]));
        header(&m, T_GET_ID, 0);
        malformed_at_status(parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)]));
    }

    #[test]
    fn unknown_type_parses_as_unsupported() {
        let m = mem();
        header(&m, 0x77, 0);
        let r = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)]).unwrap();
        assert_eq!(r.ty, RequestType::Unsupported(0x77));
        header(&m, T_FLUSH, 0);
        let r = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)]).unwrap();
        assert_eq!(r.ty, RequestType::Flush);
    }

    #[test]
    fn discard_segment_is_read_across_descriptors() {
        let m = mem();
        header(&m, T_WRITE_ZEROES, 0);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&24u64.to_le_bytes());
        raw[8..12].copy_from_slice(&8u32.to_le_bytes());
        raw[12..16].copy_from_slice(&DiscardSegment::FLAG_UNMAP.to_le_bytes());
        m.write_slice(&raw[..10], GuestAddress(DATA)).unwrap();
        m.write_slice(&raw[10..], GuestAddress(DATA + 0x1000))
            .unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[
                desc(HDR, 16, 0),
                desc(DATA, 10, 0),
                desc(DATA + 0x1000, 6, 0),
                desc(STATUS, 1, F_WRITE),
            ])
            .unwrap();
        let mut segs = Vec::new();
        let r = Request::parse(&chain, &mut segs).unwrap();
        assert_eq!(r.ty, RequestType::WriteZeroes);
        let d = DiscardSegment::read_first(&m, &segs).unwrap();
        assert_eq!(
            d,
            DiscardSegment {
                sector: 24,
                num_sectors: 8,
                flags: 1
            }
        );
        assert_eq!(d.byte_range(32), Some((24 * 512, 8 * 512)));
        assert_eq!(d.byte_range(31), None);
    }

    #[test]
    fn indirect_chain_parses() {
        // The mock puts indirect tables at 0x3000_0000: give it room.
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x3100_0000)]).unwrap();
        header(&m, T_OUT, 2);
        let mut q = MockSplitQueue::new(&m, 16);
        q.add_indirect_chain(3).unwrap();
        let table = GuestAddress(0x3000_0000);
        let entries = [
            Descriptor::new(HDR, 16, F_NEXT, 1),
            Descriptor::new(DATA, 1024, F_NEXT, 2),
            Descriptor::new(STATUS, 1, F_WRITE, 0),
        ];
        for (i, d) in entries.iter().enumerate() {
            m.write_obj(RawDescriptor::from(*d), table.unchecked_add(16 * i as u64))
                .unwrap();
        }
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        use virtio_queue::QueueOwnedT;
        let chain = queue.iter(&m).unwrap().next().unwrap();
        let mut segs = Vec::new();
        let r = Request::parse(&chain, &mut segs).unwrap();
        assert_eq!((r.ty, r.sector, r.data_len), (RequestType::Out, 2, 1024));
        assert_eq!(r.status_addr, GuestAddress(STATUS));
    }
}
