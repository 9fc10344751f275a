//! The module layering, checked from the source: no two top-level modules of `src/` import
//! each other, directly or through others, and the request path does not depend on the config
//! file format. A new `use crate::...` that closes a loop fails here with the loop spelled out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names as `crate::<module>`, outside comments
/// and `#[cfg(test)]` sections.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" || module == "main" {
                continue; // the crate root and the CLI sit above everything
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let set = deps.entry(module.clone()).or_default();
            for line in code.lines() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module && name.chars().all(|c| !c.is_uppercase())
                    {
                        set.insert(name);
                    }
                }
            }
        }
    }
    deps
}

/// A path from `from` back to `from`, if there is one.
fn cycle_through(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in deps.get(&at).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_run_in_a_loop() {
    let deps = imports();
    assert!(deps.len() > 10, "found the modules: {deps:?}");
    let loops: Vec<String> = deps
        .keys()
        .filter_map(|m| cycle_through(&deps, m))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_request_path_does_not_depend_on_the_file_format() {
    let deps = imports();
    for m in [
        "gateway", "proxy", "server", "upstream", "runtime", "context", "body",
    ] {
        for banned in ["compile", "control", "admin"] {
            assert!(
                !deps.get(m).is_some_and(|d| d.contains(banned)),
                "{m} imports {banned}"
            );
        }
    }
    for m in ["gateway", "proxy", "server", "upstream"] {
        assert!(
            !deps.get(m).is_some_and(|d| d.contains("config")),
            "{m} imports the config file format: {:?}",
            deps.get(m)
        );
    }
    // The low modules import nothing of the gateway's.
    for m in ["body", "context", "hop", "router", "registry"] {
        let d = deps.get(m).cloned().unwrap_or_default();
        assert!(d.is_empty(), "{m} imports {d:?}");
    }
}
