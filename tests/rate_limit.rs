//! Rate limits, tried from outside: real gateway, echo upstream, raw clients; the memory
//! store, and the Redis store against real `redis-server`s started here (one node, TLS, a
//! three-master cluster, an outage and its recovery).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::raw::{RawClient, RawResponse};
use common::servers::{Redis, RedisCluster};
use common::{TestGateway, TestUpstream};

async fn call(gw: &TestGateway, headers: &[(&str, &str)]) -> RawResponse {
    call_at(gw.addr, "/r", headers).await
}

async fn call_at(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut c = RawClient::connect(addr).await;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
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

/// The admin API's `/status`.
async fn status(gw: &TestGateway) -> serde_json::Value {
    common::get(&gw.admin_url("/status")).await.json()
}

async fn metrics(gw: &TestGateway) -> String {
    String::from_utf8_lossy(&common::get(&gw.admin_url("/metrics")).await.body).into_owned()
}

/// Waits (at most `within`) until both gateways' store reports `up`.
async fn wait_store(gws: &[&TestGateway], up: bool, within: Duration) {
    let deadline = Instant::now() + within;
    for gw in gws {
        loop {
            let st = status(gw).await;
            if st["store"]["up"] == up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "store up={up} not reached within {within:?}: {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `rediss://` to a redis-server that has a certificate from the test's own CA and asks for
/// client certificates: with `tls: { ca, cert, key }` two instances share one budget; without
/// the CA (the system's store does not know it) or without a client certificate the TLS
/// session fails, and the gateway keeps serving on its local limits, saying why in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let ca = common::pki::Ca::new("redis test CA");
    let server = ca.server(&["127.0.0.1", "localhost"]);
    let client = ca.client("gatehouse", "gatehouse.test");
    let dir = common::pki::Dir::new();
    let cert = dir.write("redis.pem", &server.cert_pem);
    let key = dir.write("redis.key", &server.key_pem);
    let ca_file = dir.write("ca.pem", &ca.pem);
    let ccert = dir.write("client.pem", &client.cert_pem);
    let ckey = dir.write("client.key", &client.key_pem);
    let redis = Redis::start_tls(&cert, &key, &ca_file, true);
    let up = TestUpstream::echo("u").await;
    let yaml = |tls: &str| {
        route_config(
            &up.url(),
            "    rate_limit: { key: client_ip, limit: 3/min, burst: 2 }\n",
            &format!(
                "admin: {{ addr: \"127.0.0.1:0\" }}\nstore: {{ redis: {{ url: \"rediss://127.0.0.1:{}/0\", timeout: 2s, tls: {tls} }} }}\n",
                redis.port
            ),
        )
    };
    let good = yaml(&format!(
        "{{ ca: \"{ca_file}\", cert: \"{ccert}\", key: \"{ckey}\" }}"
    ));
    let a = TestGateway::start(&good).await;
    let b = TestGateway::start(&good).await;
    let passed = {
        let mut n = 0;
        for i in 0..6 {
            let r = call(if i % 2 == 0 { &a } else { &b }, &[]).await;
            assert!(r.status == 200 || r.status == 429, "{}", r.status);
            n += usize::from(r.status == 200);
        }
        n
    };
    assert_eq!(passed, 3, "one budget across both instances, over TLS");
    let st = status(&a).await;
    assert_eq!(st["store"]["kind"], "redis");
    assert_eq!(st["store"]["up"], true, "{st}");
    assert_eq!(st["store"]["errors"], 0, "{st}");

    for (tls, why, expect) in [
        (
            format!("{{ cert: \"{ccert}\", key: \"{ckey}\" }}"),
            "no CA: the system's store does not know this one",
            "UnknownIssuer",
        ),
        (
            format!("{{ ca: \"{ca_file}\" }}"),
            "no client certificate",
            "CertificateRequired",
        ),
    ] {
        let gw = TestGateway::start(&yaml(&tls)).await;
        for _ in 0..3 {
            assert_eq!(call(&gw, &[]).await.status, 200, "{why}: local limits");
        }
        assert_eq!(call(&gw, &[]).await.status, 429, "{why}: local limits");
        let st = status(&gw).await;
        assert_eq!(st["store"]["up"], false, "{why}: {st}");
        let err = st["store"]["last_error"].as_str().unwrap_or_default();
        assert!(err.contains(expect), "{why}: {err}");
    }
}

/// A Redis Cluster of three masters, started here: two instances share exact limits for
/// keys that live on different nodes (each key stays on its slot's node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_exact_limits_through_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let up = TestUpstream::echo("u").await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let yaml = route_config(
        &up.url(),
        "    rate_limit: { key: header:x-tenant, limit: 10/min, burst: 9 }\n",
        &format!(
            "admin: {{ addr: \"127.0.0.1:0\" }}\nstore: {{ redis: {{ cluster: [{}], timeout: 2s }} }}\n",
            nodes.join(", ")
        ),
    );
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    for tenant in ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"] {
        let mut passed = 0;
        for i in 0..20 {
            let r = call(if i % 2 == 0 { &a } else { &b }, &[("x-tenant", tenant)]).await;
            assert!(r.status == 200 || r.status == 429, "{}", r.status);
            passed += usize::from(r.status == 200);
        }
        assert_eq!(
            passed, 10,
            "tenant {tenant}: one budget across both instances"
        );
    }
    let holding = cluster
        .ports
        .iter()
        .filter(|p| cluster.cli(**p, &["dbsize"]).trim() != "0")
        .count();
    assert!(holding >= 2, "the tenants' keys are spread over the nodes");
    for gw in [&a, &b] {
        let st = status(gw).await;
        assert_eq!(st["store"]["kind"], "redis_cluster", "{st}");
        assert_eq!(st["store"]["up"], true, "{st}");
        assert_eq!(st["store"]["errors"], 0, "{st}");
    }
}

/// Redis dies under traffic on two instances: no request fails (fail open), a `fail_closed`
/// limit answers 503, the status and the metrics show the outage. Redis comes back on the
/// same port: both instances find it by themselves, and the shared limit is exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_mid_traffic_fails_open_shows_and_recovers() {
    let mut redis = Redis::start();
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nadmin: {{ addr: \"127.0.0.1:0\" }}\nstore: {{ redis: {{ url: \"{}\", timeout: 200ms }} }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: /open }}\n    upstream: u\n    rate_limit: {{ limit: 100000/s, burst: 100000 }}\n  - match: {{ path_prefix: /closed }}\n    upstream: u\n    rate_limit: {{ limit: 100000/s, burst: 100000, fail_closed: true }}\n  - match: {{ path_prefix: /limited }}\n    upstream: u\n    rate_limit: {{ limit: 10/min, burst: 9 }}\n",
        redis.url(),
        up.url()
    );
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    assert_eq!(call_at(a.addr, "/closed", &[]).await.status, 200);

    // Traffic on both instances until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for addr in [a.addr, b.addr] {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = call_at(addr, "/open", &[]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "no traffic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    redis.kill();
    let before = sent.load(Ordering::Relaxed);
    wait_store(&[&a, &b], false, Duration::from_secs(5)).await;
    let st = status(&a).await;
    assert_eq!(st["store"]["kind"], "redis");
    assert!(st["store"]["errors"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(st["store"]["last_error"].is_string(), "{st}");
    assert!(st["store"]["since"].as_u64().unwrap_or(0) > 0, "{st}");
    let m = metrics(&a).await;
    assert!(m.contains("gatehouse_store_up 0"), "{m}");
    let errors_line = m
        .lines()
        .find(|l| l.starts_with("gatehouse_store_errors_total "))
        .unwrap_or_default();
    assert!(!errors_line.ends_with(" 0"), "{errors_line}");
    // A fail-closed limit refuses while the store cannot decide.
    let r = call_at(a.addr, "/closed", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    assert!(r.json()["request_id"].as_str().is_some());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        m.contains("result=\"unavailable\"")
            || metrics(&a).await.contains("result=\"unavailable\"")
    );
    // Traffic went on during the outage.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < before + 50 {
        assert!(
            Instant::now() < deadline,
            "traffic stalled during the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    redis.restart();
    wait_store(&[&a, &b], true, Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("traffic task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
    assert!(metrics(&a).await.contains("gatehouse_store_up 1"));
    assert_eq!(call_at(a.addr, "/closed", &[]).await.status, 200);
    // The shared budget is exact again (the restarted Redis starts empty).
    let mut passed = 0;
    for i in 0..20 {
        let r = call_at(if i % 2 == 0 { a.addr } else { b.addr }, "/limited", &[]).await;
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
        passed += usize::from(r.status == 200);
    }
    assert_eq!(passed, 10, "one budget across both instances again");
}

/// `store.redis` mistakes are config errors with their key paths.
#[test]
fn bad_store_settings_are_config_errors() {
    let cases = [
        (
            "store: { redis: { url: \"redis://127.0.0.1:1\", cluster: [\"redis://127.0.0.1:2\"] } }",
            "store.redis",
        ),
        ("store: { redis: { timeout: 1s } }", "store.redis"),
        ("store: { redis: { cluster: [] } }", "store.redis.cluster"),
        (
            "store: { redis: { cluster: [\"redis://127.0.0.1:1\", \"nope://x\"] } }",
            "store.redis.cluster[1]",
        ),
        (
            "store: { redis: { cluster: [\"redis://127.0.0.1:1/2\"] } }",
            "store.redis.cluster[0]",
        ),
        (
            "store: { redis: { cluster: [\"redis://127.0.0.1:1\", \"rediss://127.0.0.1:2\"] } }",
            "store.redis.cluster",
        ),
        (
            "store: { redis: { url: \"redis://127.0.0.1:1\", tls: { ca: \"/nonexistent/ca.pem\" } } }",
            "store.redis.tls",
        ),
        (
            "store: { redis: { url: \"rediss://127.0.0.1:1\", tls: { ca: \"/nonexistent/ca.pem\" } } }",
            "store.redis.tls.ca",
        ),
        (
            "store: { redis: { url: \"rediss://127.0.0.1:1\", tls: { cert: \"/nonexistent/c.pem\" } } }",
            "store.redis.tls.key",
        ),
        (
            "store: { redis: { url: \"redis://127.0.0.1:1\", timeout: 0ms } }",
            "store.redis.timeout",
        ),
    ];
    for (store, key) in cases {
        let yaml = route_config("http://127.0.0.1:1", "", &format!("{store}\n"));
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
        let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
            .err()
            .unwrap_or_else(|| panic!("{store}: accepted"));
        assert!(
            errors.iter().any(|e| e.path == key),
            "{store}: want {key}, got {errors:?}"
        );
    }
    // Both forms that are right compile (no I/O: nothing listens there).
    for store in [
        "store: { redis: { url: \"rediss://127.0.0.1:1/0\" } }",
        "store: { redis: { cluster: [\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"], timeout: 20ms } }",
    ] {
        let yaml = route_config("http://127.0.0.1:1", "", &format!("{store}\n"));
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
        if let Err(e) = gatehouse::compile::compile(&cfg, &gatehouse::State::default()) {
            panic!("{store}: {e:?}");
        }
    }
    // The TLS files are file paths: the admin API may not add or change them.
    let yaml = route_config(
        "http://127.0.0.1:1",
        "",
        "store: { redis: { url: \"rediss://h:1\", tls: { ca: a.pem, cert: c.pem, key: k.pem } } }\n",
    );
    let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
    let paths = cfg.file_paths();
    for key in [
        "store.redis.tls.ca",
        "store.redis.tls.cert",
        "store.redis.tls.key",
    ] {
        assert!(paths.iter().any(|(k, _)| k == key), "{key}: {paths:?}");
    }
}
