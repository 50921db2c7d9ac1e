//! Shards: which share of a grid's runs one host records.

use serde::Serialize;
use std::fmt;

/// Which share of the runs this host records: `I/N`, 1 ≤ I ≤ N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// I, 1-based.
    pub index: u32,
    /// N.
    pub count: u32,
}

impl Shard {
    /// Every run.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether run `run` (its position in the expansion) is this shard's: `run mod N = I - 1`.
    pub fn contains(&self, run: usize) -> bool {
        run % self.count as usize == (self.index - 1) as usize
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why `--shard` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--shard must be I/N with 1 <= I <= N (e.g. 1/4), got `{0}`")]
pub struct ShardError(String);

impl std::str::FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let err = || ShardError(s.to_string());
        let (i, n) = s.trim().split_once('/').ok_or_else(err)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| err())?, n.trim().parse().map_err(|_| err())?);
        if count == 0 || index == 0 || index > count {
            return Err(err());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shards_name_the_flag() {
        for s in ["0/2", "3/2", "1/0", "1", "a/b", "-1/2", ""] {
            let e = s.parse::<Shard>().unwrap_err().to_string();
            assert!(e.starts_with("--shard"), "{s}: {e}");
        }
        assert_eq!("2/2".parse::<Shard>().unwrap(), Shard { index: 2, count: 2 });
    }
}
