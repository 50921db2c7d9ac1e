//! Reading a grid's values: typed, through serde, with errors that name the key (`axes.rate`,
//! `record.interval`), the type it takes and what it got.

use super::GridError;
use crate::guest::synthetic::spec;
use crate::options::keys_of;
use crate::record::{self, SettingError};
use crate::units::HumanRate;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;

/// Reads one value of a key: what it expects (for the message that names what it got instead)
/// and how it reads a string, an integer and a float; a type without a reader is refused.
pub(super) struct Expect<T> {
    pub(super) what: String,
    pub(super) text: Option<TextReader<T>>,
    pub(super) int: Option<Reader<i64, T>>,
    pub(super) float: Option<Reader<f64, T>>,
}

/// How [`Expect`] reads a number.
pub(super) type Reader<V, T> = fn(V) -> Result<T, String>;
/// How [`Expect`] reads a string.
pub(super) type TextReader<T> = fn(&str) -> Result<T, String>;

impl<'de, T> serde::de::Visitor<'de> for Expect<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        match self.text {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        match self.int {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::invalid_type(serde::de::Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        match self.float {
            Some(read) => read(v).map_err(E::custom),
            None => Err(E::invalid_type(serde::de::Unexpected::Float(v), &self)),
        }
    }
}

/// A grid being read: its errors name the grid file and the key.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
}

impl Ctx<'_> {
    /// The error of `key`.
    pub(super) fn key(&self, key: impl Into<String>, msg: impl Into<String>) -> GridError {
        GridError::Key { path: self.path.to_path_buf(), key: key.into(), msg: msg.into() }
    }

    /// A value of `key`, read as its type reads it.
    pub(super) fn value<T: DeserializeOwned>(&self, key: &str, v: &toml::Value) -> Result<T, GridError> {
        v.clone().try_into().map_err(|e| self.key(key, e.message()))
    }

    /// A value of `key`, read by `expect`.
    pub(super) fn expect<T>(&self, key: &str, v: &toml::Value, expect: Expect<T>) -> Result<T, GridError> {
        use serde::Deserializer;
        v.clone().deserialize_any(expect).map_err(|e| self.key(key, e.message()))
    }

    /// `record`'s check of a setting, its error under `key`.
    pub(super) fn setting<T>(
        &self,
        key: &str,
        value: T,
        check: fn(T) -> Result<(), SettingError>,
    ) -> Result<T, GridError>
    where
        T: Copy,
    {
        check(value).map_err(|e| self.key(key, e.to_string()))?;
        Ok(value)
    }

    /// A migration speed, checked as `--migration-speed` is.
    pub(super) fn speed(&self, key: &str, v: &toml::Value) -> Result<f64, GridError> {
        self.setting(key, self.value::<HumanRate>(key, v)?.0, record::check_migration_speed)
    }

    /// A grid's vCPU count, for any workload: the synthetic guest's check.
    pub(super) fn vcpus(&self, key: &str, n: u32) -> Result<u32, GridError> {
        spec::check_vcpus(n.into()).map_err(|e| self.key(key, e))
    }

    /// Takes the keys `T` reads out of `table`, the grid's `[section]`, and reads them. Each
    /// key is read alone first, so that an error names it (`record.interval`).
    pub(super) fn take<T: DeserializeOwned>(&self, section: &str, table: &mut toml::Table) -> Result<T, GridError> {
        let mine: toml::Table = keys_of::<T>().iter().filter_map(|k| table.remove_entry(*k)).collect();
        for (k, v) in &mine {
            let alone = toml::Table::from_iter([(k.clone(), v.clone())]);
            toml::Value::Table(alone).try_into::<T>().map_err(|e| self.key(format!("{section}.{k}"), e.message()))?;
        }
        toml::Value::Table(mine).try_into().map_err(|e| self.key(section, e.message()))
    }

    /// Refuses the first key left in `table` once every struct of `[section]` took its own.
    pub(super) fn refuse_rest(&self, section: &str, table: &toml::Table, keys: &[&str]) -> Result<(), GridError> {
        match table.keys().next() {
            Some(k) => Err(self.key(
                format!("{section}.{k}"),
                format!("is not a key of [{section}], whose keys are {}", keys.join(", ")),
            )),
            None => Ok(()),
        }
    }
}
