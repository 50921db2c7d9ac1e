//! How one slot's dirty bitmap is stored: one zstd frame of the raw words.
//!
//! zstd's level 1 over KVM's raw bitmap beat a sparse (index, word) encoding both in size
//! and, for guests up to tens of GiB, in time: runs of zero words cost it almost nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// zstd of the raw bitmap: little-endian u64 words, KVM's layout.
    Zstd,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Encoding> {
        (s == "zstd").then_some(Encoding::Zstd)
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Encoding> {
        (c == 0).then_some(Encoding::Zstd)
    }
}

/// Compresses `words`; returns the encoding, the uncompressed length and the compressed bytes.
pub fn encode(
    words: &[u64],
    compressor: &mut zstd::bulk::Compressor<'static>,
) -> std::io::Result<(Encoding, u64, Vec<u8>)> {
    // KVM's words are native-endian, and x86-64 hosts are little-endian.
    let raw: &[u8] = bytemuck::cast_slice(words);
    Ok((Encoding::Zstd, raw.len() as u64, compressor.compress(raw)?))
}

/// The bitmap words of a slot with `num_pages` pages; `dec` is reused across calls.
pub fn decode(
    dec: &mut zstd::bulk::Decompressor<'static>,
    encoding: Encoding,
    data: &[u8],
    raw_bytes: u64,
    num_pages: u64,
) -> Result<Vec<u64>, String> {
    let Encoding::Zstd = encoding;
    let raw = dec.decompress(data, raw_bytes as usize).map_err(|e| format!("bitmap data: {e}"))?;
    if raw.len() as u64 != raw_bytes || raw.len() as u64 != num_pages.div_ceil(64) * 8 {
        return Err("bitmap data has the wrong length".into());
    }
    Ok(raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let words: Vec<u64> = (0..1000).map(|i| if i % 97 == 0 { 1 << (i % 64) } else { 0 }).collect();
        let (enc, raw, data) = encode(&words, &mut c).unwrap();
        assert_eq!(decode(&mut d, enc, &data, raw, 64_000).unwrap(), words);
        assert!(decode(&mut d, enc, &data, raw, 64_064).is_err());
        assert!(decode(&mut d, enc, &[1, 2, 3], raw, 64_000).is_err());
    }
}
