//! Structural validation: the parsed (and interpolated) YAML is walked against the config's
//! JSON Schema, the same one `gatehouse schema` prints (generated from [`super::model`]), before
//! serde sees it. serde stops at the first problem; this walk collects every unknown key, wrong
//! type, bad duration and bad size, each with its key path, so one `check` shows them all.
//! Durations and sizes are checked with the parsers the model uses, so the messages agree.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::ConfigError;
use super::model::Config;
use super::units::{parse_duration, parse_size};

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(Config).to_value())
}

/// Every structural problem in `value`, in key order; empty if serde will accept it.
pub fn validate(value: &Value) -> Vec<ConfigError> {
    let root = schema();
    let mut v = Walker {
        defs: root.get("$defs"),
        errors: Vec::new(),
    };
    v.check(value, root, None, &mut String::new());
    v.errors
}

/// Every filesystem path in `value` (a config, interpolated): the strings at keys whose schema
/// is `$defs/FilePath`, with their key paths, in key order. Driven by the schema, so a key
/// added later with the `FilePath` type is found without a change here.
pub fn file_paths(value: &Value) -> Vec<(String, String)> {
    let root = schema();
    let mut out = Vec::new();
    collect_file_paths(
        value,
        root,
        root.get("$defs"),
        &mut String::new(),
        &mut out,
        0,
    );
    out.sort();
    out.dedup();
    out
}

fn collect_file_paths(
    v: &Value,
    schema: &Value,
    defs: Option<&Value>,
    path: &mut String,
    out: &mut Vec<(String, String)>,
    depth: usize,
) {
    // The model has no recursive types; the bound only guards against a future one.
    if depth > 64 {
        return;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let def = r.strip_prefix("#/$defs/").unwrap_or(r);
        if def == "FilePath" {
            if let Some(s) = v.as_str() {
                out.push((path.clone(), s.to_owned()));
            }
            return;
        }
        if let Some(s) = defs.and_then(|d| d.get(def)) {
            collect_file_paths(v, s, defs, path, out, depth + 1);
        }
        return;
    }
    // Untagged enums and optional values: a path found through any branch is a path.
    if let Some(branches) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        for b in branches {
            collect_file_paths(v, b, defs, path, out, depth + 1);
        }
        return;
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties");
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, item) in map {
                let Some(sub) = props.and_then(|p| p.get(k)).or(extra) else {
                    continue;
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                collect_file_paths(item, sub, defs, path, out, depth + 1);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    collect_file_paths(item, sub, defs, path, out, depth + 1);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

struct Walker<'s> {
    defs: Option<&'s Value>,
    errors: Vec<ConfigError>,
}

impl<'s> Walker<'s> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// Checks `v` against `schema`; `name` is the `$defs` name the schema came from, if any.
    fn check(&mut self, v: &Value, schema: &'s Value, name: Option<&'s str>, path: &mut String) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let def = r.strip_prefix("#/$defs/").unwrap_or(r);
            match def {
                "Duration" => return self.duration(v, path),
                "ByteSize" => return self.size(v, path),
                _ => {}
            }
            match self.defs.and_then(|d| d.get(def)) {
                Some(s) => return self.check(v, s, Some(def), path),
                // The schema is generated from the model: a dangling reference is our bug,
                // and serde still checks the value afterwards.
                None => return,
            }
        }
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            return self.any_of(v, branches, name, path);
        }
        if let Some(types) = schema.get("type")
            && !type_fits(v, types)
        {
            let want = expected(types);
            return self.error(path, format!("invalid type: {}, expected {want}", found(v)));
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(v)
        {
            let list = allowed
                .iter()
                .map(|a| {
                    format!(
                        "`{}`",
                        a.as_str().map_or_else(|| a.to_string(), str::to_owned)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let got = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            return self.error(
                path,
                format!("unknown variant `{got}`, expected one of {list}"),
            );
        }
        match v {
            Value::Number(n) => self.number(n, schema, path),
            Value::Object(map) => self.object(map, schema, path),
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        self.check(item, item_schema, None, path);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }

    /// Untagged enums and optional values. A value that fits one branch's type gets that
    /// branch's precise errors (`targets[1].wieght: unknown field`); otherwise one message
    /// says what the key takes.
    fn any_of(
        &mut self,
        v: &Value,
        branches: &'s [Value],
        name: Option<&'s str>,
        path: &mut String,
    ) {
        let non_null: Vec<&'s Value> = branches
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if non_null.len() < branches.len() {
            // An optional value: nothing, or exactly what the one other branch takes.
            match (v.is_null(), non_null.as_slice()) {
                (true, _) => return,
                (false, [only]) => return self.check(v, only, name, path),
                _ => {}
            }
        }
        let mut fitting = Vec::new();
        for b in &non_null {
            let mut sub = Walker {
                defs: self.defs,
                errors: Vec::new(),
            };
            sub.check(v, b, None, path);
            if sub.errors.is_empty() {
                return;
            }
            if self.fits(v, b) {
                fitting.push(sub.errors);
            }
        }
        let structured = v.is_object() || v.is_array();
        let message = name.and_then(untagged_message);
        if fitting.len() == 1 && (structured || message.is_none()) {
            self.errors.extend(fitting.remove(0));
            return;
        }
        let message = message.map_or_else(
            || {
                let kinds: Vec<String> = non_null.iter().map(|b| self.describe(b)).collect();
                format!(
                    "invalid type: {}, expected {}",
                    found(v),
                    kinds.join(" or ")
                )
            },
            str::to_owned,
        );
        self.error(path, message);
    }

    /// Follows `$ref`s to the schema that says what the value is.
    fn resolve(&self, schema: &'s Value) -> &'s Value {
        let mut s = schema;
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let def = r.strip_prefix("#/$defs/").unwrap_or(r);
                    match self.defs.and_then(|d| d.get(def)) {
                        Some(next) => s = next,
                        None => return s,
                    }
                }
                None => return s,
            }
        }
        s
    }

    /// Whether `v` has the JSON type this branch takes (whatever is wrong inside it).
    fn fits(&self, v: &Value, branch: &'s Value) -> bool {
        if let Some(r) = branch.get("$ref").and_then(Value::as_str)
            && (r.ends_with("/Duration") || r.ends_with("/ByteSize"))
        {
            return v.is_string() || v.is_number();
        }
        let s = self.resolve(branch);
        if let Some(t) = s.get("type") {
            return type_fits(v, t);
        }
        if let Some(bs) = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Value::as_array)
        {
            return bs.iter().any(|b| self.fits(v, b));
        }
        // Durations and sizes: strings (and, for sizes, integers).
        v.is_string() || v.is_number()
    }

    fn describe(&self, branch: &'s Value) -> String {
        let s = self.resolve(branch);
        match s.get("type") {
            Some(t) => expected(t),
            None => "a value".into(),
        }
    }

    fn number(&mut self, n: &serde_json::Number, schema: &Value, path: &str) {
        let integer = match schema.get("type") {
            Some(Value::String(t)) => t == "integer",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
            _ => false,
        };
        if !integer {
            return;
        }
        // A float was refused by the type check: this is an integer.
        let max = match schema.get("format").and_then(Value::as_str) {
            Some("uint16") => Some(u64::from(u16::MAX)),
            Some("uint32") => Some(u64::from(u32::MAX)),
            _ => None,
        }
        .or_else(|| schema.get("maximum").and_then(Value::as_u64));
        let min_zero = schema
            .get("minimum")
            .and_then(Value::as_i64)
            .is_some_and(|m| m >= 0);
        if min_zero && n.as_i64().is_some_and(|v| v < 0) {
            return self.error(path, format!("{n} is negative; expected 0 or more"));
        }
        if let (Some(max), Some(u)) = (max, n.as_u64())
            && u > max
        {
            self.error(path, format!("{n} is too large (at most {max})"));
        }
    }

    fn object(&mut self, map: &Map<String, Value>, schema: &'s Value, path: &mut String) {
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        for (k, item) in map {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            match (props.and_then(|p| p.get(k)), extra) {
                (Some(s), _) => self.check(item, s, None, path),
                (None, Some(Value::Bool(false))) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    self.error(path, unknown_field(k, &known));
                }
                (None, Some(s)) if s.is_object() => self.check(item, s, None, path),
                _ => {}
            }
            path.truncate(len);
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    self.error(path, format!("missing field `{r}`"));
                }
            }
        }
    }

    fn duration(&mut self, v: &Value, path: &str) {
        match v {
            Value::String(s) => {
                if let Err(e) = parse_duration(s) {
                    self.error(path, e);
                }
            }
            Value::Number(n) => self.error(
                path,
                format!(
                    "invalid duration {n}: a unit is required (e.g. \"{n}s\" or \"{n}ms\"; units: ms, s, m, h)"
                ),
            ),
            other => self.error(
                path,
                format!(
                    "invalid type: {}, expected a duration like \"250ms\", \"5s\", \"2m\", \"1h\"",
                    found(other)
                ),
            ),
        }
    }

    fn size(&mut self, v: &Value, path: &str) {
        match v {
            Value::String(s) => {
                if let Err(e) = parse_size(s) {
                    self.error(path, e);
                }
            }
            Value::Number(n) if n.as_u64().is_some() => {}
            Value::Number(n) if n.as_i64().is_some() => {
                self.error(path, "a size cannot be negative");
            }
            other => self.error(
                path,
                format!(
                    "invalid type: {}, expected a size like 65536, \"64KiB\", \"10MB\"",
                    found(other)
                ),
            ),
        }
    }
}

/// What an untagged enum of the model takes, in words (serde's own message names no form).
fn untagged_message(name: &str) -> Option<&'static str> {
    Some(match name {
        "ListenConfig" => {
            "expected an address string like \"127.0.0.1:8080\" or a list of listeners"
        }
        "ListenerEntry" => "expected an address string or { addr: ... }",
        "TargetConfig" => "expected a URL string like \"http://127.0.0.1:9001\" or { url, weight }",
        "AccessLogSetting" => {
            "expected `off`, `on`, or { format: text|json, path: stdout|stderr|FILE }"
        }
        "RetryOnConfig" => "expected `connect_failure`, `timeout`, `reset`, `5xx` or a status code",
        _ => return None,
    })
}

fn unknown_field(key: &str, known: &[&str]) -> String {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let close = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match (close, known.is_empty()) {
        (_, true) => format!("unknown field `{key}`: no keys are allowed here"),
        (Some((_, k)), _) => {
            format!("unknown field `{key}` (did you mean `{k}`?), expected one of {list}")
        }
        (None, _) => format!("unknown field `{key}`, expected one of {list}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn type_fits(v: &Value, types: &Value) -> bool {
    let one = |t: &str| match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
    };
    match types {
        Value::String(t) => one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

fn expected(types: &Value) -> String {
    let word = |t: &str| match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "object" => "a map",
        "array" => "a list",
        "null" => "nothing",
        _ => "a value",
    };
    match types {
        Value::String(t) => word(t).to_owned(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(word)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a value".into(),
    }
}

fn found(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(n) => format!("integer {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let v: Value = serde_saphyr::from_str(yaml).expect("yaml");
        validate(&v).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_smallest_file_and_the_example_pass() {
        let min = "listen: \"127.0.0.1:8080\"\nupstreams:\n  echo:\n    targets: [\"http://127.0.0.1:9001\"]\nroutes:\n  - match: { path_prefix: \"/\" }\n    upstream: echo\n";
        assert_eq!(errors(min), Vec::<String>::new());
        let example = include_str!("../../examples/gatehouse.yaml");
        // The example uses ${ENV}; interpolation is not this module's job, the shape is.
        assert_eq!(errors(example), Vec::<String>::new());
    }

    #[test]
    fn every_structural_error_at_once() {
        let yaml = r#"
listen: "127.0.0.1:8080"
bogus: 1
upstreams:
  u:
    targets: ["http://127.0.0.1:1", { url: "http://127.0.0.1:2", wieght: 2 }]
    timeouts: { connect: 5, response: 5x, idle: "1m30s" }
    balance: round_robbin
routes:
  - match: { path_prefx: /a }
    upstream: u
  - match: { path_prefix: /b }
    redirect: { status: 301 }
access_log: maybe
workers: -1
"#;
        let errs = errors(yaml);
        let want = [
            "access_log: expected `off`, `on`",
            "bogus: unknown field `bogus`",
            "routes[0].match.path_prefx: unknown field `path_prefx` (did you mean `path_prefix`?)",
            "routes[1].redirect: missing field `to`",
            "upstreams.u.balance: unknown variant `round_robbin`",
            "upstreams.u.targets[1].wieght: unknown field `wieght` (did you mean `weight`?)",
            "upstreams.u.timeouts.connect: invalid duration 5: a unit is required",
            "upstreams.u.timeouts.idle: invalid duration \"1m30s\"",
            "upstreams.u.timeouts.response: invalid duration \"5x\"",
            "workers: -1 is negative",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }
}
