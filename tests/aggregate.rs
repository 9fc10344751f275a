//! Aggregate routes, tried from outside: a real gateway composing the answers of real
//! upstreams (hyper services with scripted delays, and a raw-socket upstream that records the
//! exact bytes each call arrives with), driven by raw clients.

// Tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{RawClient, RawResponse, RawUpstream, Reply};
use common::{TestBody, TestGateway, TestUpstream, full};
use http::{Request, Response};
use hyper::body::Incoming;

/// An upstream answering `body` (JSON) after `delay`, with extra headers; it counts requests
/// and answers every path the same way.
async fn json_upstream(
    delay: Duration,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> TestUpstream {
    TestUpstream::start(Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let mut r: Response<TestBody> = Response::new(full(body));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            for (k, v) in headers {
                r.headers_mut()
                    .insert(*k, http::HeaderValue::from_static(v));
            }
            r
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
    }))
    .await
}

/// An upstream that echoes what it got as JSON: method, path, some headers.
async fn echo() -> TestUpstream {
    TestUpstream::echo("echo").await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut c = RawClient::connect(gw.addr).await;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: agg.test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(&req).await;
    c.response_within(false, Duration::from_secs(15))
        .await
        .response()
}

fn config(upstreams: &[(&str, String)], route: &str) -> String {
    let mut s = "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n".to_owned();
    for (name, url) in upstreams {
        s.push_str(&format!("  {name}: {{ targets: [\"{url}\"] }}\n"));
    }
    s.push_str("routes:\n");
    s.push_str(route);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_calls_run_at_once() {
    let users = json_upstream(
        Duration::from_millis(300),
        200,
        &[],
        r#"{"id": 7, "name": "Ann"}"#,
    )
    .await;
    let orders = json_upstream(
        Duration::from_millis(300),
        200,
        &[],
        r#"[{"id": 1}, {"id": 2}]"#,
    )
    .await;
    let prefs = json_upstream(Duration::from_millis(300), 200, &[], r#"{"theme": "dark"}"#).await;
    let gw = TestGateway::start(&config(
        &[
            ("users", users.url()),
            ("orders", orders.url()),
            ("prefs", prefs.url()),
        ],
        r#"  - name: dashboard
    match: { path: "/dashboard/{id}", methods: [GET] }
    aggregate:
      user:   { upstream: users,  path: "/users/{id}" }
      orders: { upstream: orders, path: "/orders?user={id}" }
      prefs:  { upstream: prefs,  path: "/prefs/{id}" }
"#,
    ))
    .await;
    // Warm the connections, then time one request.
    get(&gw, "/dashboard/7", &[]).await;
    let t = Instant::now();
    let r = get(&gw, "/dashboard/7", &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"id": 7, "name": "Ann"}, "orders": [{"id": 1}, {"id": 2}], "prefs": {"theme": "dark"}})
    );
    assert!(
        took < Duration::from_millis(600),
        "three 300 ms calls took {took:?}: not concurrent"
    );
    assert!(r.header("x-gatehouse-degraded").is_none());
    let m = gw.gw.metrics.encode();
    assert!(
        m.contains(
            "gatehouse_aggregate_calls_total{route=\"dashboard\",call=\"orders\",result=\"ok\"} 2"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_uses_anothers_answer_waits_for_it() {
    let users = json_upstream(
        Duration::from_millis(200),
        200,
        &[],
        r#"{"id": 7, "address_id": "a-42", "tags": ["x", "y"]}"#,
    )
    .await;
    let body = r#"{"street": "Main St", "city": "X", "zip": "1"}"#;
    let geo = RawUpstream::always(Reply::raw(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )))
    .await;
    let gw = TestGateway::start(&config(
        &[("users", users.url()), ("geo", geo.url())],
        r#"  - name: dashboard
    match: { path: "/dashboard/{id}" }
    aggregate:
      user:    { upstream: users, path: "/users/{id}" }
      address: { upstream: geo, path: "/addresses/{user.address_id}?tag={user.tags.1}", select: [street, city] }
"#,
    ))
    .await;
    let t = Instant::now();
    let r = get(&gw, "/dashboard/7", &[("x-request-id", "rid-123")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        r.json()["address"],
        serde_json::json!({"street": "Main St", "city": "X"})
    );
    let reqs = geo.wait_requests(1).await;
    let head = String::from_utf8_lossy(&reqs[0]);
    assert!(
        head.starts_with("GET /addresses/a-42?tag=y HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-request-id: rid-123\r\n"), "{head}");
    assert!(lower.contains("\r\ntraceparent: 00-"), "{head}");
    assert!(
        lower.contains(&format!("\r\nhost: {}\r\n", geo.addr)),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_give_partial_answers_or_name_the_call() {
    let users = json_upstream(Duration::ZERO, 200, &[], r#"{"id": 7}"#).await;
    let broken = json_upstream(Duration::ZERO, 500, &[], r#"{"oops": true}"#).await;
    let slow = json_upstream(Duration::from_secs(3), 200, &[], r#"{"late": true}"#).await;
    let html = json_upstream(Duration::ZERO, 200, &[], "<html>not json</html>").await;
    let big = json_upstream(
        Duration::ZERO,
        200,
        &[],
        r#"{"pad": "0123456789012345678901234567890123456789"}"#,
    )
    .await;
    let ups = [
        ("users", users.url()),
        ("broken", broken.url()),
        ("slow", slow.url()),
        ("html", html.url()),
        ("big", big.url()),
    ];
    let gw = TestGateway::start(&config(
        &ups,
        r#"  - name: partial
    match: { path: "/partial" }
    aggregate:
      user:   { upstream: users, path: "/u" }
      orders: { upstream: broken, path: "/o", required: false, default: [] }
      recs:   { upstream: slow, path: "/r", required: false, timeout: 200ms }
      page:   { upstream: html, path: "/p", required: false }
      large:  { upstream: big, path: "/b", required: false, max_body_size: 16 }
  - name: required-error
    match: { path: "/required-error" }
    aggregate:
      user:   { upstream: users, path: "/u" }
      orders: { upstream: broken, path: "/o" }
      after:  { upstream: users, path: "/after/{orders.id}" }
  - name: required-timeout
    match: { path: "/required-timeout" }
    aggregate:
      recs:   { upstream: slow, path: "/r", timeout: 200ms }
  - name: deadline
    match: { path: "/deadline" }
    timeout: 300ms
    aggregate:
      user: { upstream: users, path: "/u" }
      recs: { upstream: slow, path: "/r" }
"#,
    ))
    .await;

    let t = Instant::now();
    let r = get(&gw, "/partial", &[]).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the optional call's timeout held"
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"], serde_json::json!({"id": 7}));
    assert_eq!(v["orders"], serde_json::json!([]), "its default");
    for k in ["recs", "page", "large"] {
        assert!(v.get(k).is_none(), "{k} left out: {v}");
    }
    assert_eq!(v["_errors"]["orders"]["error"], "bad_status");
    assert_eq!(v["_errors"]["recs"]["error"], "timeout");
    assert_eq!(v["_errors"]["page"]["error"], "not_json");
    assert_eq!(v["_errors"]["large"]["error"], "too_large");
    assert_eq!(
        r.header("x-gatehouse-degraded"),
        Some("orders, recs, page, large")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let r = get(&gw, "/required-error", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "aggregate_call_failed");
    assert_eq!(v["call"], "orders", "the root cause, not its dependant");
    assert!(v["request_id"].is_string());
    assert!(v["message"].as_str().unwrap().contains("500"), "{v}");

    let r = get(&gw, "/required-timeout", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["call"], "recs");

    let t = Instant::now();
    let r = get(&gw, "/deadline", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["call"], "recs");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // The gateway keeps serving.
    assert_eq!(get(&gw, "/partial", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_shaped_and_merged() {
    let users = json_upstream(
        Duration::ZERO,
        200,
        &[],
        r#"{"data": {"id": 7, "name": "Ann", "password_hash": "x", "email": "a@x"}, "meta": {}}"#,
    )
    .await;
    let stats = json_upstream(
        Duration::ZERO,
        200,
        &[],
        r#"{"id": 99, "visits": 3, "name": "other"}"#,
    )
    .await;
    let list = json_upstream(
        Duration::ZERO,
        200,
        &[],
        r#"{"items": [{"sku": "a", "cost": 1, "internal": 1}, {"sku": "b", "cost": 2, "internal": 2}]}"#,
    )
    .await;
    let gw = TestGateway::start(&config(
        &[("users", users.url()), ("stats", stats.url()), ("list", list.url())],
        r#"  - name: shaped
    match: { path: "/shaped" }
    aggregate:
      user:  { upstream: users, path: "/u", pointer: /data, omit: [password_hash], rename: { email: contact }, merge: true }
      stats: { upstream: stats, path: "/s", merge: true }
      items: { upstream: list, path: "/l", pointer: /items, select: [sku, cost] }
"#,
    ))
    .await;
    let r = get(&gw, "/shaped", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({
            "id": 7, "name": "Ann", "contact": "a@x",
            "visits": 3,
            "items": [{"sku": "a", "cost": 1}, {"sku": "b", "cost": 2}]
        }),
        "the first call listed wins a clash (id, name)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_never_change_the_call_they_go_into() {
    let up = RawUpstream::always(Reply::raw(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ))
    .await;
    let gw = TestGateway::start(&config(
        &[("u", up.url())],
        r#"  - name: inject
    match: { path: "/i/{id}" }
    aggregate:
      a: { upstream: u, path: "/items/{id}?q={query.q}&h={header.x-h}", headers: { x-tenant: "{query.t}" } }
"#,
    ))
    .await;
    // Query values: `&`, `=`, `#`, CR/LF and encoded slashes stay inside their value.
    let r = get(
        &gw,
        "/i/42?q=1%26admin%3Dtrue%23x&t=acme",
        &[("x-h", "a b/../c")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.wait_requests(1).await;
    let head = String::from_utf8_lossy(&reqs[0]).into_owned();
    assert!(
        head.starts_with("GET /items/42?q=1%26admin%3Dtrue%23x&h=a%20b%2F..%2Fc HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nx-tenant: acme\r\n"),
        "{head}"
    );

    // A path value that would be a path of its own once decoded is refused, never sent.
    for bad in ["/i/..%2Fadmin", "/i/%2E%2E%2Fadmin", "/i/a%5Cb"] {
        let r = get(&gw, bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["call"], "a");
    }
    // A header value with CR/LF is refused.
    let r = get(&gw, "/i/1?t=x%0D%0Ax-admin:%201", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.requests().len(), 1, "nothing else reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_composite_is_answered_without_calls() {
    let users = json_upstream(
        Duration::ZERO,
        200,
        &[("cache-control", "max-age=60")],
        r#"{"id": 1}"#,
    )
    .await;
    let orders = json_upstream(
        Duration::ZERO,
        200,
        &[("cache-control", "max-age=5")],
        r#"[]"#,
    )
    .await;
    let gw = TestGateway::start(&config(
        &[("users", users.url()), ("orders", orders.url())],
        r#"  - name: dash
    match: { path: "/dash/{id}" }
    cache: { ttl: 300s }
    aggregate:
      user:   { upstream: users, path: "/users/{id}" }
      orders: { upstream: orders, path: "/orders/{id}" }
"#,
    ))
    .await;
    let first = get(&gw, "/dash/1", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("cache-control"),
        Some("max-age=5"),
        "the shortest part"
    );
    assert!(first.header("cache-status").unwrap().contains("stored"));
    let second = get(&gw, "/dash/1", &[]).await;
    assert!(
        second.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        second.header("cache-status")
    );
    assert_eq!(second.body, first.body);
    assert_eq!(
        (users.hits(), orders.hits()),
        (1, 1),
        "no call for the cached answer"
    );
}

#[test]
fn config_errors_name_the_call() {
    for (route, key, what) in [
        (
            "aggregate: { a: { upstream: u, path: \"/a/{b.id}\" }, b: { upstream: u, path: \"/b/{a.id}\" } }",
            "routes[0].aggregate",
            "cycle",
        ),
        (
            "aggregate: { a: { upstream: u, path: \"/a/{nope.id}\" } }",
            "routes[0].aggregate.a.path",
            "refers to nothing",
        ),
        (
            "aggregate: { a: { upstream: missing, path: \"/a\" } }",
            "routes[0].aggregate.a.upstream",
            "no upstream named",
        ),
        (
            "upstream: u\n    aggregate: { a: { upstream: u, path: \"/a\" } }",
            "routes[0]",
            "exactly one of",
        ),
        (
            "aggregate: { query: { upstream: u, path: \"/a\" } }",
            "routes[0].aggregate.query",
            "reserved",
        ),
        (
            "upstream: u\n    timeout: 1s",
            "routes[0].timeout",
            "aggregate",
        ),
    ] {
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  u: {{ targets: [\"http://127.0.0.1:9\"] }}\nroutes:\n  - match: {{ path: \"/x/{{id}}\" }}\n    {route}\n"
        );
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
        let errs = match gatehouse::compile::compile(&cfg, &Default::default()) {
            Ok(_) => panic!("{route} compiled"),
            Err(e) => e,
        };
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains(key) && e.to_string().contains(what)),
            "{route}: {errs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_the_consumer_reach_the_calls() {
    let up = echo().await;
    let gw = TestGateway::start(&format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nconsumers:\n  - {{ id: ann, api_keys: [{{ hash: \"{}\" }}] }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - name: me\n    match: {{ path: /me }}\n    auth: {{ methods: [api_key] }}\n    aggregate:\n      profile: {{ upstream: u, path: \"/profiles/{{consumer.id}}\", forward_headers: [accept-language] }}\n",
        gatehouse_sha256("k-ann"),
        up.url()
    ))
    .await;
    let r = get(&gw, "/me", &[]).await;
    assert_eq!(r.status, 401);
    let r = get(
        &gw,
        "/me",
        &[("x-api-key", "k-ann"), ("accept-language", "fr")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["profile"]["path"], "/profiles/ann");
    assert_eq!(v["profile"]["headers"]["accept-language"][0], "fr");
    assert!(
        v["profile"]["headers"].get("x-api-key").is_none(),
        "not forwarded"
    );
}

fn gatehouse_sha256(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_call_is_reused_by_the_next_requests() {
    let users = json_upstream(Duration::ZERO, 200, &[], r#"{"id": 1}"#).await;
    let stock = json_upstream(
        Duration::ZERO,
        200,
        &[("cache-control", "no-store")],
        r#"{"n": 3}"#,
    )
    .await;
    let fx = json_upstream(
        Duration::ZERO,
        200,
        &[("cache-control", "max-age=60")],
        r#"{"eur": 1.1}"#,
    )
    .await;
    let gw = TestGateway::start(&config(
        &[
            ("users", users.url()),
            ("stock", stock.url()),
            ("fx", fx.url()),
        ],
        r#"  - name: page
    match: { path: "/page/{id}" }
    aggregate:
      user:  { upstream: users, path: "/users/{id}", cache: { ttl: 30s } }
      stock: { upstream: stock, path: "/stock", cache: { ttl: 30s } }
      fx:    { upstream: fx, path: "/fx" }
"#,
    ))
    .await;
    for _ in 0..3 {
        let r = get(&gw, "/page/1", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["user"]["id"], 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(users.hits(), 1, "the user call is kept (30 s)");
    assert_eq!(stock.hits(), 3, "a no-store answer is never kept");
    assert_eq!(fx.hits(), 3, "a call without cache: always goes");
    // Another param is another call.
    get(&gw, "/page/2", &[]).await;
    assert_eq!(users.hits(), 2);
    let m = gw.gw.metrics.encode();
    assert!(
        m.contains(
            "gatehouse_aggregate_calls_total{route=\"page\",call=\"user\",result=\"cache_hit\"} 2"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_lists_each_call() {
    let users = json_upstream(Duration::ZERO, 200, &[], r#"{"id": 1}"#).await;
    let slow = json_upstream(Duration::from_secs(2), 200, &[], r#"{}"#).await;
    let dir = common::servers::TempDir::new("agg-log");
    let log = dir.0.join("access.log");
    let gw = TestGateway::start(&format!(
        "listen: \"127.0.0.1:0\"\naccess_log: {{ format: json, path: \"{}\" }}\nupstreams:\n  users: {{ targets: [\"{}\"] }}\n  slow: {{ targets: [\"{}\"] }}\nroutes:\n  - name: page\n    match: {{ path: /page }}\n    aggregate:\n      user: {{ upstream: users, path: /u }}\n      recs: {{ upstream: slow, path: /r, required: false, timeout: 100ms }}\n",
        log.display(),
        users.url(),
        slow.url()
    ))
    .await;
    assert_eq!(get(&gw, "/page", &[]).await.status, 200);
    let line: serde_json::Value = serde_json::from_str(&common::first_line(&log).await).unwrap();
    let calls = line["calls"].as_str().unwrap();
    let parts: Vec<&str> = calls.split(',').collect();
    assert_eq!(parts.len(), 2, "{calls}");
    assert!(parts.iter().any(|p| p.starts_with("user:ok:")), "{calls}");
    assert!(
        parts.iter().any(|p| p.starts_with("recs:timeout:")),
        "{calls}"
    );
}
