//! The recording journal: one checksummed frame per interval, appended and flushed as each
//! interval is harvested. A killed recorder leaves a journal whose complete frames are all
//! readable; `finalize` turns it into the Parquet tables.
//!
//! Layout (little-endian): the 8-byte file magic `DTJOURN1`, then frames of
//! `magic u32 = "DTJF" | payload_len u32 | crc32(payload) u32 | payload`, where the payload is
//! `row_len u32 | row (JSON IntervalRow) | blob_count u32 | blobs`, and each blob is
//! `slot u32 | first_page u64 | num_pages u64 | encoding u8 | raw_bytes u64 | dirty_pages u64 | data_len u32 | data`.
//!
//! A damaged region (a bad checksum, say) does not end the journal: the reader looks for the
//! next frame magic, keeps every frame whose checksum holds, and reports what it skipped.

use super::limits::MAX_FRAME_BYTES;
use super::records::{Encoding, IntervalRow, SlotBlob};
use std::io::{self, Read, Write};

/// The journal file's first 8 bytes.
pub const FILE_MAGIC: &[u8; 8] = b"DTJOURN1";
const FRAME_MAGIC: [u8; 4] = *b"DTJF";
const HEADER: usize = 12;
/// The smallest blob: its fixed fields with no data.
const BLOB_FIXED_BYTES: usize = 4 + 8 + 8 + 1 + 8 + 8 + 4;

/// One frame: an interval's row and its compressed bitmaps.
pub fn encode_frame(row: &IntervalRow, blobs: &[SlotBlob]) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(row)?;
    let mut payload = Vec::with_capacity(json.len() + blobs.iter().map(|b| b.data.len() + 41).sum::<usize>() + 8);
    payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
    payload.extend_from_slice(&json);
    payload.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for b in blobs {
        payload.extend_from_slice(&b.slot.to_le_bytes());
        payload.extend_from_slice(&b.first_page.to_le_bytes());
        payload.extend_from_slice(&b.num_pages.to_le_bytes());
        payload.push(b.encoding.code());
        payload.extend_from_slice(&b.raw_bytes.to_le_bytes());
        payload.extend_from_slice(&b.dirty_pages.to_le_bytes());
        payload.extend_from_slice(&(b.data.len() as u32).to_le_bytes());
        payload.extend_from_slice(&b.data);
    }
    let mut frame = Vec::with_capacity(payload.len() + HEADER);
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Writes the file magic.
pub fn write_header(w: &mut impl Write) -> io::Result<()> {
    w.write_all(FILE_MAGIC)
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Decodes a payload whose checksum held. Every count is bounded by the bytes that remain, so
/// a lying count fails here instead of allocating.
fn decode_payload(payload: &[u8]) -> Option<(IntervalRow, Vec<SlotBlob>)> {
    let mut c = Cursor(payload);
    let len = c.u32()? as usize;
    let row: IntervalRow = serde_json::from_slice(c.take(len)?).ok()?;
    let n = c.u32()? as usize;
    if n > c.0.len() / BLOB_FIXED_BYTES {
        return None;
    }
    let mut blobs = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = c.u32()?;
        let first_page = c.u64()?;
        let num_pages = c.u64()?;
        let encoding = Encoding::from_code(c.take(1)?[0])?;
        let raw_bytes = c.u64()?;
        let dirty_pages = c.u64()?;
        let len = c.u32()? as usize;
        let data = c.take(len)?.to_vec();
        blobs.push(SlotBlob { slot, first_page, num_pages, encoding, raw_bytes, dirty_pages, data });
    }
    c.0.is_empty().then_some((row, blobs))
}

/// A stretch of the journal the reader could not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts, in bytes from the start of the file.
    pub offset: u64,
    /// How long it is.
    pub bytes: u64,
}

/// Reads frames to the end, skipping damaged regions (see [`JournalReader::damage`]) and a
/// torn last frame (see [`JournalReader::torn_tail`]).
pub struct JournalReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`, and the file offset of `buf[0]`.
    pos: usize,
    base: u64,
    eof: bool,
    damage: Vec<Damage>,
    torn: bool,
}

/// Bytes read from the file at a time.
const CHUNK: usize = 1 << 20;

impl<R: Read> JournalReader<R> {
    /// Checks the file magic.
    pub fn new(mut inner: R) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        let mut got = 0;
        while got < magic.len() {
            match inner.read(&mut magic[got..])? {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal is empty (the recorder died before its first write)",
            ));
        }
        if &magic[..got] != FILE_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a dirtytrace journal (bad magic)"));
        }
        Ok(JournalReader { inner, buf: Vec::new(), pos: 0, base: 8, eof: false, damage: Vec::new(), torn: false })
    }

    /// The damaged regions skipped so far, in file order.
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// True if the journal ended inside a frame (the tail a kill leaves behind).
    pub fn torn_tail(&self) -> bool {
        self.torn
    }

    /// Makes at least `n` unread bytes available, unless the file ends first.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() - self.pos < n && !self.eof {
            if self.pos > 0 && self.pos >= self.buf.len() / 2 {
                self.buf.drain(..self.pos);
                self.base += self.pos as u64;
                self.pos = 0;
            }
            let want = (n - (self.buf.len() - self.pos)).max(CHUNK);
            let got = (&mut self.inner).take(want as u64).read_to_end(&mut self.buf)?;
            self.eof = got == 0;
        }
        Ok(self.buf.len() - self.pos >= n)
    }

    fn mark_damage(&mut self, from: u64, to: u64) {
        match self.damage.last_mut() {
            Some(d) if d.offset + d.bytes == from => d.bytes = to - d.offset,
            _ => self.damage.push(Damage { offset: from, bytes: to - from }),
        }
    }

    fn read_frame(&mut self) -> io::Result<Option<(IntervalRow, Vec<SlotBlob>)>> {
        loop {
            if !self.fill(HEADER)? {
                self.torn = self.buf.len() > self.pos;
                return Ok(None);
            }
            // `fill` may move the unread bytes to the front: positions are taken after it.
            let head = &self.buf[self.pos..self.pos + HEADER];
            let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
            if head[..4] == FRAME_MAGIC && len as u64 <= MAX_FRAME_BYTES {
                if !self.fill(HEADER + len)? {
                    // The file ends inside this frame, so all of the rest is in `buf`. Another
                    // magic in it means a damaged length; none, a torn tail.
                    if self.buf[self.pos + 1..].windows(4).any(|w| w == FRAME_MAGIC) {
                        self.skip_to_magic()?;
                        continue;
                    }
                    self.torn = true;
                    return Ok(None);
                }
                let payload = &self.buf[self.pos + HEADER..self.pos + HEADER + len];
                if crc32fast::hash(payload) == crc {
                    if let Some(frame) = decode_payload(payload) {
                        self.pos += HEADER + len;
                        return Ok(Some(frame));
                    }
                }
            }
            if !self.skip_to_magic()? {
                return Ok(None);
            }
        }
    }

    /// Moves past the damaged frame at `pos` to the next frame magic, recording what it passes
    /// over as damage. False when the file ends first (all of the rest is damage).
    fn skip_to_magic(&mut self) -> io::Result<bool> {
        let start = self.base + self.pos as u64;
        self.pos += 1;
        loop {
            if let Some(i) = self.buf[self.pos..].windows(4).position(|w| w == FRAME_MAGIC) {
                self.pos += i;
                self.mark_damage(start, self.base + self.pos as u64);
                return Ok(true);
            }
            if self.eof {
                self.pos = self.buf.len();
                self.mark_damage(start, self.base + self.pos as u64);
                return Ok(false);
            }
            // Keep the last 3 bytes, where a magic may begin, and read on.
            self.pos = self.pos.max(self.buf.len().saturating_sub(3));
            let unread = self.buf.len() - self.pos;
            self.fill(unread + 1)?;
        }
    }
}

impl<R: Read> Iterator for JournalReader<R> {
    type Item = io::Result<(IntervalRow, Vec<SlotBlob>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_frame().transpose()
    }
}
