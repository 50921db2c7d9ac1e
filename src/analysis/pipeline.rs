//! How every offline tool reads a trace: one thread reads both tables in order, and both
//! threads decode. Decoding is most of the work of reading a trace, and what a tool does with
//! each interval may cost more or less than it, depending on the tool; so neither thread owns
//! the decoding. The reader decodes whatever it has read, and the tool's thread, when the next
//! interval in order is not decoded yet, decodes a batch itself rather than wait. On two cores
//! a tool then costs about half of reading plus its own work, or reading alone, whichever is
//! more.

use super::Result;
use crate::trace::{IntervalPageStream, IntervalRow, PageDecoder, ReadInterval, Trace, TraceError};
use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Intervals in a batch: what one thread decodes at a time and hands on.
const BATCH: usize = 16;
/// Batches read and not yet handed to the tool: together with [`BATCH`], what bounds the
/// pipeline's memory.
const IN_FLIGHT: usize = 4;

type Decoded = Vec<(IntervalRow, Vec<u32>)>;

/// What the two threads share, behind one lock.
#[derive(Default)]
struct Queue {
    /// Batches read and not yet decoded, oldest first, with their numbers; a batch that the
    /// reader could not read whole comes with the error that cut it short.
    read: VecDeque<(u64, Vec<ReadInterval>, Option<TraceError>)>,
    /// Batches decoded (or the error that ended them), by number.
    decoded: BTreeMap<u64, Result<Decoded>>,
    /// Batches read and not yet taken by the tool.
    in_flight: usize,
    /// Batches being decoded right now.
    decoding: usize,
    /// The reader has read everything, or failed (its error is in `decoded`).
    read_all: bool,
    /// The reader's thread has ended, whether it returned or panicked: nothing more will come
    /// from it, and nothing it was decoding.
    reader_gone: bool,
    /// The tool is done: it has everything it wants, or it failed.
    stopped: bool,
    /// Page lists the tool is done with, for the decoders to fill again.
    spare: Vec<Vec<u32>>,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A thread that panicked holding the lock left the queue consistent: every change to it
        // is made whole under the lock.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, q: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed.wait(q).unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes the oldest batch read, if there is one, with the lock released meanwhile;
    /// returns the lock, and whether there was one.
    fn decode_one<'a>(
        &'a self,
        mut q: MutexGuard<'a, Queue>,
        decoder: &mut PageDecoder,
    ) -> (MutexGuard<'a, Queue>, bool) {
        let Some((number, batch, failed)) = q.read.pop_front() else { return (q, false) };
        q.decoding += 1;
        let keep = q.spare.len().saturating_sub(batch.len());
        let mut spare = q.spare.split_off(keep);
        drop(q);
        let decoded = decode_batch(batch, failed, decoder, &mut spare);
        let mut q = self.lock();
        q.decoding -= 1;
        q.spare.append(&mut spare);
        q.decoded.insert(number, decoded);
        self.changed.notify_all();
        (q, true)
    }
}

/// Decodes every interval of `batch`, taking page lists from `spare`; then fails with `failed`,
/// the error that cut the batch short, if any. A blob that cannot be decoded comes before the
/// read error after it, as the sequential reader reports it.
fn decode_batch(
    batch: Vec<ReadInterval>,
    failed: Option<TraceError>,
    decoder: &mut PageDecoder,
    spare: &mut Vec<Vec<u32>>,
) -> Result<Decoded> {
    let mut out = Vec::with_capacity(batch.len());
    for read in batch {
        let mut pages = spare.pop().unwrap_or_default();
        pages.clear();
        let decoded = decoder.decode_into(&read, &mut pages);
        out.push((read.row, pages));
        decoded?;
    }
    if let Some(e) = failed {
        spare.extend(out.into_iter().map(|(_, pages)| pages));
        return Err(e.into());
    }
    Ok(out)
}

/// Tells the reader the tool is done, however it leaves: on an error, a break or a panic.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.changed.notify_all();
    }
}

/// Tells the tool the reader is gone, however it leaves: a reader that panicked (a bug) must
/// not leave the tool waiting for batches that will never come; the tool then stops, and the
/// scope hands the reader's panic on.
struct GoneOnDrop<'a>(&'a Shared);

impl Drop for GoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().reader_gone = true;
        self.0.changed.notify_all();
    }
}

/// The reading thread: reads batches in order as far ahead as [`IN_FLIGHT`] lets it, and
/// decodes while it may not read; once everything is read, it decodes what is left.
fn read_batches(shared: &Shared, mut stream: IntervalPageStream<'_>, mut decoder: PageDecoder) {
    let mut number = 0u64;
    let mut read_all = false;
    loop {
        let mut q = shared.lock();
        while (read_all || q.in_flight >= IN_FLIGHT) && !q.stopped {
            let (back, decoded) = shared.decode_one(q, &mut decoder);
            if !decoded && read_all {
                return;
            }
            q = if decoded { back } else { shared.wait(back) };
        }
        if q.stopped {
            return;
        }
        drop(q);
        let mut batch = Vec::with_capacity(BATCH);
        let mut failed = None;
        while batch.len() < BATCH {
            match stream.next_read() {
                Some(Ok(read)) => batch.push(read),
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        read_all = failed.is_some() || batch.len() < BATCH;
        let mut q = shared.lock();
        // A batch cut short by an error fails whole, as a batch that fails to decode: a tool
        // that would stop inside the batch, before the bad interval, still gets the error. Its
        // intervals are decoded all the same, so that a bad blob among them is reported first,
        // as the sequential reader reports it.
        if failed.is_some() || !batch.is_empty() {
            q.read.push_back((number, batch, failed));
            q.in_flight += 1;
            number += 1;
        }
        q.read_all = read_all;
        shared.changed.notify_all();
    }
}

/// Calls `f` with every interval of the trace, in order: its `rates.parquet` row and the
/// dense indices of the pages dirtied in it, as [`super::PageSpace::new`] of the trace's slots
/// numbers them (ascending). Reads the rates and the bitmaps as two streams, checking that
/// they agree (the checks of [`Trace::interval_pages`]), and decodes on two threads (see the
/// module's documentation). Stops early when `f` breaks. Returns how many intervals `f` saw.
pub fn for_each_interval(
    trace: &Trace,
    mut f: impl FnMut(&IntervalRow, &[u32]) -> Result<ControlFlow<()>>,
) -> Result<u64> {
    let stream = trace.interval_pages()?;
    let mut decoder = stream.decoder()?;
    let reader_decoder = stream.decoder()?;
    let shared = Shared { queue: Mutex::new(Queue::default()), changed: Condvar::new() };
    std::thread::scope(|scope| {
        let shared = &shared;
        scope.spawn(move || {
            let _gone = GoneOnDrop(shared);
            #[cfg(test)]
            tests::maybe_panic(&trace.dir);
            read_batches(shared, stream, reader_decoder)
        });
        let _stop = StopOnDrop(shared);
        let mut seen = 0u64;
        for number in 0u64.. {
            let batch = {
                let mut q = shared.lock();
                loop {
                    if let Some(batch) = q.decoded.remove(&number) {
                        q.in_flight -= 1;
                        shared.changed.notify_all();
                        break Some(batch);
                    }
                    let (back, decoded) = shared.decode_one(q, &mut decoder);
                    q = back;
                    if decoded {
                        continue;
                    }
                    // Once the reader is gone, only this thread could be decoding, and it is not.
                    if q.reader_gone || (q.read_all && q.decoding == 0) {
                        break None;
                    }
                    q = shared.wait(q);
                }
            };
            let Some(batch) = batch else { break };
            let mut done = Vec::with_capacity(BATCH);
            for (row, pages) in batch? {
                seen += 1;
                if f(&row, &pages)?.is_break() {
                    return Ok(seen);
                }
                done.push(pages);
            }
            let mut q = shared.lock();
            // Enough for every batch that may be in flight; more would only hold memory.
            done.truncate(((IN_FLIGHT + 2) * BATCH).saturating_sub(q.spare.len()));
            q.spare.append(&mut done);
        }
        Ok(seen)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The trace whose reader panics as it starts, standing for a bug in the reading code.
    static PANICS_IN: Mutex<Option<PathBuf>> = Mutex::new(None);

    pub(super) fn maybe_panic(dir: &Path) {
        if PANICS_IN.lock().unwrap().as_deref() == Some(dir) {
            panic!("the reader's test panic");
        }
    }

    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A panic on the reader's thread reaches the tool's caller: it does not leave the tool
    /// waiting for the reader's batches forever. (Before, it hung; the test then fails after
    /// two minutes rather than hang too.)
    #[test]
    fn a_panic_of_the_reader_reaches_the_caller() {
        use crate::guest::synthetic::generate::{generate, GenerateOptions};
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let scratch = std::env::temp_dir().join(format!("dirtytrace-pipeline-panic-{}-{nanos}", std::process::id()));
        // Made here, so that what is removed afterwards is only ever this test's own.
        std::fs::create_dir(&scratch).unwrap();
        let _remove = RemoveOnDrop(scratch.clone());
        let dir = scratch.join("trace");
        let spec = "mem = \"8MiB\"\nvcpus = 1\nseed = 3\n[[phase]]\nname = \"a\"\nduration = \"0.5s\"\n\
                    working_set = \"2MiB\"\nrate = \"8MiB/s\"\npattern = \"random\"\n";
        let opts = GenerateOptions { interval: std::time::Duration::from_millis(10), ..Default::default() };
        generate(&dir, spec, &opts).unwrap();
        let trace = Trace::open(&dir).unwrap();
        *PANICS_IN.lock().unwrap() = Some(trace.dir.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for_each_interval(&trace, |_, _| Ok(ControlFlow::Continue(())))
            }));
            let _ = tx.send(result.is_err());
        });
        let panicked = rx.recv_timeout(std::time::Duration::from_secs(120));
        assert_eq!(panicked, Ok(true), "the reader's panic did not reach the caller");
    }
}
