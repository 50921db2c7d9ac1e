//! How one slot's dirty bitmap is stored: one zstd frame of the raw words.
//!
//! zstd's level 1 over KVM's raw bitmap beat a sparse (index, word) encoding both in size
//! and, for guests up to tens of GiB, in time: runs of zero words cost it almost nothing.

use super::records::{Encoding, MemorySlot, SlotBlob};

/// zstd level of the bitmaps: level 1 compresses sparse bitmaps as well as 3, faster.
pub const ZSTD_LEVEL: i32 = 1;

/// Turns raw bitmaps into [`SlotBlob`]s, reusing one compression context.
pub struct BitmapEncoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl BitmapEncoder {
    /// An encoder at zstd `level`.
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(BitmapEncoder { compressor: zstd::bulk::Compressor::new(level)? })
    }

    /// Encodes the bitmap of `slot`; `dirty_pages` is its count of set bits.
    pub fn encode(&mut self, slot: &MemorySlot, words: &[u64], dirty_pages: u64) -> std::io::Result<SlotBlob> {
        // KVM's words are native-endian, and x86-64 hosts are little-endian.
        let raw: &[u8] = bytemuck::cast_slice(words);
        Ok(SlotBlob {
            slot: slot.slot,
            first_page: slot.first_page(),
            num_pages: slot.num_pages(),
            encoding: Encoding::Zstd,
            raw_bytes: raw.len() as u64,
            dirty_pages,
            data: self.compressor.compress(raw)?,
        })
    }
}

/// Calls `f` with the index of every set bit in KVM-layout words.
pub fn for_each_set_bit(words: &[u64], mut f: impl FnMut(u64)) {
    for (w, &word) in words.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let b = bits.trailing_zeros() as u64;
            f(w as u64 * 64 + b);
            bits &= bits - 1;
        }
    }
}

/// Why a bitmap could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The zstd frame is damaged, or expands beyond the bitmap's size.
    #[error("its data is not a zstd frame of at most {expected} bytes ({source})")]
    Data {
        /// The raw bitmap's size.
        expected: u64,
        /// What zstd said.
        source: std::io::Error,
    },
    /// The frame expands to the wrong size.
    #[error("its data expands to {got} bytes, not {expected}")]
    Length {
        /// What it expanded to.
        got: u64,
        /// The raw bitmap's size.
        expected: u64,
    },
    /// The bits do not agree with the row's `dirty_pages`, or lie past the slot's last page.
    #[error("it has {got} dirty pages within the slot, the row says {expected}")]
    Count {
        /// Set bits within the slot.
        got: u64,
        /// The row's `dirty_pages`.
        expected: u64,
    },
}

/// The bitmap words of `blob`, whose sizes the caller has checked against its slot. The
/// output is capped at `raw_bytes`, so a small frame cannot expand without bound.
pub fn decode(dec: &mut zstd::bulk::Decompressor<'static>, blob: &SlotBlob) -> Result<Vec<u64>, DecodeError> {
    let Encoding::Zstd = blob.encoding;
    let expected = blob.raw_bytes;
    // Straight into the words, never more than the expected size.
    let mut words = vec![0u64; (expected / 8) as usize];
    let got = dec
        .decompress_to_buffer(&blob.data[..], bytemuck::cast_slice_mut::<u64, u8>(&mut words))
        .map_err(|source| DecodeError::Data { expected, source })?;
    if got as u64 != expected {
        return Err(DecodeError::Length { got: got as u64, expected });
    }
    for w in &mut words {
        *w = u64::from_le(*w);
    }
    // Bits past the slot's last page are not pages: refuse them rather than guess.
    let tail = blob.num_pages % 64;
    let stray = match words.last_mut() {
        Some(last) if tail != 0 => *last >> tail != 0,
        _ => false,
    };
    let got: u64 = words.iter().map(|w| w.count_ones() as u64).sum();
    if stray || got != blob.dirty_pages {
        return Err(DecodeError::Count { got, expected: blob.dirty_pages });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bits() {
        let mut v = Vec::new();
        for_each_set_bit(&[0b101, 1 << 63], |b| v.push(b));
        assert_eq!(v, vec![0, 2, 127]);
    }

    #[test]
    fn round_trips_and_refuses_lies() {
        let mut e = BitmapEncoder::new(1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let slot = MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: 64_000 * 4096 };
        let words: Vec<u64> = (0..1000).map(|i| if i % 97 == 0 { 1 << (i % 64) } else { 0 }).collect();
        let n = words.iter().map(|w| w.count_ones() as u64).sum();
        let blob = e.encode(&slot, &words, n).unwrap();
        assert_eq!(decode(&mut d, &blob).unwrap(), words);
        let lying_count = SlotBlob { dirty_pages: n + 1, ..blob.clone() };
        assert!(matches!(decode(&mut d, &lying_count), Err(DecodeError::Count { .. })));
        let garbage = SlotBlob { data: vec![1, 2, 3], ..blob.clone() };
        assert!(matches!(decode(&mut d, &garbage), Err(DecodeError::Data { .. })));
        // A bomb: a small frame of a large zero buffer, against a small expected size.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 10_000);
        let small = SlotBlob { data: bomb, ..blob };
        assert!(matches!(decode(&mut d, &small), Err(DecodeError::Data { .. })));
    }
}
