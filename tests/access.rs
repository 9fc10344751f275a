//! Access policies end to end: `ip_rules`, `cors` and `forward_auth` on a real gateway in front
//! of real upstreams (and a real auth service), all on 127.0.0.1 ephemeral ports. Requests are
//! written as raw bytes, so the client sends exactly the headers under test.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{RawResponse, exchange};
use common::*;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

/// `METHOD path` with `headers` (`Name: value` lines), on a new connection.
async fn call(gw: &TestGateway, method: &str, path: &str, headers: &[&str]) -> RawResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tokio::time::timeout(Duration::from_secs(10), exchange(gw.addr, head))
        .await
        .expect("no answer within 10 s")
        .response()
}

fn config(upstream: &str, top: &str, routes: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{top}\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n{routes}"
    )
}

fn vary(r: &RawResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
        .collect()
}

fn echoed(r: &RawResponse, header: &str) -> serde_json::Value {
    r.json()["headers"][header].clone()
}

// ---------------------------------------------------------------------------------------------
// ip_rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_allow_and_deny_on_routes() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "",
        r#"
  - match: { path_prefix: /open }
    upstream: u
  - match: { path_prefix: /loopback-only }
    upstream: u
    ip_rules: { allow: [127.0.0.0/8, "::1"] }
  - match: { path_prefix: /lan-only }
    upstream: u
    ip_rules: { allow: [10.0.0.0/8] }
  - match: { path_prefix: /denied }
    upstream: u
    ip_rules: { allow: [127.0.0.0/8], deny: [127.0.0.1] }
"#,
    ))
    .await;
    assert_eq!(call(&gw, "GET", "/open", &[]).await.status, 200);
    assert_eq!(call(&gw, "GET", "/loopback-only", &[]).await.status, 200);
    for path in ["/lan-only", "/denied"] {
        let r = call(&gw, "GET", path, &[]).await;
        assert_eq!(r.status, 403, "{path}");
        let j = r.json();
        assert_eq!(j["error"], "forbidden");
        assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
        assert!(
            !r.text().contains("ip_rules") && !r.text().contains("10.0.0.0"),
            "the rules are not told to the client: {}",
            r.text()
        );
    }
    assert_eq!(up.hits(), 2, "refused requests never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_see_the_forwarded_client_only_behind_a_trusted_proxy() {
    let up = TestUpstream::echo("u").await;
    let routes = r#"
  - match: { path_prefix: / }
    upstream: u
    ip_rules: { allow: [10.0.0.0/8], deny: [10.9.9.9] }
"#;
    let trusted = TestGateway::start(&config(
        &up.url(),
        "server: { trusted_proxies: [\"127.0.0.1\"] }",
        routes,
    ))
    .await;
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}");
    assert_eq!(
        call(&trusted, "GET", "/", &[&xff("10.1.2.3")]).await.status,
        200
    );
    assert_eq!(
        call(&trusted, "GET", "/", &[&xff("192.168.1.1")])
            .await
            .status,
        403
    );
    assert_eq!(
        call(&trusted, "GET", "/", &[&xff("10.9.9.9")]).await.status,
        403,
        "deny wins"
    );
    // The nearest untrusted address decides: a client cannot prepend an allowed one.
    assert_eq!(
        call(&trusted, "GET", "/", &[&xff("10.1.2.3, 192.168.1.1")])
            .await
            .status,
        403
    );
    assert_eq!(
        call(&trusted, "GET", "/", &[]).await.status,
        403,
        "no header: the proxy itself"
    );

    let untrusted = TestGateway::start(&config(&up.url(), "", routes)).await;
    assert_eq!(
        call(&untrusted, "GET", "/", &[&xff("10.1.2.3")])
            .await
            .status,
        403,
        "a spoofed X-Forwarded-For from an untrusted peer does not help"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_ip_rules_refuse_requests_that_match_no_route() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "global: { ip_rules: { deny: [127.0.0.0/8] } }",
        "  - { match: { path_prefix: /api }, upstream: u }\n",
    ))
    .await;
    let r = call(&gw, "GET", "/nowhere", &[]).await;
    assert_eq!(r.status, 403, "not 404: {}", r.text());
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(call(&gw, "GET", "/api", &[]).await.status, 403);
    assert_eq!(up.hits(), 0);

    // Named policies too, and a bad block is a config error with its key path.
    let bad = config(
        &up.url(),
        "policies:\n  office: { ip_rules: { allow: [10.0.0.0/8] } }",
        "  - { match: { path_prefix: / }, upstream: u, use: [office], ip_rules: { allow: [10.0.0.0/8, 10.0.0.300] } }\n",
    );
    let cfg = gatehouse::config::parse_str(&bad, &|_| None).unwrap();
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("a config error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "routes[0].ip_rules.allow[1]");
}

// ---------------------------------------------------------------------------------------------
// cors

const CORS_ROUTES: &str = r#"
  - match: { path_prefix: /api }
    upstream: u
    cors:
      origins: ["https://app.example.com", "https://*.example.org"]
      methods: [GET, PUT]
      expose_headers: [x-total]
      credentials: true
      max_age: 10m
  - match: { path_prefix: /public }
    upstream: u
    cors: { origins: ["*"], headers: [x-token, content-type] }
  - match: { path_prefix: /office }
    upstream: u
    ip_rules: { allow: [10.0.0.0/8] }
    cors: { origins: ["https://app.example.com"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_by_the_gateway() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(&up.url(), "", CORS_ROUTES)).await;
    let preflight = |origin: &'static str, method: &'static str| {
        let gw = &gw;
        async move {
            call(
                gw,
                "OPTIONS",
                "/api/items",
                &[
                    &format!("Origin: {origin}"),
                    &format!("Access-Control-Request-Method: {method}"),
                    "Access-Control-Request-Headers: x-token, content-type",
                ],
            )
            .await
        }
    };
    for origin in ["https://app.example.com", "https://a.b.example.org"] {
        let r = preflight(origin, "PUT").await;
        assert_eq!(r.status, 204, "{origin}: {}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-token, content-type"),
            "no `headers` configured: what the preflight asked for"
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.count("access-control-allow-origin"), 1);
        let vary = r.header("vary").unwrap();
        assert!(vary.contains("Origin") && vary.contains("Access-Control-Request-Headers"));
        assert!(r.header("access-control-expose-headers").is_none());
    }
    // Not allowed: 403, and nothing a browser would take as permission.
    for (origin, method) in [
        ("https://evil.example.com", "PUT"),
        ("https://example.org", "PUT"),
        ("https://app.example.com.evil.test", "GET"),
        ("null", "GET"),
        ("https://app.example.com", "DELETE"),
    ] {
        let r = preflight(origin, method).await;
        assert_eq!(r.status, 403, "{origin} {method}");
        assert_eq!(r.json()["error"], "forbidden");
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-allow")),
            "{origin} {method}: {:?}",
            r.headers
        );
    }
    // `*`: any origin, configured headers only.
    let r = call(
        &gw,
        "OPTIONS",
        "/public",
        &[
            "Origin: https://anyone.test",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: X-Token",
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-token, content-type")
    );
    assert!(r.header("access-control-allow-credentials").is_none());
    let r = call(
        &gw,
        "OPTIONS",
        "/public",
        &[
            "Origin: https://anyone.test",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: x-secret",
        ],
    )
    .await;
    assert_eq!(r.status, 403, "a header outside `headers`");
    assert_eq!(up.hits(), 0, "no preflight reached the upstream");

    // An OPTIONS that is not a preflight is an ordinary request.
    let r = call(
        &gw,
        "OPTIONS",
        "/api/items",
        &["Origin: https://app.example.com"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_on_every_answer_of_the_route() {
    let up = TestUpstream::start(Arc::new(|_req: Request<Incoming>| {
        Box::pin(async {
            // An upstream with its own (too generous) CORS answer: the gateway's replaces it.
            Response::builder()
                .header("access-control-allow-origin", "*")
                .header("vary", "Accept-Encoding")
                .header("x-total", "7")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    let gw = TestGateway::start(&config(&up.url(), "", CORS_ROUTES)).await;
    let origin = "Origin: https://app.example.com";

    let ok = call(&gw, "GET", "/api/items", &[origin]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(ok.count("access-control-allow-origin"), 1);
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-expose-headers"), Some("x-total"));
    assert_eq!(vary(&ok), ["Accept-Encoding", "Origin"]);

    // An origin that is not allowed is forwarded, and gets no CORS headers (not even the
    // upstream's `*`): the browser keeps the answer from the page.
    let other = call(&gw, "GET", "/api/items", &["Origin: https://evil.test"]).await;
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    assert!(other.header("access-control-allow-credentials").is_none());
    let none = call(&gw, "GET", "/api/items", &[]).await;
    assert!(none.header("access-control-allow-origin").is_none());
    assert_eq!(vary(&none), ["Accept-Encoding", "Origin"]);

    // The gateway's own 403 (ip_rules on the same route): the page can read it.
    let refused = call(&gw, "GET", "/office", &[origin]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // Its preflight is answered before the IP rule: the actual request then shows the 403.
    let pre = call(
        &gw,
        "OPTIONS",
        "/office",
        &[origin, "Access-Control-Request-Method: GET"],
    )
    .await;
    assert_eq!(pre.status, 204);

    // A 502 when the upstream is down.
    let hits = up.hits();
    up.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = call(&gw, "GET", "/api/items", &[origin]).await;
    assert_eq!(down.status, 502, "{}", down.text());
    assert_eq!(
        down.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        down.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_config_errors_have_key_paths() {
    for (cors, path) in [
        (
            r#"{ origins: ["*"], credentials: true }"#,
            "routes[0].cors.credentials",
        ),
        (
            r#"{ origins: ["https://ok.test", "https://*.*.example.com"] }"#,
            "routes[0].cors.origins[1]",
        ),
        (
            r#"{ origins: ["https://app.example.com/"] }"#,
            "routes[0].cors.origins[0]",
        ),
        (
            r#"{ origins: ["https://a.test"], max_age: 5s, methods: [GET, "NO GOOD"] }"#,
            "routes[0].cors.methods[1]",
        ),
    ] {
        let yaml = config(
            "http://127.0.0.1:1",
            "",
            &format!("  - {{ match: {{ path_prefix: / }}, upstream: u, cors: {cors} }}\n"),
        );
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).unwrap();
        let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
            .err()
            .unwrap_or_else(|| panic!("{cors} compiled"));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, [path], "{cors}: {errors:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// forward_auth

/// An auth service: `Bearer good` is allowed (as alice, with `x-auth-user` and
/// `x-auth-groups`), `Bearer login` is sent to a login page, anything else gets 401. Keeps
/// the headers of the last request it got.
struct AuthService {
    server: TestUpstream,
    seen: Arc<Mutex<Option<HeaderMap>>>,
}

async fn auth_service(delay: Duration) -> AuthService {
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    let server = TestUpstream::start(Arc::new(move |req: Request<Incoming>| {
        let seen = s2.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            *seen.lock().unwrap() = Some(req.headers().clone());
            match auth.as_deref() {
                Some("Bearer good") => Response::builder()
                    .header("x-auth-user", "alice")
                    .header("x-auth-groups", "staff")
                    .header("x-not-copied", "1")
                    .body(full(""))
                    .unwrap(),
                Some("Bearer login") => Response::builder()
                    .status(302)
                    .header("location", "https://login.example.com/?next=%2F")
                    .body(full(""))
                    .unwrap(),
                _ => Response::builder()
                    .status(401)
                    .header("www-authenticate", "Bearer realm=\"gatehouse\"")
                    .header("content-type", "application/json")
                    .body(full("{\"error\":\"who are you\"}"))
                    .unwrap(),
            }
        })
    }))
    .await;
    AuthService { server, seen }
}

fn auth_routes(auth: &str) -> String {
    format!(
        r#"
  - match: {{ path_prefix: /api }}
    upstream: u
    forward_auth:
      url: "{auth}/check?from=gatehouse"
      response_headers: [x-auth-user, x-auth-groups]
  - match: {{ path_prefix: /cached }}
    upstream: u
    forward_auth:
      url: "{auth}/check"
      response_headers: [x-auth-user]
      cache: 30s
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_allows_and_copies_headers() {
    let up = TestUpstream::echo("u").await;
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&config(&up.url(), "", &auth_routes(&auth.server.url()))).await;
    let r = call(
        &gw,
        "GET",
        "/api/items?page=2",
        &[
            "Authorization: Bearer good",
            "Cookie: session=abc",
            "X-Auth-User: mallory",
            "X-Auth-Groups: admin",
            "X-Forwarded-Uri: /spoofed",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed(&r, "x-auth-user"), serde_json::json!(["alice"]));
    assert_eq!(echoed(&r, "x-auth-groups"), serde_json::json!(["staff"]));
    assert!(echoed(&r, "x-not-copied").is_null());
    assert_eq!(
        echoed(&r, "authorization"),
        serde_json::json!(["Bearer good"])
    );

    let seen = auth.seen.lock().unwrap().clone().unwrap();
    let h = |n: &str| seen.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("authorization").as_deref(), Some("Bearer good"));
    assert_eq!(h("cookie").as_deref(), Some("session=abc"));
    assert_eq!(h("x-forwarded-method").as_deref(), Some("GET"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("api.test"));
    assert_eq!(h("x-forwarded-uri").as_deref(), Some("/api/items?page=2"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert!(
        h("x-auth-user").is_none(),
        "only the configured request headers"
    );

    // Kept-alive connection to the auth service reused: many requests in a row all pass.
    for _ in 0..5 {
        let r = call(&gw, "GET", "/api/x", &["Authorization: Bearer good"]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(auth.server.hits(), 6, "no cache on /api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_denials_reach_the_client_as_they_are() {
    let up = TestUpstream::echo("u").await;
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&config(&up.url(), "", &auth_routes(&auth.server.url()))).await;
    let r = call(&gw, "POST", "/api/items", &["Content-Length: 0"]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\"")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"error\":\"who are you\"}");
    let seen = auth.seen.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-method"], "POST");

    let r = call(&gw, "GET", "/api/items", &["Authorization: Bearer login"]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://login.example.com/?next=%2F")
    );
    assert_eq!(up.hits(), 0, "denied requests never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_fails_closed() {
    let up = TestUpstream::echo("u").await;
    // Nothing listens on a port that was just closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let slow = auth_service(Duration::from_secs(5)).await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "",
        &format!(
            r#"
  - match: {{ path_prefix: /down }}
    upstream: u
    forward_auth: {{ url: "http://{closed}/check" }}
  - match: {{ path_prefix: /slow }}
    upstream: u
    forward_auth: {{ url: "{}/check", timeout: 300ms }}
"#,
            slow.server.url()
        ),
    ))
    .await;
    let r = call(&gw, "GET", "/down", &["Authorization: Bearer good"]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert!(!r.text().contains(&closed.to_string()), "{}", r.text());
    let t = Instant::now();
    let r = call(&gw, "GET", "/slow", &["Authorization: Bearer good"]).await;
    assert_eq!(r.status, 503);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_caches_allow_decisions_only() {
    let up = TestUpstream::echo("u").await;
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&config(&up.url(), "", &auth_routes(&auth.server.url()))).await;
    for i in 0..3 {
        let r = call(
            &gw,
            "GET",
            &format!("/cached/{i}"),
            &["Authorization: Bearer good", "X-Auth-User: mallory"],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            echoed(&r, "x-auth-user"),
            serde_json::json!(["alice"]),
            "cached headers copied, the client's copy removed"
        );
    }
    assert_eq!(auth.server.hits(), 1, "the second request used the cache");
    // Other credentials are another key; denials are asked every time.
    for _ in 0..2 {
        assert_eq!(
            call(&gw, "GET", "/cached", &["Authorization: Bearer bad"])
                .await
                .status,
            401
        );
    }
    assert_eq!(auth.server.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_config_errors_have_key_paths() {
    let yaml = config(
        "http://127.0.0.1:1",
        "policies:\n  sso: { forward_auth: { url: \"ftp://auth\" } }",
        "  - { match: { path_prefix: / }, upstream: u, forward_auth: { url: \"http://auth/check\", request_headers: [\"bad name\"], response_headers: [connection] } }\n",
    );
    let cfg = gatehouse::config::parse_str(&yaml, &|_| None).unwrap();
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("config errors");
    let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "policies.sso.forward_auth.url",
            "routes[0].forward_auth.request_headers[0]",
            "routes[0].forward_auth.response_headers[0]",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cors_covers_denials_and_unmatched_requests() {
    let up = TestUpstream::echo("u").await;
    let auth = auth_service(Duration::ZERO).await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "global: { cors: { origins: [\"https://app.example.com\"], credentials: true } }",
        &auth_routes(&auth.server.url()),
    ))
    .await;
    let origin = "Origin: https://app.example.com";
    // A 401 from forward_auth (a later phase, another policy set).
    let r = call(&gw, "GET", "/api/items", &[origin]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\"")
    );
    // Preflights are answered before authentication: they carry no credentials.
    let pre = call(
        &gw,
        "OPTIONS",
        "/api/items",
        &[origin, "Access-Control-Request-Method: POST"],
    )
    .await;
    assert_eq!(pre.status, 204);
    // The gateway's 404 for a request no route matches.
    let r = call(&gw, "GET", "/nowhere", &[origin]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        auth.server.hits(),
        1,
        "the preflight did not ask the auth service"
    );
    assert_eq!(up.hits(), 0);
}
