//! Value types of the config file that are strings in YAML: durations (`250ms`, `5s`, `2m`) and
//! byte sizes (`64KiB`, `10MB`, or a plain integer of bytes).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a string with a unit, like `250ms`, `5s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    pub const fn secs(s: u64) -> Self {
        DurationStr(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationStr)
            .map_err(de::Error::custom)
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for DurationStr {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^\\s*[0-9]+\\s*(ns|us|ms|s|m|h|d)(\\s*[0-9]+\\s*(ns|us|ms|s|m|h|d))*\\s*$",
            "description": "A duration with a unit: 250ms, 5s, 2m, 1h",
            "examples": ["250ms", "5s", "2m"]
        })
    }
}

/// Parses `250ms`, `5s`, `1m30s`. A bare number is refused: a unit must be explicit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (expected e.g. \"5s\", \"250ms\")".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid duration {s:?}: a unit is required (e.g. \"{t}s\" or \"{t}ms\")"
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?}: {e} (expected e.g. \"5s\", \"250ms\", \"2m\")")
    })?;
    // Far beyond any sensible timeout, and far from overflowing `Instant + Duration`.
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is too long (at most 7 days)"));
    }
    Ok(d)
}

pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A size in bytes: an integer, or a string like `512`, `64KiB`, `10MB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 65536, \"64KiB\", \"10MB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgG]i?[bB]?|[bB])?\\s*$" }
            ],
            "description": "A size in bytes: 65536, \"64KiB\", \"10MB\", \"1GiB\"",
        })
    }
}

/// Parses sizes. `KB`/`MB`/`GB` are decimal, `KiB`/`MiB`/`GiB` binary, as the units say.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 65536, \"64KiB\", \"10MB\")"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("8d").is_err());
        assert!(parse_duration("99999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("99999999999999999999GB").is_err());
    }
}
