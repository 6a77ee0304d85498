//! A byte reader that never fails (reads past the end give zeros) and the
//! matching writer, so that every fuzz input decodes to some case and the
//! seed corpus can be written from typed cases.

/// Reads little-endian integers from fuzz input; past the end it yields zeros.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(N);
        out[..n].copy_from_slice(&rest[..n]);
        self.pos = self.pos.saturating_add(N);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(n);
        self.pos += n;
        &rest[..n]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        rest
    }
}

/// Writes what [`Input`] reads back, for building seeds.
#[derive(Debug, Default)]
pub struct Output(pub Vec<u8>);

impl Output {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Raw bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert!(i.is_empty());
        assert_eq!(i.u64(), 0);
        assert_eq!(i.bytes(4), &[] as &[u8]);
    }

    #[test]
    fn output_is_read_back() {
        let mut o = Output::default();
        o.u8(7);
        o.u16(0xbeef);
        o.u32(0xdead_beef);
        o.u64(u64::MAX - 1);
        o.bytes(b"xy");
        let mut i = Input::new(&o.0);
        assert_eq!(
            (i.u8(), i.u16(), i.u32(), i.u64()),
            (7, 0xbeef, 0xdead_beef, u64::MAX - 1)
        );
        assert_eq!(i.rest(), b"xy");
    }
}
