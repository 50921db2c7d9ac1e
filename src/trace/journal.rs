//! The recording journal: one checksummed frame per interval, appended and flushed as each
//! interval is harvested. A killed recorder leaves a journal whose complete frames are all
//! readable; `finalize` turns it into the Parquet tables.
//!
//! Layout (little-endian): the 8-byte file magic `DTJOURN1`, then frames of
//! `magic u32 = "DTJF" | payload_len u32 | crc32(payload) u32 | payload`, where the payload is
//! `row_len u32 | row (JSON IntervalRow) | blob_count u32 | blobs`, and each blob is
//! `slot u32 | first_page u64 | num_pages u64 | encoding u8 | raw_bytes u64 | dirty_pages u64 | data_len u32 | data`.

use super::bitmap::Encoding;
use super::tables::IntervalRow;
use std::io::{self, Read, Write};

pub const FILE_MAGIC: &[u8; 8] = b"DTJOURN1";
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"DTJF");

/// One slot's compressed bitmap for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotBlob {
    pub slot: u32,
    pub first_page: u64,
    pub num_pages: u64,
    pub encoding: Encoding,
    /// Length of `data` once decompressed.
    pub raw_bytes: u64,
    pub dirty_pages: u64,
    /// One zstd frame.
    pub data: Vec<u8>,
}

pub fn encode_frame(row: &IntervalRow, blobs: &[SlotBlob]) -> Vec<u8> {
    let json = serde_json::to_vec(row).expect("row serialises");
    let mut payload = Vec::with_capacity(json.len() + blobs.iter().map(|b| b.data.len() + 40).sum::<usize>() + 8);
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
    let mut frame = Vec::with_capacity(payload.len() + 12);
    frame.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

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
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}

fn decode_payload(payload: &[u8]) -> Option<(IntervalRow, Vec<SlotBlob>)> {
    let mut c = Cursor(payload);
    let len = c.u32()? as usize;
    let row: IntervalRow = serde_json::from_slice(c.take(len)?).ok()?;
    let n = c.u32()?;
    let mut blobs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let slot = c.u32()?;
        let first_page = c.u64()?;
        let num_pages = c.u64()?;
        let encoding = Encoding::from_code(c.take(1)?[0])?;
        let raw_bytes = c.u64()?;
        let dirty_pages = c.u64()?;
        let len = c.u32()? as usize;
        blobs.push(SlotBlob {
            slot,
            first_page,
            num_pages,
            encoding,
            raw_bytes,
            dirty_pages,
            data: c.take(len)?.to_vec(),
        });
    }
    Some((row, blobs))
}

/// Reads frames until the end, or until the first incomplete or corrupt frame (the tail a
/// kill leaves behind), which it reports through [`JournalReader::torn_tail`].
pub struct JournalReader<R: Read> {
    inner: R,
    torn: bool,
}

impl<R: Read> JournalReader<R> {
    pub fn new(mut inner: R) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        inner.read_exact(&mut magic)?;
        if &magic != FILE_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a dirtytrace journal (bad magic)"));
        }
        Ok(JournalReader { inner, torn: false })
    }

    /// True if reading stopped at a torn or corrupt frame rather than at a clean end.
    pub fn torn_tail(&self) -> bool {
        self.torn
    }

    fn read_frame(&mut self) -> io::Result<Option<(IntervalRow, Vec<SlotBlob>)>> {
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < head.len() {
            let n = self.inner.read(&mut head[got..])?;
            if n == 0 {
                self.torn = got != 0;
                return Ok(None);
            }
            got += n;
        }
        let magic = u32::from_le_bytes(head[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(head[8..12].try_into().unwrap());
        if magic != FRAME_MAGIC {
            self.torn = true;
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        if self.inner.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            self.torn = true;
            return Ok(None);
        }
        match decode_payload(&payload) {
            Some(frame) => Ok(Some(frame)),
            None => {
                self.torn = true;
                Ok(None)
            }
        }
    }
}

impl<R: Read> Iterator for JournalReader<R> {
    type Item = io::Result<(IntervalRow, Vec<SlotBlob>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_frame().transpose()
    }
}
