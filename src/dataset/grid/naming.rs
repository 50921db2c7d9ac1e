//! Run names and seeds (`schemas/dataset.md`): what every dataset's fingerprint is made of, so
//! never edited.

use crate::units::hex;
use sha2::Digest;

/// Names longer than this are cut and end with a hash of the whole name instead.
pub const MAX_NAME_LEN: usize = 200;

/// A rate as run names first wrote it ([`HumanRate`]'s display before it wrote extreme numbers
/// in scientific notation). Never edited: run names go into every dataset's fingerprint.
pub(super) fn rate_text_as_first_written(bytes: f64) -> String {
    let bits = bytes * 8.0;
    let whole = |v: f64, unit: f64| v >= unit && (v / unit).fract() == 0.0;
    if whole(bits, 1e9) {
        format!("{}Gbit/s", bits / 1e9)
    } else if whole(bits, 1e6) {
        format!("{}Mbit/s", bits / 1e6)
    } else if whole(bytes, crate::units::MIB as f64) {
        format!("{}MiB/s", bytes / crate::units::MIB as f64)
    } else {
        format!("{bytes}B/s")
    }
}

/// Letters, digits and `.`, `-`, `+`, `=`; `/s` becomes `ps`; anything else `-`.
pub fn sanitize(s: &str) -> String {
    s.replace("/s", "ps")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '=') { c } else { '-' })
        .collect()
}

/// The phase part of a column name: lower-case letters, digits and `_`.
pub(super) fn column_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The seed of repetition `k`: the spec's own seed for `k = 0`, so that a grid without
/// `repeat` records exactly its spec; for `k ≥ 1` the first 8 bytes (little-endian) of
/// `sha256("dirtytrace-sweep-seed:{base}:{k}")`, less the top bit (a spec's seed is a
/// non-negative TOML integer). A seed equal to an earlier repetition's is incremented.
pub fn repetition_seeds(base: u64, repeat: u32) -> Vec<u64> {
    make_distinct((0..repeat).map(|k| {
        if k == 0 {
            base
        } else {
            let d = sha2::Sha256::digest(format!("dirtytrace-sweep-seed:{base}:{k}").as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            u64::from_le_bytes(b) & (u64::MAX >> 1)
        }
    }))
}

/// Each candidate, incremented (modulo 2⁶³) past the seeds already taken. A set of the seeds
/// taken keeps this linear; the result is the one the first, quadratic, scan gave.
fn make_distinct(candidates: impl ExactSizeIterator<Item = u64>) -> Vec<u64> {
    let mut seeds: Vec<u64> = Vec::with_capacity(candidates.len());
    let mut taken: std::collections::HashSet<u64> = std::collections::HashSet::with_capacity(candidates.len());
    for mut s in candidates {
        while !taken.insert(s) {
            s = (s + 1) & (u64::MAX >> 1);
        }
        seeds.push(s);
    }
    seeds
}

/// A run's name: `KEY=VALUE` per axis, in the grid's axis order, then `rK`, joined by `_`
/// and [`sanitize`]d. A name longer than [`MAX_NAME_LEN`] keeps its first 180 bytes and
/// ends with `~` and 16 hex digits of its sha256.
pub fn run_name(parts: &[(String, String)], repeat: u32) -> String {
    let mut name: String = parts.iter().map(|(k, v)| format!("{k}={}_", sanitize(v))).collect();
    name.push_str(&format!("r{repeat}"));
    if name.len() > MAX_NAME_LEN {
        let hash = hex(&sha2::Sha256::digest(name.as_bytes())[..8]);
        let mut cut = 180;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}~{hash}", &name[..cut]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quadratic rule as first written, for the collision case no real seed reaches.
    fn distinct_as_first_written(candidates: &[u64]) -> Vec<u64> {
        let mut seeds: Vec<u64> = Vec::new();
        for &c in candidates {
            let mut s = c;
            while seeds.contains(&s) {
                s = (s + 1) & (u64::MAX >> 1);
            }
            seeds.push(s);
        }
        seeds
    }

    #[test]
    fn colliding_seeds_are_incremented_as_first_written() {
        let top = u64::MAX >> 1;
        let cases: [&[u64]; 4] = [&[5, 5, 6, 5, 7, 9, 8], &[top, top, 0, top, 1], &[3, 2, 2, 2, 3, 1], &[0; 20]];
        for c in cases {
            assert_eq!(make_distinct(c.iter().copied()), distinct_as_first_written(c), "{c:?}");
        }
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let parts = vec![("k".to_string(), "x".repeat(300))];
        let n = run_name(&parts, 0);
        assert_eq!(n.len(), 180 + 1 + 16);
        assert!(n.starts_with("k=xxx"));
        assert_ne!(n, run_name(&[("k".to_string(), "x".repeat(301))], 0));
        assert_eq!(sanitize("a b/s:ç"), "a-bps--");
    }
}
