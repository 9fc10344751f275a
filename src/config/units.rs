//! Value types of the config file that are strings in YAML: durations (`250ms`, `5s`, `2m`),
//! byte sizes (`64KiB`, `10MB`, or a plain integer of bytes) and filesystem paths.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A filesystem path (a log file, and later certificates, keys, htpasswd files). Every config
/// key that names a file has this type, so the schema marks it (`$defs/FilePath`) and
/// [`super::Config::file_paths`] finds it: the admin API refuses a config that adds or changes
/// one (SECURITY.md, finding 1). Paths change only by editing the file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(transparent)]
pub struct FilePath(pub String);

impl FilePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for FilePath {
    fn schema_name() -> Cow<'static, str> {
        "FilePath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A filesystem path, relative to the working directory. Can be set or changed only in the config file on disk, never through the admin API",
        })
    }
}

/// A duration written as a string: a whole number and one unit, `250ms`, `5s`, `2m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    pub const fn secs(s: u64) -> Self {
        DurationStr(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"250ms\", \"5s\", \"2m\", \"1h\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationStr, E> {
                Err(E::custom(unit_needed(&v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationStr, E> {
                Err(E::custom(unit_needed(&v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationStr, E> {
                Err(E::custom(unit_needed(&v.to_string())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationStr, E> {
                parse_duration(v).map(DurationStr).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Written back in the form the parser reads: the largest unit that is exact.
impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        s.serialize_str(&text)
    }
}

impl JsonSchema for DurationStr {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h)$",
            "description": "A duration: a whole number and a unit, ms, s, m or h (250ms, 5s, 2m, 1h); at most 7 days",
            "examples": ["250ms", "5s", "2m", "1h"]
        })
    }
}

/// The units a duration may have. Every one of them can express a duration within
/// [`MAX_DURATION`], so an error never suggests a unit the limit then refuses.
const DURATION_UNITS: &str = "ms, s, m or h";

fn unit_needed(n: &str) -> String {
    format!(
        "invalid duration {n}: a unit is required (e.g. \"{n}s\" or \"{n}ms\"; units: {DURATION_UNITS})"
    )
}

/// Parses exactly the documented form: a whole number directly followed by one unit, `ms`,
/// `s`, `m` or `h` (`250ms`, `5s`, `2m`, `1h`), at most 7 days. Nothing else: no bare number,
/// no spaces, no fractions, no compound (`1m30s`) or spelt-out (`5 secs`) forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!(
            "empty duration (expected e.g. \"5s\", \"250ms\"; units: {DURATION_UNITS})"
        ));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a whole number and a unit, e.g. \"5s\", \"250ms\" (units: {DURATION_UNITS})"
        ));
    }
    if unit.is_empty() {
        return Err(unit_needed(num));
    }
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (expected a whole number and one of the units {DURATION_UNITS}, e.g. \"5s\", \"250ms\")"
            ));
        }
    };
    let too_long = || format!("duration {s:?} is too long (at most 7 days, e.g. \"168h\")");
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let ms = n.checked_mul(per_unit_ms).ok_or_else(too_long)?;
    let d = Duration::from_millis(ms);
    // Far beyond any sensible timeout, and far from overflowing `Instant + Duration`.
    if d > MAX_DURATION {
        return Err(too_long());
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
    fn durations_accept_exactly_the_documented_forms() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("168h"), Ok(MAX_DURATION));
        for bad in [
            "5",
            "5x",
            "",
            "s",
            "1m30s",
            "1.5s",
            " 5s",
            "5s ",
            "5 s",
            "-5s",
            "+5s",
            "5S",
            "5sec",
            "5secs",
            "5min",
            "2hours",
            "1d",
            "1w",
            "5us",
            "5ns",
            "169h",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn duration_errors_name_only_units_the_limit_allows() {
        for bad in ["5x", "1d", "5", "1.5s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("ms, s, m or h"), "{bad}: {e}");
            for refused in ["days", "weeks", "months", "years", " d,", "ns", "us"] {
                assert!(!e.contains(refused), "{bad}: {e} offers {refused:?}");
            }
        }
        assert!(
            parse_duration("5")
                .unwrap_err()
                .contains("a unit is required")
        );
        assert!(
            parse_duration("169h")
                .unwrap_err()
                .contains("at most 7 days")
        );
    }

    #[test]
    fn durations_serialize_in_the_form_they_parse() {
        for text in ["250ms", "5s", "2m", "1h", "90s", "1500ms"] {
            let d = DurationStr(parse_duration(text).unwrap());
            let json = serde_json::to_value(d).unwrap();
            assert_eq!(json, serde_json::json!(text));
        }
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

/// A YAML map whose order matters (aggregate calls: the order the answers merge in): kept as
/// a list of `(key, value)` in file order. Duplicate keys are an error.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<T>(pub Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<OrderedMap<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    if out.iter().any(|(x, _)| *x == k) {
                        return Err(de::Error::custom(format!("{k:?} is listed twice")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<T: Serialize> Serialize for OrderedMap<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<T: JsonSchema> JsonSchema for OrderedMap<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("OrderedMap_of_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let inner = g.subschema_for::<T>();
        json_schema!({
            "type": "object",
            "additionalProperties": inner,
        })
    }
}
