//! Compile errors and warnings, each with its key path.

use super::*;
use crate::config::parse_str;
use crate::runtime::Cidr;
use crate::upstream::balancer::Balancer;

fn compile_yaml(y: &str) -> Result<Runtime, Vec<ConfigError>> {
    let cfg = parse_str(y, &|_| None)?;
    compile(&cfg, &State::default())
}

fn errors_of(y: &str) -> Vec<(String, String)> {
    match compile_yaml(y) {
        Ok(_) => panic!("expected errors for:\n{y}"),
        Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

const MINIMAL: &str = r#"
listen: "127.0.0.1:8080"
upstreams:
  echo:
    targets: ["http://127.0.0.1:9001"]
routes:
  - match: { path_prefix: "/" }
    upstream: echo
"#;

#[test]
fn minimal_config_compiles() {
    let rt = compile_yaml(MINIMAL).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        rt.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
        vec!["127.0.0.1:8080".parse().unwrap()]
    );
    assert_eq!(rt.routes.len(), 1);
    assert!(rt.warnings.is_empty(), "{:?}", rt.warnings);
    assert!(rt.access_log.is_some());
}

#[test]
fn collects_every_error_with_its_path() {
    let errs = errors_of(
        r#"
listen: "nope"
upstreams:
  a:
    targets: ["ftp://x", {url: "http://127.0.0.1:1", weight: 5000}, "127.0.0.1:2"]
  b:
    targets: []
routes:
  - name: r
    match: { path_prefix: "/a" }
    upstream: a
  - name: r
    match: { path_prefix: "/b", hosts: ["a:1"], methods: ["G T"] }
    upstream: user
  - match: { path: "/x/{id}", path_prefix: "/x" }
    upstream: a
  - match: { path: "/x/{id}" }
    upstream: a
    rewrite: "/y/{nope}"
    use: [missing]
"#,
    );
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "listen",
        "upstreams.a.targets[0]",
        "upstreams.a.targets[1].weight",
        "upstreams.a.targets[2]",
        "upstreams.b.targets",
        "routes[1].name",
        "routes[1].match.hosts[0]",
        "routes[1].match.methods[0]",
        "routes[1].upstream",
        "routes[2].match.path",
        "routes[3].rewrite",
        "routes[3].use[0]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:#?}");
    }
    let dangling = errs
        .iter()
        .find(|(p, _)| p == "routes[1].upstream")
        .unwrap();
    assert!(
        dangling.1.contains("no upstream named \"user\""),
        "{}",
        dangling.1
    );
}

#[test]
fn warns_about_shadowed_routes() {
    let rt = compile_yaml(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  a: { targets: ["http://127.0.0.1:1"] }
routes:
  - { name: first, match: { path_prefix: "/users" }, upstream: a }
  - { name: twin, match: { path_prefix: "/users/" }, upstream: a }
  - { name: get, match: { path_prefix: "/users", methods: [GET] }, upstream: a }
"#,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rt.warnings.len(), 1, "{:?}", rt.warnings);
    assert_eq!(rt.warnings[0].path, "routes[1]");
    assert!(rt.warnings[0].message.contains("\"first\""));
}

#[test]
fn cidr_blocks() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(c.contains("10.9.8.7".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(
        c.contains("::ffff:10.1.2.3".parse().unwrap()),
        "v4-mapped v6"
    );
    let one = Cidr::parse("192.168.1.5").unwrap();
    assert!(one.contains("192.168.1.5".parse().unwrap()));
    assert!(!one.contains("192.168.1.6".parse().unwrap()));
    let v6 = Cidr::parse("fd00::/8").unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert!(mapped.contains("10.1.2.3".parse().unwrap()));
    assert!(!mapped.contains("11.1.2.3".parse().unwrap()));
    for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn strip_prefix_needs_a_prefix() {
    let errs = errors_of(
        r#"
listen: "127.0.0.1:8080"
upstreams: { a: { targets: ["http://127.0.0.1:1"] } }
routes:
  - { match: { path: "/x" }, upstream: a, strip_prefix: true }
"#,
    );
    assert_eq!(errs[0].0, "routes[0].strip_prefix");
}

#[test]
fn admin_beyond_loopback_needs_a_token() {
    let base = "listen: \"127.0.0.1:8080\"\n";
    let errs = errors_of(&format!("{base}admin: {{ addr: \"0.0.0.0:9901\" }}\n"));
    assert_eq!(errs[0].0, "admin.token");
    let errs = errors_of(&format!(
        "{base}admin: {{ addr: \"127.0.0.1:9901\", token: short }}\n"
    ));
    assert_eq!(errs[0].0, "admin.token");
    let errs = errors_of(&format!("{base}admin: {{ addr: \"127.0.0.1:8080\" }}\n"));
    assert_eq!(errs[0].0, "admin.addr");
    let rt = compile_yaml(&format!("{base}admin: {{}}\n")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rt.admin.unwrap().addr, "127.0.0.1:9901".parse().unwrap());
    let rt = compile_yaml(&format!(
        "{base}admin: {{ addr: \"0.0.0.0:9901\", token: 0123456789abcdef }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rt.admin.unwrap().token.is_some());
}

#[test]
fn listen_forms() {
    assert_eq!(
        parse_listen_addr(":8080").unwrap(),
        "0.0.0.0:8080".parse().unwrap()
    );
    assert_eq!(
        parse_listen_addr("[::1]:80").unwrap(),
        "[::1]:80".parse().unwrap()
    );
    assert_eq!(
        parse_listen_addr("localhost:81").unwrap(),
        "127.0.0.1:81".parse().unwrap()
    );
    assert!(parse_listen_addr("127.0.0.1").is_err());
}

#[test]
fn target_urls() {
    assert_eq!(parse_target_url("http://a").unwrap().1.as_str(), "a:80");
    assert!(parse_target_url("http://a:1/x").is_err());
    assert_eq!(parse_target_url("https://a").unwrap().1.as_str(), "a:443");
    assert_eq!(parse_target_url("h2c://a").unwrap().1.as_str(), "a:80");
    assert!(parse_target_url("ftp://a").is_err());
    assert!(parse_target_url("http://u@a").is_err());
    assert!(parse_target_url("a:1").is_err());
}

#[test]
fn policies_chain_in_order() {
    let rt = compile_yaml(
        r#"
listen: "127.0.0.1:8080"
upstreams: { a: { targets: ["http://127.0.0.1:1"] } }
policies:
  p1: { headers: { request: { set: { x-p1: "1" } } } }
global:
  use: [p1]
routes:
  - match: { path_prefix: "/" }
    upstream: a
    use: [p1]
    headers: { response: { remove: [server] } }
"#,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let sources: Vec<&str> = rt.routes[0].chain.iter().map(|b| &*b.source).collect();
    assert_eq!(sources, ["policies.p1", "policies.p1", "inline"]);
}

/// What outlives a reload: claimed at compile time, live only once adopted. A target that
/// stays keeps its health and load even when the target set around it changes (as a DNS
/// answer does); the rotation restarts only when the targets or weights change.
#[test]
fn target_state_outlives_a_change_of_the_target_set() {
    let state = State::default();
    let yaml = |targets: &str| {
        format!(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  u:\n    targets: [{targets}]\n    retries: {{ budget: 30% }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
        )
    };
    let compile_text = |y: &str| compile(&parse_str(y, &|_| None).unwrap(), &state).unwrap();
    let first = compile_text(&yaml("\"http://127.0.0.1:1\""));
    assert!(
        state.registry.is_empty(),
        "compiling alone changes nothing live"
    );
    assert!(
        first.routes[0].stats.get().is_none(),
        "no metric series before adoption"
    );
    state.adopt(&first);
    assert!(first.routes[0].stats.get().is_some());
    let u1 = &first.upstreams["u"];
    let Balancer::RoundRobin(rr1) = &u1.balancer else {
        panic!("round robin")
    };

    let second = compile_text(&yaml("\"http://127.0.0.1:1\", \"http://127.0.0.1:2\""));
    let u2 = &second.upstreams["u"];
    assert!(Arc::ptr_eq(&u1.targets[0].live, &u2.targets[0].live));
    assert!(Arc::ptr_eq(&u1.pool, &u2.pool));
    assert!(Arc::ptr_eq(&u1.retry.budget, &u2.retry.budget));
    let Balancer::RoundRobin(rr2) = &u2.balancer else {
        panic!("round robin")
    };
    assert!(!Arc::ptr_eq(rr1, rr2), "new targets, new rotation");

    // The unchanged config again: everything is the same object.
    state.adopt(&second);
    let third = compile_text(&yaml("\"http://127.0.0.1:1\", \"http://127.0.0.1:2\""));
    let u3 = &third.upstreams["u"];
    let Balancer::RoundRobin(rr3) = &u3.balancer else {
        panic!("round robin")
    };
    assert!(Arc::ptr_eq(rr2, rr3));
    assert!(Arc::ptr_eq(&u2.targets[1].live, &u3.targets[1].live));
}
