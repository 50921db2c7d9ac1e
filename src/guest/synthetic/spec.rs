//! The synthetic workload spec: a TOML file documented in `schemas/workload.md`.

use crate::units::{parse_duration, parse_rate, parse_size};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bytes below this address belong to the guest itself (code, page tables, control page).
pub const SYSTEM_AREA_BYTES: u64 = 2 << 20;
/// The largest guest the synthetic workload drives.
pub const MAX_MEM_BYTES: u64 = 256 << 30;
/// The most vCPUs a synthetic workload runs on.
pub const MAX_VCPUS: u32 = 64;
/// The largest spec file read.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
pub use crate::units::PAGE_SIZE;
/// A recording's harvest interval unless one is given: `record --interval`'s default, and
/// [`generate`](super::generate)'s.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The migration speed of a trace's SimGrid columns unless one is given (1 Gbit/s): `record
/// --migration-speed`'s default, and [`generate`](super::generate)'s.
pub const DEFAULT_MIGRATION_SPEED_BYTES_PER_S: f64 = 125_000_000.0;

/// Which page each write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Page after page through the working set, round and round.
    Sequential,
    /// Uniformly random pages of the working set.
    Random,
    /// `hot_share` of the writes to the first `hot_fraction` of the working set.
    Hotcold,
}

impl Pattern {
    /// Every pattern, in the order the docs list them.
    pub const ALL: [Pattern; 3] = [Pattern::Sequential, Pattern::Random, Pattern::Hotcold];

    /// The pattern's name in a spec (and in serde's forms of it).
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Random => "random",
            Pattern::Hotcold => "hotcold",
        }
    }

    /// The pattern named `name`.
    pub fn from_name(name: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The names, as messages list them: `sequential, random, hotcold`.
    pub fn names() -> String {
        Pattern::ALL.map(Pattern::name).join(", ")
    }
}

/// How fast a phase writes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteRate {
    /// As fast as the vCPU can.
    Max,
    /// Page-writes per second times 4096, in total over all vCPUs.
    BytesPerSec(f64),
}

/// One phase of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Its name, as intervals carry it.
    pub name: String,
    /// How long it lasts.
    pub duration: Duration,
    /// The memory it writes, split between the vCPUs.
    pub working_set_bytes: u64,
    /// How fast it writes, in total.
    pub rate: WriteRate,
    /// Which page each write goes to.
    pub pattern: Pattern,
    /// Hot/cold: the hot part's share of the working set.
    pub hot_fraction: f64,
    /// Hot/cold: the share of writes that go to the hot part.
    pub hot_share: f64,
    /// Fraction of the time each vCPU is busy.
    pub cpu: f64,
}

/// A synthetic workload (`schemas/workload.md`), checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Guest RAM.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The PRNG seed of the random patterns.
    pub seed: u64,
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// It is not TOML, or has a key that does not exist.
    #[error("{0}")]
    Toml(String),
    /// A key's value is wrong.
    #[error("`{key}`: {msg}")]
    Value {
        /// The key, e.g. `phase[0].rate`, or the flag that overrode it.
        key: String,
        /// What is wrong with it.
        msg: String,
    },
}

fn bad(key: impl Into<String>, msg: impl Into<String>) -> SpecError {
    SpecError::Value { key: key.into(), msg: msg.into() }
}

/// A TOML error on one line: where, the key on that line, and what is wrong (the TOML
/// parser's own message spans lines, with a snippet). Specs and grids show their errors so.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(span) = e.span() else { return msg };
    let before = &text[..text.floor_char_boundary(span.start.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    match line_text.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && key.len() <= 64 => {
            format!("line {line}, `{}`: {msg}", key.trim())
        }
        _ => format!("line {line}: {msg}"),
    }
}

/// A value people may write as a string (`"256MiB"`) or a bare number, kept as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// An integer (`mem = 67108864`).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (`"256MiB"`).
    Text(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Int(i) => i.to_string(),
            Quantity::Float(f) => f.to_string(),
            Quantity::Text(s) => s.clone(),
        }
    }
}

/// A number, kept as written: `cpu = 0` stays an integer when the spec is written again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Number {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Number {
    /// Its value.
    pub fn value(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    /// As an `f64` reads: any number, and the same message for anything else.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("f64")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Number, E> {
                i64::try_from(v).map(Number::Int).or(Ok(Number::Float(v as f64)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number::Float(v))
            }
        }
        d.deserialize_f64(V)
    }
}

/// A spec as written: its keys and their values as the TOML gives them, unchecked
/// ([`SpecDocument::check`] checks it). A grid edits a run's spec as this, typed, and writes it
/// again; a key left out stays out. The fields are in the order `toml` writes a table's keys
/// (sorted), so that a spec written from this is the one written from its TOML table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecDocument {
    /// `mem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<Quantity>,
    /// `[[phase]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Vec<PhaseDocument>>,
    /// `seed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `vcpus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<i64>,
}

/// One `[[phase]]` as written (see [`SpecDocument`]; its fields are sorted too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseDocument {
    /// `cpu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Number>,
    /// `duration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Quantity>,
    /// `hot_fraction`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_fraction: Option<Number>,
    /// `hot_share`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_share: Option<Number>,
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pattern`, as written (a name [`SpecDocument::check`] reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Quantity>,
    /// `working_set`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set: Option<Quantity>,
}

/// The check of a spec's `vcpus` (or of what overrides it): 1 to [`MAX_VCPUS`].
pub fn check_vcpus(vcpus: i64) -> Result<u32, String> {
    match u32::try_from(vcpus) {
        Ok(v) if (1..=MAX_VCPUS).contains(&v) => Ok(v),
        _ => Err(format!("must be between 1 and {MAX_VCPUS}, got {vcpus}")),
    }
}

/// The check of a phase's fractions (`hot_fraction`, `hot_share`, `cpu`): 0 to 1.
pub fn check_fraction(v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {v}"))
    }
}

/// The spec `dirtytrace record` runs when no `--workload` is given.
pub const DEFAULT_SPEC: &str = r#"# dirtytrace's built-in default: three phases, 9 s in all.
mem = "1GiB"
vcpus = 1
seed = 42

[[phase]]
name = "sequential"
duration = "3s"
working_set = "256MiB"
rate = "100MiB/s"
pattern = "sequential"

[[phase]]
name = "hotcold"
duration = "3s"
working_set = "512MiB"
rate = "200MiB/s"
pattern = "hotcold"
hot_fraction = 0.1
hot_share = 0.9

[[phase]]
name = "idle"
duration = "3s"
working_set = "0"
rate = "0"
cpu = 0.0
"#;

impl WorkloadSpec {
    /// Parses and validates a spec; `mem` and `vcpus` from the command line take precedence.
    pub fn parse(text: &str, mem_override: Option<u64>, vcpus_override: Option<u32>) -> Result<Self, SpecError> {
        SpecDocument::parse(text)?.check(mem_override, vcpus_override)
    }

    /// The workload's length: its phases' sum.
    pub fn total_duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }
}

impl SpecDocument {
    /// Reads a spec's TOML, unchecked.
    pub fn parse(text: &str) -> Result<SpecDocument, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Toml(toml_error(text, &e)))
    }

    /// The spec's TOML: the keys written, sorted, tables last.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The one check of a spec, `record`'s and a grid's; `mem` and `vcpus` from the command line
    /// take precedence.
    pub fn check(&self, mem_override: Option<u64>, vcpus_override: Option<u32>) -> Result<WorkloadSpec, SpecError> {
        let raw = self.clone();
        let mem_bytes = match (mem_override, &raw.mem) {
            (Some(m), _) => m,
            (None, Some(q)) => parse_size(&q.text()).map_err(|e| bad("mem", e.to_string()))?,
            (None, None) => 1 << 30,
        };
        let mem_key = if mem_override.is_some() { "--mem" } else { "mem" };
        if mem_bytes % PAGE_SIZE != 0 {
            return Err(bad(mem_key, "must be a whole number of 4 KiB pages"));
        }
        if mem_bytes < SYSTEM_AREA_BYTES + (2 << 20) {
            return Err(bad(mem_key, "must be at least 4 MiB (the first 2 MiB hold the guest itself)"));
        }
        if mem_bytes > MAX_MEM_BYTES {
            return Err(bad(mem_key, "the synthetic guest supports at most 256 GiB"));
        }
        let vcpus = match (vcpus_override, raw.vcpus) {
            (Some(v), _) => v as i64,
            (None, Some(v)) => v,
            (None, None) => 1,
        };
        let vcpus_key = if vcpus_override.is_some() { "--vcpus" } else { "vcpus" };
        let vcpus = check_vcpus(vcpus).map_err(|e| bad(vcpus_key, e))?;
        let seed = raw.seed.unwrap_or(0);
        if seed < 0 {
            return Err(bad("seed", "must not be negative"));
        }
        let raw_phases = raw.phase.unwrap_or_default();
        if raw_phases.is_empty() {
            return Err(bad("phase", "the spec needs at least one [[phase]]"));
        }
        let arena = mem_bytes - SYSTEM_AREA_BYTES;
        let mut phases = Vec::new();
        for (i, p) in raw_phases.into_iter().enumerate() {
            let key = |k: &str| format!("phase[{i}].{k}");
            let duration_q = p.duration.ok_or_else(|| bad(key("duration"), "is required"))?;
            let duration = parse_duration(&duration_q.text()).map_err(|e| bad(key("duration"), e.to_string()))?;
            if duration.is_zero() {
                return Err(bad(key("duration"), "must be longer than 0"));
            }
            let rate_q = p.rate.ok_or_else(|| bad(key("rate"), "is required (bytes/s, \"max\" or \"0\")"))?;
            let rate = match rate_q.text().trim() {
                "max" => WriteRate::Max,
                t => WriteRate::BytesPerSec(parse_rate(t).map_err(|e| bad(key("rate"), e.to_string()))?),
            };
            let working_set_bytes = match p.working_set {
                Some(q) => parse_size(&q.text()).map_err(|e| bad(key("working_set"), e.to_string()))?,
                None if rate == WriteRate::BytesPerSec(0.0) => 0,
                None => return Err(bad(key("working_set"), "is required")),
            };
            if working_set_bytes > arena {
                return Err(bad(
                    key("working_set"),
                    format!(
                        "{working_set_bytes} bytes is larger than the {arena} bytes of guest memory available to the workload (mem minus the 2 MiB system area)"
                    ),
                ));
            }
            let pages_per_vcpu = working_set_bytes / PAGE_SIZE / vcpus as u64;
            let writes = rate != WriteRate::BytesPerSec(0.0);
            if writes && pages_per_vcpu == 0 {
                return Err(bad(
                    key("working_set"),
                    format!("must give each of the {vcpus} vCPUs at least one 4 KiB page"),
                ));
            }
            if pages_per_vcpu > u32::MAX as u64 {
                return Err(bad(key("working_set"), "is too large for one vCPU (at most 2^32 pages each)"));
            }
            let pattern = match p.pattern.as_deref() {
                None => Pattern::Sequential,
                Some(name) => Pattern::from_name(name)
                    .ok_or_else(|| bad(key("pattern"), format!("`{name}` is not one of {}", Pattern::names())))?,
            };
            let unit = |k: &str, v: Option<Number>, default: f64| {
                check_fraction(v.map_or(default, Number::value)).map_err(|e| bad(key(k), e))
            };
            let hot_fraction = unit("hot_fraction", p.hot_fraction, 0.1)?;
            let hot_share = unit("hot_share", p.hot_share, 0.9)?;
            if pattern == Pattern::Hotcold && (hot_fraction == 0.0 || hot_fraction == 1.0) {
                return Err(bad(key("hot_fraction"), "must be strictly between 0 and 1 for the hotcold pattern"));
            }
            let cpu = unit("cpu", p.cpu, 1.0)?;
            if writes && cpu == 0.0 {
                return Err(bad(key("cpu"), "is 0, so the vCPU could never write; set rate = \"0\" for an idle phase"));
            }
            let name = p.name.unwrap_or_else(|| format!("phase{i}"));
            // Checked here, before anything runs: a row whose phase the trace cannot hold
            // would be refused when the trace is finalised, its interval lost.
            if let Some(problem) = crate::trace::name_problem(&name) {
                return Err(bad(key("name"), problem));
            }
            phases.push(Phase { name, duration, working_set_bytes, rate, pattern, hot_fraction, hot_share, cpu });
        }
        let total = phases.iter().try_fold(Duration::ZERO, |t, p| t.checked_add(p.duration));
        if total.is_none_or(|t| t > crate::units::MAX_DURATION) {
            return Err(bad("phase", "the phases' durations add up to more than 10 years"));
        }
        Ok(WorkloadSpec { mem_bytes, vcpus, seed: seed as u64, phases })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_parses() {
        let s = WorkloadSpec::parse(DEFAULT_SPEC, None, None).unwrap();
        assert_eq!(s.mem_bytes, 1 << 30);
        assert_eq!(s.phases.len(), 3);
        assert_eq!(s.phases[0].rate, WriteRate::BytesPerSec(100.0 * 1024.0 * 1024.0));
        assert_eq!(s.phases[2].rate, WriteRate::BytesPerSec(0.0));
        assert_eq!(s.total_duration(), Duration::from_secs(9));
    }

    /// examples/qemu_migration/'s guests are issue 18's: 1 GiB, a 256 MiB working set written
    /// once over, then 25 MiB/s sequential or 50 MiB/s with 80 % of the writes to a hot 10 %.
    #[test]
    fn the_migration_examples_are_the_issue_s_guests() {
        let mib = |n: f64| WriteRate::BytesPerSec(n * 1024.0 * 1024.0);
        for (text, rate, pattern, hot_share) in [
            (include_str!("../../../examples/qemu_migration/sequential.toml"), 25.0, Pattern::Sequential, 0.9),
            (include_str!("../../../examples/qemu_migration/hotcold.toml"), 50.0, Pattern::Hotcold, 0.8),
        ] {
            let s = WorkloadSpec::parse(text, None, None).unwrap();
            assert_eq!((s.mem_bytes, s.vcpus, s.phases.len()), (1 << 30, 1, 2));
            let (first, steady) = (&s.phases[0], &s.phases[1]);
            assert!(s.phases.iter().all(|p| p.working_set_bytes == 256 << 20 && p.cpu == 1.0));
            assert_eq!(
                (first.rate, first.pattern, first.duration),
                (mib(128.0), Pattern::Sequential, Duration::from_secs(3))
            );
            assert_eq!(
                (steady.rate, steady.pattern, steady.hot_fraction, steady.hot_share),
                (mib(rate), pattern, 0.1, hot_share)
            );
            assert_eq!(s.total_duration(), Duration::from_secs(15));
        }
    }

    fn err(text: &str) -> String {
        WorkloadSpec::parse(text, None, None).unwrap_err().to_string()
    }

    #[test]
    fn pattern_names_are_serde_s() {
        for p in Pattern::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            assert_eq!(Pattern::from_name(p.name()), Some(p));
        }
        assert_eq!(Pattern::names(), "sequential, random, hotcold");
        assert_eq!(Pattern::from_name("Random"), None);
    }

    /// A spec written again from its document is the spec written from its TOML table (keys
    /// sorted, numbers as written), and checks the same.
    #[test]
    fn a_document_writes_the_spec_as_its_table_does() {
        let text = "seed = 3\nmem = 67108864\n\n[[phase]]\nrate = \"1MiB/s\"\nworking_set = 8388608\nduration = 2\n\
                    name = \"a\"\ncpu = 1\npattern = \"hotcold\"\nhot_fraction = 0.25\nhot_share = 1\n\n[[phase]]\n\
                    rate = \"0\"\nduration = \"1s\"\ncpu = 0.0\n";
        for text in [text, DEFAULT_SPEC] {
            let doc = SpecDocument::parse(text).unwrap();
            let table: toml::Table = toml::from_str(text).unwrap();
            assert_eq!(doc.to_toml().unwrap(), toml::to_string(&table).unwrap());
            assert_eq!(doc.check(None, None).unwrap(), WorkloadSpec::parse(text, None, None).unwrap());
        }
        assert!(err("[[phase]]\nduration = \"1s\"\nrate = \"0\"\ncpu = \"x\"").contains("expected f64"));
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[[phase]]\nduration = \"1s\"\nworking_set = \"1MiB\"\n";
        assert!(err(&format!("{base}rate = \"-5MiB/s\"")).contains("phase[0].rate"));
        assert!(err(&format!("{base}rate = \"lots\"")).contains("phase[0].rate"));
        assert!(err(&format!("{base}rate = \"1MiB/s\"\nbogus = 1")).contains("bogus"));
        assert!(err("wrong_key = 3\n[[phase]]\nduration=\"1s\"\nrate=\"0\"").contains("wrong_key"));
        let big = "mem = \"64MiB\"\n[[phase]]\nduration = \"1s\"\nworking_set = \"1GiB\"\nrate = \"max\"";
        assert!(err(big).contains("phase[0].working_set"));
        assert!(err(&format!("{base}rate = \"1MiB/s\"\npattern = \"zigzag\"")).contains("phase[0].pattern"));
        assert!(err(&format!("{base}rate = \"1MiB/s\"\ncpu = 1.5")).contains("phase[0].cpu"));
        assert!(err("mem = \"1GiB\"").contains("phase"));
    }
}
