//! Loading the config file: read, parse YAML, interpolate `${ENV}`, check the shape against
//! the schema ([`validate`]: every structural error at once), deserialize into the [`model`]
//! with key paths on every error, then [`compile`] into a `Runtime`.
//! Errors are collected (never just the first) and each names the file, the key path and the
//! problem.
//!
//! Error messages never show a secret: an expanded `${NAME}` shows as `${NAME}`, a literal
//! secret (a value at a key such as `token` or a header value, the ones `/config` redacts) as
//! `<redacted>`, and YAML syntax-error snippets are redacted the same way ([`Redactions`]).

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

/// Keys whose values are secrets: `token`, `secret`, `password…`, `…key`, `authorization`.
/// The admin API's `/config` and every error message hide their literal values.
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("token")
        || k.contains("secret")
        || k.starts_with("password")
        || k.ends_with("key")
        || k == "authorization"
}

/// Maps whose every value is treated as a secret: header values (`headers.request.set`,
/// `append`, `match.headers`), the usual homes of upstream credentials and shared-secret gates.
pub fn is_header_map_key(k: &str) -> bool {
    matches!(
        k.to_ascii_lowercase().as_str(),
        "set" | "append" | "headers"
    )
}

/// What error messages must not show, gathered while parsing: expanded `${NAME}` values
/// (shown as the reference) and literal secrets (shown as `<redacted>`). Compile errors are
/// scrubbed with the same list, which travels in [`Config`].
#[derive(Debug, Clone, Default)]
pub struct Redactions {
    /// (value that must not appear, what to show instead, key path it came from).
    pairs: Vec<(String, String, String)>,
}

impl Redactions {
    fn add(&mut self, value: String, shown: String, path: &str) {
        if !value.is_empty() && value != shown {
            self.pairs.push((value, shown, path.to_owned()));
        }
    }

    /// Values of 6 characters or more are hidden wherever they appear; shorter ones (a port,
    /// `true`) only in errors at or under the key they came from, so `routes[1]` does not
    /// become `routes[${ONE}]`.
    pub fn scrub(&self, mut e: ConfigError) -> ConfigError {
        // Longest first (sorted by `finish`), so a value that contains another goes whole.
        for (value, shown, origin) in &self.pairs {
            let here = e.path == *origin
                || e.path
                    .strip_prefix(origin.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
            if value.chars().count() < 6 && !here {
                continue;
            }
            let quoted = format!("{value:?}");
            if e.message.contains(&quoted) {
                e.message = e.message.replace(&quoted, &format!("{shown:?}"));
            }
            if e.message.contains(value.as_str()) {
                e.message = e.message.replace(value.as_str(), shown);
            }
        }
        e
    }

    fn finish(&mut self) {
        self.pairs
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        self.pairs.dedup();
    }

    pub fn scrub_all(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        errors.into_iter().map(|e| self.scrub(e)).collect()
    }

    /// Literal secrets in the value as written (before interpolation): strings and numbers at
    /// secret keys and in header maps, except `${NAME}` references (handled by interpolation).
    fn literals(&mut self, v: &serde_json::Value, secret: bool, path: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    // Everything under a header map is a secret, as `/config` hides it.
                    let inner = secret || is_secret_key(k) || is_header_map_key(k);
                    self.literals(item, inner, path);
                    path.truncate(len);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.literals(item, secret, path);
                    path.truncate(len);
                }
            }
            serde_json::Value::String(s) if secret && !s.contains("${") => {
                self.add(s.clone(), "<redacted>".into(), path);
            }
            // A path's query may carry a credential (`/healthz?token=...`).
            serde_json::Value::String(s) if path.ends_with("path") && s.contains('?') => {
                let query = s.split_once('?').map_or("", |(_, q)| q);
                for kv in query.split('&') {
                    if let Some((_, v)) = kv.split_once('=')
                        && !v.contains("${")
                    {
                        self.add(v.to_owned(), "<redacted>".into(), path);
                    }
                }
            }
            serde_json::Value::Number(n) if secret => {
                self.add(n.to_string(), "<redacted>".into(), path);
            }
            _ => {}
        }
    }
}

/// Parses YAML text into a [`Config`], resolving `${NAME}` with `env`.
pub fn parse_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let marked = mark_quoted_references(text);
    let mut value: serde_json::Value = serde_saphyr::from_str(&marked).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!(
                "invalid YAML: {}",
                redact_snippet(&e.to_string().replace(QUOTED, ""), text)
            ),
        )]
    })?;
    if value.is_null() {
        return Err(vec![ConfigError::new(
            "",
            "the file is empty (at least `listen`, `upstreams` and `routes` are needed)",
        )]);
    }
    let mut errors = Vec::new();
    let mut redactions = Redactions::default();
    redactions.literals(&value, false, &mut String::new());
    // A key that names a file (`tls.client_key`) holds where a secret is, not the secret: the
    // path stays readable in errors, which must say which file is wrong.
    let files: Vec<String> = validate::file_paths(&value)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    redactions.pairs.retain(|(_, _, key)| !files.contains(key));
    interpolate(
        &mut value,
        &mut String::new(),
        env,
        &mut errors,
        &mut redactions,
    );
    redactions.finish();
    // Every structural problem, not just the first one serde would stop at. A value whose
    // `${NAME}` could not be resolved has its error already; its shape is not judged.
    let unresolved: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    errors.extend(
        validate::validate(&value)
            .into_iter()
            .filter(|e| !unresolved.contains(&e.path)),
    );
    if !errors.is_empty() {
        return Err(redactions.scrub_all(errors));
    }
    let mut cfg = serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![redactions.scrub(ConfigError::new(
            path,
            clean_serde_message(&e.into_inner().to_string()),
        ))]
    })?;
    cfg.redactions = redactions;
    Ok(cfg)
}

/// A YAML syntax error quotes the lines around the mistake (`3 |   token: abc`). Those lines
/// are redacted as `/config` would: values at secret keys and in header maps (judged from the
/// whole text, by indentation), and anything after `Bearer ` or `Basic `.
fn redact_snippet(msg: &str, text: &str) -> String {
    let source: Vec<&str> = text.lines().collect();
    let context = secret_context(&source);
    let mut out = String::with_capacity(msg.len());
    for (i, line) in msg.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Snippet lines look like `12 | <source line>`.
        let numbered = line.split_once(" | ").and_then(|(n, rest)| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=source.len()).contains(n))
                .map(|n| (n, line.len() - rest.len(), rest))
        });
        match numbered {
            Some((n, at, rest)) => {
                out.push_str(&line[..at]);
                out.push_str(&redact_yaml_line(rest, context[n - 1]));
            }
            None => out.push_str(&redact_credentials(line)),
        }
    }
    out
}

/// For each line of a YAML text: whether it sits inside a block whose values are secrets
/// (under a secret key or a header map), judged by indentation alone so that it works on
/// text that does not parse.
fn secret_context(lines: &[&str]) -> Vec<bool> {
    // (indent, secret) of the enclosing keys.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push(stack.last().is_some_and(|s| s.1));
            continue;
        }
        while stack.last().is_some_and(|&(i, _)| i >= indent) {
            stack.pop();
        }
        let inside = stack.last().is_some_and(|s| s.1);
        out.push(inside);
        let body = trimmed.trim_start_matches("- ");
        if let Some((key, value)) = body.split_once(':') {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            let opens = value.trim().is_empty() || value.trim().starts_with('#');
            if opens {
                stack.push((
                    indent + (trimmed.len() - body.len()),
                    inside || is_secret_key(key) || is_header_map_key(key),
                ));
            }
        }
    }
    out
}

/// One YAML source line with its secret values replaced: every value when `secret` (the
/// line is inside a secret block), else the values of secret keys and of header maps, in
/// block (`token: x`) and flow (`{ set: { authorization: x } }`) style alike.
fn redact_yaml_line(line: &str, secret: bool) -> String {
    let mut out = String::with_capacity(line.len());
    // For each open flow map: whether its values are secret.
    let mut maps: Vec<bool> = Vec::new();
    let mut key_start = 0usize;
    // The key just before a `{`: whether the map it opens holds secrets.
    let mut last_key_secret = false;
    let mut chars = line.char_indices().peekable();
    let mut in_secret_value = false;
    let mut redacted_this_value = false;
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if !in_secret_value {
                out.push(c);
            }
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '#' if !in_secret_value || redacted_this_value => {
                out.push_str(&line[i..]);
                break;
            }
            '{' => {
                let parent = maps.last().copied().unwrap_or(secret);
                let after_key = line[key_start..i].trim().is_empty() && last_key_secret;
                maps.push(parent || after_key);
                last_key_secret = false;
                in_secret_value = false;
                out.push(c);
                key_start = i + 1;
            }
            '}' | ',' | '[' | ']' => {
                if c == '}' {
                    maps.pop();
                }
                in_secret_value = false;
                out.push(c);
                key_start = i + 1;
            }
            ':' if chars.peek().is_none_or(|(_, n)| n.is_whitespace()) => {
                out.push(c);
                let key = line[key_start..i]
                    .trim()
                    .trim_start_matches("- ")
                    .trim_matches(|c| c == '"' || c == '\'');
                let enclosing = maps.last().copied().unwrap_or(secret);
                last_key_secret = is_secret_key(key) || is_header_map_key(key);
                let rest = line[i + 1..].trim_start();
                let opens = rest.starts_with('{') || rest.is_empty() || rest.starts_with('#');
                let reference = rest.trim_start_matches(['"', '\'']).starts_with("${");
                if !opens && (enclosing || is_secret_key(key)) && !reference {
                    in_secret_value = true;
                    redacted_this_value = true;
                    out.push_str(" <redacted>");
                } else {
                    in_secret_value = false;
                }
                key_start = i + 1;
            }
            '"' | '\'' if !in_secret_value => {
                quote = Some(c);
                out.push(c);
            }
            '"' | '\'' => quote = Some(c),
            _ if in_secret_value => {}
            _ => out.push(c),
        }
        if !in_secret_value {
            redacted_this_value = false;
        }
    }
    // A block-style list item inside a secret block (`- "Bearer x"`).
    if secret && maps.is_empty() && !out.contains(": <redacted>") {
        let trimmed = out.trim_start();
        if let Some(item) = trimmed.strip_prefix("- ")
            && !item.contains(':')
            && !item.trim().starts_with("${")
        {
            let at = out.len() - item.len();
            out.truncate(at);
            out.push_str("<redacted>");
        }
    }
    redact_credentials(&out)
}

/// `Bearer abc…` / `Basic abc…` anywhere: the credential is replaced.
fn redact_credentials(line: &str) -> String {
    let mut out = line.to_owned();
    for scheme in ["Bearer ", "bearer ", "Basic ", "basic "] {
        let mut from = 0;
        while let Some(i) = out[from..].find(scheme) {
            let start = from + i + scheme.len();
            let end = out[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '}' | ']'))
                .map_or(out.len(), |j| start + j);
            if out[start..end].starts_with("${") || start == end {
                from = end;
                continue;
            }
            out.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
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

/// Marks a quoted value that is exactly one reference (`"${VER}"`, `'${VER}'`): YAML parsing
/// forgets the quotes, and the author who wrote them meant a string even when VER is `2`.
const QUOTED: char = '\u{E000}';

fn mark_quoted_references(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("\"${") && !text.contains("'${") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let quote = before.chars().last().filter(|c| *c == '"' || *c == '\'');
        let whole = quote.is_some_and(|q| {
            from.find('}')
                .is_some_and(|end| from[end + 1..].starts_with(q) && !from[..end].contains(q))
        });
        if whole {
            out.push(QUOTED);
        }
        out.push_str("${");
        rest = &from[2..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Replaces `${NAME}` in every string value; `$${` is a literal `${`. Map keys are not touched.
fn interpolate(
    v: &mut serde_json::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
    redactions: &mut Redactions,
) {
    match v {
        serde_json::Value::String(s) if s.contains('$') => {
            // The marker says the whole YAML scalar was one quoted reference only when it is
            // first; anywhere else the text scan was fooled (a quote inside a longer string).
            // Either way none may stay in the value.
            let quoted = s.starts_with(QUOTED);
            s.retain(|c| c != QUOTED);
            // A value that is exactly one unquoted `${NAME}` may stand for a number or a
            // boolean (`workers: ${WORKERS}`), as it would if written literally; a quoted one
            // stays a string.
            let whole =
                !quoted && s.starts_with("${") && s.ends_with('}') && s.matches('$').count() == 1;
            // Every variable's value, and the whole expanded string, show as written.
            let seen = std::cell::RefCell::new(Vec::new());
            let recording = |name: &str| {
                let value = env(name);
                if let Some(val) = &value {
                    seen.borrow_mut()
                        .push((val.clone(), format!("${{{name}}}")));
                }
                value
            };
            let result = interpolate_str(s, &recording);
            for (val, reference) in seen.into_inner() {
                redactions.add(val, reference, path);
            }
            match result {
                Ok(new) => {
                    redactions.add(new.clone(), s.clone(), path);
                    if whole {
                        *v = scalar(new);
                    } else {
                        *s = new;
                    }
                }
                Err(msg) => errors.push(ConfigError::new(path.clone(), msg)),
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env, errors, redactions);
                path.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            // Keys are not interpolated, but a quoted `"${K}":` key was marked: unmark it.
            if map.keys().any(|k| k.contains(QUOTED)) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(k.replace(QUOTED, ""), v);
                }
            }
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                interpolate(item, path, env, errors, redactions);
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
    fn a_quoted_reference_stays_a_string() {
        let env = |k: &str| match k {
            "VER" => Some("2".to_owned()),
            "WORKERS" => Some("3".to_owned()),
            _ => None,
        };
        let yaml = "listen: \"127.0.0.1:0\"\nworkers: ${WORKERS}\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: u\n    headers: { request: { set: { x-version: \"${VER}\", x-single: '${VER}', x-text: \"v${VER}\" } } }\n";
        let cfg = parse_str(yaml, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.workers, Some(3), "an unquoted reference is a number");
        let set = &cfg.routes[0]
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .map(|r| r.set.clone())
            .unwrap_or_default();
        assert_eq!(set["x-version"], "2");
        assert_eq!(set["x-single"], "2");
        assert_eq!(set["x-text"], "v2");
        // Quotes inside longer strings, escaped quotes, keys: no marker leaks anywhere.
        let yaml = "listen: \"127.0.0.1:0\"\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n  - match: { path: /v }\n    respond: { body: '{\"version\": \"${VER}\"}' }\n  - match: { path: /w }\n    respond: { body: \"say \\\"${VER}\\\"\" }\n  - match: { path_prefix: / }\n    upstream: u\n    headers: { request: { set: { \"${VER}\": x, x-b: 'a\"${VER}\"' } } }\n";
        let cfg = parse_str(yaml, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let body = |i: usize| cfg.routes[i].respond.as_ref().and_then(|r| r.body.clone());
        assert_eq!(body(0).as_deref(), Some("{\"version\": \"2\"}"));
        assert_eq!(body(1).as_deref(), Some("say \"2\""));
        let set = cfg.routes[2]
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .map(|r| r.set.clone())
            .unwrap_or_default();
        assert!(set.contains_key("${VER}"), "{set:?}");
        assert_eq!(set["x-b"], "a\"2\"");
        let dump = format!("{cfg:?}");
        assert!(!dump.contains('\u{E000}'), "a marker leaked: {dump}");
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
    fn errors_show_references_and_redact_literal_secrets() {
        let env = |k: &str| match k {
            "NUM" => Some("12345678901234567890".to_owned()),
            "TOK" => Some("sk_live_from_env_1".to_owned()),
            _ => None,
        };
        let yaml = "listen: \"127.0.0.1:8080\"\nadmin:\n  token: ${NUM}\nglobal:\n  headers: { request: { set: \"${TOK}\", append: \"Bearer sk_literal_99\" } }\n";
        let errs = parse_str(yaml, &env).unwrap_err();
        let all: String = errs.iter().map(|e| format!("{e}\n")).collect();
        assert!(!all.contains("12345678901234567890"), "{all}");
        assert!(!all.contains("sk_live_from_env_1"), "{all}");
        assert!(!all.contains("sk_literal_99"), "{all}");
        assert!(
            all.contains("admin.token: invalid type: integer ${NUM}"),
            "{all}"
        );
        assert!(all.contains("\"${TOK}\""), "{all}");
        assert!(all.contains("<redacted>"), "{all}");
        // A short value is hidden only at its own key: `routes[1]` stays `routes[1]`.
        let r = Redactions {
            pairs: vec![("1".into(), "${ONE}".into(), "workers".into())],
        };
        assert_eq!(r.scrub(ConfigError::new("routes[1]", "x 1")).message, "x 1");
        assert_eq!(
            r.scrub(ConfigError::new("workers", "got 1")).message,
            "got ${ONE}"
        );
    }

    #[test]
    fn yaml_snippets_are_redacted() {
        assert_eq!(
            redact_yaml_line(
                "  - headers: { request: { set: { x-gate: gate_b2 } }",
                false
            ),
            "  - headers: { request: { set: { x-gate: <redacted>} }"
        );
        for (yaml, secret) in [
            (
                "listen: x\nroutes:\n  - headers: { request: { set: { authorization: \"Bearer sk_a1\", x-gate: gate_b2 } }\n    upstream: [\n",
                "sk_a1",
            ),
            (
                "listen: x\nroutes:\n  - headers: { request: { set: { x-gate: gate_b2 } }\n    upstream: [\n",
                "gate_b2",
            ),
            ("admin:\n  token: tok_c3_abcdef\n   bad: 1\n", "tok_c3"),
            (
                "global:\n  headers:\n    request:\n      set:\n        x-api: hdr_d4\n     oops: [\n",
                "hdr_d4",
            ),
            ("admin: { token: \"Bearer sk_e5\" \n", "sk_e5"),
        ] {
            let e = parse_str(yaml, &|_| None).unwrap_err();
            let msg = e[0].to_string();
            assert!(msg.contains("invalid YAML"), "{msg}");
            assert!(msg.contains(" | "), "the snippet is kept: {msg}");
            assert!(!msg.contains(secret), "{secret} in {msg}");
        }
        // Keys and ordinary values stay readable.
        assert_eq!(
            redact_yaml_line("  - match: { path_prefix: /users }", false),
            "  - match: { path_prefix: /users }"
        );
        assert_eq!(
            redact_yaml_line("  token: \"${ADMIN}\"", false),
            "  token: \"${ADMIN}\""
        );
        assert_eq!(
            redact_yaml_line("  admin: { addr: x, token: abc } # c", false),
            "  admin: { addr: x, token: <redacted>} # c"
        );
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
