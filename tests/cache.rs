//! The response cache, tried from outside: a real gateway (one, or two sharing a real
//! redis-server), a scripted upstream whose answer headers each test chooses, and raw clients
//! that read the exact bytes.

// Tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{RawClient, RawResponse};
use common::{TestBody, TestGateway, TestUpstream, full};
use http::{Request, Response};
use hyper::body::Incoming;

/// What the upstream answers on a path: extra headers, and a delay.
#[derive(Clone, Default)]
struct Script {
    headers: Vec<(&'static str, String)>,
    delay: Duration,
    status: u16,
    /// Answer 304 when the request's If-None-Match equals this.
    etag_304: Option<&'static str>,
}

/// A scripted upstream: each path answers per its [`Script`], with a body naming the path,
/// how many requests that path has had, and the request's `accept-language`; it records the
/// conditional headers it saw.
struct Origin {
    up: TestUpstream,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    seen_inm: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    async fn start() -> Origin {
        let scripts: Arc<Mutex<HashMap<String, Script>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let seen_inm: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, c, n) = (scripts.clone(), counts.clone(), seen_inm.clone());
        let up = TestUpstream::start(Arc::new(move |req: Request<Incoming>| {
            let (s, c, n) = (s.clone(), c.clone(), n.clone());
            Box::pin(async move {
                let path = req.uri().path().to_owned();
                let script = s.lock().unwrap().get(&path).cloned().unwrap_or_default();
                let count = {
                    let mut c = c.lock().unwrap();
                    let e = c.entry(path.clone()).or_insert(0);
                    *e += 1;
                    *e
                };
                let inm = req
                    .headers()
                    .get("if-none-match")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                if let Some(v) = &inm {
                    n.lock().unwrap().push(v.clone());
                }
                tokio::time::sleep(script.delay).await;
                let lang = req
                    .headers()
                    .get("accept-language")
                    .map_or("-", |v| v.to_str().unwrap_or("?"))
                    .to_owned();
                let mut resp: Response<TestBody> = if script.etag_304.is_some()
                    && inm.as_deref() == script.etag_304
                {
                    let mut r = Response::new(full(""));
                    *r.status_mut() = http::StatusCode::NOT_MODIFIED;
                    r
                } else {
                    let mut r =
                        Response::new(full(format!("{path} #{count} lang={lang} \0\u{1}binary")));
                    *r.status_mut() = http::StatusCode::from_u16(if script.status == 0 {
                        200
                    } else {
                        script.status
                    })
                    .unwrap();
                    r
                };
                for (k, v) in &script.headers {
                    resp.headers_mut()
                        .append(*k, http::HeaderValue::from_str(v).unwrap());
                }
                resp
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
        }))
        .await;
        Origin {
            up,
            scripts,
            counts,
            seen_inm,
        }
    }

    fn script(&self, path: &str, s: Script) {
        self.scripts.lock().unwrap().insert(path.to_owned(), s);
    }

    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn cc(v: &str) -> Script {
    Script {
        headers: vec![("cache-control", v.to_owned())],
        ..Script::default()
    }
}

fn config(upstream: &str, cache: &str, top: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{top}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    cache: {cache}\n"
    )
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    request(gw, "GET", path, headers).await
}

async fn request(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut c = RawClient::connect(gw.addr).await;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: cache.test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" && method != "HEAD" {
        req.push_str("content-length: 0\r\n");
    }
    req.push_str("\r\n");
    c.send(&req).await;
    c.response_within(method == "HEAD", Duration::from_secs(10))
        .await
        .response()
}

fn cache_status(r: &RawResponse) -> &str {
    r.header("cache-status").unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_answer_is_served_with_age_and_cache_status() {
    let o = Origin::start().await;
    o.script("/a", cc("max-age=60"));
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;

    let first = get(&gw, "/a?b=2&a=1", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(cache_status(&first), "Gatehouse; fwd=miss; stored");
    assert_eq!(first.body, b"/a #1 lang=- \0\x01binary");

    // Same query in another order: the same key.
    let hit = get(&gw, "/a?a=1&b=2", &[]).await;
    assert_eq!(hit.status, 200);
    assert!(
        cache_status(&hit).starts_with("Gatehouse; hit; ttl="),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(hit.body, first.body, "binary-safe");
    assert_eq!(hit.header("content-length"), Some("21"));
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(age <= 2, "age {age}");
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));
    assert!(hit.header("x-request-id").is_some());

    // HEAD is answered from the stored GET: headers, no body.
    let head = request(&gw, "HEAD", "/a?a=1&b=2", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("21"));
    assert!(cache_status(&head).contains("hit"));
    assert_eq!(o.count("/a"), 1, "one upstream request for all of them");

    // Another query is another key.
    get(&gw, "/a?a=2", &[]).await;
    assert_eq!(o.count("/a"), 2);

    let metrics = gw.gw.metrics.encode();
    assert!(
        metrics.contains("gatehouse_cache_total{route=\"route0\",result=\"hit\"} 2")
            || metrics.contains("result=\"hit\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_stored_is_not() {
    let o = Origin::start().await;
    o.script("/no-store", cc("no-store"));
    o.script("/private", cc("private, max-age=60"));
    o.script(
        "/cookie",
        Script {
            headers: vec![
                ("cache-control", "max-age=60".into()),
                ("set-cookie", "session=1".into()),
            ],
            ..Script::default()
        },
    );
    o.script(
        "/error",
        Script {
            status: 500,
            ..cc("max-age=60")
        },
    );
    o.script("/auth", cc("max-age=60"));
    o.script("/big", cc("max-age=60"));
    let gw = TestGateway::start(&config(
        &o.up.url(),
        "{ ttl: 30s, max_object_size: 10 }",
        "",
    ))
    .await;
    for (path, detail) in [
        ("/no-store", "no-store"),
        ("/private", "private"),
        ("/cookie", "set-cookie"),
        ("/error", "status"),
        ("/big", "too-large"),
    ] {
        for _ in 0..2 {
            let r = get(&gw, path, &[]).await;
            assert!(
                !cache_status(&r).contains("hit"),
                "{path}: {}",
                cache_status(&r)
            );
            if !detail.is_empty() {
                assert!(
                    cache_status(&r).contains(detail),
                    "{path}: {}",
                    cache_status(&r)
                );
            }
        }
        assert_eq!(o.count(path), 2, "{path} reached the upstream both times");
    }
    // A request with credentials bypasses the cache (the route does not allow it).
    for _ in 0..2 {
        let r = get(&gw, "/auth", &[("authorization", "Bearer x")]).await;
        assert_eq!(
            cache_status(&r),
            "Gatehouse; fwd=bypass; detail=authorization"
        );
    }
    assert_eq!(o.count("/auth"), 2);
    // A client's no-store with nothing stored goes to the upstream, and its answer is not kept:
    // the next request is a miss.
    let r = get(&gw, "/auth", &[("cache-control", "no-store")]).await;
    assert_eq!(cache_status(&r), "Gatehouse; fwd=miss; detail=no-store");
    assert_eq!(o.count("/auth"), 3);
    let r = get(&gw, "/auth", &[]).await;
    assert!(
        cache_status(&r).starts_with("Gatehouse; fwd=miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.count("/auth"), 4);
    // And a response with a body past max_object_size streamed whole but was not kept.
    let big = get(&gw, "/big", &[]).await;
    assert!(big.body.len() > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_answer_per_variant() {
    let o = Origin::start().await;
    o.script(
        "/v",
        Script {
            headers: vec![
                ("cache-control", "max-age=60".into()),
                ("vary", "Accept-Language".into()),
            ],
            ..Script::default()
        },
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    let en = get(&gw, "/v", &[("accept-language", "en")]).await;
    assert!(en.text().contains("lang=en"));
    let fr = get(&gw, "/v", &[("accept-language", "fr")]).await;
    assert!(fr.text().contains("lang=fr"), "{}", fr.text());
    assert_eq!(cache_status(&fr), "Gatehouse; fwd=vary-miss; stored");
    let en2 = get(&gw, "/v", &[("accept-language", "en")]).await;
    assert!(cache_status(&en2).contains("hit"), "{}", cache_status(&en2));
    assert!(
        en2.text().contains("lang=en #1") || en2.text().contains("#1 lang=en"),
        "{}",
        en2.text()
    );
    let fr2 = get(&gw, "/v", &[("accept-language", "fr")]).await;
    assert!(fr2.text().contains("lang=fr"));
    assert!(cache_status(&fr2).contains("hit"));
    assert_eq!(o.count("/v"), 2);

    // Vary: * is never stored.
    o.script(
        "/star",
        Script {
            headers: vec![("cache-control", "max-age=60".into()), ("vary", "*".into())],
            ..Script::default()
        },
    );
    get(&gw, "/star", &[]).await;
    get(&gw, "/star", &[]).await;
    assert_eq!(o.count("/star"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_get_304_and_stale_answers_are_revalidated() {
    let o = Origin::start().await;
    o.script(
        "/e",
        Script {
            headers: vec![
                ("cache-control", "max-age=1".into()),
                ("etag", "\"v1\"".into()),
            ],
            etag_304: Some("\"v1\""),
            ..Script::default()
        },
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    let first = get(&gw, "/e", &[]).await;
    assert_eq!(first.status, 200);
    // The client's conditional request is answered by the cache.
    let nm = get(&gw, "/e", &[("if-none-match", "W/\"v0\", \"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), Some("\"v1\""));
    assert_eq!(o.count("/e"), 1);
    // A non-matching one gets the whole answer.
    let other = get(&gw, "/e", &[("if-none-match", "\"v9\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body);

    // Stale: revalidated with the stored validator; the upstream's 304 renews it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let renewed = get(&gw, "/e", &[]).await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.body, first.body, "the stored body, renewed");
    assert!(
        cache_status(&renewed).starts_with("Gatehouse; fwd=stale; fwd-status=304"),
        "{}",
        cache_status(&renewed)
    );
    assert_eq!(o.count("/e"), 2);
    assert_eq!(*o.seen_inm.lock().unwrap(), ["\"v1\""]);
    // Fresh again.
    let hit = get(&gw, "/e", &[]).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(o.count("/e"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_a_dead_upstream() {
    let o = Origin::start().await;
    o.script("/s", cc("max-age=1, stale-if-error=60"));
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    let first = get(&gw, "/s", &[]).await;
    assert_eq!(first.status, 200);
    o.up.kill();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(&gw, "/s", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, first.body);
    assert!(
        cache_status(&r).contains("detail=stale-if-error"),
        "{}",
        cache_status(&r)
    );
    // A path never stored still gets the gateway's error.
    let miss = get(&gw, "/never", &[]).await;
    assert_eq!(miss.status, 502);
    assert!(miss.json()["request_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let o = Origin::start().await;
    o.script(
        "/w",
        Script {
            delay: Duration::from_millis(300),
            ..cc("max-age=1, stale-while-revalidate=30")
        },
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    assert!(get(&gw, "/w", &[]).await.text().contains("#1"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t = std::time::Instant::now();
    let stale = get(&gw, "/w", &[]).await;
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "not waiting for the upstream"
    );
    assert!(stale.text().contains("#1"));
    assert!(
        cache_status(&stale).contains("detail=stale-while-revalidate"),
        "{}",
        cache_status(&stale)
    );
    // The refresh lands behind it.
    let mut refreshed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = get(&gw, "/w", &[]).await;
        if r.text().contains("#2") {
            assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
            refreshed = true;
            break;
        }
    }
    assert!(refreshed, "the background refresh was stored");
    assert_eq!(o.count("/w"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let o = Origin::start().await;
    o.script(
        "/cold",
        Script {
            delay: Duration::from_millis(400),
            ..cc("max-age=60")
        },
    );
    let gw = Arc::new(TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { get(&gw, "/cold", &[]).await }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.text().contains("#1"), "{}", r.text());
        if cache_status(&r).contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(o.count("/cold"), 1);
    assert!(collapsed >= 90, "{collapsed} waited for the first");
}

/// Concurrent requests for an answer that cannot be stored wait for the first one only once,
/// then go to the upstream together (and later ones do not wait at all): a cached route never
/// queues a private URL's requests one behind the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_answers_are_not_queued_one_by_one() {
    let o = Origin::start().await;
    o.script(
        "/mine",
        Script {
            delay: Duration::from_millis(300),
            ..cc("private, max-age=60")
        },
    );
    let gw = Arc::new(TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await);
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { get(&gw, "/mine", &[]).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(o.count("/mine"), 20);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "20 requests of 300 ms took {:?}",
        t.elapsed()
    );
    // Within the pass window, a request does not wait for another at all.
    let t = std::time::Instant::now();
    let (a, b) = tokio::join!(get(&gw, "/mine", &[]), get(&gw, "/mine", &[]));
    assert_eq!((a.status, b.status), (200, 200));
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_and_the_admin_api_purge() {
    let o = Origin::start().await;
    o.script("/p/1", cc("max-age=60"));
    o.script("/p/2", cc("max-age=60"));
    o.script("/q/1", cc("max-age=60"));
    let yaml = config(
        &o.up.url(),
        "{ ttl: 30s }",
        "admin: { addr: \"127.0.0.1:0\", token: t0k-0123456789abcdef }\n",
    );
    let gw = TestGateway::start(&yaml).await;
    for p in ["/p/1", "/p/2", "/q/1"] {
        get(&gw, p, &[]).await;
        get(&gw, p, &[]).await;
        assert_eq!(o.count(p), 1);
    }
    // A successful POST to the URL drops what was stored for it.
    let post = request(&gw, "POST", "/p/1", &[]).await;
    assert_eq!(post.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    get(&gw, "/p/1", &[]).await;
    assert_eq!(o.count("/p/1"), 3, "POST went through, then a miss");

    let admin = gw.control.admin_addr().unwrap();
    let purge = |body: &'static str| async move {
        let mut c = RawClient::connect(admin).await;
        c.send(format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t0k-0123456789abcdef\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        c.response().await.response()
    };
    let r = purge(r#"{"prefix": "cache.test/p/"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 2);
    let r = purge(r#"{"key": "cache.test/q/1"}"#).await;
    assert_eq!(r.json()["purged"], 1);
    let r = purge(r#"{"key": "a", "prefix": "b"}"#).await;
    assert_eq!(r.status, 400);
    let r = purge("not json").await;
    assert_eq!(r.status, 400);
    for p in ["/p/2", "/q/1"] {
        let r = get(&gw, p, &[]).await;
        assert!(
            cache_status(&r).contains("fwd=miss"),
            "{p}: {}",
            cache_status(&r)
        );
        assert_eq!(o.count(p), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_cache_and_coalesce_through_redis() {
    let mut redis = common::servers::Redis::start();
    let o = Origin::start().await;
    o.script("/shared", cc("max-age=60"));
    o.script(
        "/spike",
        Script {
            delay: Duration::from_millis(500),
            ..cc("max-age=60")
        },
    );
    let yaml = config(
        &o.up.url(),
        "{ ttl: 30s }",
        &format!(
            "store: {{ redis: {{ url: \"{}\", timeout: 500ms }} }}\n",
            redis.url()
        ),
    );
    let a = Arc::new(TestGateway::start(&yaml).await);
    let b = Arc::new(TestGateway::start(&yaml).await);

    let first = get(&a, "/shared", &[]).await;
    assert_eq!(cache_status(&first), "Gatehouse; fwd=miss; stored");
    // Stored once the body ended; give the write its round trip.
    let mut from_b = None;
    for _ in 0..20 {
        let r = get(&b, "/shared", &[]).await;
        if cache_status(&r).contains("hit") {
            from_b = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from_b = from_b.expect("instance B served A's answer");
    assert_eq!(from_b.body, first.body);
    assert_eq!(o.count("/shared"), 1);

    // A cold key under a spike spread over both instances: one upstream request.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { get(&gw, "/spike", &[]).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.text().contains("#1"), "{}", r.text());
    }
    assert_eq!(o.count("/spike"), 1, "one request for the whole cluster");

    // Redis goes away: the cache is bypassed, nothing fails.
    redis.kill();
    for _ in 0..5 {
        let r = get(&a, "/shared", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            cache_status(&r),
            "Gatehouse; fwd=bypass; detail=store-unavailable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_config_errors_name_the_key() {
    let o = Origin::start().await;
    for (cache, key) in [
        ("{ key: [path, bogus] }", "routes[0].cache.key[1]"),
        ("{ statuses: [304] }", "routes[0].cache.statuses[0]"),
        ("{ max_object_size: 0 }", "routes[0].cache.max_object_size"),
        ("{ ttl: 0s, force_ttl: true }", "routes[0].cache.ttl"),
    ] {
        let yaml = config(&o.up.url(), cache, "");
        let cfg = gatehouse::config::parse_str(&yaml, &|_| None).expect("parses");
        let errs = match gatehouse::compile::compile(&cfg, &Default::default()) {
            Ok(_) => panic!("{cache} compiled"),
            Err(e) => e,
        };
        assert!(
            errs.iter().any(|e| e.to_string().contains(key)),
            "{cache}: {errs:?}"
        );
    }
}

/// A client that does not read its answer does not hold the fill: the answer is read whole
/// from the upstream and stored, and the requests waiting on it are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_hold_the_fill() {
    let big: &'static str = Box::leak("x".repeat(12 * 1024 * 1024).into_boxed_str());
    let up = TestUpstream::start(Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut r = Response::new(full(big));
            r.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
            r
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
    }))
    .await;
    let gw = TestGateway::start(&config(
        &up.url(),
        "{ ttl: 30s, max_object_size: 16MiB }",
        "",
    ))
    .await;
    // The slow client: sends its request and never reads.
    let mut slow = RawClient::connect(gw.addr).await;
    slow.send("GET /big HTTP/1.1\r\nHost: cache.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    let r = get(&gw, "/big", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?} on a client that does not read",
        t.elapsed()
    );
    assert_eq!(up.hits(), 1);
    drop(slow);
}

/// A client's `Cache-Control: no-cache`, `max-age=0`, `no-store` or `Pragma: no-cache` does not
/// make the gateway go to the upstream for a fresh answer it holds (as Varnish and nginx by
/// default; RFC 9111 5.2.1.5 lets a stored answer serve a `no-store` request): one client
/// cannot turn every request into an upstream request by asking for freshness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_no_cache_does_not_reach_the_upstream() {
    let o = Origin::start().await;
    o.script("/n", cc("max-age=60"));
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    let first = get(&gw, "/n", &[]).await;
    assert_eq!(cache_status(&first), "Gatehouse; fwd=miss; stored");
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "no-cache, no-store, max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let r = get(&gw, "/n", &[h]).await;
        assert_eq!(r.status, 200);
        assert!(
            cache_status(&r).starts_with("Gatehouse; hit"),
            "{h:?}: {}",
            cache_status(&r)
        );
        assert_eq!(r.body, first.body, "{h:?}");
    }
    assert_eq!(o.count("/n"), 1, "one upstream request");
}
