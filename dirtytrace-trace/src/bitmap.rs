//! How one slot's dirty bitmap is stored, chosen per bitmap (`schemas/bitmaps.md`):
//!
//! - `zstd`: one zstd frame (level 1) of KVM's raw words. Runs of zero words cost it almost
//!   nothing, so it suits dense bitmaps and clustered ones (a sequential writer's).
//! - `varint-gaps`: one zstd frame (level 1) of the dirty pages' slot-relative numbers as
//!   unsigned LEB128 varints: the first page, then each page's distance from the one before.
//!   Sparse, scattered bitmaps come within 1.2× of their entropy bound this way, where the raw
//!   words' zstd stays 1.7× above it (issue 21 has the measurements).
//!
//! The choice is cheap: the density first, from the count of dirty pages the writer has
//! anyway; then, for a bitmap between one page in 64 and one in 16 only, the runs among its
//! first 512 dirty pages.

use super::records::{Encoding, MemorySlot, SlotBlob};

/// zstd level of the bitmaps: level 1 compresses sparse bitmaps as well as 3, faster.
pub const ZSTD_LEVEL: i32 = 1;

/// A bitmap is stored as `varint-gaps` only when at most one page in this many is dirty.
/// Denser, the raw words' zstd is about as small and cheaper to make. At this density the gap
/// stream is never longer than the raw bitmap (a mean gap of at least 16 pages takes at most
/// 1 + log2(16)/7 < 2 bytes), which is what bounds a decoder's memory by `raw_bytes`.
pub const SPARSE_ONE_IN: u64 = 16;

/// ... and only when its dirty pages come in runs of fewer than this many pages on average:
/// longer runs (a sequential writer) are as small as raw words, which take one zstd pass.
pub const SPARSE_MAX_MEAN_RUN: u64 = 4;

/// ... but a bitmap with at most one page in this many dirty is stored as `varint-gaps` whatever
/// its runs: its gap stream (for runs, mostly bytes of 1) is then smaller than the raw words'
/// zstd frame, and cheaper to make than a zstd pass over the raw words, which costs the same
/// however few pages are dirty (issue 21: about 2 ns per page against 0.03 ns per page of the
/// slot, so they break even near one in 64).
pub const GAPS_WHATEVER_RUNS_ONE_IN: u64 = 64;

/// The runs are counted over at most this many of the first dirty pages, so that the choice
/// costs the same whatever the density: enough to tell a sequential writer from a scattered one.
pub const RUN_SAMPLE_PAGES: usize = 512;

/// The longest LEB128 encoding of a u64.
const MAX_VARINT_BYTES: usize = 10;

/// Turns raw bitmaps into [`SlotBlob`]s, choosing each one's encoding, and reusing one
/// compression context and one gap buffer.
pub struct BitmapEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    gaps: Vec<u8>,
    pages: Vec<u32>,
    /// The compressed frame, before it is copied out at its size.
    frame: Vec<u8>,
}

/// The encoding a bitmap of `num_pages` pages gets, given its dirty pages (slot-relative,
/// ascending; `pages()` yields them if asked): `varint-gaps` for very sparse bitmaps, and for
/// sparse ones whose dirty pages are scattered; `zstd` otherwise. A dense or very sparse bitmap
/// is decided from its count alone; a sparse one from the runs among its first
/// [`RUN_SAMPLE_PAGES`] dirty pages.
pub fn choose<I: Iterator<Item = u64>>(num_pages: u64, dirty_pages: u64, pages: impl FnOnce() -> I) -> Encoding {
    if let Some(by_count) = by_count(num_pages, dirty_pages) {
        return by_count;
    }
    // Runs of consecutive pages: one per page that does not follow the page before it.
    let (mut runs, mut sampled, mut next) = (0u64, 0u64, u64::MAX);
    for p in pages().take(RUN_SAMPLE_PAGES) {
        runs += (p != next) as u64;
        next = p.wrapping_add(1);
        sampled += 1;
    }
    by_runs(sampled, runs)
}

/// [`choose`] for a bitmap whose dirty pages are listed, ascending (with any offset): the same
/// choice, the runs counted over the slice, without a branch per page.
fn choose_listed(num_pages: u64, pages: &[u32]) -> Encoding {
    if let Some(by_count) = by_count(num_pages, pages.len() as u64) {
        return by_count;
    }
    let sample = &pages[..pages.len().min(RUN_SAMPLE_PAGES)];
    let breaks = sample.windows(2).map(|w| (w[1] != w[0].wrapping_add(1)) as u64).sum::<u64>();
    let runs = if sample.is_empty() { 0 } else { 1 + breaks };
    by_runs(sample.len() as u64, runs)
}

/// The choice that the count of dirty pages decides alone: `zstd` for a dense bitmap,
/// `varint-gaps` for a very sparse one; `None` in between, where the runs decide.
fn by_count(num_pages: u64, dirty_pages: u64) -> Option<Encoding> {
    if dirty_pages.saturating_mul(SPARSE_ONE_IN) > num_pages {
        Some(Encoding::Zstd)
    } else if dirty_pages.saturating_mul(GAPS_WHATEVER_RUNS_ONE_IN) <= num_pages {
        Some(Encoding::VarintGaps)
    } else {
        None
    }
}

/// The choice for a sparse bitmap with `runs` runs among `sampled` of its first dirty pages.
fn by_runs(sampled: u64, runs: u64) -> Encoding {
    if sampled > runs.saturating_mul(SPARSE_MAX_MEAN_RUN) {
        Encoding::Zstd
    } else {
        Encoding::VarintGaps
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl BitmapEncoder {
    /// An encoder at zstd `level`.
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(BitmapEncoder {
            compressor: zstd::bulk::Compressor::new(level)?,
            gaps: Vec::new(),
            pages: Vec::new(),
            frame: Vec::new(),
        })
    }

    /// Encodes the bitmap `words` of `slot`, whose set bits are `dirty_pages`.
    pub fn encode(&mut self, slot: &MemorySlot, words: &[u64], dirty_pages: u64) -> std::io::Result<SlotBlob> {
        let mut pages = std::mem::take(&mut self.pages);
        pages.clear();
        if dirty_pages.saturating_mul(SPARSE_ONE_IN) <= slot.num_pages() {
            for_each_set_bit(words, |b| pages.push(b as u32));
        }
        let blob = self.encode_listed(slot, words, dirty_pages, &pages, 0);
        self.pages = pages;
        blob
    }

    /// Encodes the bitmap `words` of `slot`, whose dirty pages the caller has listed already:
    /// `pages[i] - base` is the slot-relative number of the `i`-th, ascending.
    pub fn encode_pages(
        &mut self,
        slot: &MemorySlot,
        words: &[u64],
        pages: &[u32],
        base: u32,
    ) -> std::io::Result<SlotBlob> {
        self.encode_listed(slot, words, pages.len() as u64, pages, base)
    }

    /// Encodes `words`, whose `dirty_pages` set bits are listed in `pages` (`pages[i] - base`)
    /// unless the bitmap is too dense for `varint-gaps`.
    fn encode_listed(
        &mut self,
        slot: &MemorySlot,
        words: &[u64],
        dirty_pages: u64,
        pages: &[u32],
        base: u32,
    ) -> std::io::Result<SlotBlob> {
        // `pages` is listed whenever the density allows varint-gaps, so its length is the count.
        let sparse = dirty_pages.saturating_mul(SPARSE_ONE_IN) <= slot.num_pages();
        if sparse && choose_listed(slot.num_pages(), pages) == Encoding::VarintGaps {
            self.gaps.clear();
            let mut prev = 0;
            for p in pages.iter().map(|&p| (p - base) as u64) {
                push_varint(&mut self.gaps, p - prev);
                prev = p;
            }
            // Never longer than the raw bitmap at the density `choose` allows; checked all the
            // same, since readers refuse a longer one.
            if self.gaps.len() <= slot.bitmap_bytes() as usize {
                return Ok(SlotBlob {
                    slot: slot.slot,
                    first_page: slot.first_page(),
                    num_pages: slot.num_pages(),
                    encoding: Encoding::VarintGaps,
                    raw_bytes: self.gaps.len() as u64,
                    dirty_pages,
                    data: compress(&mut self.compressor, &mut self.frame, &self.gaps)?,
                });
            }
        }
        self.encode_zstd(slot, words, dirty_pages)
    }

    /// Encodes the bitmap `words` of `slot` as `zstd`, whatever its density: what every
    /// bitmap of a version-1 trace was.
    pub fn encode_zstd(&mut self, slot: &MemorySlot, words: &[u64], dirty_pages: u64) -> std::io::Result<SlotBlob> {
        // KVM's words are native-endian, and x86-64 hosts are little-endian.
        let raw: &[u8] = bytemuck::cast_slice(words);
        Ok(SlotBlob {
            slot: slot.slot,
            first_page: slot.first_page(),
            num_pages: slot.num_pages(),
            encoding: Encoding::Zstd,
            raw_bytes: raw.len() as u64,
            dirty_pages,
            data: compress(&mut self.compressor, &mut self.frame, raw)?,
        })
    }
}

/// One zstd frame of `src`, made in `frame` (kept for the next one) and copied out at its size:
/// the bytes of `Compressor::compress`, without allocating its worst case, a little more than
/// `src`, per bitmap.
fn compress(c: &mut zstd::bulk::Compressor<'static>, frame: &mut Vec<u8>, src: &[u8]) -> std::io::Result<Vec<u8>> {
    frame.clear();
    frame.reserve(zstd::zstd_safe::compress_bound(src.len()));
    c.compress_to_buffer(src, frame)?;
    Ok(frame.clone())
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

/// Appends `base + i` for every set bit `i < n` of `words` (KVM's layout) to `pages`,
/// ascending: the page lists of the recorder's accounting and of the offline tools.
#[inline(never)]
pub fn push_set_bits(words: &[u64], n: u64, base: u32, pages: &mut Vec<u32>) {
    let push_word = |pages: &mut Vec<u32>, i: usize, mut bits: u64| {
        let first = base + (i as u32) * 64;
        while bits != 0 {
            pages.push(first + bits.trailing_zeros());
            bits &= bits - 1;
        }
    };
    let words = &words[..n.div_ceil(64).min(words.len() as u64) as usize];
    let Some((&last, full)) = words.split_last() else { return };
    // Bitmaps are mostly zero: skip eight words at a time.
    let mut chunks = full.chunks_exact(8);
    for (c, chunk) in chunks.by_ref().enumerate() {
        if chunk.iter().fold(0, |a, w| a | w) != 0 {
            for (j, &w) in chunk.iter().enumerate() {
                push_word(pages, c * 8 + j, w);
            }
        }
    }
    let done = full.len() - chunks.remainder().len();
    for (j, &w) in chunks.remainder().iter().enumerate() {
        push_word(pages, done + j, w);
    }
    // Bits past the slot's last page, if its size is not a multiple of 64 pages, are not pages.
    let tail = n % 64;
    push_word(pages, words.len() - 1, if tail == 0 { last } else { last & ((1u64 << tail) - 1) });
}

/// Why a bitmap could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The zstd frame is damaged, or expands beyond the size the row gives.
    #[error("its data is not a zstd frame of at most {expected} bytes ({source})")]
    Data {
        /// The row's `raw_bytes`.
        expected: u64,
        /// What zstd said.
        source: std::io::Error,
    },
    /// The frame expands to the wrong size.
    #[error("its data expands to {got} bytes, not {expected}")]
    Length {
        /// What it expanded to.
        got: u64,
        /// The row's `raw_bytes`.
        expected: u64,
    },
    /// `raw_bytes` is not what the encoding allows for the slot.
    #[error("its raw_bytes is {got}; {encoding} allows {allowed}")]
    RawBytes {
        /// The row's `raw_bytes`.
        got: u64,
        /// The row's encoding.
        encoding: &'static str,
        /// What it allows, in words.
        allowed: String,
    },
    /// The bits do not agree with the row's `dirty_pages`, or lie past the slot's last page.
    #[error("it has {got} dirty pages within the slot, the row says {expected}")]
    Count {
        /// Set bits within the slot.
        got: u64,
        /// The row's `dirty_pages`.
        expected: u64,
    },
    /// A varint of a gap stream is cut off by the stream's end, or longer than a u64.
    #[error("its gap stream has a number at byte {at} that is cut off or longer than 64 bits")]
    Varint {
        /// Where the number starts in the decompressed stream.
        at: usize,
    },
    /// A gap stream names a page that does not come after the one before it.
    #[error("its dirty page #{index} (page {page}) does not come after the page before it: pages must ascend")]
    Order {
        /// Which dirty page, from 0.
        index: u64,
        /// Its slot-relative page number.
        page: u64,
    },
    /// A gap stream names a page past the slot's end.
    #[error("its dirty page #{index} is page {page}, past the slot's {num_pages} pages")]
    Beyond {
        /// Which dirty page, from 0.
        index: u64,
        /// Its slot-relative page number (saturated at u64::MAX).
        page: u64,
        /// The slot's pages.
        num_pages: u64,
    },
}

/// Decodes [`SlotBlob`]s into bitmap words, reusing one decompression context and one buffer.
/// It never allocates more than the blob's `raw_bytes` allows: the words of a slot of
/// `num_pages` pages, and for `varint-gaps` a gap buffer of `raw_bytes`, which may be no larger.
pub struct BitmapDecoder {
    dec: zstd::bulk::Decompressor<'static>,
    gaps: Vec<u8>,
    /// The words of a `zstd` bitmap decoded by [`BitmapDecoder::decode_pages`].
    words: Vec<u64>,
}

impl BitmapDecoder {
    /// A decoder.
    pub fn new() -> std::io::Result<Self> {
        Ok(BitmapDecoder { dec: zstd::bulk::Decompressor::new()?, gaps: Vec::new(), words: Vec::new() })
    }

    /// The bitmap words of `blob`: `ceil(num_pages / 64)` little-endian words, KVM's layout.
    /// Whatever the blob claims, the output and the buffers are capped by its slot's size.
    pub fn decode(&mut self, blob: &SlotBlob) -> Result<Vec<u64>, DecodeError> {
        let mut words = Vec::new();
        match blob.encoding {
            Encoding::Zstd => self.decode_zstd(blob, &mut words)?,
            Encoding::VarintGaps => {
                words.resize(blob.num_pages.div_ceil(64) as usize, 0);
                self.decode_gaps(blob, |page| words[(page / 64) as usize] |= 1 << (page % 64))?;
            }
        }
        Ok(words)
    }

    /// Appends `base + p` for every dirty page `p` of `blob` (slot-relative, ascending) to
    /// `pages`, with the checks of [`BitmapDecoder::decode`]: what the offline tools need,
    /// without the words of a `varint-gaps` bitmap. On an error, `pages` may hold some of them.
    pub fn decode_pages(&mut self, blob: &SlotBlob, base: u32, pages: &mut Vec<u32>) -> Result<(), DecodeError> {
        match blob.encoding {
            Encoding::Zstd => {
                let mut words = std::mem::take(&mut self.words);
                let result = self.decode_zstd(blob, &mut words);
                if result.is_ok() {
                    pages.reserve(blob.dirty_pages as usize);
                    push_set_bits(&words, blob.num_pages, base, pages);
                }
                self.words = words;
                result
            }
            Encoding::VarintGaps => self.decode_gaps(blob, |page| pages.push(base + page as u32)),
        }
    }

    fn decompress_into(&mut self, data: &[u8], out: &mut [u8], expected: u64) -> Result<(), DecodeError> {
        let got = self.dec.decompress_to_buffer(data, out).map_err(|source| DecodeError::Data { expected, source })?;
        if got as u64 != expected {
            return Err(DecodeError::Length { got: got as u64, expected });
        }
        Ok(())
    }

    /// Decodes a `zstd` blob into `words` (resized to the slot's), checked.
    fn decode_zstd(&mut self, blob: &SlotBlob, words: &mut Vec<u64>) -> Result<(), DecodeError> {
        let bitmap_bytes = blob.num_pages.div_ceil(64).saturating_mul(8);
        let expected = blob.raw_bytes;
        if expected != bitmap_bytes {
            let allowed = format!("exactly ceil(num_pages / 64) × 8 = {bitmap_bytes}");
            return Err(DecodeError::RawBytes { got: expected, encoding: "zstd", allowed });
        }
        // Straight into the words, never more than the expected size.
        words.clear();
        words.resize((expected / 8) as usize, 0);
        self.decompress_into(&blob.data, bytemuck::cast_slice_mut::<u64, u8>(words), expected)?;
        for w in words.iter_mut() {
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
        Ok(())
    }

    /// Decodes a `varint-gaps` blob, calling `page` with each dirty page, checked.
    fn decode_gaps(&mut self, blob: &SlotBlob, page: impl FnMut(u64)) -> Result<(), DecodeError> {
        let bitmap_bytes = blob.num_pages.div_ceil(64).saturating_mul(8);
        let expected = blob.raw_bytes;
        if expected > bitmap_bytes || expected < blob.dirty_pages {
            let allowed = format!(
                "at least one byte per dirty page ({}) and at most the raw bitmap's {bitmap_bytes}",
                blob.dirty_pages
            );
            return Err(DecodeError::RawBytes { got: expected, encoding: "varint-gaps", allowed });
        }
        let mut gaps = std::mem::take(&mut self.gaps);
        gaps.clear();
        gaps.resize(expected as usize, 0);
        let result =
            self.decompress_into(&blob.data, &mut gaps, expected).and_then(|()| pages_of_gaps(&gaps, blob, page));
        self.gaps = gaps;
        result
    }
}

/// Calls `f` with each page of the gap stream `gaps` of `blob`, in order, every page checked
/// before it is handed on.
fn pages_of_gaps(gaps: &[u8], blob: &SlotBlob, mut f: impl FnMut(u64)) -> Result<(), DecodeError> {
    let (mut index, mut page, mut at) = (0u64, 0u64, 0usize);
    while at < gaps.len() {
        let start = at;
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let Some(&b) = gaps.get(at) else { return Err(DecodeError::Varint { at: start }) };
            if at - start >= MAX_VARINT_BYTES || (shift == 63 && b > 1) {
                return Err(DecodeError::Varint { at: start });
            }
            v |= ((b & 0x7F) as u64) << shift;
            at += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        if index > 0 && v == 0 {
            return Err(DecodeError::Order { index, page });
        }
        page = if index == 0 { v } else { page.saturating_add(v) };
        if page >= blob.num_pages {
            return Err(DecodeError::Beyond { index, page, num_pages: blob.num_pages });
        }
        if index == blob.dirty_pages {
            // More pages than the row says: count the rest for the message, within the stream.
            let more = gaps[at..].iter().filter(|&&b| b < 0x80).count() as u64;
            return Err(DecodeError::Count { got: index + 1 + more, expected: blob.dirty_pages });
        }
        f(page);
        index += 1;
    }
    if index != blob.dirty_pages {
        return Err(DecodeError::Count { got: index, expected: blob.dirty_pages });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(num_pages: u64) -> MemorySlot {
        MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: num_pages * 4096 }
    }

    fn count(words: &[u64]) -> u64 {
        words.iter().map(|w| w.count_ones() as u64).sum()
    }

    fn words_of(num_pages: u64, pages: &[u64]) -> Vec<u64> {
        let mut w = vec![0u64; num_pages.div_ceil(64) as usize];
        for &p in pages {
            w[(p / 64) as usize] |= 1 << (p % 64);
        }
        w
    }

    /// A varint-gaps blob of exactly these numbers, whatever they mean.
    fn gaps_blob(num_pages: u64, numbers: &[u64], dirty_pages: u64) -> SlotBlob {
        let mut g = Vec::new();
        for &n in numbers {
            push_varint(&mut g, n);
        }
        SlotBlob {
            slot: 0,
            first_page: 0,
            num_pages,
            encoding: Encoding::VarintGaps,
            raw_bytes: g.len() as u64,
            dirty_pages,
            data: zstd::bulk::compress(&g, 1).unwrap(),
        }
    }

    #[test]
    fn set_bits() {
        let mut v = Vec::new();
        for_each_set_bit(&[0b101, 1 << 63], |b| v.push(b));
        assert_eq!(v, vec![0, 2, 127]);
    }

    #[test]
    fn varints_are_leb128() {
        let mut g = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            push_varint(&mut g, v);
        }
        let want: &[u8] =
            &[0, 1, 0x7F, 0x80, 0x01, 0xAC, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(g, want);
    }

    #[test]
    fn the_choice_follows_density_and_runs() {
        let n = 64_000;
        // 1 page in 100, scattered: sparse.
        assert_eq!(choose(n, 640, || (0..640).map(|i| i * 100)), Encoding::VarintGaps);
        // 1 page in 10: dense, decided without looking at the pages.
        assert_eq!(
            choose(n, 6400, || -> std::iter::Empty<u64> { panic!("looked at a dense bitmap's pages") }),
            Encoding::Zstd
        );
        // Exactly 1 in 16 is still sparse; one more page is not.
        assert_eq!(choose(n, n / 16, || (0..n / 16).map(|i| i * 16)), Encoding::VarintGaps);
        assert_eq!(choose(n, n / 16 + 1, || -> std::iter::Empty<u64> { panic!() }), Encoding::Zstd);
        // Sparse (1 page in 32) but in runs of 4 pages: still varint-gaps; runs of 5: zstd.
        assert_eq!(choose(n, 2000, || (0..2000).map(|i| i / 4 * 30 + i % 4)), Encoding::VarintGaps);
        assert_eq!(choose(n, 2000, || (0..2000).map(|i| i / 5 * 30 + i % 5)), Encoding::Zstd);
        // At 1 page in 64 or fewer, varint-gaps whatever the runs, decided without looking;
        // one more page, and the runs decide.
        assert_eq!(
            choose(n, n / 64, || -> std::iter::Empty<u64> { panic!("looked at a very sparse bitmap's pages") }),
            Encoding::VarintGaps
        );
        assert_eq!(choose(n, n / 64 + 1, || 0..n / 64 + 1), Encoding::Zstd);
        assert_eq!(choose_listed(n, &(0..n as u32 / 64).collect::<Vec<_>>()), Encoding::VarintGaps);
        // Only the first 512 dirty pages are looked at: runs of 5 there decide, whatever follows.
        let mixed = || (0..512).map(|i| i / 5 * 100 + i % 5).chain((0..2000).map(|i| 60_000 + i * 3));
        assert_eq!(choose(n, 2512, mixed), Encoding::Zstd);
        // No dirty page at all: varint-gaps (an empty stream).
        assert_eq!(choose(n, 0, std::iter::empty), Encoding::VarintGaps);
        assert_eq!(choose_listed(n, &[]), Encoding::VarintGaps);
        // A listed bitmap (offset by a slot's base) gets the same choice, around every boundary.
        let mut x = 7u64;
        for len in [1, 2, 3, 100, 511, 512, 513, 700, 1000, 1001, 1500, 2500, 4000, 4001] {
            for run in 1..8u64 {
                let pages: Vec<u64> = (0..len)
                    .scan(0u64, |p, i| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        *p += if i % run == 0 { 2 + (x >> 60) } else { 1 };
                        Some(*p)
                    })
                    .collect();
                let listed: Vec<u32> = pages.iter().map(|&p| p as u32 + 1000).collect();
                let want = choose(n, len, || pages.iter().copied());
                assert_eq!(choose_listed(n, &listed), want, "{len} pages in runs of {run}");
            }
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        let mut e = BitmapEncoder::new(1).unwrap();
        let mut d = BitmapDecoder::new().unwrap();
        let n = 64_000 - 3; // a partial last word
        let cases: Vec<(Vec<u64>, Encoding)> = vec![
            ((0..n).step_by(97).collect(), Encoding::VarintGaps),
            ((0..n).step_by(3).collect(), Encoding::Zstd),
            ((1000..2000).collect(), Encoding::Zstd),
            (vec![], Encoding::VarintGaps),
            (vec![0, n - 1], Encoding::VarintGaps),
        ];
        for (pages, encoding) in cases {
            let words = words_of(n, &pages);
            let blob = e.encode(&slot(n), &words, count(&words)).unwrap();
            assert_eq!(blob.encoding, encoding, "{} pages", pages.len());
            assert!(blob.raw_bytes <= slot(n).bitmap_bytes());
            assert_eq!(d.decode(&blob).unwrap(), words);
            // The caller's page list gives the same blob.
            let listed: Vec<u32> = pages.iter().map(|&p| p as u32 + 7).collect();
            assert_eq!(e.encode_pages(&slot(n), &words, &listed, 7).unwrap(), blob);
            // Byte for byte what schemas/bitmaps.md says: one level-1 zstd frame of the raw
            // words, or of the varint gaps.
            let stream = match encoding {
                Encoding::Zstd => bytemuck::cast_slice::<u64, u8>(&words).to_vec(),
                Encoding::VarintGaps => {
                    let mut g = Vec::new();
                    pages
                        .iter()
                        .scan(0, |prev, &p| Some(p - std::mem::replace(prev, p)))
                        .for_each(|d| push_varint(&mut g, d));
                    g
                }
            };
            assert_eq!((blob.raw_bytes, &blob.data), (stream.len() as u64, &zstd::bulk::compress(&stream, 1).unwrap()));
        }
    }

    #[test]
    fn zstd_refuses_lies() {
        let mut e = BitmapEncoder::new(1).unwrap();
        let mut d = BitmapDecoder::new().unwrap();
        let words: Vec<u64> = (0..1000).map(|i| if i % 3 == 0 { 0xFF << (i % 56) } else { 0 }).collect();
        let n = count(&words);
        let blob = e.encode(&slot(64_000), &words, n).unwrap();
        assert_eq!(blob.encoding, Encoding::Zstd);
        let lying_count = SlotBlob { dirty_pages: n + 1, ..blob.clone() };
        assert!(matches!(d.decode(&lying_count), Err(DecodeError::Count { .. })));
        let garbage = SlotBlob { data: vec![1, 2, 3], ..blob.clone() };
        assert!(matches!(d.decode(&garbage), Err(DecodeError::Data { .. })));
        let big = SlotBlob { raw_bytes: 1 << 40, ..blob.clone() };
        assert!(matches!(d.decode(&big), Err(DecodeError::RawBytes { got: 1099511627776, .. })));
        // A bomb: a small frame of a large zero buffer, against a small expected size.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 10_000);
        let small = SlotBlob { data: bomb.clone(), ..blob.clone() };
        assert!(matches!(d.decode(&small), Err(DecodeError::Data { .. })));
        let as_gaps = SlotBlob { data: bomb, encoding: Encoding::VarintGaps, raw_bytes: 100, dirty_pages: 3, ..blob };
        assert!(matches!(d.decode(&as_gaps), Err(DecodeError::Data { expected: 100, .. })));
    }

    #[test]
    fn varint_gaps_refuse_lies() {
        let mut d = BitmapDecoder::new().unwrap();
        fn msg(b: &SlotBlob) -> String {
            BitmapDecoder::new().unwrap().decode(b).unwrap_err().to_string()
        }
        // Good: pages 5, 6, 100.
        assert_eq!(d.decode(&gaps_blob(1000, &[5, 1, 94], 3)).unwrap(), words_of(1000, &[5, 6, 100]));
        // Beyond the slot: the last page 1000 of a 1000-page slot, or a gap that overflows.
        assert_eq!(msg(&gaps_blob(1000, &[5, 995], 2)), "its dirty page #1 is page 1000, past the slot's 1000 pages");
        assert_eq!(
            msg(&gaps_blob(1000, &[5, u64::MAX], 2)),
            format!("its dirty page #1 is page {}, past the slot's 1000 pages", u64::MAX)
        );
        assert!(matches!(
            d.decode(&gaps_blob(1000, &[1000], 1)),
            Err(DecodeError::Beyond { index: 0, page: 1000, .. })
        ));
        // Out of order: a zero gap repeats a page.
        assert_eq!(
            msg(&gaps_blob(1000, &[5, 1, 0], 3)),
            "its dirty page #2 (page 6) does not come after the page before it: pages must ascend"
        );
        // Disagreeing with dirty_pages, either way.
        assert_eq!(msg(&gaps_blob(1000, &[5, 1, 94], 2)), "it has 3 dirty pages within the slot, the row says 2");
        let mut fewer = gaps_blob(1000, &[5, 1], 2);
        fewer.dirty_pages = 3;
        fewer.raw_bytes = 3;
        assert!(matches!(d.decode(&fewer), Err(DecodeError::Length { got: 2, expected: 3 })));
        // A number cut off by the stream's end, and one longer than 64 bits.
        let mut cut = gaps_blob(1000, &[5], 1);
        cut.data = zstd::bulk::compress(&[5, 0x80], 1).unwrap();
        cut.raw_bytes = 2;
        assert_eq!(msg(&cut), "its gap stream has a number at byte 1 that is cut off or longer than 64 bits");
        let mut long = gaps_blob(1 << 20, &[], 1);
        long.data = zstd::bulk::compress(&[0xFF; 11], 1).unwrap();
        long.raw_bytes = 11;
        assert!(matches!(d.decode(&long), Err(DecodeError::Varint { at: 0 })));
        let mut wide = gaps_blob(1 << 20, &[], 1);
        wide.data = zstd::bulk::compress(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02], 1).unwrap();
        wide.raw_bytes = 10;
        assert!(matches!(d.decode(&wide), Err(DecodeError::Varint { at: 0 })));
        // raw_bytes past the raw bitmap's size, or below one byte per page: refused before any
        // allocation.
        let huge = SlotBlob { raw_bytes: 1 << 40, ..gaps_blob(1000, &[5, 1, 94], 3) };
        assert_eq!(
            msg(&huge),
            "its raw_bytes is 1099511627776; varint-gaps allows at least one byte per dirty page (3) and at most the raw bitmap's 128"
        );
        let short = SlotBlob { raw_bytes: 2, ..gaps_blob(1000, &[5, 1, 94], 3) };
        assert!(matches!(d.decode(&short), Err(DecodeError::RawBytes { got: 2, .. })));
    }
}
