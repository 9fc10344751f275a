//! Rate limits (memory store), tried from outside: real gateway, echo upstream, raw clients.

mod common;

use base64::Engine;
use common::raw::{RawClient, RawResponse};
use common::{TestGateway, TestUpstream};

async fn call(gw: &TestGateway, headers: &[(&str, &str)]) -> RawResponse {
    let mut c = RawClient::connect(gw.addr).await;
    let mut req = "GET /r HTTP/1.1\r\nHost: x\r\n".to_owned();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(&req).await;
    c.response().await.response()
}

fn route_config(upstream: &str, route_extra: &str, top: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{top}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n{route_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&route_config(
        &up.url(),
        "    rate_limit: { key: client_ip, limit: 3/min, burst: 2 }\n",
        "",
    ))
    .await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = call(&gw, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        remaining.push(r.header("ratelimit-remaining").unwrap_or("").to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = call(&gw, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.json()["request_id"].as_str().is_some());
    let retry: u64 = r.header("retry-after").unwrap_or("0").parse().unwrap_or(0);
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        up.hits(),
        3,
        "the limited request never reached the upstream"
    );
    let metrics = gw.gw.metrics.encode();
    assert!(metrics.contains("result=\"limited\""), "{metrics}");

    // The budget survives a reload (the store is kept beside the runtime).
    gw.control.reapply_current("test").await.expect("reload");
    assert_eq!(call(&gw, &[]).await.status, 429);
}

/// A global limit keyed by consumer sees the consumer the route's `auth` found, because
/// authentication runs in an earlier phase whatever the config order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_by_consumer_sees_the_routes_authentication() {
    use argon2::PasswordHasher;
    let up = TestUpstream::echo("u").await;
    let hash = |pw: &str| {
        argon2::Argon2::default()
            .hash_password(pw.as_bytes())
            .expect("hash")
            .to_string()
    };
    let top = format!(
        "global:\n  rate_limit: {{ key: consumer, limit: 2/min, burst: 1 }}\nconsumers:\n  - {{ id: ann, basic_auth: {{ username: ann, password_hash: \"{}\" }} }}\n  - {{ id: ben, basic_auth: {{ username: ben, password_hash: \"{}\" }} }}\n",
        hash("ann-pw"),
        hash("ben-pw")
    );
    let gw = TestGateway::start(&route_config(
        &up.url(),
        "    auth: { methods: [basic] }\n",
        &top,
    ))
    .await;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let ann = basic("ann", "ann-pw");
    let ben = basic("ben", "ben-pw");
    assert_eq!(call(&gw, &[("authorization", &ann)]).await.status, 200);
    assert_eq!(call(&gw, &[("authorization", &ann)]).await.status, 200);
    assert_eq!(call(&gw, &[("authorization", &ann)]).await.status, 429);
    // Ben has his own budget: the key is the consumer, not the client address.
    assert_eq!(call(&gw, &[("authorization", &ben)]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_and_cors_on_a_429() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&route_config(
        &up.url(),
        "    rate_limit: { key: \"header:x-tenant\", limit: 1/min }\n    cors: { origins: [\"https://app.example.com\"] }\n",
        "",
    ))
    .await;
    let origin = ("origin", "https://app.example.com");
    assert_eq!(call(&gw, &[("x-tenant", "a"), origin]).await.status, 200);
    let r = call(&gw, &[("x-tenant", "a"), origin]).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "CORS headers on the 429, so the browser's script can read it"
    );
    assert_eq!(call(&gw, &[("x-tenant", "b"), origin]).await.status, 200);
    // No tenant header: counted by the client address instead, never uncounted.
    assert_eq!(call(&gw, &[]).await.status, 200);
    assert_eq!(call(&gw, &[]).await.status, 429);
}

#[tokio::test]
async fn bad_limits_are_config_errors() {
    let yaml = route_config(
        "http://127.0.0.1:1",
        "    rate_limit: { key: [consumer, \"cookie:x\"], limit: 10/day }\n",
        "",
    );
    let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("refused");
    for key in ["routes[0].rate_limit.key[1]", "routes[0].rate_limit.limit"] {
        assert!(errors.iter().any(|e| e.path == key), "{key}: {errors:?}");
    }
}

/// Two gateway instances sharing one Redis enforce one budget: with a limit of 10, twenty
/// requests spread over both let exactly ten through. Then Redis dies: requests keep being
/// served (decided locally), none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget_through_redis() {
    let mut redis = common::servers::Redis::start();
    let up = TestUpstream::echo("u").await;
    let yaml = route_config(
        &up.url(),
        "    rate_limit: { key: client_ip, limit: 10/min, burst: 9 }\n",
        &format!(
            "store: {{ redis: {{ url: \"{}\", timeout: 200ms }} }}\n",
            redis.url()
        ),
    );
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    let mut passed = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = call(gw, &[]).await;
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
        if r.status == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 10, "one budget across both instances");

    // Redis goes away: the gateway keeps serving, deciding locally.
    redis.kill();
    let c = TestGateway::start(&route_config(
        &up.url(),
        "    rate_limit: { key: client_ip, limit: 1000/s, burst: 100 }\n",
        &format!(
            "store: {{ redis: {{ url: \"{}\", timeout: 100ms }} }}\n",
            redis.url()
        ),
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(
            call(&c, &[]).await.status,
            200,
            "fail-open to the local limits"
        );
    }
}
