//! Page-level statistics over a stream of dirty bitmaps: distinct pages ever dirtied, and
//! distinct pages dirtied within a trailing time window. The recorder and the offline tools
//! share these, so a trace's columns and `summarize` agree by construction.

use std::collections::VecDeque;

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

pub fn count_set_bits(words: &[u64]) -> u64 {
    words.iter().map(|w| w.count_ones() as u64).sum()
}

/// Distinct pages dirtied in the intervals that end within the last `window_s` seconds,
/// updated in time proportional to the dirty pages of each new interval.
pub struct SlidingDistinct {
    window_s: f64,
    /// Per page: 1 + the last interval (in this tracker's numbering) that dirtied it; 0 = never.
    last: Vec<u32>,
    /// Per interval still tracked: how many pages have it as their last dirtying interval.
    buckets: VecDeque<(u32, f64, u64)>,
    in_window: u64,
    ever: u64,
    next: u32,
}

impl SlidingDistinct {
    pub fn new(total_pages: u64, window_s: f64) -> Self {
        SlidingDistinct {
            window_s,
            last: vec![0; total_pages as usize],
            buckets: VecDeque::new(),
            in_window: 0,
            ever: 0,
            next: 0,
        }
    }

    /// Adds one interval ending at `t_end_s`; `pages` are indices into this tracker's page
    /// space. Returns the pages never seen before.
    pub fn push(&mut self, t_end_s: f64, pages: impl IntoIterator<Item = u64>) -> u64 {
        let id = self.next;
        self.next += 1;
        let front_id = self.buckets.front().map_or(id, |b| b.0);
        self.buckets.push_back((id, t_end_s, 0));
        let mut new = 0;
        for p in pages {
            let slot = &mut self.last[p as usize];
            if *slot == 0 {
                new += 1;
                self.in_window += 1;
            } else {
                let old = *slot - 1;
                if old == id {
                    continue;
                }
                if old >= front_id {
                    self.buckets[(old - front_id) as usize].2 -= 1;
                } else {
                    // It had left the window: it comes back into it.
                    self.in_window += 1;
                }
            }
            *slot = id + 1;
            self.buckets.back_mut().unwrap().2 += 1;
        }
        self.ever += new;
        while let Some(&(_, t, count)) = self.buckets.front() {
            if t > t_end_s - self.window_s + 1e-9 {
                break;
            }
            self.in_window -= count;
            self.buckets.pop_front();
        }
        new
    }

    pub fn in_window(&self) -> u64 {
        self.in_window
    }

    pub fn ever(&self) -> u64 {
        self.ever
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_distinct_pages() {
        let mut s = SlidingDistinct::new(100, 0.25);
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
    fn set_bits() {
        let mut v = Vec::new();
        for_each_set_bit(&[0b101, 1 << 63], |b| v.push(b));
        assert_eq!(v, vec![0, 2, 127]);
        assert_eq!(count_set_bits(&[0b101, 1 << 63]), 3);
    }
}
