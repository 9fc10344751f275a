//! The `gatehouse` binary: check, explain, schema, run with signals, the access log, and memory
//! staying flat while large bodies stream through.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_config_and_the_examples() {
    let cfg = TempConfig::new(
        "listen: \"127.0.0.1:8080\"\nupstreams:\n  echo:\n    targets: [\"http://127.0.0.1:9001\"]\nroutes:\n  - match: { path_prefix: \"/\" }\n    upstream: echo\n",
    );
    let (code, out, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK (1 route, 1 upstream, 0 warnings)"),
        "{out}"
    );
    // Every shipped example must stay valid.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(examples).expect("examples/") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let (code, out, err) = run(&["check", "--config", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            n += 1;
        }
    }
    assert!(n > 0, "no example configs found");
}

#[test]
fn check_names_file_key_path_and_problem() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://127.0.0.1:9001"], timeouts: { connect: 5 } }
routes:
  - { match: { path_prefix: / }, upstream: users }
"#,
    );
    let p = cfg.path.to_str().unwrap();
    let (code, _, err) = run(&["check", "--config", p]);
    assert_eq!(code, 1);
    assert!(err.contains(p), "{err}");
    assert!(err.contains("upstreams.users.timeouts.connect"), "{err}");

    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://127.0.0.1:9001"] }
routes:
  - { name: a, match: { path_prefix: / }, upstream: users }
  - { name: a, match: { path_prefix: /x }, upstream: user }
  - { match: { path_prefix: /y }, upstream: users, bogus: 1 }
"#,
    );
    let (code, _, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[2].bogus") && err.contains("unknown field"),
        "{err}"
    );

    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://127.0.0.1:9001"] }
routes:
  - { name: a, match: { path_prefix: / }, upstream: users }
  - { name: a, match: { path_prefix: /x }, upstream: user }
"#,
    );
    let (code, _, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[1].name: duplicate route name \"a\""),
        "{err}"
    );
    assert!(
        err.contains("routes[1].upstream: no upstream named \"user\" (known: users)"),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");

    // The keys this work added: a misspelt scheduler, a zero read timeout, an incomplete
    // escape in an aggregation template.
    let cfg = TempConfig::new(
        "listen: \"127.0.0.1:8080\"\nscheduler: per-core\nupstreams:\n  users: { targets: [\"http://127.0.0.1:9001\"] }\nroutes:\n  - { match: { path_prefix: / }, upstream: users }\n",
    );
    let (code, _, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("scheduler: unknown variant `per-core`"),
        "{err}"
    );
    let cfg = TempConfig::new(
        "listen: \"127.0.0.1:8080\"\nupstreams:\n  users: { targets: [\"http://127.0.0.1:9001\"], timeouts: { read: 0s } }\nroutes:\n  - match: { path: /page }\n    aggregate:\n      a: { upstream: users, path: \"/x/%2{query.id}\" }\n",
    );
    let (code, _, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstreams.users.timeouts.read: must be more than 0"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].aggregate.a.path") && err.contains("does not start an escape"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "--config", "/nonexistent/gatehouse.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gatehouse.yaml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn check_reports_every_structural_error_in_one_run() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
listen_backlog: 128
upstreams:
  users:
    targets: ["http://127.0.0.1:9001"]
    timeouts: { conect: 1s, response: 2weeks, idle: 5 }
routes:
  - { match: { path_prefix: / }, upstream: users }
"#,
    );
    let p = cfg.path.to_str().unwrap();
    let (code, _, err) = run(&["check", "--config", p]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{p}: 4 errors in config")), "{err}");
    for want in [
        "listen_backlog: unknown field `listen_backlog`",
        "upstreams.users.timeouts.conect: unknown field `conect` (did you mean `connect`?)",
        "upstreams.users.timeouts.response: invalid duration \"2weeks\": unknown unit \"weeks\"",
        "upstreams.users.timeouts.idle: invalid duration 5: a unit is required",
    ] {
        assert!(
            err.lines().any(|l| l.contains(p) && l.contains(want)),
            "missing {want:?} (with the file name) in:\n{err}"
        );
    }
    // The units offered are the ones the 7-day limit can take.
    assert!(err.contains("ms, s, m or h"), "{err}");
    for refused in ["days", "weeks,", "months", "years"] {
        assert!(!err.contains(refused), "{refused} offered in:\n{err}");
    }
}

#[test]
fn durations_accept_only_the_documented_forms() {
    let with = |d: &str| {
        TempConfig::new(&format!(
            "listen: \"127.0.0.1:8080\"\nupstreams:\n  u: {{ targets: [\"http://127.0.0.1:9001\"], timeouts: {{ connect: {d} }} }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: u }}\n"
        ))
    };
    for good in ["250ms", "5s", "2m", "1h", "168h"] {
        let cfg = with(good);
        let (code, out, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
        assert_eq!(code, 0, "{good}: {out}{err}");
    }
    for bad in [
        "5",
        "\"1m30s\"",
        "1.5s",
        "\"5 s\"",
        "5sec",
        "1d",
        "169h",
        "5us",
    ] {
        let cfg = with(bad);
        let (code, _, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
        assert_eq!(code, 1, "{bad} was accepted");
        assert!(err.contains("upstreams.u.timeouts.connect"), "{bad}: {err}");
    }
}

/// YAML 1.1 tools (PyYAML, many editors and linters) read a bare `on`, `off`, `yes`, `no`,
/// `y` or `n` as a boolean, also as a key; the examples quote such keys.
#[test]
fn example_configs_quote_keys_that_yaml_1_1_reads_as_booleans() {
    const BOOLISH: [&str; 10] = ["on", "off", "yes", "no", "y", "n", "On", "Off", "Yes", "No"];
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for e in std::fs::read_dir(examples).expect("examples/") {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split(" #").next().unwrap_or("");
            if code.trim_start().starts_with('#') {
                continue;
            }
            // A key is a word right before `:`, at the start of the line, after `- `, `{` or `,`.
            for (i, _) in code.match_indices(':') {
                let before = &code[..i];
                let word_start = before
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |j| j + 1);
                let word = &before[word_start..];
                let lead = before[..word_start].trim_end();
                let is_key = lead.is_empty() || lead.ends_with(['{', ',', '-']);
                assert!(
                    !(is_key && BOOLISH.contains(&word)),
                    "{}:{}: quote the key `{word}` (YAML 1.1 reads it as a boolean): {line}",
                    p.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn check_warns_about_routes_that_can_never_match() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  u: { targets: ["http://127.0.0.1:9001"] }
routes:
  - { name: users, match: { path_prefix: /users }, upstream: u }
  - { name: users-again, match: { path_prefix: /users }, upstream: u }
  - { name: user, match: { path: "/users/{id}" }, upstream: u }
  - { name: user-get, match: { path: "/users/{uid}", methods: [GET] }, upstream: u }
  - { name: user-get-twin, match: { path: "/users/{x}", methods: [GET] }, upstream: u }
"#,
    );
    let (code, out, err) = run(&["check", "--config", cfg.path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 warnings"), "{out}");
    assert!(
        err.contains("routes[1]: route \"users-again\" can never match"),
        "{err}"
    );
    assert!(
        err.contains("routes[4]: route \"user-get-twin\" can never match"),
        "{err}"
    );
    assert!(!err.contains("\"user-get\" can never"), "{err}");
}

#[test]
fn env_vars_are_interpolated_and_missing_ones_are_errors() {
    let cfg = TempConfig::new(
        "listen: \"127.0.0.1:${GH_TEST_PORT}\"\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9001\"] }\nroutes:\n  - { match: { path_prefix: / }, upstream: u }\n",
    );
    let p = cfg.path.to_str().unwrap();
    let out = Command::new(bin())
        .args(["check", "--config", p])
        .env("GH_TEST_PORT", "8089")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["check", "--config", p])
        .env_remove("GH_TEST_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen: environment variable GH_TEST_PORT is not set"),
        "{err}"
    );
}

#[test]
fn explain_shows_route_params_path_and_policies() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://10.0.0.1:8081", { url: "http://10.0.0.2:8081", weight: 2 }] }
policies:
  tag: { headers: { request: { set: { x-tag: "1" } } } }
global: { use: [tag] }
routes:
  - name: users
    match: { hosts: [api.example.com], path: "/users/{id}" }
    upstream: users
    rewrite: "/v2/users/{id}"
    headers: { response: { set: { x-a: "1" } } }
"#,
    );
    let p = cfg.path.to_str().unwrap();
    let (code, out, _) = run(&[
        "explain",
        "--config",
        p,
        "GET",
        "https://api.example.com/users/7?x=1",
    ]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "route:      users (routes[0])",
        "params:     id=7",
        "forwards:   GET /v2/users/7?x=1 (rewritten)",
        "http://10.0.0.2:8081 weight 2",
        "1. headers [transform] (from policies.tag)",
        "2. headers [transform] (from inline)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out, _) = run(&[
        "explain",
        "--config",
        p,
        "GET",
        "https://other.example.com/users/7",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("none: the gateway answers 404"), "{out}");
}

#[test]
fn explain_shows_an_aggregate_routes_call_graph() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://10.0.0.1:8081"] }
  geo: { targets: ["http://10.0.0.2:8081"] }
routes:
  - name: dashboard
    match: { path: "/dashboard/{id}" }
    timeout: 2s
    aggregate:
      address: { upstream: geo, path: "/addresses/{user.address_id}", required: false, timeout: 300ms }
      user: { upstream: users, path: "/users/{id}" }
"#,
    );
    let p = cfg.path.to_str().unwrap();
    let (code, out, _) = run(&["explain", "--config", p, "GET", "http://x/dashboard/7"]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "aggregates: 2 calls into one JSON answer (deadline 2s)",
        "user: GET users /users/{id}, at once",
        "address: GET geo /addresses/{user.address_id}, after user; optional; timeout 300ms",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        out.find("user: GET").unwrap() < out.find("address: GET").unwrap(),
        "listed in the order they can start:\n{out}"
    );
}

#[test]
fn explain_keeps_the_port_in_host() {
    let cfg = TempConfig::new(
        r#"
listen: "127.0.0.1:8080"
upstreams:
  users: { targets: ["http://10.0.0.1:8081"] }
routes:
  - { name: users, match: { hosts: [api.example.com], path_prefix: /users }, upstream: users }
"#,
    );
    let p = cfg.path.to_str().unwrap();
    let (code, out, _) = run(&[
        "explain",
        "--config",
        p,
        "GET",
        "https://API.example.com:8443/users/7",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("host:       API.example.com:8443 (client's, preserved)"),
        "{out}"
    );
    // A Host header given with -H is what the client sends.
    let (code, out, _) = run(&[
        "explain",
        "--config",
        p,
        "-H",
        "host: api.example.com:9000",
        "GET",
        "/users/7",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("host:       api.example.com:9000 (client's, preserved)"),
        "{out}"
    );
}

#[test]
fn schema_is_json_schema_of_the_config() {
    let (code, out, _) = run(&["schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("schema is JSON");
    assert!(
        v["$schema"]
            .as_str()
            .unwrap_or("")
            .contains("json-schema.org")
    );
    let props = &v["properties"];
    for k in [
        "listen",
        "upstreams",
        "routes",
        "policies",
        "global",
        "access_log",
        "workers",
        "server",
    ] {
        assert!(props.get(k).is_some(), "schema lacks {k}");
    }
    assert_eq!(
        v["additionalProperties"], false,
        "unknown keys must be refused by the schema too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let slow = TestUpstream::delayed(Duration::from_millis(800), "done").await;
    let cfg = TempConfig::new(&simple_config(&[slow.url()]));
    let mut gw = GatewayProcess::start(&cfg.path);
    let url = gw.url("/slow");
    let inflight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"done");
    let code = tokio::task::spawn_blocking(move || {
        let c = gw.wait_exit(Duration::from_secs(10));
        (c, gw)
    })
    .await
    .unwrap();
    assert_eq!(
        code.0,
        Some(0),
        "exit code; log: {:?}",
        code.1.stderr_lines.lock().unwrap()
    );
    // The listener is closed.
    assert!(std::net::TcpStream::connect(code.1.addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_to_a_file() {
    let up = TestUpstream::echo("u").await;
    let dir = TempConfig::new("");
    let log = dir.dir.join("access.log");
    let yaml = format!(
        // One worker: the single-threaded runtime path.
        "listen: \"127.0.0.1:0\"\nworkers: 1\naccess_log: {{ format: json, path: \"{}\" }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        log.display(),
        up.url()
    );
    let cfg = TempConfig::new(&yaml);
    let gw = GatewayProcess::start(&cfg.path);
    let r = send(
        &client(),
        Request::post(gw.url("/a/b?c=d"))
            .header("x-request-id", "rid-1")
            .body(full("12345"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = first_line(&log).await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b?c=d");
    assert_eq!(v["route"], "all");
    assert_eq!(v["upstream_target"], up.addr.to_string());
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"].as_u64(), Some(r.body.len() as u64));
    assert_eq!(v["request_id"], "rid-1");
    assert!(v["duration_ms"].as_f64().is_some());
    assert_eq!(v["trace_id"].as_str().map(str::len), Some(32));
}

/// An upstream that streams `n` bytes of zeros in 64 KiB frames, lazily.
async fn zeros_upstream(n: u64) -> TestUpstream {
    TestUpstream::start(Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            let frames = futures_iter(n, chunk);
            let mut resp = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)));
            resp.headers_mut()
                .insert("content-length", http::HeaderValue::from(n));
            resp
        })
    }))
    .await
}

fn futures_iter(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    struct S {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for S {
        type Item = Result<Frame<Bytes>, BoxError>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(self.chunk.len() as u64);
            self.left -= n;
            let b = self.chunk.slice(..n as usize);
            std::task::Poll::Ready(Some(Ok(Frame::data(b))))
        }
    }
    S { left: total, chunk }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    const SIZE: u64 = 512 * 1024 * 1024;
    let sink = TestUpstream::echo("sink").await;
    let source = zeros_upstream(SIZE).await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  sink: {{ targets: [\"{}\"] }}\n  source: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ match: {{ path_prefix: /up }}, upstream: sink }}\n  - {{ match: {{ path_prefix: /down }}, upstream: source }}\n",
        sink.url(),
        source.url()
    );
    let cfg = TempConfig::new(&yaml);
    let gw = GatewayProcess::start(&cfg.path);
    let baseline = gw.peak_rss_kib();

    // Upload: a streamed body the gateway must pass on without collecting it.
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_iter(
        SIZE,
        Bytes::from(vec![1u8; 64 * 1024]),
    )));
    let req = Request::post(gw.url("/up"))
        .header("content-length", SIZE)
        .body(body)
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], SIZE);

    // Download: counted frame by frame.
    let resp = client()
        .request(Request::get(gw.url("/down")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        assert!(Instant::now() < deadline, "download too slow");
    }
    assert_eq!(got, SIZE);

    let peak = gw.peak_rss_kib();
    // 512 MiB went each way; the gateway's peak must stay within a few tens of MiB of idle.
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_early_is_still_logged() {
    let slow = TestUpstream::delayed(Duration::from_secs(2), "late").await;
    let dir = TempConfig::new("");
    let log = dir.dir.join("access.log");
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: {{ format: json, path: \"{}\" }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ match: {{ path_prefix: / }}, upstream: u }}\n",
        log.display(),
        slow.url()
    );
    let cfg = TempConfig::new(&yaml);
    let gw = GatewayProcess::start(&cfg.path);
    let url = gw.url("/gone");
    let req = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    req.abort();
    let line = first_line(&log).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 499);
    assert_eq!(v["error"], "client_closed");
    assert_eq!(v["path"], "/gone");
}

fn tagged_config(upstream: &str, tag: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    headers: {{ response: {{ set: {{ x-config: {tag} }} }} }}\n"
    )
}

/// Polls (at most 5 s) until responses carry `x-config: want`.
async fn wait_for_config(url: &str, want: &str) -> bool {
    for _ in 0..100 {
        if get(url).await.header("x-config") == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let up = TestUpstream::echo("u").await;
    let cfg = TempConfig::new(&tagged_config(&up.url(), "a"));
    let gw = GatewayProcess::start_with_args(&cfg.path, &["--no-watch"]);
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("a"));
    std::fs::write(&cfg.path, tagged_config(&up.url(), "b")).unwrap();
    // Not watched: nothing changes until SIGHUP.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("a"));
    gw.signal("HUP");
    assert!(
        wait_for_config(&gw.url("/"), "b").await,
        "SIGHUP did not reload"
    );
    // An invalid file on SIGHUP: logged, the running config stays.
    std::fs::write(&cfg.path, "listen: [").unwrap();
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("b"));
    let log = gw.stderr_lines.lock().unwrap().join("\n");
    assert!(
        log.contains("config not applied") && log.contains("invalid YAML"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let up = TestUpstream::echo("u").await;
    let cfg = TempConfig::new(&tagged_config(&up.url(), "a"));
    let gw = GatewayProcess::start(&cfg.path);
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("a"));
    // Replace by rename, as editors and ConfigMaps do.
    let tmp = cfg.dir.join("new.yaml.tmp");
    std::fs::write(&tmp, tagged_config(&up.url(), "b")).unwrap();
    std::fs::rename(&tmp, &cfg.path).unwrap();
    assert!(
        wait_for_config(&gw.url("/"), "b").await,
        "the watcher did not reload"
    );
    // And an in-place write.
    std::fs::write(&cfg.path, tagged_config(&up.url(), "c")).unwrap();
    assert!(
        wait_for_config(&gw.url("/"), "c").await,
        "the watcher did not reload an in-place write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_what_its_banner_promises() {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--https", "127.0.0.2:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("running on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            if let Some(rest) = line.split("curl -sk https://").nth(1) {
                let _ = tx.send(format!("https {}", rest.split('/').next().unwrap_or("")));
            }
            if let Some(rest) = line.split("--cacert ").nth(1) {
                let _ = tx.send(format!(
                    "ca {}",
                    rest.split_whitespace().next().unwrap_or("")
                ));
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(10));
    let Ok(addr) = addr else {
        let _ = child.kill();
        panic!("the demo printed no address");
    };
    let mut https = None;
    let mut ca = None;
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        if let Some(h) = l.strip_prefix("https ") {
            https = Some(h.to_owned());
        }
        if let Some(c) = l.strip_prefix("ca ") {
            ca = Some(c.to_owned());
        }
        if https.is_some() && ca.is_some() {
            break;
        }
    }
    let (Some(https), Some(ca)) = (https, ca) else {
        let _ = child.kill();
        panic!("the demo printed no HTTPS address");
    };
    // HTTPS on the certificate the demo made, verified against it, over HTTP/2.
    let (ip, port) = https.rsplit_once(':').unwrap_or_default();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2", "--cacert", &ca])
        .args(["--resolve", &format!("localhost:{port}:{ip}")])
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://localhost:{port}/users"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"service\": \"users\""), "{text}");
    assert!(text.ends_with("\n2"), "HTTP/2: {text}");
    let base = format!("http://{addr}");
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let j = get(&format!("{base}/users")).await.json();
        instances.insert(j["instance"].as_str().unwrap().to_owned());
    }
    let by_id = get(&format!("{base}/users/42")).await.json();
    let orders = get(&format!("{base}/api/orders/7")).await;
    let missing = get(&format!("{base}/nope")).await;
    let locked = get(&format!("{base}/admin")).await;
    let dashboard = get(&format!("{base}/dashboard/42?limit=5")).await;
    let mut cached = Vec::new();
    for _ in 0..3 {
        cached.push(get(&format!("{base}/cached")).await);
    }
    let mut limited = Vec::new();
    for _ in 0..6 {
        limited.push(get(&format!("{base}/limited")).await.status.as_u16());
    }
    let admin = common::send(
        &common::client(),
        common::get_req(&format!("{base}/admin"))
            .header("authorization", "Basic ZGVtbzpkZW1v")
            .body(common::full(""))
            .unwrap(),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        instances.len(),
        3,
        "balancing across the three users instances: {instances:?}"
    );
    assert_eq!(by_id["path"], "/v1/users/42");
    assert_eq!(orders.json()["path"], "/7");
    assert_eq!(orders.header("x-served-by"), Some("gatehouse-demo"));
    assert_eq!(missing.status, 404);
    assert_eq!(locked.status, 401);
    assert!(
        locked
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic"))
    );
    assert_eq!(admin.status, 200);
    assert_eq!(&limited[..4], [200, 200, 200, 200], "{limited:?}");
    assert!(limited[4..].contains(&429), "{limited:?}");
    assert_eq!(dashboard.status, 200);
    let d = dashboard.json();
    assert_eq!(d["user"]["path"], "/v1/users/42", "{d}");
    assert_eq!(d["orders"]["path"], "/orders?user=42&limit=5", "{d}");
    assert!(d["user"]["instance"].is_string());
    assert!(
        d["user"].get("host").is_none(),
        "select kept only path and instance"
    );
    assert_eq!(
        cached[0].header("cache-status"),
        Some("Gatehouse; fwd=miss; stored")
    );
    for c in &cached[1..] {
        assert!(
            c.header("cache-status")
                .is_some_and(|s| s.starts_with("Gatehouse; hit")),
            "{:?}",
            c.header("cache-status")
        );
        assert_eq!(c.json()["instance"], cached[0].json()["instance"]);
        assert!(c.header("age").is_some());
    }
}

/// The admin address the binary logged (`admin API listening addr=...`), waited for (5 s).
fn admin_addr_of(gw: &GatewayProcess) -> String {
    for _ in 0..100 {
        let lines = gw.stderr_lines.lock().unwrap().clone();
        if let Some(l) = lines.iter().find(|l| l.contains("admin API listening")) {
            let a = l.split("addr=").nth(1).unwrap_or("");
            return a.split_whitespace().next().unwrap_or("").to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no admin listener logged");
}

fn count_lines(gw: &GatewayProcess, needle: &str) -> usize {
    gw.stderr_lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Polls (at most 5 s) until a log line contains every one of `needles`.
async fn wait_for_log(gw: &GatewayProcess, needles: &[&str]) -> bool {
    for _ in 0..100 {
        let found = gw
            .stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)));
        if found {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_costs_one_failed_reload_and_the_status_recovers() {
    let up = TestUpstream::echo("u").await;
    let good = format!(
        "admin: {{ addr: \"127.0.0.1:0\" }}\n{}",
        tagged_config(&up.url(), "a")
    );
    let cfg = TempConfig::new(&good);
    let gw = GatewayProcess::start(&cfg.path);
    let admin = format!("http://{}", admin_addr_of(&gw));
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("a"));

    // A bad file stays in place: one failed attempt, not one every 250 ms.
    std::fs::write(&cfg.path, format!("{good}bogus: 1\n")).unwrap();
    assert!(
        wait_for_log(&gw, &["config not applied"]).await,
        "the watcher did not try the bad file"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let log = gw.stderr_lines.lock().unwrap().join("\n");
    assert_eq!(count_lines(&gw, "config not applied"), 1, "{log}");
    let metrics =
        String::from_utf8_lossy(&get(&format!("{admin}/metrics")).await.body).into_owned();
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"failure\"} 1\n"),
        "{metrics}"
    );
    let st = get(&format!("{admin}/status")).await.json();
    assert_eq!(st["last_reload"]["ok"], false, "{st}");
    assert_eq!(st["last_reload"]["outcome"], "failed", "{st}");
    assert!(
        st["last_reload"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
    assert_eq!(get(&gw.url("/")).await.header("x-config"), Some("a"));

    // The good file back: the status shows the config that runs, not the old failure.
    std::fs::write(&cfg.path, &good).unwrap();
    let mut recovered = serde_json::Value::Null;
    for _ in 0..100 {
        recovered = get(&format!("{admin}/status")).await.json();
        if recovered["last_reload"]["ok"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recovered["last_reload"]["ok"], true, "{recovered}");
    assert_eq!(
        recovered["last_reload"]["outcome"], "unchanged",
        "{recovered}"
    );
    assert_eq!(recovered["last_reload"]["errors"], serde_json::json!([]));
    assert_eq!(recovered["last_reload"]["hash"], recovered["config_hash"]);
    assert_eq!(count_lines(&gw, "config not applied"), 1);

    // SIGHUP with nothing changed still says what it did.
    gw.signal("HUP");
    assert!(
        wait_for_log(&gw, &["config file unchanged", "sighup"]).await,
        "SIGHUP logged no outcome: {}",
        gw.stderr_lines.lock().unwrap().join("\n")
    );
    let st = get(&format!("{admin}/status")).await.json();
    assert_eq!(st["last_reload"]["source"], "sighup", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_removes_its_config_on_exit() {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--https", "127.0.0.2:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("the demo's config is in ").nth(1) {
                let _ = tx.send(rest.trim_end_matches(')').to_owned());
            }
        }
    });
    let Ok(path) = rx.recv_timeout(Duration::from_secs(10)) else {
        let _ = child.kill();
        panic!("the demo did not name its config file");
    };
    let path = std::path::PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is not there while the demo runs",
        path.display()
    );
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the demo did not stop"
    );
    assert!(
        !path.exists(),
        "the demo left its config behind: {}",
        path.display()
    );
}

/// `hash-password` reads the secret from stdin (never argv) and prints what the config stores.
#[test]
fn hash_password_prints_hashes_the_config_accepts() {
    use std::io::Write;
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (code, phc) = run(&["hash-password"], "correct horse\n");
    assert_eq!(code, Some(0));
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let h = gatehouse::policy::consumers::PasswordHash::parse(&phc).unwrap();
    assert!(h.verify(b"correct horse"));
    assert!(!h.verify(b"correct horse\n"));
    let (code, digest) = run(&["hash-password", "--api-key"], "k-42\n");
    assert_eq!(code, Some(0));
    assert_eq!(digest, gatehouse::policy::consumers::key_digest(b"k-42"));
    let (code, _) = run(&["hash-password"], "\n");
    assert_eq!(code, Some(1), "empty input is refused");
}
