//! Loading the config file: read, parse YAML, interpolate `${ENV}`, check the shape against
//! the schema ([`validate`]: every structural error at once), deserialize into the [`model`]
//! with key paths on every error, then [`compile`] into a `Runtime`.
//! Errors are collected (never just the first) and each names the file, the key path and the
//! problem.

pub mod compile;
pub mod model;
pub mod units;
pub mod validate;

use std::fmt;
use std::path::PathBuf;

pub use model::Config;

/// One problem in a config file, at a key path such as `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {} error{} in config",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", self.file.display(), e)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Every filesystem path this config names, as `(key path, path)`: the values of keys of
    /// type [`units::FilePath`]. `stdout`, `stderr` and `-` name streams, not files, and are
    /// left out.
    pub fn file_paths(&self) -> Vec<(String, String)> {
        let Ok(v) = serde_json::to_value(self) else {
            return Vec::new();
        };
        validate::file_paths(&v)
            .into_iter()
            .filter(|(_, p)| !matches!(p.as_str(), "stdout" | "stderr" | "-"))
            .collect()
    }
}

/// Parses YAML text into a [`Config`], resolving `${NAME}` with `env`.
pub fn parse_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut value: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| vec![ConfigError::new("", format!("invalid YAML: {e}"))])?;
    if value.is_null() {
        return Err(vec![ConfigError::new(
            "",
            "the file is empty (at least `listen`, `upstreams` and `routes` are needed)",
        )]);
    }
    let mut errors = Vec::new();
    interpolate(&mut value, &mut String::new(), env, &mut errors);
    // Every structural problem, not just the first one serde would stop at. A value whose
    // `${NAME}` could not be resolved has its error already; its shape is not judged.
    let unresolved: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    errors.extend(
        validate::validate(&value)
            .into_iter()
            .filter(|e| !unresolved.contains(&e.path)),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ConfigError::new(
            path,
            clean_serde_message(&e.into_inner().to_string()),
        )]
    })
}

/// serde's untagged-enum message says nothing useful; say what is expected instead.
fn clean_serde_message(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("data did not match any variant of untagged enum ") {
        let expected = match rest.trim() {
            "ListenConfig" => {
                "expected an address string like \"127.0.0.1:8080\" or a list of listeners"
            }
            "ListenerEntry" => "expected an address string or { addr: ... }",
            "TargetConfig" => {
                "expected a URL string like \"http://127.0.0.1:9001\" or { url, weight }"
            }
            "AccessLogSetting" => {
                "expected `off`, `on`, or { format: text|json, path: stdout|stderr|FILE }"
            }
            _ => "unexpected value",
        };
        return expected.to_owned();
    }
    msg.to_owned()
}

/// Replaces `${NAME}` in every string value; `$${` is a literal `${`. Map keys are not touched.
fn interpolate(
    v: &mut serde_json::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match v {
        serde_json::Value::String(s) if s.contains('$') => {
            // A value that is exactly one `${NAME}` may stand for a number or a boolean
            // (`workers: ${WORKERS}`), as it would if written literally.
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches('$').count() == 1;
            match interpolate_str(s, env) {
                Ok(new) if whole => *v = scalar(new),
                Ok(new) => *s = new,
                Err(msg) => errors.push(ConfigError::new(path.clone(), msg)),
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env, errors);
                path.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                interpolate(item, path, env, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn scalar(s: String) -> serde_json::Value {
    if let Ok(n) = s.parse::<u64>() {
        return n.into();
    }
    if let Ok(n) = s.parse::<i64>() {
        return n.into();
    }
    match s.as_str() {
        "true" => true.into(),
        "false" => false.into(),
        _ => serde_json::Value::String(s),
    }
}

pub fn interpolate_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let name = &tail[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "invalid environment variable name {name:?} in `${{{name}}}`"
                ));
            }
            let val = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set (used as `${{{name}}}`)")
            })?;
            out.push_str(&val);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr:et #x".into()),
            "PORT" => Some("9001".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolates_env() {
        assert_eq!(
            interpolate_str("a${SECRET}b", &env).as_deref(),
            Ok("as3cr:et #xb")
        );
        assert_eq!(
            interpolate_str("$${SECRET}", &env).as_deref(),
            Ok("${SECRET}")
        );
        assert_eq!(interpolate_str("cost $5", &env).as_deref(), Ok("cost $5"));
        assert!(
            interpolate_str("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(interpolate_str("${OPEN", &env).is_err());
        assert!(interpolate_str("${a-b}", &env).is_err());
    }

    #[test]
    fn missing_env_names_key_path() {
        let yaml = "listen: \"127.0.0.1:8080\"\nupstreams:\n  a:\n    targets: [\"http://127.0.0.1:${NOPE}\"]\nroutes: []\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        assert_eq!(errs[0].path, "upstreams.a.targets[0]");
        assert!(errs[0].message.contains("NOPE"));
    }

    #[test]
    fn whole_env_values_can_be_numbers() {
        let yaml = "listen: \"127.0.0.1:${PORT}\"\nworkers: ${PORT}\n";
        let cfg = parse_str(yaml, &env).unwrap();
        assert_eq!(cfg.workers, Some(9001));
        if let model::ListenConfig::One(l) = cfg.listen {
            assert_eq!(l, "127.0.0.1:9001");
        } else {
            panic!("listen form");
        }
    }

    #[test]
    fn unknown_key_names_path() {
        let yaml =
            "listen: \"127.0.0.1:8080\"\nroutes:\n  - match: { path_prefx: /a }\n    upstream: x\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        assert_eq!(errs[0].path, "routes[0].match.path_prefx");
        assert!(
            errs[0].message.contains("unknown field"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn bad_duration_names_path() {
        let yaml = "listen: \"127.0.0.1:8080\"\nupstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\n    timeouts: { connect: 5x }\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        assert_eq!(errs[0].path, "upstreams.a.timeouts.connect");
        assert!(
            errs[0].message.contains("invalid duration"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn three_independent_mistakes_are_three_errors() {
        let yaml = "listen: \"127.0.0.1:8080\"\nlisten_backlog: 5\nupstreams:\n  a:\n    targets: [\"http://127.0.0.1:1\"]\n    timeouts: { conect: 1s, response: 5 }\nroutes:\n  - match: { path_prefix: / }\n    upstream: a\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen_backlog",
                "upstreams.a.timeouts.conect",
                "upstreams.a.timeouts.response"
            ],
            "{errs:?}"
        );
        assert!(errs[2].message.contains("a unit is required"), "{errs:?}");
    }

    #[test]
    fn an_unset_variable_is_one_error_not_two() {
        let yaml = "listen: \"127.0.0.1:8080\"\nworkers: ${NOPE}\nbogus: 1\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["workers", "bogus"], "{errs:?}");
    }

    #[test]
    fn duplicate_yaml_keys_are_refused() {
        let yaml = "listen: \"127.0.0.1:8080\"\nlisten: \"127.0.0.1:8081\"\n";
        assert!(parse_str(yaml, &env).is_err());
    }

    #[test]
    fn access_log_off_forms() {
        for form in ["off", "false", "\"off\""] {
            let yaml = format!("listen: \"127.0.0.1:8080\"\naccess_log: {form}\n");
            let cfg = parse_str(&yaml, &env).unwrap_or_else(|e| panic!("{form}: {e:?}"));
            assert!(cfg.access_log.is_some());
        }
    }
}
