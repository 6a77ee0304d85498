//! The virtio-blk configuration space (`struct virtio_blk_config`).

/// Bytes of config space served (up to and including `write_zeroes_may_unmap`
/// and its padding; secure erase and zoned fields are not offered).
pub const CONFIG_SIZE: usize = 60;

/// Offset of the `wce` (write cache enable) byte, the only field a driver
/// may write.
pub const WCE_OFFSET: usize = 32;

/// The `seg_max` to advertise: as many data segments as a request can
/// have in a queue of `queue_size` descriptors (one each for the header
/// and the status byte), at most `engine_limit` where the I/O engine takes
/// fewer (librbd: 1024), at least 1.
pub fn seg_max(queue_size: u16, engine_limit: Option<usize>) -> u32 {
    let ring = u32::from(queue_size).saturating_sub(2);
    let engine = engine_limit.map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
    ring.min(engine).max(1)
}

/// The fields of `struct virtio_blk_config` this device fills in. Values in
/// sectors are 512-byte units, as the spec says, whatever `blk_size` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Maximum bytes in one segment (only meaningful with `SIZE_MAX`).
    pub size_max: u32,
    /// Maximum data segments in one request.
    pub seg_max: u32,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// log2 of logical blocks per physical block.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in logical blocks.
    pub min_io_size: u16,
    /// Optimal I/O size in logical blocks.
    pub opt_io_size: u32,
    /// 1 for writeback caching, 0 for writethrough.
    pub writeback: u8,
    /// Number of request queues.
    pub num_queues: u16,
    /// Maximum sectors in one discard segment.
    pub max_discard_sectors: u32,
    /// Maximum discard segments in one request.
    pub max_discard_seg: u32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Maximum sectors in one write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// Maximum write-zeroes segments in one request.
    pub max_write_zeroes_seg: u32,
    /// 1 if write zeroes may deallocate (honours the UNMAP flag).
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// The little-endian bytes of the config space.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry, not offered.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = self.alignment_offset;
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[WCE_OFFSET] = self.writeback;
        // 33: unused.
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// `size` bytes of config space from `offset`, zero-filled past the end
    /// (a frontend treats a short reply as an error).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let size = usize::try_from(size).unwrap_or(0);
        let mut out = vec![0u8; size];
        if let Ok(off) = usize::try_from(offset)
            && off < CONFIG_SIZE
        {
            let n = (CONFIG_SIZE - off).min(size);
            out[..n].copy_from_slice(&bytes[off..off + n]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_virtio_blk_config() {
        let c = BlkConfig {
            capacity: 0x0102_0304_0506_0708,
            seg_max: 126,
            blk_size: 4096,
            writeback: 1,
            num_queues: 3,
            max_discard_seg: 1,
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 126);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 4096);
        assert_eq!(b[32], 1);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 1);
        assert_eq!(b[56], 1);
    }

    #[test]
    fn seg_max_is_the_ring_or_the_engine_limit() {
        assert_eq!(seg_max(128, None), 126);
        assert_eq!(seg_max(1024, Some(1024)), 1022);
        assert_eq!(seg_max(4096, Some(1024)), 1024, "the engine's limit");
        assert_eq!(seg_max(32768, None), 32766);
        assert_eq!(seg_max(2, None), 1);
        assert_eq!(seg_max(2, Some(0)), 1);
    }

    #[test]
    fn read_is_exactly_the_requested_size() {
        let c = BlkConfig {
            capacity: 8,
            ..Default::default()
        };
        assert_eq!(c.read(0, 8), 8u64.to_le_bytes().to_vec());
        assert_eq!(c.read(56, 16).len(), 16);
        assert_eq!(c.read(1000, 4), vec![0; 4]);
        assert_eq!(c.read(u32::MAX, 2), vec![0; 2]);
    }
}
