//! The expansion: run `k` of the product of the axes, its name, record settings and spec.

use super::naming::{repetition_seeds, run_name};
use super::{AxisValue, BaseWorkload, Grid, GridError, Run, RunWorkload, MAX_GRID_RUNS};
use crate::guest::synthetic::spec::{Quantity, SpecDocument};

impl Grid {
    /// The runs, in order, generated one at a time as the iterator is read. Refuses a grid of
    /// more than [`MAX_GRID_RUNS`] or `max_runs` runs before generating any (the product is
    /// counted, not expanded); each run's spec is checked as `record` would as it is generated.
    /// Names are not checked to be distinct: [`NameCheck`] does that.
    pub fn runs(&self, max_runs: usize) -> Result<impl Iterator<Item = Result<Run, GridError>> + '_, GridError> {
        let total = match self.run_count() {
            Some(n) if n <= MAX_GRID_RUNS as u128 => n as usize,
            n => {
                let runs = n.map_or_else(|| format!("more than {}", u128::MAX), |n| n.to_string());
                return Err(GridError::TooLarge { path: self.path.clone(), runs });
            }
        };
        if total > max_runs {
            return Err(GridError::TooManyRuns { path: self.path.clone(), runs: total as u128, limit: max_runs });
        }
        let seeds = repetition_seeds(self.spec.as_ref().map_or(0, |(_, seed)| *seed), self.repeat);
        Ok((0..total).map(move |run| self.run_at(run, &seeds)))
    }

    /// The runs, in order: [`Grid::runs`] collected, their names checked to be distinct.
    pub fn expand(&self, max_runs: usize) -> Result<Vec<Run>, GridError> {
        let runs = self.runs(max_runs)?.collect::<Result<Vec<Run>, GridError>>()?;
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(self.same_name(w[0]));
        }
        Ok(runs)
    }

    fn same_name(&self, name: &str) -> GridError {
        GridError::Key {
            path: self.path.clone(),
            key: "axes".into(),
            msg: format!("two runs would both be named `{name}`: make the axis values or phase names distinct"),
        }
    }

    /// Run `run` of the expansion.
    fn run_at(&self, run: usize, seeds: &[u64]) -> Result<Run, GridError> {
        // Odometer: the last axis fastest; the repetition inside it.
        let repeat = (run % self.repeat as usize) as u32;
        let mut rest = run / self.repeat as usize;
        let mut digits = vec![0usize; self.axes.len()];
        for (d, axis) in digits.iter_mut().zip(&self.axes).rev() {
            *d = rest % axis.values.len();
            rest /= axis.values.len();
        }
        let values: Vec<AxisValue> = digits.iter().zip(&self.axes).map(|(&d, a)| a.values[d]).collect();
        let parts: Vec<(String, String)> =
            self.axes.iter().zip(&values).map(|(a, v)| (a.name_prefix(), v.text())).collect();
        let name = run_name(&parts, repeat);
        let mut record = self.record.clone();
        let mut spec = self.spec.as_ref().map(|(doc, _)| doc.clone());
        for (a, v) in self.axes.iter().zip(&values) {
            let phase = match (spec.as_mut(), a.phase) {
                (Some(doc), Some(i)) => doc.phase.as_mut().and_then(|p| p.get_mut(i)),
                _ => None,
            };
            v.apply(&mut record, phase);
        }
        // Each axis value was checked alone; together with [record] they may still not suit
        // (an interval the guest clock cannot keep).
        record.check().map_err(|e| GridError::Run {
            path: self.path.clone(),
            run: name.clone(),
            msg: format!("`{}`: {e}", e.key()),
        })?;
        let (workload, seed) = match (&self.workload, spec) {
            (BaseWorkload::Linux { script, .. }, _) => (RunWorkload::Linux { script: script.clone() }, None),
            (BaseWorkload::Synthetic { .. }, Some(mut doc)) => {
                // A synthetic run carries mem, vcpus and its seed in its spec.
                let seed = seeds[repeat as usize];
                if let Some(m) = record.mem.take() {
                    doc.mem = Some(Quantity::Text(m.to_string()));
                }
                if let Some(v) = record.vcpus.take() {
                    doc.vcpus = Some(v.into());
                }
                doc.seed = Some(seed as i64);
                (RunWorkload::Synthetic { spec: self.run_spec(&doc, &name)? }, Some(seed))
            }
            (BaseWorkload::Synthetic { .. }, None) => unreachable!("a synthetic grid has a base spec"),
        };
        Ok(Run { run, name, repeat, seed, values, workload, record })
    }

    /// The text of one run's spec (the base spec with mem, vcpus, the seed and the axes' phase
    /// keys set), checked by the check `record` makes of a spec.
    fn run_spec(&self, doc: &SpecDocument, name: &str) -> Result<String, GridError> {
        let error = |msg: String| GridError::Run { path: self.path.clone(), run: name.into(), msg };
        let toml = doc.to_toml().map_err(|e| error(e.to_string()))?;
        doc.check(None, None).map_err(|e| error(e.to_string()))?;
        Ok(format!("# Run `{name}` of a dirtytrace sweep: the base workload with this run's axis values.\n{toml}"))
    }
}

/// Checks, run by run, that no two of a grid's runs have one name (what [`Grid::expand`]
/// checks at once).
#[derive(Default)]
pub struct NameCheck(std::collections::HashSet<String>);

impl NameCheck {
    /// Adds a run of `grid`; refuses a name already added.
    pub fn add(&mut self, grid: &Grid, name: &str) -> Result<(), GridError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(grid.same_name(name))
        }
    }
}
