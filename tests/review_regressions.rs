//! Regressions found by review of the response cache and aggregation: each test drives the
//! input that once broke them (a poisoned variant key, a 304's cookie, a HEAD stored as a GET,
//! an overflowing Age, a Redis fill lock kept, routes or consumers sharing answers...) through
//! a real gateway and checks it no longer does.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{Got, RawClient, RawResponse, RawUpstream, Reply};
use common::{TestBody, TestGateway, TestUpstream, full};
use http::{Request, Response};
use hyper::body::Incoming;

/// Per path: fixed headers, a delay and a status.
type Scripts = Arc<Mutex<HashMap<String, (Vec<(&'static str, String)>, Duration, u16)>>>;
type Fut = std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>;

/// Upstream: per path, fixed headers, a delay and optional 304 on If-None-Match; the body
/// names the method, the path's count and accept-language. Counts per path.
struct Origin {
    up: TestUpstream,
    scripts: Scripts,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    async fn start(on_304: Option<(&'static str, Vec<(&'static str, &'static str)>)>) -> Origin {
        let scripts: Scripts = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (s, c) = (scripts.clone(), counts.clone());
        let up = TestUpstream::start(Arc::new(move |req: Request<Incoming>| {
            let (s, c, on_304) = (s.clone(), c.clone(), on_304.clone());
            Box::pin(async move {
                let path = req.uri().path().to_owned();
                let (headers, delay, status) = s.lock().unwrap().get(&path).cloned().unwrap_or((
                    vec![("cache-control", "max-age=60".into())],
                    Duration::ZERO,
                    404,
                ));
                let n = {
                    let mut c = c.lock().unwrap();
                    let e = c.entry(path.clone()).or_insert(0);
                    *e += 1;
                    *e
                };
                tokio::time::sleep(delay).await;
                let inm = req
                    .headers()
                    .get("if-none-match")
                    .map(|v| v.to_str().unwrap().to_owned());
                if let Some((etag, extra)) = &on_304
                    && inm.as_deref() == Some(*etag)
                {
                    let mut r = Response::new(full(""));
                    *r.status_mut() = http::StatusCode::NOT_MODIFIED;
                    for (k, v) in extra {
                        r.headers_mut()
                            .append(*k, http::HeaderValue::from_static(v));
                    }
                    return r;
                }
                let lang = req
                    .headers()
                    .get("accept-language")
                    .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
                let mut r =
                    Response::new(full(format!("{} {path} #{n} lang={lang}", req.method())));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                for (k, v) in &headers {
                    r.headers_mut()
                        .append(*k, http::HeaderValue::from_str(v).unwrap());
                }
                r
            }) as Fut
        }))
        .await;
        Origin {
            up,
            scripts,
            counts,
        }
    }
    fn script(&self, path: &str, headers: &[(&'static str, &str)], delay: Duration) {
        self.scripts.lock().unwrap().insert(
            path.to_owned(),
            (
                headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
                delay,
                200,
            ),
        );
    }
    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn config(upstream: &str, cache: &str, top: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{top}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    cache: {cache}\n"
    )
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
    c.response_within(method == "HEAD", Duration::from_secs(15))
        .await
        .response()
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    request(gw, "GET", path, headers).await
}

fn cs(r: &RawResponse) -> String {
    r.header("cache-status").unwrap_or("").to_owned()
}

/// Leader::drop takes `self.key` for the Pass mark, then unlocks Redis with an empty key:
/// the fill lock of an answer that was not stored stays until its TTL, and the other
/// instance waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstored_answer_releases_the_redis_fill_lock() {
    let redis = common::servers::Redis::start();
    let o = Origin::start(None).await;
    o.script(
        "/mine",
        &[("cache-control", "private, max-age=60")],
        Duration::from_millis(200),
    );
    let yaml = config(
        &o.up.url(),
        "{ ttl: 30s }",
        &format!(
            "store: {{ redis: {{ url: \"{}\", timeout: 500ms }} }}\n",
            redis.url()
        ),
    );
    let a = TestGateway::start(&yaml).await;
    let b = TestGateway::start(&yaml).await;
    let r = get(&a, "/mine", &[]).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = get(&b, "/mine", &[]).await;
    assert_eq!(r.status, 200);
    let took = t.elapsed();
    eprintln!("instance B took {took:?} for a private answer (upstream: 200 ms)");
    assert!(
        took < Duration::from_secs(2),
        "B waited on a stale lock: {took:?}"
    );
}

/// Invalidation (and purge by key) drops only the primary key: other variants survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_method_drops_every_variant() {
    let o = Origin::start(None).await;
    o.script(
        "/v",
        &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        Duration::ZERO,
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    get(&gw, "/v", &[("accept-language", "en")]).await;
    let fr = get(&gw, "/v", &[("accept-language", "fr")]).await;
    assert!(fr.text().contains("#2"), "{}", fr.text());
    let post = request(&gw, "POST", "/v", &[]).await;
    assert_eq!(post.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let en = get(&gw, "/v", &[("accept-language", "en")]).await;
    assert!(cs(&en).contains("miss"), "{}", cs(&en));
    let fr = get(&gw, "/v", &[("accept-language", "fr")]).await;
    eprintln!("after POST: fr -> {:?} / {}", fr.text(), cs(&fr));
    assert!(
        !cs(&fr).contains("hit") && !fr.text().contains("#2"),
        "the pre-POST fr variant is gone: {:?} {}",
        fr.text(),
        cs(&fr)
    );
}

/// A path ending in `|vary|NAME=VALUE` has the same key as a variant of the path before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_cannot_make_a_variant_key() {
    let o = Origin::start(None).await;
    o.script(
        "/v",
        &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        Duration::ZERO,
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    // The attacker: an unknown path, answered 404 (a default cacheable status).
    let a = get(&gw, "/v|vary|accept-language=en", &[]).await;
    assert_eq!(a.status, 404);
    assert!(cs(&a).contains("stored"), "{}", cs(&a));
    // Any request that stores the Vary marker for /v.
    get(&gw, "/v", &[("accept-language", "fr")]).await;
    // The victim.
    let v = get(&gw, "/v", &[("accept-language", "en")]).await;
    eprintln!("victim got {} {:?} ({})", v.status, v.text(), cs(&v));
    assert_eq!(
        v.status,
        200,
        "the victim gets its own answer: {}",
        v.text()
    );
    assert!(v.text().contains("lang=en"), "{}", v.text());
}

/// A HEAD that is not the filler (pass window, a waiter that gave up, coalesce_timeout 0) goes
/// upstream as HEAD, and its empty body is stored as the GET answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_is_never_stored_as_the_get() {
    let up = RawUpstream::start(Arc::new(|_, req: &[u8]| {
        let text = String::from_utf8_lossy(req).to_ascii_lowercase();
        if text.starts_with("head ") {
            Reply::raw("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n")
        } else if text.contains("if-none-match") {
            Reply::raw("HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n")
        } else {
            Reply::raw("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        }
    }))
    .await;
    let gw = TestGateway::start(&config(&up.url(), "{ ttl: 30s }", "")).await;
    // A conditional miss: the upstream's 304 is not stored, so the key is in its pass window.
    let r = get(&gw, "/h", &[("if-none-match", "\"x\"")]).await;
    assert_eq!(r.status, 304);
    let h = request(&gw, "HEAD", "/h", &[]).await;
    eprintln!("HEAD: {} {}", h.status, cs(&h));
    let g = get(&gw, "/h", &[]).await;
    eprintln!(
        "GET after HEAD: {} body={:?} cl={:?} {}",
        g.status,
        g.text(),
        g.header("content-length"),
        cs(&g)
    );
    assert_eq!(g.text(), "hello", "the GET got its body: {}", cs(&g));
}

/// A 304's Set-Cookie is merged into the stored answer and served to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304s_cookie_goes_to_its_client_only() {
    let o = Origin::start(Some((
        "\"v1\"",
        vec![("set-cookie", "session=alice-secret")],
    )))
    .await;
    o.script(
        "/e",
        &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
        Duration::ZERO,
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    get(&gw, "/e", &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let alice = get(&gw, "/e", &[]).await; // revalidated: 304 with alice's cookie
    assert!(cs(&alice).contains("fwd-status=304"), "{}", cs(&alice));
    let bob = get(&gw, "/e", &[]).await;
    eprintln!(
        "bob: {} set-cookie={:?}",
        cs(&bob),
        bob.header("set-cookie")
    );
    assert_eq!(alice.header("set-cookie"), Some("session=alice-secret"));
    assert!(cs(&bob).contains("hit"));
    assert_eq!(bob.header("set-cookie"), None, "alice's cookie was stored");
}

/// `Age: 2^64-1` from the upstream: served as fresh (ttl = fresh_for - (-1)), and after a
/// second `initial_age + elapsed` overflows (a panic in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_age_is_stale_and_never_panics() {
    let o = Origin::start(None).await;
    o.script(
        "/age",
        &[
            ("cache-control", "max-age=60"),
            ("age", "18446744073709551615"),
            ("etag", "\"a\""),
        ],
        Duration::ZERO,
    );
    let gw = TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await;
    get(&gw, "/age", &[]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hit = get(&gw, "/age", &[]).await;
    eprintln!("hit: {} age={:?}", cs(&hit), hit.header("age"));
    assert!(
        !cs(&hit).contains("; hit"),
        "an answer older than its max-age served as fresh: {}",
        cs(&hit)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /age HTTP/1.1\r\nHost: cache.test\r\n\r\n")
        .await;
    let got = c.response_within(false, Duration::from_secs(5)).await;
    eprintln!("after 1 s: {got:?}");
    assert!(
        matches!(got, Got::Response(ref r) if r.status == 200),
        "{got:?}"
    );
}

/// Requests for a `no-cache` + ETag answer queue one behind the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_answers_are_shared_with_the_waiters() {
    let o = Origin::start(None).await;
    o.script(
        "/nc",
        &[("cache-control", "no-cache"), ("etag", "\"n\"")],
        Duration::from_millis(300),
    );
    let gw = Arc::new(TestGateway::start(&config(&o.up.url(), "{ ttl: 30s }", "")).await);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { get(&gw, "/nc", &[]).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    let took = t.elapsed();
    eprintln!(
        "8 concurrent requests, 300 ms upstream: {took:?}, {} upstream requests",
        o.count("/nc")
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(o.count("/nc") <= 2, "{} upstream requests", o.count("/nc"));
}

/// Two routes for one path told apart by a header share cache keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_never_share_keys() {
    let v1 = TestUpstream::echo("v1").await;
    let v2 = TestUpstream::echo("v2").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  v1: {{ targets: [\"{}\"] }}\n  v2: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: /, headers: {{ x-api-version: \"2\" }} }}\n    upstream: v2\n    cache: {{ ttl: 30s }}\n  - match: {{ path_prefix: / }}\n    upstream: v1\n    cache: {{ ttl: 30s }}\n",
        v1.url(),
        v2.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let a = get(&gw, "/x", &[("x-api-version", "2")]).await;
    assert_eq!(a.header("x-upstream"), Some("v2"));
    let b = get(&gw, "/x", &[]).await;
    eprintln!("v1 client got {:?} ({})", b.header("x-upstream"), cs(&b));
    assert_eq!(
        b.header("x-upstream"),
        Some("v1"),
        "route v1's client got route v2's answer"
    );
}

fn sha(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// An authenticated (api key) route with `cache:`: one consumer's answer served to another.
/// The composite also drops a part's `private`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_never_share_answers_and_private_stays() {
    let up = TestUpstream::echo("echo").await;
    let private = TestUpstream::start(Arc::new(|_req: Request<Incoming>| {
        Box::pin(async move {
            let mut r = Response::new(full("{\"secret\": 1}"));
            r.headers_mut()
                .insert("cache-control", http::HeaderValue::from_static("private"));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        }) as Fut
    }))
    .await;
    let gw = TestGateway::start(&format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nconsumers:\n  - {{ id: ann, api_keys: [{{ hash: \"{}\" }}] }}\n  - {{ id: bob, api_keys: [{{ hash: \"{}\" }}] }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\n  p: {{ targets: [\"{}\"] }}\nroutes:\n  - name: me\n    match: {{ path: /me }}\n    auth: {{ methods: [api_key] }}\n    cache: {{ ttl: 30s }}\n    aggregate:\n      profile: {{ upstream: u, path: \"/profiles/{{consumer.id}}\" }}\n      wallet: {{ upstream: p, path: \"/wallet/{{consumer.id}}\" }}\n",
        sha("k-ann"),
        sha("k-bob"),
        up.url(),
        private.url()
    ))
    .await;
    let ann = get(&gw, "/me", &[("x-api-key", "k-ann")]).await;
    eprintln!(
        "ann: {} cc={:?} {}",
        ann.status,
        ann.header("cache-control"),
        cs(&ann)
    );
    assert_eq!(
        ann.header("cache-control"),
        Some("private"),
        "the wallet part's `private`"
    );
    let bob = get(&gw, "/me", &[("x-api-key", "k-bob")]).await;
    eprintln!("bob: {} {}", cs(&bob), bob.text());
    assert_eq!(
        bob.json()["profile"]["path"],
        "/profiles/bob",
        "bob got ann's answer"
    );
}

/// A call whose upstream failed to compile is skipped, and the dependency indices (positions
/// among all calls) then point past the compiled plans: compile panics instead of erroring.
#[test]
fn a_broken_upstream_is_an_error_not_a_panic() {
    let yaml = "listen: \"127.0.0.1:0\"\nupstreams:\n  good: { targets: [\"http://127.0.0.1:9\"] }\n  bad: { targets: [\"ftp://127.0.0.1:9\"] }\nroutes:\n  - match: { path: \"/d/{id}\" }\n    aggregate:\n      a: { upstream: good, path: \"/a/{c.id}\" }\n      b: { upstream: good, path: \"/b\" }\n      c: { upstream: bad, path: \"/c\" }\n";
    let cfg = gatehouse::config::parse_str(yaml, &|_| None).expect("parses");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gatehouse::compile::compile(&cfg, &Default::default()).is_err()
    }));
    eprintln!("compile: {:?}", r.as_ref().map(|_| "returned"));
    assert_eq!(
        r.ok(),
        Some(true),
        "compile returned errors (did not panic)"
    );
}
