//! Page-level statistics over a stream of dirty bitmaps: the dense numbering of a trace's
//! pages, distinct pages ever dirtied, and distinct pages dirtied within a trailing time
//! window. The recorder's per-interval accounting and the offline tools share these, so a
//! trace's columns and `summarize` agree by construction.

use crate::trace::MemorySlot;

/// A trace's pages numbered densely: slot by slot, in the manifest's order. Page state
/// (windows, counts, sets) is indexed by these numbers; [`PageSpace::guest_page`] maps back.
#[derive(Debug, Clone)]
pub struct PageSpace {
    /// Per slot, in order: (slot id, first guest page, pages, first dense index).
    slots: Vec<(u32, u64, u64, u64)>,
    /// Pages in all slots.
    pub total_pages: u64,
}

impl PageSpace {
    /// The numbering of `slots`, in their order.
    pub fn new(slots: &[MemorySlot]) -> Self {
        let mut base = 0;
        let slots = slots
            .iter()
            .map(|s| {
                let e = (s.slot, s.first_page(), s.num_pages(), base);
                base += s.num_pages();
                e
            })
            .collect();
        PageSpace { slots, total_pages: base }
    }

    /// The guest page number of dense page `i`.
    pub fn guest_page(&self, i: u64) -> u64 {
        self.slots.iter().find(|s| i >= s.3 && i < s.3 + s.2).map_or(i, |s| s.1 + (i - s.3))
    }

    /// The dense index of guest page `page`, if a slot holds it.
    pub fn dense(&self, page: u64) -> Option<u64> {
        self.slots.iter().find(|s| page >= s.1 && page < s.1 + s.2).map(|s| s.3 + (page - s.1))
    }

    /// Appends the dense index of every page set in `words`, the bitmap of the slot at
    /// `index` in the manifest's order, to `pages` (ascending).
    pub fn push_dirty(&self, index: usize, words: &[u64], pages: &mut Vec<u32>) {
        let (_, _, n, base) = self.slots[index];
        crate::trace::push_set_bits(words, n, base as u32, pages);
    }
}

/// Interleaved copies of [`SlidingDistinct::push_slice`]'s histogram: consecutive pages count
/// into different copies, so that a run of pages with the same last interval does not make one
/// chain of dependent increments.
const LANES: usize = 4;

/// [`SlidingDistinct::push`] counts pages run by run while the runs of pages that held the
/// same last interval are at least 2 long on average, judged from this many pages on.
const COALESCE_PROBE: u64 = 64;

/// What a [`SlidingDistinct`] keeps per page: at least the last interval that dirtied it.
pub trait PageSlot: Copy + Default {
    /// 1 + the last interval (in the tracker's numbering) that dirtied the page; 0 = never.
    fn last(&self) -> u32;
    /// Records that interval `last - 1` dirtied the page (called once per interval).
    fn dirtied(&mut self, last: u32);
    /// Forgets the last interval, keeping anything else.
    fn forget_last(&mut self);
    /// Records that interval `last - 1` dirtied the page, unless it is recorded already (a
    /// page listed twice in one interval); returns what [`PageSlot::last`] was before.
    #[inline(always)]
    fn mark(&mut self, last: u32) -> u32 {
        let old = self.last();
        if old != last {
            self.dirtied(last);
        }
        old
    }
}

impl PageSlot for u32 {
    #[inline(always)]
    fn last(&self) -> u32 {
        *self
    }
    #[inline(always)]
    fn dirtied(&mut self, last: u32) {
        *self = last;
    }
    fn forget_last(&mut self) {
        *self = 0;
    }
    #[inline(always)]
    fn mark(&mut self, last: u32) -> u32 {
        std::mem::replace(self, last)
    }
}

/// A page's last dirtying interval and how many intervals have dirtied it, side by side so
/// that one cache line serves both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct CountedSlot {
    /// 1 + the last interval that dirtied the page; 0 = never.
    pub last: u32,
    /// Intervals that dirtied the page.
    pub dirty_intervals: u32,
}

impl PageSlot for CountedSlot {
    #[inline(always)]
    fn last(&self) -> u32 {
        self.last
    }
    #[inline(always)]
    fn dirtied(&mut self, last: u32) {
        self.last = last;
        self.dirty_intervals += 1;
    }
    fn forget_last(&mut self) {
        self.last = 0;
    }
    #[inline(always)]
    fn mark(&mut self, last: u32) -> u32 {
        // Without a branch: the pages of an interval are scattered, so one would be mispredicted.
        let old = std::mem::replace(&mut self.last, last);
        self.dirty_intervals += (old != last) as u32;
        old
    }
}

/// Distinct pages dirtied in the intervals that end within the last `window_s` seconds,
/// updated in time proportional to the dirty pages of each new interval. One tracker can
/// follow several windows at once ([`SlidingDistinct::with_windows`]): they share the
/// per-page state, so each dirty page costs one lookup however many windows there are.
/// With `S = CountedSlot` it also counts, per page, the intervals that dirtied it.
pub struct SlidingDistinct<S: PageSlot = u32> {
    /// Window lengths in seconds, shortest first, and per window: the oldest tracked interval
    /// still in it, and the distinct pages whose last dirtying interval is in it. Shorter
    /// windows have later fronts, so the windows a page is outside of are always a prefix.
    windows: Vec<Window>,
    /// `windows[order[i]]` is the window the caller gave as number `i`.
    order: Vec<usize>,
    /// Per push: `reenter[k]` pages came back into windows `0..k` (scratch, `windows.len() + 1`).
    reenter: Vec<u64>,
    /// Per push of [`SlidingDistinct::push_slice`]: how many of its pages each tracked interval
    /// last dirtied, in [`LANES`] interleaved copies (scratch).
    hist: Vec<u32>,
    /// Per push of [`SlidingDistinct::push_slice`]: each page's [`PageSlot::last`] before it
    /// (scratch).
    before: Vec<u32>,
    /// Per page: 1 + the last interval (in this tracker's numbering) that dirtied it; 0 = never.
    last: Vec<S>,
    /// Per interval still tracked (ids `head..next`), in a ring indexed by `id & mask`: how
    /// many pages have it as their last dirtying interval, and its end time.
    ring_count: Vec<u64>,
    ring_time: Vec<f64>,
    mask: usize,
    head: u32,
    ever: u64,
    next: u32,
}

/// One push's running counts.
struct PushState {
    id: u32,
    front_id: u32,
    min_front: u32,
    max_front: u32,
    new: u64,
    added: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    seconds: f64,
    /// The oldest interval id in the window (= `next` when the window is empty).
    front: u32,
    in_window: u64,
}

impl<S: PageSlot> SlidingDistinct<S> {
    /// A tracker of `total_pages` pages and one window of `window_s` seconds.
    pub fn new(total_pages: u64, window_s: f64) -> Self {
        Self::with_windows(total_pages, &[window_s])
    }

    /// One tracker for several windows; `in_window_of(i)` is the count for `windows_s[i]`.
    pub fn with_windows(total_pages: u64, windows_s: &[f64]) -> Self {
        let mut order: Vec<usize> = (0..windows_s.len()).collect();
        order.sort_by(|&a, &b| windows_s[a].total_cmp(&windows_s[b]));
        let windows = order.iter().map(|&i| Window { seconds: windows_s[i], front: 0, in_window: 0 }).collect();
        let mut position = vec![0; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            position[i] = pos;
        }
        SlidingDistinct {
            windows,
            order: position,
            reenter: vec![0; windows_s.len() + 1],
            hist: Vec::new(),
            before: Vec::new(),
            last: vec![S::default(); total_pages as usize],
            ring_count: vec![0; 64],
            ring_time: vec![0.0; 64],
            mask: 63,
            head: 0,
            ever: 0,
            next: 0,
        }
    }

    /// Adds one interval ending at `t_end_s`; `pages` are indices into this tracker's page
    /// space. Returns the pages never seen before.
    pub fn push(&mut self, t_end_s: f64, pages: impl IntoIterator<Item = u64>) -> u64 {
        let mut st = self.begin();
        let mark = st.id + 1;
        let mut pages = pages.into_iter();
        // Consecutive pages that held the same last interval (a sequential writer's) are
        // counted together: page by page, each count would wait on the one before. Where such
        // runs are short (scattered pages), the test costs more than it saves: from the first
        // page that shows it, pages are counted one by one.
        let (mut run_last, mut run, mut runs, mut seen) = (0u32, 0u64, 0u64, 0u64);
        for p in pages.by_ref() {
            let old = self.last[p as usize].mark(mark);
            seen += 1;
            if old == run_last {
                run += 1;
                continue;
            }
            self.visit(run_last, run, &mut st);
            (run_last, run, runs) = (old, 1, runs + 1);
            if seen >= COALESCE_PROBE && runs * 2 > seen {
                break;
            }
        }
        self.visit(run_last, run, &mut st);
        self.visit_each(pages, &mut st);
        self.end(t_end_s, st)
    }

    /// [`SlidingDistinct::push`] counting one page at a time, as 44c1d43's recorder did: what
    /// `bench --only cost` compares today's way with, and an oracle for the tests.
    #[doc(hidden)]
    pub fn push_page_by_page(&mut self, t_end_s: f64, pages: impl IntoIterator<Item = u64>) -> u64 {
        let mut st = self.begin();
        self.visit_each(pages, &mut st);
        self.end(t_end_s, st)
    }

    /// [`SlidingDistinct::push`] for a slice of page indices, with the same counts. What a
    /// page adds depends only on the interval that last dirtied it, so when the slice is long
    /// against the intervals tracked, a first pass only marks each page's slot and keeps what
    /// it held: the scattered loads overlap, none waiting on a branch or on another. A second
    /// pass counts those last intervals in a histogram, reading them in order, and the
    /// histogram is counted per interval, as [`SlidingDistinct::visit`] counts per page. (In
    /// one pass, each increment waited on a scattered load: twice the time on a 1-hour trace.)
    pub fn push_slice(&mut self, t_end_s: f64, pages: &[u32]) -> u64 {
        // Buckets: `last - 1 - front_id` for the tracked intervals `front_id..id`, then this
        // interval (a page listed twice), then the rest (never dirtied, or before `front_id`).
        let span = (self.next - self.head) as usize;
        if span.saturating_mul(4) > pages.len() {
            return self.push(t_end_s, pages.iter().map(|&p| p as u64));
        }
        let mut st = self.begin();
        let mark = st.id + 1;
        debug_assert_eq!(span, (st.id - st.front_id) as usize);
        let buckets = span + 2;
        let mut hist = std::mem::take(&mut self.hist);
        hist.clear();
        hist.resize(LANES * buckets, 0);
        let first = st.front_id + 1;
        let mut before = std::mem::take(&mut self.before);
        before.clear();
        before.extend(pages.iter().map(|&p| self.last[p as usize].mark(mark)));
        for (i, &last) in before.iter().enumerate() {
            st.new += (last == 0) as u64;
            let bucket = (last.wrapping_sub(first) as usize).min(span + 1);
            hist[(i % LANES) * buckets + bucket] += 1;
        }
        self.before = before;
        let count = |b: usize| (0..LANES).map(|l| hist[l * buckets + b] as u64).sum::<u64>();
        let n = self.windows.len();
        let rest = count(span + 1);
        self.reenter[n] += rest;
        st.added += rest;
        for j in 0..span {
            let c = count(j);
            if c == 0 {
                continue;
            }
            let old = st.front_id + j as u32;
            self.ring_count[old as usize & self.mask] -= c;
            if old < st.min_front {
                self.reenter[n] += c;
            } else if old < st.max_front {
                let k = self.windows.iter().take_while(|w| w.front > old).count();
                self.reenter[k] += c;
            }
            st.added += c;
        }
        self.hist = hist;
        self.end(t_end_s, st)
    }

    fn begin(&mut self) -> PushState {
        let id = self.next;
        self.next += 1;
        if (id - self.head) as usize >= self.ring_count.len() {
            self.grow();
        }
        self.ring_count[id as usize & self.mask] = 0;
        let front_id = self.head;
        // A page last dirtied before `min_front` is outside every window, one last dirtied at
        // or after `max_front` inside every window; in between, it depends on the window.
        let min_front = self.windows.last().map_or(id, |w| w.front);
        let max_front = self.windows.first().map_or(id, |w| w.front);
        self.reenter.fill(0);
        PushState { id, front_id, min_front, max_front, new: 0, added: 0 }
    }

    /// Marks and counts `pages` one at a time.
    #[inline(always)]
    fn visit_each(&mut self, pages: impl IntoIterator<Item = u64>, st: &mut PushState) {
        for p in pages {
            let old = self.last[p as usize].mark(st.id + 1);
            self.visit(old, 1, st);
        }
    }

    /// Counts `pages` pages of the interval being pushed whose slots held `last` (see
    /// [`PageSlot::last`]) before [`PageSlot::mark`] marked them.
    #[inline(always)]
    fn visit(&mut self, last: u32, pages: u64, st: &mut PushState) {
        let n = self.windows.len();
        if last == 0 {
            st.new += pages;
            self.reenter[n] += pages;
        } else {
            let old = last - 1;
            if old == st.id {
                return;
            }
            if old >= st.front_id {
                self.ring_count[old as usize & self.mask] -= pages;
            }
            // They come back into the windows they had left: those whose front is past `old`.
            if old < st.min_front {
                self.reenter[n] += pages;
            } else if old < st.max_front {
                let k = self.windows.iter().take_while(|w| w.front > old).count();
                self.reenter[k] += pages;
            }
        }
        st.added += pages;
    }

    fn end(&mut self, t_end_s: f64, st: PushState) -> u64 {
        let mut back_into = 0;
        for k in (1..=self.windows.len()).rev() {
            back_into += self.reenter[k];
            self.windows[k - 1].in_window += back_into;
        }
        let slot = st.id as usize & self.mask;
        self.ring_count[slot] += st.added;
        self.ring_time[slot] = t_end_s;
        self.ever += st.new;
        let mut oldest_needed = st.id + 1;
        for w in &mut self.windows {
            let mut j = w.front.max(st.front_id);
            while j <= st.id && self.ring_time[j as usize & self.mask] <= t_end_s - w.seconds + 1e-9 {
                w.in_window -= self.ring_count[j as usize & self.mask];
                j += 1;
            }
            w.front = j;
            oldest_needed = oldest_needed.min(j);
        }
        self.head = oldest_needed;
        st.new
    }

    /// Doubles the ring, keeping the tracked intervals at their new places.
    fn grow(&mut self) {
        let cap = self.ring_count.len() * 2;
        let (mut count, mut time) = (vec![0; cap], vec![0.0; cap]);
        for id in self.head..self.next - 1 {
            count[id as usize & (cap - 1)] = self.ring_count[id as usize & self.mask];
            time[id as usize & (cap - 1)] = self.ring_time[id as usize & self.mask];
        }
        (self.ring_count, self.ring_time, self.mask) = (count, time, cap - 1);
    }

    /// Distinct pages in the (first) window.
    pub fn in_window(&self) -> u64 {
        self.windows[self.order[0]].in_window
    }

    /// Distinct pages in window `i` of [`SlidingDistinct::with_windows`].
    pub fn in_window_of(&self, i: usize) -> u64 {
        self.windows[self.order[i]].in_window
    }

    /// Distinct pages dirtied since the start (or the last restart).
    pub fn ever(&self) -> u64 {
        self.ever
    }

    /// The per-page state, indexed by page.
    pub fn slots(&self) -> &[S] {
        &self.last
    }

    /// Starts over, as a new tracker with the same windows would, but keeps what the slots
    /// hold besides the last interval (a [`CountedSlot`]'s counts).
    pub fn restart(&mut self) {
        self.last.iter_mut().for_each(S::forget_last);
        for w in &mut self.windows {
            (w.front, w.in_window) = (0, 0);
        }
        (self.head, self.next, self.ever) = (0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_distinct_pages() {
        let mut s: SlidingDistinct = SlidingDistinct::new(100, 0.25);
        assert_eq!(s.push(0.1, [1, 2, 3]), 3);
        assert_eq!(s.in_window(), 3);
        assert_eq!(s.push(0.2, [3, 4]), 1);
        assert_eq!(s.in_window(), 4);
        // The window (0.05, 0.3] still holds the first interval.
        assert_eq!(s.push(0.3, [5]), 1);
        assert_eq!(s.in_window(), 5);
        // (0.15, 0.4] drops it: page 2 leaves, page 1 comes back, page 3 stays (seen at 0.2).
        assert_eq!(s.push(0.4, [1]), 0);
        assert_eq!(s.in_window(), 4);
        assert_eq!(s.ever(), 5);
    }

    #[test]
    fn several_windows_match_brute_force() {
        // A deterministic pseudo-random stream of intervals, some with jittered ends; every
        // third one lists more pages than four per tracked interval (push_slice's histogram).
        let windows = [0.5, 0.05, 3.0, 0.25, 1.0];
        let mut multi: SlidingDistinct = SlidingDistinct::with_windows(500, &windows);
        let mut one_by_one: SlidingDistinct = SlidingDistinct::with_windows(500, &windows);
        let mut sliced: SlidingDistinct<CountedSlot> = SlidingDistinct::with_windows(500, &windows);
        // A slice may list a page twice: it counts once.
        let mut repeated: SlidingDistinct<CountedSlot> = SlidingDistinct::with_windows(500, &windows);
        let mut dirty_intervals = vec![0u32; 500];
        let mut history: Vec<(f64, Vec<u64>)> = Vec::new();
        let mut x = 12345u64;
        for k in 0..400u64 {
            let t = (k + 1) as f64 * 0.1 + if k % 7 == 0 { 0.003 } else { 0.0 };
            let mut pages = Vec::new();
            for _ in 0..(k % 13) * 5 + if k % 3 == 0 { 200 } else { 0 } {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                pages.push((x >> 33) % if k % 50 < 25 { 60 } else { 500 });
            }
            if k % 4 == 1 {
                // A sequential writer's sweep, before or after scattered pages: runs of pages
                // that held the same last interval, which `push` counts together.
                let sweep = (k * 37 % 400..k * 37 % 400 + 100).map(|p| p % 500);
                if k % 8 == 1 {
                    pages.splice(0..0, sweep);
                } else {
                    pages.extend(sweep);
                }
            }
            let seen_before: std::collections::HashSet<u64> = history.iter().flat_map(|h| h.1.clone()).collect();
            let new = multi.push(t, pages.iter().copied());
            assert_eq!(one_by_one.push_page_by_page(t, pages.iter().copied()), new);
            let mut dedup: Vec<u32> = pages.iter().map(|&p| p as u32).collect();
            dedup.sort_unstable();
            dedup.dedup();
            dedup.iter().for_each(|&p| dirty_intervals[p as usize] += 1);
            assert_eq!(sliced.push_slice(t, &dedup), new);
            let listed: Vec<u32> = pages.iter().map(|&p| p as u32).collect();
            assert_eq!(repeated.push_slice(t, &listed), new);
            history.push((t, pages.clone()));
            let fresh: std::collections::HashSet<u64> =
                pages.iter().filter(|p| !seen_before.contains(p)).copied().collect();
            assert_eq!(new, fresh.len() as u64);
            for (i, &w) in windows.iter().enumerate() {
                let distinct: std::collections::HashSet<u64> =
                    history.iter().filter(|h| h.0 > t - w + 1e-9).flat_map(|h| h.1.clone()).collect();
                assert_eq!(multi.in_window_of(i), distinct.len() as u64, "window {w} at interval {k}");
                assert_eq!(one_by_one.in_window_of(i), distinct.len() as u64);
                assert_eq!(sliced.in_window_of(i), distinct.len() as u64);
                assert_eq!(repeated.in_window_of(i), distinct.len() as u64);
            }
        }
        let counted: Vec<u32> = sliced.slots().iter().map(|s| s.dirty_intervals).collect();
        assert_eq!(counted, dirty_intervals);
        assert_eq!(repeated.slots(), sliced.slots());
        // A restart forgets the windows but keeps the counts.
        sliced.restart();
        assert_eq!(sliced.in_window_of(0), 0);
        assert_eq!(sliced.push_slice(100.0, &[1, 2]), 2);
        assert_eq!(sliced.in_window_of(4), 2);
        assert_eq!(sliced.slots()[1].dirty_intervals, dirty_intervals[1] + 1);
    }

    #[test]
    fn dense_numbering_across_slots() {
        use crate::units::PAGE_SIZE;
        let slots = [
            MemorySlot { slot: 0, guest_phys_addr: 0, size_bytes: 100 * PAGE_SIZE },
            MemorySlot { slot: 1, guest_phys_addr: 1 << 32, size_bytes: 70 * PAGE_SIZE },
        ];
        let space = PageSpace::new(&slots);
        assert_eq!(space.total_pages, 170);
        assert_eq!(space.guest_page(100), (1 << 32) / PAGE_SIZE);
        assert_eq!(space.dense((1 << 32) / PAGE_SIZE + 5), Some(105));
        let mut pages = Vec::new();
        space.push_dirty(0, &[1, 1 << 35 | 1 << 36], &mut pages);
        // Bit 100 of slot 0 and bit 70 of slot 1 lie past their last pages.
        space.push_dirty(1, &[1 << 63, 1 << 5 | 1 << 6], &mut pages);
        assert_eq!(pages, vec![0, 64 + 35, 100 + 63, 100 + 64 + 5]);
    }
}
