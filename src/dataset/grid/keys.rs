//! The axes: the keys an axis sets ([`Key`], in canonical order), their values, typed per key
//! ([`AxisValue`]), and the `[axes]` table read into [`Axis`]es.

use super::naming::{column_part, rate_text_as_first_written, sanitize};
use super::read::{Ctx, Expect};
use super::{BaseWorkload, GridError, Phases};
use crate::guest::synthetic::spec::{self, Number, Pattern, PhaseDocument, Quantity};
use crate::record::{self, RecordSettings};
use crate::units::{parse_rate, HumanDuration, HumanRate, HumanSize};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What an axis sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// Guest RAM (spec `mem`, or `--mem` for a Linux workload).
    Mem,
    /// vCPUs (spec `vcpus`, or `--vcpus`).
    Vcpus,
    /// A phase's `rate`.
    Rate,
    /// A phase's `working_set`.
    WorkingSet,
    /// A phase's `pattern`.
    Pattern,
    /// A phase's `hot_fraction`.
    HotFraction,
    /// A phase's `hot_share`.
    HotShare,
    /// A phase's `cpu`.
    Cpu,
    /// A phase's `duration` (only as `PHASE.duration`: plain `duration` is the record option).
    PhaseDuration,
    /// `--interval`.
    Interval,
    /// `--migration-speed`.
    MigrationSpeed,
    /// `--duration`.
    Duration,
}

impl Key {
    /// Every key, in canonical order.
    pub const ALL: [Key; 12] = [
        Key::Mem,
        Key::Vcpus,
        Key::Rate,
        Key::WorkingSet,
        Key::Pattern,
        Key::HotFraction,
        Key::HotShare,
        Key::Cpu,
        Key::PhaseDuration,
        Key::Interval,
        Key::MigrationSpeed,
        Key::Duration,
    ];

    /// The key as written in a grid (and in a spec, for phase keys).
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Mem => "mem",
            Key::Vcpus => "vcpus",
            Key::Rate => "rate",
            Key::WorkingSet => "working_set",
            Key::Pattern => "pattern",
            Key::HotFraction => "hot_fraction",
            Key::HotShare => "hot_share",
            Key::Cpu => "cpu",
            Key::PhaseDuration | Key::Duration => "duration",
            Key::Interval => "interval",
            Key::MigrationSpeed => "migration_speed",
        }
    }

    /// The key's part of a run name.
    pub fn short(self) -> &'static str {
        match self {
            Key::WorkingSet => "ws",
            Key::HotFraction => "hot",
            Key::HotShare => "share",
            Key::MigrationSpeed => "mig",
            Key::Duration => "dur",
            k => k.as_str(),
        }
    }

    /// A key of a synthetic spec's `[[phase]]`.
    pub fn is_phase_key(self) -> bool {
        matches!(
            self,
            Key::Rate
                | Key::WorkingSet
                | Key::Pattern
                | Key::HotFraction
                | Key::HotShare
                | Key::Cpu
                | Key::PhaseDuration
        )
    }

    /// The unit suffix of the key's index column, and the column's type.
    fn column(self) -> (&'static str, ValueKind) {
        match self {
            Key::Mem | Key::WorkingSet => ("_bytes", ValueKind::U64),
            Key::Vcpus => ("", ValueKind::U32),
            Key::Rate | Key::MigrationSpeed => ("_bytes_per_s", ValueKind::F64),
            Key::Pattern => ("", ValueKind::Utf8),
            Key::HotFraction | Key::HotShare | Key::Cpu => ("", ValueKind::F64),
            Key::PhaseDuration | Key::Interval | Key::Duration => ("_s", ValueKind::F64),
        }
    }

    fn from_name(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s && *k != Key::PhaseDuration)
    }
}

/// The type of an axis's index column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// uint64.
    U64,
    /// uint32.
    U32,
    /// float64 (a `max` rate is null).
    F64,
    /// string.
    Utf8,
}

/// One value of an axis, parsed: the key it sets with its value, typed, so that a value is
/// never applied to a key of another type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AxisValue {
    /// Guest RAM, bytes.
    Mem(u64),
    /// vCPUs.
    Vcpus(u32),
    /// A phase's rate, bytes per second; `None` is `max`.
    Rate(Option<f64>),
    /// A phase's working set, bytes.
    WorkingSet(u64),
    /// A phase's write pattern.
    Pattern(Pattern),
    /// A phase's `hot_fraction`.
    HotFraction(f64),
    /// A phase's `hot_share`.
    HotShare(f64),
    /// A phase's `cpu`.
    Cpu(f64),
    /// A phase's length.
    PhaseDuration(Duration),
    /// `--interval`.
    Interval(Duration),
    /// `--migration-speed`, bytes per second.
    MigrationSpeed(f64),
    /// `--duration`.
    Duration(Duration),
}

impl AxisValue {
    /// The key it sets.
    pub fn key(&self) -> Key {
        match self {
            AxisValue::Mem(_) => Key::Mem,
            AxisValue::Vcpus(_) => Key::Vcpus,
            AxisValue::Rate(_) => Key::Rate,
            AxisValue::WorkingSet(_) => Key::WorkingSet,
            AxisValue::Pattern(_) => Key::Pattern,
            AxisValue::HotFraction(_) => Key::HotFraction,
            AxisValue::HotShare(_) => Key::HotShare,
            AxisValue::Cpu(_) => Key::Cpu,
            AxisValue::PhaseDuration(_) => Key::PhaseDuration,
            AxisValue::Interval(_) => Key::Interval,
            AxisValue::MigrationSpeed(_) => Key::MigrationSpeed,
            AxisValue::Duration(_) => Key::Duration,
        }
    }

    /// The value in a spec or a name: as people write it, and as the parsers read it back.
    pub fn text(&self) -> String {
        match *self {
            AxisValue::Mem(b) | AxisValue::WorkingSet(b) => HumanSize(b).to_string(),
            AxisValue::Rate(None) => "max".into(),
            AxisValue::Rate(Some(r)) | AxisValue::MigrationSpeed(r) => rate_text_as_first_written(r),
            AxisValue::PhaseDuration(d) | AxisValue::Interval(d) | AxisValue::Duration(d) => {
                HumanDuration(d).to_string()
            }
            AxisValue::Pattern(p) => p.name().into(),
            AxisValue::HotFraction(f) | AxisValue::HotShare(f) | AxisValue::Cpu(f) => f.to_string(),
            AxisValue::Vcpus(c) => c.to_string(),
        }
    }

    /// The value of the axis's index column, in the column's unit.
    pub fn column_value(&self) -> serde_json::Value {
        match *self {
            AxisValue::Mem(b) | AxisValue::WorkingSet(b) => b.into(),
            AxisValue::Rate(r) => r.into(),
            AxisValue::MigrationSpeed(r) => r.into(),
            AxisValue::PhaseDuration(d) | AxisValue::Interval(d) | AxisValue::Duration(d) => d.as_secs_f64().into(),
            AxisValue::Pattern(p) => p.name().into(),
            AxisValue::HotFraction(f) | AxisValue::HotShare(f) | AxisValue::Cpu(f) => f.into(),
            AxisValue::Vcpus(c) => c.into(),
        }
    }

    /// Sets the value in a run: a record option in its settings, a phase key in its phase of
    /// the spec (`phase`: the axis's phase, present for the phase keys; the grid refuses
    /// them for a workload without phases).
    pub(super) fn apply(&self, record: &mut RecordSettings, phase: Option<&mut PhaseDocument>) {
        let phase = || phase.expect("a phase key's axis has its phase");
        let text = || Some(Quantity::Text(self.text()));
        match *self {
            AxisValue::Mem(b) => record.mem = Some(HumanSize(b)),
            AxisValue::Vcpus(c) => record.vcpus = Some(c),
            AxisValue::Interval(d) => record.interval = HumanDuration(d),
            AxisValue::Duration(d) => record.duration = Some(HumanDuration(d)),
            AxisValue::MigrationSpeed(r) => record.migration_speed = HumanRate(r),
            AxisValue::Rate(_) => phase().rate = text(),
            AxisValue::WorkingSet(_) => phase().working_set = text(),
            AxisValue::Pattern(p) => phase().pattern = Some(p.name().into()),
            AxisValue::HotFraction(f) => phase().hot_fraction = Some(Number::Float(f)),
            AxisValue::HotShare(f) => phase().hot_share = Some(Number::Float(f)),
            AxisValue::Cpu(f) => phase().cpu = Some(Number::Float(f)),
            AxisValue::PhaseDuration(_) => phase().duration = text(),
        }
    }
}

/// One axis of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// What it sets.
    pub key: Key,
    /// For a phase key: the phase's position in the spec.
    pub phase: Option<usize>,
    /// The axis as written under `[axes]` (`rate`, `serve.rate`).
    pub label: String,
    /// Its column in `index.parquet` (`axis_rate_bytes_per_s`, `axis_serve_rate_bytes_per_s`).
    pub column: String,
    /// Its values, in the order written.
    pub values: Vec<AxisValue>,
}

impl Axis {
    /// The type of the axis's index column.
    pub fn kind(&self) -> ValueKind {
        self.key.column().1
    }

    /// The axis's part of a run name: its short key, after `PHASE.` if written so.
    pub(super) fn name_prefix(&self) -> String {
        match self.label.split_once('.') {
            Some((phase, _)) => format!("{}.{}", sanitize(phase), self.key.short()),
            None => self.key.short().to_string(),
        }
    }
}

/// The keys of `[axes]`, as messages list them.
fn axis_keys() -> String {
    let keys: Vec<&str> = Key::ALL.iter().filter(|k| **k != Key::PhaseDuration).map(|k| k.as_str()).collect();
    format!("{}, repeat (a phase's keys may be written PHASE.KEY, and its length PHASE.duration)", keys.join(", "))
}

/// The axes of a Linux workload, as messages list them.
fn linux_axis_keys() -> String {
    let keys: Vec<&str> = Key::ALL.iter().filter(|k| !k.is_phase_key()).map(|k| k.as_str()).collect();
    format!("{} and repeat", keys.join(", "))
}

pub(super) fn parse_axes(
    cx: &Ctx,
    table: toml::Table,
    phases: Option<&Phases>,
    workload: &BaseWorkload,
) -> Result<(Vec<Axis>, u32), GridError> {
    let mut repeat = 1u32;
    let mut axes: Vec<Axis> = Vec::new();
    for (label, value) in table {
        let full = format!("axes.{label}");
        if label == "repeat" {
            repeat = match value.as_integer() {
                Some(n) if (1..=1_000_000).contains(&n) => n as u32,
                _ => {
                    return Err(
                        cx.key(full, "must be a whole number from 1 to 1000000 (repetitions of every combination)")
                    )
                }
            };
            continue;
        }
        let (phase_part, key_part) = match label.split_once('.') {
            Some((p, k)) => (Some(p), k),
            None => (None, label.as_str()),
        };
        let key = match (phase_part, key_part) {
            (Some(_), "duration") => Key::PhaseDuration,
            (_, k) => {
                Key::from_name(k).ok_or_else(|| cx.key(&full, format!("is not an axis; axes are {}", axis_keys())))?
            }
        };
        if phase_part.is_some() && !key.is_phase_key() {
            return Err(cx.key(&full, format!("`{key_part}` is not a phase key, so it takes no PHASE. prefix")));
        }
        let phase = if key.is_phase_key() {
            let Some(ph) = phases else {
                let script = match workload {
                    BaseWorkload::Linux { script, .. } => script.display().to_string(),
                    BaseWorkload::Synthetic { .. } => String::new(),
                };
                return Err(cx.key(
                    &full,
                    format!(
                        "the workload {script} is a Linux script, which has no `{key_part}`: its axes can be {}",
                        linux_axis_keys()
                    ),
                ));
            };
            let list = || ph.names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            Some(match phase_part {
                Some(p) => ph.names.iter().position(|n| n == p).ok_or_else(|| {
                    cx.key(&full, format!("the workload has no phase `{p}`; its phases are {}", list()))
                })?,
                None if ph.names.len() == 1 => 0,
                None => {
                    return Err(cx.key(
                        &full,
                        format!(
                            "the workload has {} phases ({}): say which, as \"PHASE.{key_part}\" = [...]",
                            ph.names.len(),
                            list()
                        ),
                    ))
                }
            })
        } else {
            None
        };
        let items = match value {
            toml::Value::Array(a) => a,
            v => vec![v],
        };
        if items.is_empty() {
            return Err(cx.key(&full, "is empty: give it at least one value, or remove it"));
        }
        let values = items.iter().map(|v| cx.axis_value(&full, key, v)).collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<String> = values.iter().map(AxisValue::text).collect();
        if let Some((i, t)) = texts.iter().enumerate().find(|(i, t)| texts[..*i].contains(t)) {
            return Err(cx.key(&full, format!("value {} (`{t}`) is given twice", i + 1)));
        }
        let column = match (phase_part, phase) {
            (Some(_), Some(i)) => {
                let names = phases.map(|p| p.names.as_slice()).unwrap_or_default();
                format!("axis_{}_{}{}", column_part(&names[i]), key.as_str(), key.column().0)
            }
            _ => format!("axis_{}{}", key.as_str(), key.column().0),
        };
        if axes.iter().any(|a| a.column == column) {
            return Err(cx.key(&full, format!("sets the same column, {column}, as another axis")));
        }
        axes.push(Axis { key, phase, label: label.clone(), column, values });
    }
    // hot_fraction and hot_share act only on hot/cold phases.
    if let Some(ph) = phases {
        for a in &axes {
            if !matches!(a.key, Key::HotFraction | Key::HotShare) {
                continue;
            }
            let i = a.phase.unwrap_or(0);
            let hotcold = ph.patterns[i] == Pattern::Hotcold
                || axes.iter().any(|p| {
                    p.key == Key::Pattern
                        && p.phase == a.phase
                        && p.values.contains(&AxisValue::Pattern(Pattern::Hotcold))
                });
            if !hotcold {
                return Err(cx.key(
                    format!("axes.{}", a.label),
                    format!(
                        "phase `{}` has pattern {}, which has no {}: only hotcold phases do (sweep pattern too, or \
                         set pattern = \"hotcold\" in the workload)",
                        ph.names[i],
                        ph.patterns[i].name(),
                        a.key.as_str()
                    ),
                ));
            }
        }
    }
    axes.sort_by_key(|a| {
        let group = if a.key.is_phase_key() {
            1
        } else if matches!(a.key, Key::Mem | Key::Vcpus) {
            0
        } else {
            2
        };
        (group, a.phase.unwrap_or(0), a.key)
    });
    Ok((axes, repeat))
}

impl Ctx<'_> {
    /// One value of an axis on `key`: read as the key's type reads it, and checked by the
    /// check `record` makes of that key (a spec's keys are checked again in each run's spec).
    fn axis_value(&self, label: &str, key: Key, v: &toml::Value) -> Result<AxisValue, GridError> {
        let fraction = || Expect {
            what: "a number between 0 and 1".into(),
            text: None,
            int: Some(|i| spec::check_fraction(i as f64)),
            float: Some(spec::check_fraction),
        };
        let time = |v: &toml::Value| self.value::<HumanDuration>(label, v).map(|d| d.0);
        Ok(match key {
            Key::Mem => AxisValue::Mem(self.value::<HumanSize>(label, v)?.0),
            Key::WorkingSet => AxisValue::WorkingSet(self.value::<HumanSize>(label, v)?.0),
            Key::Vcpus => AxisValue::Vcpus(self.expect(
                label,
                v,
                Expect {
                    what: format!("a whole number of vCPUs, 1 to {}", spec::MAX_VCPUS),
                    text: None,
                    int: Some(spec::check_vcpus),
                    float: None,
                },
            )?),
            Key::Rate => AxisValue::Rate(self.expect(
                label,
                v,
                Expect {
                    what: "a rate such as \"1Gbit/s\", or \"max\"".into(),
                    text: Some(|t| match t.trim() {
                        "max" => Ok(None),
                        t => parse_rate(t).map(Some).map_err(|e| e.to_string()),
                    }),
                    int: Some(|i| parse_rate(&i.to_string()).map(Some).map_err(|e| e.to_string())),
                    float: Some(|f| parse_rate(&f.to_string()).map(Some).map_err(|e| e.to_string())),
                },
            )?),
            Key::Pattern => AxisValue::Pattern(self.expect(
                label,
                v,
                Expect {
                    what: format!("a pattern: one of {}", Pattern::names()),
                    text: Some(|t| {
                        Pattern::from_name(t).ok_or_else(|| format!("`{t}` is not one of {}", Pattern::names()))
                    }),
                    int: None,
                    float: None,
                },
            )?),
            Key::HotFraction => AxisValue::HotFraction(self.expect(label, v, fraction())?),
            Key::HotShare => AxisValue::HotShare(self.expect(label, v, fraction())?),
            Key::Cpu => AxisValue::Cpu(self.expect(label, v, fraction())?),
            Key::PhaseDuration => AxisValue::PhaseDuration(time(v)?),
            Key::Interval => AxisValue::Interval(self.setting(label, time(v)?, record::check_interval)?),
            Key::Duration => AxisValue::Duration(self.setting(label, time(v)?, record::check_duration)?),
            Key::MigrationSpeed => AxisValue::MigrationSpeed(self.speed(label, v)?),
        })
    }
}
