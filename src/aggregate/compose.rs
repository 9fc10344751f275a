//! Shaping one call's JSON answer (`pointer`, `select`, `omit`, `rename`) and composing the
//! answers into one document.

use serde_json::{Map, Value};

/// What to keep of a call's answer, applied in this order: `pointer` (a JSON pointer to the
/// part to keep), `select` (only these fields), `omit` (not these), `rename` (`from` → `to`).
/// On an array of objects, `select`, `omit` and `rename` apply to each element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub pointer: Option<String>,
    pub select: Vec<String>,
    pub omit: Vec<String>,
    pub rename: Vec<(String, String)>,
}

impl Shape {
    pub fn is_identity(&self) -> bool {
        self.pointer.is_none()
            && self.select.is_empty()
            && self.omit.is_empty()
            && self.rename.is_empty()
    }

    /// The shaped value; `Err` when the pointer finds nothing.
    pub fn apply(&self, mut v: Value) -> Result<Value, String> {
        if let Some(p) = &self.pointer {
            v = v
                .pointer_mut(p)
                .map(Value::take)
                .ok_or_else(|| format!("the answer has nothing at {p:?}"))?;
        }
        match &mut v {
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(m) = item {
                        self.fields(m);
                    }
                }
            }
            Value::Object(m) => self.fields(m),
            _ => {}
        }
        Ok(v)
    }

    fn fields(&self, m: &mut Map<String, Value>) {
        if !self.select.is_empty() {
            m.retain(|k, _| self.select.iter().any(|s| s == k));
        }
        for k in &self.omit {
            m.remove(k);
        }
        for (from, to) in &self.rename {
            if let Some(v) = m.remove(from) {
                m.insert(to.clone(), v);
            }
        }
    }
}

/// Puts one call's shaped answer into the document: under its name, or (`merge`) its fields
/// at the root, where a field already there is kept (calls merge in the order the config
/// lists them, so the first wins) and the clash is returned.
pub fn place(doc: &mut Map<String, Value>, name: &str, v: Value, merge: bool) -> Vec<String> {
    if !merge {
        doc.insert(name.to_owned(), v);
        return Vec::new();
    }
    let mut clashes = Vec::new();
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                // `_errors` is the gateway's own: a merged answer cannot fake it.
                if doc.contains_key(&k) || k == "_errors" {
                    clashes.push(k);
                } else {
                    doc.insert(k, v);
                }
            }
        }
        // Only an object has fields to merge: anything else goes under the call's name.
        other => {
            doc.insert(name.to_owned(), other);
        }
    }
    clashes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_apply_in_order() {
        let s = Shape {
            pointer: Some("/data".into()),
            select: vec!["id".into(), "name".into(), "secret".into()],
            omit: vec!["secret".into()],
            rename: vec![("name".into(), "full_name".into())],
        };
        let v = json!({"data": {"id": 1, "name": "Ann", "secret": "x", "extra": true}, "meta": 1});
        assert_eq!(s.apply(v).unwrap(), json!({"id": 1, "full_name": "Ann"}));
        let list = json!({"data": [{"id": 1, "secret": 2}, {"id": 2}, 3]});
        assert_eq!(s.apply(list).unwrap(), json!([{"id": 1}, {"id": 2}, 3]));
        assert!(s.apply(json!({"nodata": 1})).is_err());
        assert!(Shape::default().is_identity());
    }

    #[test]
    fn merging_keeps_the_first_and_reports_clashes() {
        let mut doc = Map::new();
        assert!(place(&mut doc, "user", json!({"id": 1, "name": "a"}), true).is_empty());
        let clashes = place(&mut doc, "orders", json!({"id": 9, "orders": []}), true);
        assert_eq!(clashes, ["id"]);
        place(&mut doc, "geo", json!("x"), true);
        place(&mut doc, "raw", json!([1]), false);
        assert_eq!(
            Value::Object(doc),
            json!({"id": 1, "name": "a", "orders": [], "geo": "x", "raw": [1]})
        );
    }
}
