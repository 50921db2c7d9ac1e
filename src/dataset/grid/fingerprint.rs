//! The fingerprint: a digest of everything that decides what each run records.

use super::{BaseWorkload, Grid, Run, RunWorkload};
use crate::guest::linux::LinuxInputs;
use crate::units::hex;
use sha2::Digest;

impl Grid {
    /// A digest of everything that decides what each run records: two grids with the same
    /// fingerprint make the same dataset.
    pub fn fingerprint(&self, runs: &[Run]) -> String {
        let mut f = self.fingerprinter();
        runs.iter().for_each(|r| f.feed(r));
        f.finish()
    }

    /// [`Grid::fingerprint`], fed one run at a time.
    pub fn fingerprinter(&self) -> Fingerprinter {
        let mut f = Fingerprinter(sha2::Sha256::new());
        if let BaseWorkload::Linux { sha256, .. } = &self.workload {
            f.put(sha256);
        }
        // The Linux options as written, not as resolved: hosts may mount the grid elsewhere.
        f.put(&linux_fingerprint(&self.linux_as_written));
        f
    }
}

/// A grid's fingerprint being computed, run by run ([`Grid::fingerprinter`]).
pub struct Fingerprinter(sha2::Sha256);

impl Fingerprinter {
    fn put(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    /// Adds the next run, in order.
    pub fn feed(&mut self, r: &Run) {
        self.put(&r.name);
        self.put(&serde_json::to_string(&r.record).unwrap_or_default());
        match &r.workload {
            RunWorkload::Synthetic { spec } => self.put(spec),
            RunWorkload::Linux { .. } => {}
        }
    }

    /// The fingerprint.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())[..32].to_string()
    }
}

/// The keys of the Linux inputs in the order the first datasets hashed them. Never edited:
/// changing it would change every dataset's fingerprint.
const LINUX_KEYS_AS_FIRST_HASHED: [&str; 7] =
    ["kernel", "files", "cmdline", "bzimage", "rootfs", "packages", "allow_emulated_kernel"];

/// The Linux inputs as the fingerprint hashes them: a JSON object of the keys the first datasets
/// hashed, in their order, then any key added since that is not at its default. So neither
/// regrouping the inputs nor adding one changes the fingerprint of a dataset that began before.
fn linux_fingerprint(linux: &LinuxInputs) -> String {
    let object = |l: &LinuxInputs| match serde_json::to_value(l) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (set, default) = (object(linux), object(&LinuxInputs::default()));
    let first = LINUX_KEYS_AS_FIRST_HASHED.iter().filter_map(|k| set.get_key_value(*k));
    let added =
        set.iter().filter(|(k, v)| !LINUX_KEYS_AS_FIRST_HASHED.contains(&k.as_str()) && default.get(*k) != Some(v));
    let fields: Vec<String> =
        first.chain(added).map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str()))).collect();
    format!("{{{}}}", fields.join(","))
}
