//! Call templates: `/users/{id}`, `/orders?user={id}&limit={query.limit}`,
//! `/addresses/{user.address_id}`. A value never changes the shape of what it is put into:
//! in a path it is one segment's worth of percent-encoded text (and a value that would be a
//! path of its own once decoded, with a `/`, a `\` or a dot segment, is refused); in a query
//! it is one encoded value (`&`, `=`, `#`, `+` included); in a header it must hold no control
//! character.

use std::fmt::Write;

use http::HeaderName;
use serde_json::Value;

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// A value `match.path` captured.
    Param(String),
    /// `query.NAME`: the client's query parameter (its first value).
    Query(String),
    /// `header.NAME`: the client's request header.
    Header(HeaderName),
    /// `consumer.id`.
    ConsumerId,
    /// `consumer.claims.a.b`: a claim of the consumer's credential (JWT).
    Claim(Vec<String>),
    /// `CALL.a.b.0`: a field of another call's JSON answer (index of the call, path).
    Call(usize, Vec<String>),
}

/// Where a template's text goes, which decides how values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Path,
    Query,
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Ref),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    place: Place,
}

/// What a template may refer to while it is compiled.
pub struct Names<'a> {
    pub params: &'a [&'a str],
    /// The calls of the route, by index.
    pub calls: &'a [&'a str],
}

impl Template {
    /// Parses `{...}` holes. Errors name what is wrong, for the config error.
    pub fn parse(t: &str, place: Place, names: &Names<'_>) -> Result<Template, String> {
        // In a path or a query a `%` is an escape: one that is not complete in the template's
        // own text would be completed by a value (`%2` + `E` is `%2E`, a dot segment).
        if place != Place::Header && !escapes_complete(t) {
            return Err(format!(
                "a `%` in {t:?} does not start an escape (`%XX`); write `%25` for a percent sign"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(i) = rest.find('{') {
            if rest[..i].contains('}') {
                return Err(format!("stray `}}` in {t:?}"));
            }
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let end = rest[i..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {t:?}"))?
                + i;
            let name = rest[i + 1..end].trim();
            parts.push(Part::Value(resolve(name, names)?));
            rest = &rest[end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray `}}` in {t:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts, place })
    }

    /// The calls this template needs the answers of.
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(Ref::Call(i, _)) => Some(*i),
            _ => None,
        })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Fills the holes. `value` looks a reference up (`None`: it has no value); a missing
    /// path value or an unsafe one is an error naming the hole.
    pub fn render(&self, value: &mut dyn FnMut(&Ref) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Value(r) => {
                    let v = value(r);
                    match self.place {
                        Place::Path => {
                            let v = v.ok_or_else(|| format!("{} has no value", describe(r)))?;
                            if v.is_empty() || v == "." || v == ".." {
                                return Err(format!(
                                    "{} is {v:?}, not a path segment",
                                    describe(r)
                                ));
                            }
                            if v.contains('/') || v.contains('\\') {
                                return Err(format!(
                                    "{} holds a `/` or `\\`, which would change the path",
                                    describe(r)
                                ));
                            }
                            encode(&mut out, &v);
                        }
                        Place::Query => encode(&mut out, v.as_deref().unwrap_or("")),
                        Place::Header => {
                            let v = v.unwrap_or_default();
                            if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                                return Err(format!("{} holds a control character", describe(r)));
                            }
                            out.push_str(&v);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Every `%` of the template's text (outside its `{...}` holes) is followed by two hex digits.
fn escapes_complete(t: &str) -> bool {
    let mut in_hole = false;
    let b = t.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'{' => in_hole = true,
            b'}' => in_hole = false,
            b'%' if !in_hole => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// `{a.b}` to a reference.
fn resolve(name: &str, names: &Names<'_>) -> Result<Ref, String> {
    let mut it = name.split('.');
    let head = it.next().unwrap_or("");
    let rest: Vec<String> = it.map(str::to_owned).collect();
    if head.is_empty() || rest.iter().any(String::is_empty) {
        return Err(format!("`{{{name}}}` is not a reference"));
    }
    match head {
        "query" => match rest.as_slice() {
            [n] => Ok(Ref::Query(n.clone())),
            _ => Err(format!("`{{{name}}}`: write `{{query.NAME}}`")),
        },
        "header" => match rest.as_slice() {
            [n] => HeaderName::from_bytes(n.as_bytes())
                .map(Ref::Header)
                .map_err(|_| format!("`{{{name}}}`: {n:?} is not a header name")),
            _ => Err(format!("`{{{name}}}`: write `{{header.NAME}}`")),
        },
        "consumer" => match rest.split_first() {
            Some((id, [])) if id == "id" => Ok(Ref::ConsumerId),
            Some((c, path)) if c == "claims" && !path.is_empty() => Ok(Ref::Claim(path.to_vec())),
            _ => Err(format!(
                "`{{{name}}}`: write `{{consumer.id}}` or `{{consumer.claims.NAME}}`"
            )),
        },
        _ if rest.is_empty() && names.params.contains(&head) => Ok(Ref::Param(head.to_owned())),
        _ => match names.calls.iter().position(|c| *c == head) {
            Some(i) if !rest.is_empty() => Ok(Ref::Call(i, rest)),
            Some(_) => Err(format!(
                "`{{{name}}}`: name a field of the call's answer, e.g. `{{{head}.id}}`"
            )),
            None => {
                let mut known: Vec<String> =
                    names.params.iter().map(|p| format!("{{{p}}}")).collect();
                known.extend(
                    [
                        "{query.NAME}",
                        "{header.NAME}",
                        "{consumer.id}",
                        "{consumer.claims.NAME}",
                    ]
                    .map(String::from),
                );
                known.extend(names.calls.iter().map(|c| format!("{{{c}.FIELD}}")));
                Err(format!(
                    "`{{{name}}}` refers to nothing: no path param or call is named {head:?} (known: {})",
                    known.join(", ")
                ))
            }
        },
    }
}

fn describe(r: &Ref) -> String {
    match r {
        Ref::Param(p) => format!("`{{{p}}}`"),
        Ref::Query(q) => format!("`{{query.{q}}}`"),
        Ref::Header(h) => format!("`{{header.{h}}}`"),
        Ref::ConsumerId => "`{consumer.id}`".to_owned(),
        Ref::Claim(p) => format!("`{{consumer.claims.{}}}`", p.join(".")),
        Ref::Call(_, p) => format!("the call field `{}`", p.join(".")),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(out: &mut String, v: &str) {
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Decodes `%XX` (a malformed escape stays as it is) and, for query values, `+` as a space.
pub fn decode(v: &str, plus_is_space: bool) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON value as template text: strings as they are, numbers and booleans as written;
/// `null`, objects and arrays have no text.
pub fn json_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Follows `a.b.0` into a JSON value (numbers index arrays).
pub fn field<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names<'static> {
        Names {
            params: &["id"],
            calls: &["user", "orders"],
        }
    }

    fn render(t: &str, place: Place, v: &str) -> Result<String, String> {
        let t = Template::parse(t, place, &names()).unwrap();
        t.render(&mut |_| Some(v.to_owned()))
    }

    #[test]
    fn references_resolve_or_name_what_is_known() {
        let t = Template::parse(
            "/a/{id}/{user.address.0}?l={query.limit}",
            Place::Path,
            &names(),
        )
        .unwrap();
        assert_eq!(t.deps().collect::<Vec<_>>(), [0]);
        assert!(
            Template::parse(
                "/{consumer.claims.org}/{header.x-tenant}/{consumer.id}",
                Place::Path,
                &names()
            )
            .is_ok()
        );
        let e = Template::parse("/{nope}", Place::Path, &names()).unwrap_err();
        assert!(
            e.contains("refers to nothing") && e.contains("{user.FIELD}"),
            "{e}"
        );
        for bad in [
            "/{user}",
            "/{query}",
            "/{header.bad name}",
            "/{a",
            "/a}",
            "/{}",
            "/{user..x}",
        ] {
            assert!(
                Template::parse(bad, Place::Path, &names()).is_err(),
                "{bad}"
            );
        }
    }

    /// Found by the `aggregate_template` fuzz target: `/%2{id}` with the value `E` rendered
    /// `/%2E`, a dot segment once decoded.
    #[test]
    fn an_incomplete_escape_in_the_text_is_refused() {
        for place in [Place::Path, Place::Query] {
            for bad in ["/%2{id}", "/a%", "/%zz/{id}", "/%4"] {
                let e = Template::parse(bad, place, &names()).unwrap_err();
                assert!(e.contains("escape"), "{bad}: {e}");
            }
            assert!(Template::parse("/a%20b/{id}%2F", place, &names()).is_ok());
        }
        assert!(Template::parse("50% {id}", Place::Header, &names()).is_ok());
    }

    #[test]
    fn values_cannot_change_the_path_query_or_headers() {
        assert_eq!(
            render("/u/{id}", Place::Path, "a b?c#d").unwrap(),
            "/u/a%20b%3Fc%23d"
        );
        assert_eq!(render("/u/{id}", Place::Path, "42").unwrap(), "/u/42");
        for bad in ["../admin", "..", ".", "", "a/b", "a\\b"] {
            assert!(render("/u/{id}", Place::Path, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            render("x={id}", Place::Query, "1&admin=true#frag").unwrap(),
            "x=1%26admin%3Dtrue%23frag"
        );
        assert_eq!(
            render("x={id}", Place::Query, "%2F..\r\n").unwrap(),
            "x=%252F..%0D%0A"
        );
        assert!(render("{id}", Place::Header, "a\r\nx-admin: 1").is_err());
        assert_eq!(
            render("Bearer {id}", Place::Header, "t0k").unwrap(),
            "Bearer t0k"
        );
    }

    #[test]
    fn decoding_and_fields() {
        assert_eq!(decode("a%20b+c%2", true), "a b c%2");
        assert_eq!(decode("%2e%2E", false), "..");
        let v: Value = serde_json::json!({"a": {"b": [1, {"c": "x"}]}});
        assert_eq!(
            field(&v, &["a".into(), "b".into(), "1".into(), "c".into()]),
            Some(&Value::from("x"))
        );
        assert_eq!(json_text(&serde_json::json!(42)), Some("42".into()));
        assert_eq!(json_text(&serde_json::json!(null)), None);
    }
}
