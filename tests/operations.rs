//! Operations end to end: reloads under traffic, listeners added and removed by a reload,
//! refused configs, the admin API and its token, metrics, trace context.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};

fn config(upstream: &str, tag: &str, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{extra}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    headers: {{ response: {{ set: {{ x-config: {tag} }} }} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_traffic_fail_no_request() {
    let up = TestUpstream::echo("u").await;
    let dir = TempConfig::new(&config(&up.url(), "a", ""));
    let gw = TestGateway::start_with(&config(&up.url(), "a", ""), Some(dir.path.clone())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, seen_a, seen_b) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, seen_a, seen_b) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen_a.clone(),
            seen_b.clone(),
        );
        let url = gw.url("/traffic");
        clients.push(tokio::spawn(async move {
            let c = client();
            // Bounded: stops when told, or after 20 000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    c.request(Request::get(&url).body(full("")).unwrap()),
                )
                .await
                {
                    Ok(Ok(r)) if r.status() == 200 => {
                        match r.headers().get("x-config").map(|v| v.as_bytes()) {
                            Some(b"a") => seen_a.fetch_add(1, Ordering::Relaxed),
                            Some(b"b") => seen_b.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let pool_before = gw.gw.runtime.load().upstreams["u"].targets[0].pool.clone();
    for i in 0..100 {
        let tag = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(&dir.path, config(&up.url(), tag, "")).unwrap();
        let changed = gw
            .control
            .reload_file("test")
            .await
            .unwrap_or_else(|e| panic!("reload {i}: {:?}", e.messages()));
        assert!(changed, "reload {i} saw no change");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} requests failed out of {}", ok + failed);
    assert!(ok > 200, "too little traffic to mean anything: {ok}");
    assert!(
        seen_a.load(Ordering::Relaxed) > 0 && seen_b.load(Ordering::Relaxed) > 0,
        "both configs served"
    );
    let metrics = gw.gw.metrics.encode();
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"success\"} 100"),
        "{metrics}"
    );
    // The upstream's connection pool survived every reload.
    let pool_after = gw.gw.runtime.load().upstreams["u"].targets[0].pool.clone();
    assert!(
        Arc::ptr_eq(&pool_before, &pool_after),
        "the pool was rebuilt by a reload"
    );
    assert!(pool_after.idle_count() > 0);
}

/// A loopback address nothing listens on (bound, then released).
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `yaml` (listening on `127.0.0.1:0`) with `addr` as a second listener.
fn with_second_listener(yaml: &str, addr: std::net::SocketAddr) -> String {
    yaml.replace(
        "listen: \"127.0.0.1:0\"\n",
        &format!("listen: [\"127.0.0.1:0\", \"{addr}\"]\n"),
    )
}

/// Whether connecting to `addr` is refused within a second (a removed listener closes as its
/// accept loops notice the stop).
async fn refused_soon(addr: std::net::SocketAddr) -> bool {
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_listeners() {
    let up = TestUpstream::echo("u").await;
    let free = free_addr();
    let one = config(&up.url(), "a", "");
    let two = with_second_listener(&one, free);
    let gw = TestGateway::start(&one).await;
    assert!(tokio::net::TcpStream::connect(free).await.is_err());
    gw.control.apply(two, "test", false).await.unwrap();
    // The first listener kept its socket; the added one accepts.
    assert_eq!(gw.control.proxy_addrs().await[0], gw.addr);
    assert_eq!(get(&format!("http://{free}/x")).await.status, 200);
    assert_eq!(get(&gw.url("/x")).await.status, 200);
    gw.control.apply(one, "test", false).await.unwrap();
    assert!(
        refused_soon(free).await,
        "the removed listener still accepts"
    );
    assert_eq!(get(&gw.url("/x")).await.status, 200);
}

/// `scheduler: per_core`: every listener is bound once per worker (SO_REUSEPORT), each worker
/// runs its own runtime, and the kernel spreads new connections over them; a reload adds and
/// removes listeners on every worker, and a shutdown lets a request in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_share_the_listeners_reload_and_drain() {
    let up = TestUpstream::start(Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            http::Response::new(full("done"))
        })
    }))
    .await;
    let free = free_addr();
    let one = config(&up.url(), "a", "workers: 2\nscheduler: per_core\n");
    let two = with_second_listener(&one, free);
    let gw = TestGateway::start(&one).await;
    // A new connection per request (a new client each time): 40 connections, each hashed to
    // one of the two sockets by its source port.
    for i in 0..40 {
        let r = get(&gw.url(&format!("/n{i}"))).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(&r.body[..], b"done");
    }
    let metrics = gw.gw.metrics.encode();
    let accepted = |w: u16| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "gatehouse_worker_connections_accepted_total{{worker=\"{w}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        accepted(1) > 0 && accepted(2) > 0,
        "both workers accept: {} and {}\n{metrics}",
        accepted(1),
        accepted(2)
    );
    assert!(accepted(1) + accepted(2) >= 40);

    gw.control.apply(two, "test", false).await.unwrap();
    for i in 0..8 {
        assert_eq!(get(&format!("http://{free}/m{i}")).await.status, 200);
    }
    gw.control.apply(one, "test", false).await.unwrap();
    assert!(
        refused_soon(free).await,
        "the removed listener still accepts on a worker"
    );

    let slow = tokio::spawn({
        let url = gw.url("/slow");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown finished");
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "in flight at shutdown");
    assert_eq!(&r.body[..], b"done");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker accepts after the shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_changes_nothing() {
    let up = TestUpstream::echo("u").await;
    let good = config(&up.url(), "a", "");
    let dir = TempConfig::new(&good);
    let gw = TestGateway::start_with(&good, Some(dir.path.clone())).await;
    let before = gw.control.config_hash();
    std::fs::write(&dir.path, good.replace("upstream: u", "upstream: nope")).unwrap();
    let err = gw.control.reload_file("test").await.unwrap_err();
    let msgs = err.messages().join("\n");
    assert!(
        msgs.contains("routes[0].upstream") && msgs.contains("nope"),
        "{msgs}"
    );
    assert_eq!(gw.control.config_hash(), before);
    let r = get(&gw.url("/")).await;
    assert_eq!(
        (r.status, r.header("x-config")),
        (StatusCode::OK, Some("a"))
    );
    let last = gw.control.last_reload().unwrap();
    assert!(!last.ok && last.errors.iter().any(|e| e.contains("routes[0].upstream")));
    assert!(
        gw.gw
            .metrics
            .encode()
            .contains("gatehouse_config_reloads_total{result=\"failure\"} 1")
    );
}

const TOKEN: &str = "test-admin-token-0123456789";

async fn admin(
    gw: &TestGateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> TestResponse {
    let mut req = Request::builder()
        .method(method)
        .uri(gw.admin_url(path))
        .header("content-type", "application/yaml");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(full(body.to_owned())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reads_validates_and_applies() {
    let up = TestUpstream::echo("u").await;
    let admin_block = format!("admin: {{ addr: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\n");
    let cfg_a = config(&up.url(), "a", &admin_block);
    let dir = TempConfig::new(&cfg_a);
    let gw = TestGateway::start_with(&cfg_a, Some(dir.path.clone())).await;
    assert_eq!(get(&gw.url("/x")).await.status, 200);

    // Token: missing or wrong -> 401.
    assert_eq!(
        admin(&gw, "GET", "/status", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(&gw, "GET", "/status", Some("wrong-token-wrong-token"), "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let st = admin(&gw, "GET", "/status", Some(TOKEN), "").await;
    assert_eq!(st.status, 200);
    let st = st.json();
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["config_hash"], gw.control.config_hash());
    assert_eq!(st["last_reload"]["ok"], true);

    let routes = admin(&gw, "GET", "/routes", Some(TOKEN), "").await.json();
    assert_eq!(routes[0]["upstream"], "u");
    assert!(routes[0]["stats"]["requests"].as_u64().unwrap() >= 1);
    assert_eq!(
        routes[0]["policies"][0],
        serde_json::json!({"kind": "headers", "phase": "transform", "from": "inline"})
    );
    let ups = admin(&gw, "GET", "/upstreams", Some(TOKEN), "")
        .await
        .json();
    assert_eq!(ups[0]["targets"][0]["address"], up.addr.to_string());
    assert_eq!(ups[0]["targets"][0]["state"], "healthy");

    // The config as written, secrets redacted.
    let c = admin(&gw, "GET", "/config", Some(TOKEN), "").await.json();
    assert_eq!(c["config"]["admin"]["token"], "<redacted>");
    assert!(!c.to_string().contains(TOKEN));

    // Validate: good and bad, nothing applied.
    let cfg_b = config(&up.url(), "b", &admin_block);
    let v = admin(&gw, "POST", "/config/validate", Some(TOKEN), &cfg_b).await;
    assert_eq!(
        (v.status, v.json()["valid"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let v = admin(
        &gw,
        "POST",
        "/config/validate",
        Some(TOKEN),
        "listen: [oops",
    )
    .await;
    assert_eq!(v.status, StatusCode::BAD_REQUEST);
    assert!(v.json()["errors"][0].as_str().unwrap().contains("YAML"));
    assert_eq!(get(&gw.url("/x")).await.header("x-config"), Some("a"));

    // Apply a bad config: 400, nothing changed, file untouched.
    let bad = cfg_b.replace("upstream: u", "upstream: missing");
    let r = admin(&gw, "PUT", "/config", Some(TOKEN), &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["errors"][0]
            .as_str()
            .unwrap()
            .contains("routes[0].upstream")
    );
    assert_eq!(std::fs::read_to_string(&dir.path).unwrap(), cfg_a);
    assert_eq!(get(&gw.url("/x")).await.header("x-config"), Some("a"));
    // Not UTF-8: 400.
    let req = Request::put(gw.admin_url("/config"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .body(full(vec![0xff, 0xfe, 0x00]))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::BAD_REQUEST);

    // What a web page could send is refused: a form post (no YAML type), another origin.
    let req = Request::put(gw.admin_url("/config"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(cfg_b.clone()))
        .unwrap();
    assert_eq!(
        send(&client(), req).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let req = Request::put(gw.admin_url("/config"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .header("origin", "http://evil.example")
        .body(full(cfg_b.clone()))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&gw.url("/x")).await.header("x-config"), Some("a"));

    // Apply a good one: live at once, written to the file, the old one kept as .bak.
    let r = admin(&gw, "PUT", "/config", Some(TOKEN), &cfg_b).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(&gw.url("/x")).await.header("x-config"), Some("b"));
    assert_eq!(std::fs::read_to_string(&dir.path).unwrap(), cfg_b);
    assert_eq!(
        std::fs::read_to_string(dir.dir.join("gatehouse.yaml.bak")).unwrap(),
        cfg_a
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");

    // Reload from the file: nothing changed since the apply wrote it.
    let r = admin(&gw, "POST", "/reload", Some(TOKEN), "").await.json();
    assert_eq!(r["reloaded"], false);

    // Metrics, in Prometheus text.
    let m = admin(&gw, "GET", "/metrics", Some(TOKEN), "").await;
    assert!(m.header("content-type").unwrap().contains("openmetrics"));
    let text = String::from_utf8_lossy(&m.body).into_owned();
    for want in [
        "gatehouse_http_requests_total{route=\"/*\",method=\"GET\",status_class=\"2xx\"}",
        "gatehouse_http_request_duration_seconds_bucket{",
        "gatehouse_upstream_request_duration_seconds_count{upstream=\"u\"",
        "gatehouse_connections_active{listener=\"127.0.0.1:0\"}",
        "gatehouse_config_reloads_total{result=\"success\"} 1",
        "gatehouse_config_reloads_total{result=\"failure\"} 1",
        "gatehouse_config_info{hash=\"",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    // The dashboard page needs no token (it holds no data).
    let d = admin(&gw, "GET", "/dashboard", None, "").await;
    assert_eq!(d.status, 200);
    assert!(String::from_utf8_lossy(&d.body).contains("<title>Gatehouse</title>"));
    assert_eq!(
        admin(&gw, "GET", "/stats", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(&gw, "GET", "/nope", Some(TOKEN), "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&simple_config(&[up.url()])).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get(gw.url("/"))
        .header("traceparent", incoming)
        .body(full(""))
        .unwrap();
    let h = send(&client(), req).await.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && h.ends_with("-01"),
        "{h}"
    );
    assert_ne!(h, incoming, "the gateway becomes the parent span");
    let fresh = get(&gw.url("/")).await.json()["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fresh.len(), 55);
    assert!(fresh.starts_with("00-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_admin_api_off_closes_it() {
    let up = TestUpstream::echo("u").await;
    let with_admin = config(&up.url(), "a", "admin: { addr: \"127.0.0.1:0\" }\n");
    let gw = TestGateway::start(&with_admin).await;
    let admin_addr = gw.control.admin_addr().unwrap();
    // A keep-alive connection to the admin API, opened while it is on.
    let c = client();
    let st = send(
        &c,
        Request::get(format!("http://{admin_addr}/status"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(st.status, 200);
    gw.control
        .apply(config(&up.url(), "a", ""), "test", false)
        .await
        .unwrap();
    assert!(gw.control.admin_addr().is_none());
    // The listener is gone, and a connection that was open gets nothing more.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(admin_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the admin listener still accepts");
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        c.request(
            Request::get(format!("http://{admin_addr}/status"))
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(
        again.is_err() || again.unwrap().status() != 200,
        "the old admin connection still answers"
    );
    // Without a token, a DNS name as Host is refused (DNS rebinding).
    let gw2 = TestGateway::start(&with_admin).await;
    let req = Request::get(gw2.admin_url("/status"))
        .header("host", "attacker.example")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::FORBIDDEN);
}

/// A reload that leaves an upstream as it was keeps its state: the round-robin rotation goes
/// on where it was (not back to the first target) and a spent retry budget stays spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_position_and_retry_budget_survive_a_reload() {
    let a = TestUpstream::echo("a").await;
    let b = TestUpstream::echo("b").await;
    let c = TestUpstream::echo("c").await;
    let bad1 = TestUpstream::start(Arc::new(|_req| {
        Box::pin(async move {
            let mut r = http::Response::new(full("bad"));
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            r
        })
    }))
    .await;
    let bad2 = TestUpstream::start(Arc::new(|_req| {
        Box::pin(async move {
            let mut r = http::Response::new(full("bad"));
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            r
        })
    }))
    .await;
    let yaml = |tag: &str| {
        format!(
            "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  rr: {{ targets: [\"{}\", \"{}\", \"{}\"] }}\n  flaky:\n    targets: [\"{}\", \"{}\"]\n    retries: {{ attempts: 2, on: [502], budget: 50%, min_per_second: 0 }}\n    health: {{ passive: {{ consecutive_failures: 1000 }} }}\nroutes:\n  - match: {{ path_prefix: /flaky }}\n    upstream: flaky\n  - match: {{ path_prefix: / }}\n    upstream: rr\n    headers: {{ response: {{ set: {{ x-config: {tag} }} }} }}\n",
            a.url(),
            b.url(),
            c.url(),
            bad1.url(),
            bad2.url()
        )
    };
    let dir = TempConfig::new(&yaml("one"));
    let gw = TestGateway::start_with(&yaml("one"), Some(dir.path.clone())).await;
    let first = get(&gw.url("/")).await.json()["name"].clone();
    // Each request earns half a retry (no time-based floor, so nothing here depends on
    // timing): the first earns half and is not retried.
    assert_eq!(get(&gw.url("/flaky")).await.status, 502);
    assert_eq!(bad1.hits() + bad2.hits(), 1);

    std::fs::write(&dir.path, yaml("two")).unwrap();
    gw.control.reload_file("test").await.unwrap();
    let after = get(&gw.url("/")).await;
    assert_eq!(
        after.header("x-config"),
        Some("two"),
        "the reload took effect"
    );
    assert_ne!(
        after.json()["name"],
        first,
        "the rotation started again at the first target"
    );
    // The half earned before the reload is still there: with this request's half, one retry.
    // (A budget rebuilt by the reload would hold only this request's half: no retry.)
    assert_eq!(get(&gw.url("/flaky")).await.status, 502);
    assert_eq!(
        bad1.hits() + bad2.hits(),
        3,
        "a reload reset the retry budget"
    );
}

/// A refused reload leaves nothing behind: no metric series for the routes and targets of
/// the config that did not go live, whether it was invalid or failed to bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_no_metric_series_behind() {
    let up = TestUpstream::echo("u").await;
    let good = config(&up.url(), "a", "");
    let dir = TempConfig::new(&good);
    let gw = TestGateway::start_with(&good, Some(dir.path.clone())).await;
    let ghost = TestUpstream::echo("ghost").await;
    let extra_route = |listen: &str| {
        format!(
            "listen: [\"127.0.0.1:0\", \"{listen}\"]\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{}\"] }}\n  ghost: {{ targets: [\"{}\"] }}\nroutes:\n  - name: ghost-route\n    match: {{ path_prefix: /ghost }}\n    upstream: ghost\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
            up.url(),
            ghost.url()
        )
    };
    // Invalid: a route names an upstream that does not exist, after the ghost route compiled.
    let invalid = extra_route("127.0.0.1:0").replace("upstream: u\n", "upstream: nope\n");
    // Valid, but one of its listeners cannot be bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unbindable = extra_route(&taken.local_addr().unwrap().to_string());
    for bad in [invalid, unbindable] {
        std::fs::write(&dir.path, &bad).unwrap();
        assert!(gw.control.reload_file("test").await.is_err());
        let m = gw.gw.metrics.encode();
        assert!(!m.contains("ghost"), "series of a refused config:\n{m}");
    }
    assert_eq!(
        get(&gw.url("/x")).await.status,
        200,
        "the running config still serves"
    );
}
