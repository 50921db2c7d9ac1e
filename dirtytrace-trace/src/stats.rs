//! Percentiles, in the one convention every figure dirtytrace stores or prints uses: the
//! nearest rank (the smallest value with at least a fraction `q` of the values at or below it).

/// The 1-based rank of the nearest-rank `q` quantile among `n` values.
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// The nearest-rank `q` quantile of values sorted in ascending order; 0 when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[nearest_rank(q, sorted.len() as u64) as usize - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_of_four_values() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(super::percentile(&v, 0.5), 2.0);
        assert_eq!(super::percentile(&v, 0.99), 4.0);
        assert_eq!(super::percentile(&v, 0.25), 1.0);
        assert_eq!(super::percentile(&v, 0.26), 2.0);
        assert_eq!(super::percentile(&[], 0.5), 0.0);
    }
}
