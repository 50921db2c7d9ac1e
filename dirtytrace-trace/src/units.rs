//! Units, and human-written quantities: sizes (`64MiB`), durations (`250ms`) and rates
//! (`1Gbit/s`), parsed with their ranges checked and shown the same way.

use std::fmt;
use std::time::Duration;

/// Bytes per page, guest and host: x86-64's base page.
pub const PAGE_SIZE: u64 = 4096;
/// 2^20 bytes.
pub const MIB: u64 = 1 << 20;
/// 2^30 bytes.
pub const GIB: u64 = 1 << 30;

/// The longest duration any flag or key accepts: ten years. Longer ones are refused rather
/// than wrapped when they become nanoseconds.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// The highest rate any flag or key accepts: 1 PB/s, far above any memory bus or network.
/// Higher ones are refused rather than becoming infinity.
pub const MAX_RATE_BYTES_PER_S: f64 = 1e15;

/// The lowest migration speed or bandwidth any flag or key accepts: 1 B/s. A slower one would
/// make the working-set window (guest RAM over the speed) or a migration round infinitely long.
pub const MIN_SPEED_BYTES_PER_S: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
/// A quantity that does not parse or is out of range; the message says which and why.
pub struct ParseError(String);

fn split_number(s: &str) -> Result<(f64, &str), ParseError> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E'))
        .unwrap_or(s.len());
    // `e` may start a unit (none of ours do), so only a digit-led exponent is accepted.
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return Err(ParseError(format!("`{s}` does not start with a number")));
    }
    let value: f64 = num.parse().map_err(|_| ParseError(format!("`{num}` in `{s}` is not a number")))?;
    if !value.is_finite() {
        return Err(ParseError(format!("`{s}` is not a finite number")));
    }
    if value < 0.0 {
        return Err(ParseError(format!("`{s}` is negative")));
    }
    Ok((value, unit.trim()))
}

fn byte_multiplier(unit: &str) -> Option<f64> {
    Some(match unit {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "kB" | "KB" => 1e3,
        "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        "T" | "TiB" => 1024.0f64.powi(4),
        "TB" => 1e12,
        _ => return None,
    })
}

/// A size in bytes: `4096`, `64MiB`, `2GiB`, `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let (v, unit) = split_number(s)?;
    let m = byte_multiplier(unit).ok_or_else(|| {
        ParseError(format!("unknown size unit `{unit}` in `{s}` (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"))
    })?;
    let bytes = v * m;
    if bytes.fract() != 0.0 {
        return Err(ParseError(format!("`{s}` is not a whole number of bytes")));
    }
    // u64::MAX as f64 rounds up to 2^64, which does not fit.
    if bytes >= u64::MAX as f64 {
        return Err(ParseError(format!("`{s}` is too large")));
    }
    Ok(bytes as u64)
}

/// A duration: `250ms`, `1.5s`, `2m`, `1h`, `500us`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let (v, unit) = split_number(s)?;
    let secs = match unit {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(ParseError(format!("unknown duration unit `{unit}` in `{s}` (use ns, us, ms, s, min, h)"))),
    };
    match Duration::try_from_secs_f64(v * secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(ParseError(format!("`{s}` is longer than the longest duration accepted (10 years)"))),
    }
}

/// A rate in bytes per second: `100MiB/s`, `125MB/s`, `1Gbit/s`, `10Mbit/s`.
pub fn parse_rate(s: &str) -> Result<f64, ParseError> {
    let t = s.trim();
    let (v, unit) = split_number(t)?;
    let per_s = unit.strip_suffix("/s").or_else(|| unit.strip_suffix("ps")).unwrap_or(if v == 0.0 && unit.is_empty() {
        ""
    } else {
        "\u{0}"
    });
    if per_s == "\u{0}" {
        return Err(ParseError(format!("rate `{s}` needs a per-second unit, like 100MiB/s, 125MB/s or 1Gbit/s")));
    }
    let bits = |m: f64| m / 8.0;
    let m = match per_s {
        "bit" | "b" => bits(1.0),
        "kbit" | "Kbit" | "kb" => bits(1e3),
        "Mbit" | "Mb" => bits(1e6),
        "Gbit" | "Gb" => bits(1e9),
        "Tbit" => bits(1e12),
        "Kibit" => bits(1024.0),
        "Mibit" => bits(1024.0 * 1024.0),
        "Gibit" => bits(1024.0f64.powi(3)),
        u => byte_multiplier(u).ok_or_else(|| {
            ParseError(format!(
                "unknown rate unit `{unit}` in `{s}` (use B/s, KiB/s, MiB/s, GiB/s, MB/s, GB/s, Mbit/s, Gbit/s)"
            ))
        })?,
    };
    let rate = v * m;
    if rate.is_nan() || rate > MAX_RATE_BYTES_PER_S {
        return Err(ParseError(format!("`{s}` is above the highest rate accepted (1 PB/s)")));
    }
    Ok(rate)
}

/// Checks a migration speed or bandwidth (bytes per second): from [`MIN_SPEED_BYTES_PER_S`] to
/// [`MAX_RATE_BYTES_PER_S`]. The message follows the flag's or key's name.
pub fn check_speed(bytes_per_s: f64) -> Result<f64, ParseError> {
    if (MIN_SPEED_BYTES_PER_S..=MAX_RATE_BYTES_PER_S).contains(&bytes_per_s) {
        Ok(bytes_per_s)
    } else {
        Err(ParseError(format!("must be from 1 B/s to 1 PB/s, got {} B/s", Number(bytes_per_s))))
    }
}

/// A migration speed or bandwidth as a flag takes it: a rate ([`parse_rate`]) that
/// [`check_speed`] accepts, refused while the command line is parsed, with the flag named.
pub fn parse_speed(s: &str) -> Result<HumanRate, ParseError> {
    check_speed(parse_rate(s)?).map(HumanRate)
}

/// A duration on the command line: parsed as [`parse_duration`], shown as `100ms` or `1.5s`,
/// so that a flag's default is written once, as a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        match ns {
            0 => write!(f, "0s"),
            _ if ns.is_multiple_of(1_000_000_000) => write!(f, "{}s", ns / 1_000_000_000),
            _ if ns.is_multiple_of(1_000_000) && ns < 1_000_000_000 => write!(f, "{}ms", ns / 1_000_000),
            _ => write!(f, "{}s", self.0.as_secs_f64()),
        }
    }
}

/// A rate on the command line: parsed as [`parse_rate`], shown as `1Gbit/s`, `100MiB/s` or
/// bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanRate(pub f64);

impl std::str::FromStr for HumanRate {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_rate(s).map(HumanRate)
    }
}

impl fmt::Display for HumanRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bytes, bits) = (self.0, self.0 * 8.0);
        let whole = |v: f64, unit: f64| v >= unit && (v / unit).fract() == 0.0;
        if whole(bits, 1e9) {
            write!(f, "{}Gbit/s", Number(bits / 1e9))
        } else if whole(bits, 1e6) {
            write!(f, "{}Mbit/s", Number(bits / 1e6))
        } else if whole(bytes, MIB as f64) {
            write!(f, "{}MiB/s", Number(bytes / MIB as f64))
        } else {
            write!(f, "{}B/s", Number(bytes))
        }
    }
}

/// A number shown to people: as Rust writes it (`0.5`, `125000000`) between 10⁻⁴ and 10¹⁵,
/// in scientific notation (`1e-300`, `2.5e20`) outside, rather than as hundreds of digits.
/// Either form reads back as the same number.
pub struct Number(pub f64);

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == 0.0 || !v.is_finite() || (1e-4..1e15).contains(&v.abs()) {
            write!(f, "{v}")
        } else {
            write!(f, "{v:e}")
        }
    }
}

/// A size on the command line: parsed as [`parse_size`], shown as `4GiB`, `64MiB` or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl std::str::FromStr for HumanSize {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_size(s).map(HumanSize)
    }
}

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b >= GIB && b % GIB == 0 => write!(f, "{}GiB", b / GIB),
            b if b >= MIB && b % MIB == 0 => write!(f, "{}MiB", b / MIB),
            b => write!(f, "{b}B"),
        }
    }
}

/// Bytes shown to people: `256.0 MiB`.
pub struct HumanBytes(pub f64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0;
        let mut i = 0;
        while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{v:.0} {}", UNITS[0])
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

/// Reads a quantity as a grid writes it: a string (`"250ms"`), or a number read as its text
/// (`5` is 5 s, or 5 bytes), so that a key takes what its flag takes.
struct TextVisitor<T> {
    expecting: &'static str,
    read: std::marker::PhantomData<T>,
}

impl<T: std::str::FromStr<Err = ParseError>> serde::de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// Serde for the human-written quantities: read as people write them (see [`TextVisitor`]),
/// written as the value they hold (a `Duration` as serde writes one, bytes, bytes per second),
/// which is what a dataset's fingerprint has always hashed.
macro_rules! human_serde {
    ($($ty:ident: $expecting:literal),*) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor { expecting: $expecting, read: std::marker::PhantomData })
            }
        }
    )*};
}

human_serde!(
    HumanDuration: "a duration such as \"250ms\"",
    HumanRate: "a rate such as \"1Gbit/s\"",
    HumanSize: "a size such as \"64MiB\""
);

/// Bytes as lowercase hex digits, two per byte (ids and hashes).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("125MB").unwrap(), 125_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1MiB").unwrap_err().0.contains("negative"));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("16EiB").is_err());
        assert!(parse_size("18446744073709551616").unwrap_err().0.contains("too large"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        // Durations that would wrap as nanoseconds are refused, not truncated.
        assert!(parse_duration("36028797018963968s").unwrap_err().0.contains("longest"));
        assert!(parse_duration("18446744073.7105s").is_err());
        assert_eq!(
            parse_duration("3650days").unwrap_err().0,
            "unknown duration unit `days` in `3650days` (use ns, us, ms, s, min, h)"
        );
        assert_eq!(parse_duration("87600h").unwrap(), Duration::from_secs(87600 * 3600));
    }

    #[test]
    fn defaults_show_as_they_parse() {
        for text in ["100ms", "30ms", "1s", "1.5s", "0s"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        for text in ["1Gbit/s", "10Mbit/s", "100MiB/s", "12345B/s"] {
            let r: HumanRate = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        for text in ["4GiB", "64MiB", "4097B"] {
            let b: HumanSize = text.parse().unwrap();
            assert_eq!(b.to_string(), text);
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1Gbit/s").unwrap(), 125_000_000.0);
        assert_eq!(parse_rate("125MB/s").unwrap(), 125_000_000.0);
        assert_eq!(parse_rate("100MiB/s").unwrap(), 100.0 * MIB as f64);
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        assert!(parse_rate("-5MiB/s").unwrap_err().0.contains("negative"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("100MiB").is_err());
        assert!(parse_rate("1e305TB/s").unwrap_err().0.contains("highest rate"));
        assert!(parse_rate("1PB/s").is_err(), "PB is not a unit");
        assert_eq!(parse_rate("1000TB/s").unwrap(), 1e15);
        assert!(parse_rate("1001TB/s").is_err());
    }

    #[test]
    fn grid_values_read_as_flags_do() {
        let read = |v: toml::Value| v.try_into::<HumanDuration>().map(|d| d.0).map_err(|e| e.message().to_string());
        assert_eq!(read("250ms".into()), Ok(Duration::from_millis(250)));
        assert_eq!(read(5.into()), Ok(Duration::from_secs(5)), "a bare number is seconds");
        assert_eq!(read(0.25.into()), Ok(Duration::from_millis(250)));
        assert!(read(true.into()).unwrap_err().contains("a duration such as \"250ms\""));
        assert!(read("soon".into()).unwrap_err().contains("`soon`"));
        assert_eq!(toml::Value::from(4096).try_into::<HumanSize>().unwrap(), HumanSize(4096));
        assert!(toml::Value::from(1000).try_into::<HumanRate>().unwrap_err().message().contains("per-second unit"));
        // Written as the value held, as fingerprints hash it.
        assert_eq!(
            serde_json::to_string(&HumanDuration(Duration::from_millis(20))).unwrap(),
            r#"{"secs":0,"nanos":20000000}"#
        );
        assert_eq!(serde_json::to_string(&HumanRate(125e6)).unwrap(), "125000000.0");
    }

    #[test]
    fn extreme_numbers_are_shown_in_scientific_notation() {
        assert_eq!(Number(1e-300).to_string(), "1e-300");
        assert_eq!(Number(-2.5e20).to_string(), "-2.5e20");
        assert_eq!(Number(0.5).to_string(), "0.5");
        assert_eq!(Number(125e6).to_string(), "125000000");
        assert_eq!(Number(0.0).to_string(), "0");
        assert_eq!(HumanRate(1e-300).to_string(), "1e-300B/s");
        assert_eq!(parse_rate(&HumanRate(1e-300).to_string()).unwrap(), 1e-300);
        assert_eq!(HumanRate(125e6).to_string(), "1Gbit/s");
    }
}
