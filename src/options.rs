//! Options declared once. A struct of options derives clap's `Args` (its fields are flags,
//! flattened into the commands that take them) and serde's `Deserialize` (the same fields are
//! a grid's keys), and the library takes the struct itself: a field added to it is a flag, a
//! grid key and an option at once. Its defaults are its flags' defaults ([`defaults`]).

use clap::{Args, FromArgMatches};
use serde::de::{self, DeserializeOwned, Visitor};

/// The options `T`'s flags give when none is passed: its `Default`, so that a grid and the
/// library default as the command line does.
///
/// # Panics
/// If `T` has a required flag: a struct of options has a default for every flag, which each
/// struct's test checks.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let parsed = command.try_get_matches_from(std::iter::empty::<&str>()).and_then(|m| T::from_arg_matches(&m));
    parsed.unwrap_or_else(|e| panic!("options without a default: {e}"))
}

/// The keys `T` reads (its fields' names and their aliases), as its derived `Deserialize`
/// hands them to serde. Empty for a struct that flattens another, which serde reads as a map.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(KeyCatcher(&mut keys));
    keys
}

/// A deserializer that only takes note of the fields a struct asks for.
struct KeyCatcher<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for KeyCatcher<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the keys were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, clap::Args, serde::Deserialize)]
    struct Example {
        /// A count.
        #[arg(long, default_value_t = 7)]
        count: u32,
        /// A switch.
        #[arg(long)]
        #[serde(alias = "switch")]
        on: bool,
    }

    #[test]
    fn defaults_are_the_flags_and_keys_are_the_fields() {
        assert_eq!(defaults::<Example>(), Example { count: 7, on: false });
        assert_eq!(keys_of::<Example>(), ["count", "on", "switch"]);
        assert!(keys_of::<u32>().is_empty());
    }
}
