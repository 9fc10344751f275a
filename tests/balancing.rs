//! Load balancing and resilience with real upstreams: weight ratios, a target killed mid-traffic
//! (no failed request, ejection, recovery after restart), hash stability, EWMA moving traffic
//! off a slow target, and the retry budget capping amplification.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response, StatusCode};

fn upstream_config(balance: &str, targets: &[String], extra: &str) -> String {
    let t: Vec<String> = targets.iter().map(|t| format!("      - {t}\n")).collect();
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u:\n    balance: {balance}\n{extra}    targets:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        t.concat()
    )
}

/// Sends `total` GETs from `concurrency` clients; returns responses per `x-upstream` name and
/// the number of failures.
async fn traffic(
    url: &str,
    total: usize,
    concurrency: usize,
    header: Option<(&'static str, String)>,
) -> (HashMap<String, usize>, usize) {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = url.to_owned();
        let header = header.clone();
        let n = total / concurrency;
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut failed = 0;
            for _ in 0..n {
                let mut b = Request::get(&url);
                if let Some((k, v)) = &header {
                    b = b.header(*k, v.as_str());
                }
                let r = send(&c, b.body(full("")).unwrap()).await;
                match r.header("x-upstream") {
                    Some(name) if r.status == 200 => *seen.entry(name.to_owned()).or_default() += 1,
                    _ => failed += 1,
                }
            }
            (seen, failed)
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    for t in tasks {
        let (s, f) = t.await.unwrap();
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
        failed += f;
    }
    (seen, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_over_ten_thousand_requests_for_every_weighted_balancer() {
    let ups = [
        TestUpstream::echo("a").await,
        TestUpstream::echo("b").await,
        TestUpstream::echo("c").await,
    ];
    let targets = vec![
        format!("{{ url: \"{}\", weight: 1 }}", ups[0].url()),
        format!("{{ url: \"{}\", weight: 2 }}", ups[1].url()),
        format!("{{ url: \"{}\", weight: 1 }}", ups[2].url()),
    ];
    for balance in ["round_robin", "random", "least_request"] {
        let gw = TestGateway::start(&upstream_config(balance, &targets, "")).await;
        let (seen, failed) = traffic(&gw.url("/"), 10_000, 8, None).await;
        assert_eq!(failed, 0);
        let share = |n: &str| seen.get(n).copied().unwrap_or(0) as f64 / 10_000.0;
        for (name, want) in [("a", 0.25), ("b", 0.5), ("c", 0.25)] {
            assert!(
                (share(name) - want).abs() < 0.03,
                "{balance}: {name} got {:.3}, want {want} ({seen:?})",
                share(name)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_traffic_costs_no_request_and_is_ejected_then_readmitted() {
    let a = TestUpstream::echo("a").await;
    let b = TestUpstream::echo("b").await;
    let c = TestUpstream::echo("c").await;
    let c_addr = c.addr;
    let targets = vec![
        format!("\"{}\"", a.url()),
        format!("\"{}\"", b.url()),
        format!("\"{}\"", c.url()),
    ];
    let extra = "    retries: { attempts: 3, on: [reset, 502, 503, 504] }\n    health: { passive: { consecutive_failures: 3, base_ejection: 1s } }\n";
    let gw = TestGateway::start(&upstream_config("round_robin", &targets, extra)).await;

    // Continuous traffic from 4 clients; the third target dies in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, failures, done, url) =
            (stop.clone(), failures.clone(), done.clone(), gw.url("/"));
        clients.push(tokio::spawn(async move {
            let cl = client();
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    cl.request(Request::get(&url).body(full("")).unwrap()),
                )
                .await;
                match r {
                    Ok(Ok(resp)) if resp.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill();
    let killed_at = Instant::now();
    drop(c);
    // Ejected within a few failed tries: long before the traffic ends.
    let rt = gw.gw.runtime.load_full();
    let dead = rt.upstreams["u"]
        .targets
        .iter()
        .position(|t| t.authority.as_str() == c_addr.to_string())
        .unwrap();
    let mut ejected_after = None;
    for _ in 0..400 {
        if rt.upstreams["u"].targets[dead]
            .live
            .is_ejected(Instant::now())
        {
            ejected_after = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ejected_after = ejected_after.expect("the dead target was never ejected");
    assert!(
        ejected_after < Duration::from_secs(2),
        "ejected only after {ejected_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restart it on the same port: once the ejection runs out it takes traffic again.
    let listener = tokio::net::TcpListener::bind(c_addr).await.unwrap();
    let c2 = TestUpstream::serve(listener, TestUpstream::echo_handler("c"));
    let mut readmitted = false;
    for _ in 0..100 {
        if c2.hits() > 0 {
            readmitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "client requests failed (of {})",
        done.load(Ordering::Relaxed)
    );
    assert!(done.load(Ordering::Relaxed) > 500);
    assert!(
        readmitted,
        "the restarted target got no traffic after its ejection ended"
    );
    let metrics = gw.gw.metrics.encode();
    assert!(
        metrics.contains("gatehouse_upstream_ejections_total{upstream=\"u\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_upstream_retries_total{upstream=\"u\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_one_of_ten_targets_remaps_about_a_tenth_of_keys() {
    let mut ups = Vec::new();
    for i in 0..10 {
        ups.push(TestUpstream::echo(&format!("t{i}")).await);
    }
    let targets: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.url())).collect();
    let extra = "    hash_on: \"header:x-user\"\n";
    let gw = TestGateway::start(&upstream_config("hash", &targets, extra)).await;
    let c = client();
    let place = |gw: &TestGateway, c: &hyper_util::client::legacy::Client<_, _>, k: usize| {
        let req = Request::get(gw.url("/"))
            .header("x-user", format!("user-{k}"))
            .body(full(""))
            .unwrap();
        let c = c.clone();
        async move { send(&c, req).await.header("x-upstream").unwrap().to_owned() }
    };
    let keys = 400;
    let mut before = Vec::new();
    for k in 0..keys {
        before.push(place(&gw, &c, k).await);
    }
    // The same key always lands on the same target.
    for (k, was) in before.iter().enumerate().take(20) {
        assert_eq!(&place(&gw, &c, k).await, was);
    }
    gw.control
        .apply(upstream_config("hash", &targets[..9], extra), "test", false)
        .await
        .unwrap();
    let mut moved = 0;
    for (k, was) in before.iter().enumerate() {
        let now = place(&gw, &c, k).await;
        if &now != was {
            moved += 1;
            assert_eq!(was, "t9", "key {k} moved from a target that stayed");
        }
    }
    let frac = moved as f64 / keys as f64;
    assert!((0.05..0.16).contains(&frac), "{frac} of keys moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_moves_traffic_off_a_target_that_turns_ten_times_slower() {
    let slow_mode = Arc::new(AtomicBool::new(false));
    let sm = slow_mode.clone();
    let c = TestUpstream::start(Arc::new(move |_req| {
        let slow = sm.load(Ordering::Relaxed);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(if slow { 40 } else { 4 })).await;
            let mut r = Response::new(full("c"));
            r.headers_mut()
                .insert("x-upstream", http::HeaderValue::from_static("c"));
            r
        })
    }))
    .await;
    let delayed = |name: &'static str| {
        Arc::new(move |_req| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(4)).await;
                let mut r = Response::new(full(name));
                r.headers_mut()
                    .insert("x-upstream", http::HeaderValue::from_static(name));
                r
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
        })
    };
    let a = TestUpstream::start(delayed("a")).await;
    let b = TestUpstream::start(delayed("b")).await;
    let targets = vec![
        format!("\"{}\"", a.url()),
        format!("\"{}\"", b.url()),
        format!("\"{}\"", c.url()),
    ];
    let gw = TestGateway::start(&upstream_config("ewma", &targets, "")).await;
    let (seen, failed) = traffic(&gw.url("/"), 300, 6, None).await;
    assert_eq!(failed, 0);
    let even = seen.get("c").copied().unwrap_or(0) as f64 / 300.0;
    assert!(
        even > 0.2,
        "while all are equal, c gets its share: {seen:?}"
    );
    slow_mode.store(true, Ordering::Relaxed);
    let _ = traffic(&gw.url("/"), 60, 6, None).await;
    let (seen, failed) = traffic(&gw.url("/"), 300, 6, None).await;
    assert_eq!(failed, 0);
    let slow_share = seen.get("c").copied().unwrap_or(0) as f64 / 300.0;
    assert!(
        slow_share < 0.12,
        "the slow target still gets {slow_share:.2} of traffic: {seen:?}"
    );
}

/// `n` upstreams that answer every request with `status`, counting into `hits`.
async fn failing_upstreams(
    n: usize,
    status: StatusCode,
    hits: &Arc<AtomicUsize>,
) -> Vec<TestUpstream> {
    let mut ups = Vec::new();
    for _ in 0..n {
        let h = hits.clone();
        ups.push(
            TestUpstream::start(Arc::new(move |_req| {
                h.fetch_add(1, Ordering::Relaxed);
                Box::pin(async move {
                    let mut r = Response::new(full("down"));
                    *r.status_mut() = status;
                    r
                })
            }))
            .await,
        );
    }
    ups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification_when_everything_fails() {
    let hits = Arc::new(AtomicUsize::new(0));
    let ups = failing_upstreams(3, StatusCode::SERVICE_UNAVAILABLE, &hits).await;
    let targets: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.url())).collect();
    // Up to 3 tries per request, but at most 20% retries plus 10/s.
    let extra = "    retries: { attempts: 3, on: [503], budget: 20%, min_per_second: 10, backoff: { base: 1ms, max: 2ms } }\n    health: { passive: { consecutive_failures: 0 } }\n";
    let gw = TestGateway::start(&upstream_config("round_robin", &targets, extra)).await;
    let c = client();
    let start = Instant::now();
    let requests = 500;
    for _ in 0..requests {
        let r = send(&c, get_req(&gw.url("/")).body(full("")).unwrap()).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream's answer is passed on"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let total = hits.load(Ordering::Relaxed);
    let allowed = requests as f64 * 1.2 + 10.0 * (secs + 1.0) + 10.0;
    assert!(total > requests, "some retries happened");
    assert!(
        (total as f64) <= allowed,
        "{total} upstream requests for {requests} client requests in {secs:.1}s (allowed {allowed:.0})"
    );
    assert!(
        (total as f64) < requests as f64 * 3.0 * 0.6,
        "amplification not capped: {total}"
    );
    assert!(
        gw.gw
            .metrics
            .encode()
            .contains("gatehouse_upstream_retry_budget_exhausted_total{upstream=\"u\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_retried_only_when_the_route_opts_in() {
    let hits = Arc::new(AtomicUsize::new(0));
    let ups = failing_upstreams(2, StatusCode::BAD_GATEWAY, &hits).await;
    let targets: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.url())).collect();
    let extra = "    retries: { attempts: 2, on: [502] }\n    health: { passive: { consecutive_failures: 0 } }\n";
    let base = upstream_config("round_robin", &targets, extra);
    let gw = TestGateway::start(&base).await;
    let post = || {
        Request::post(gw.url("/"))
            .header("content-length", "5")
            .body(full("hello"))
            .unwrap()
    };
    send(&client(), post()).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        1,
        "a POST was resent without the route opting in"
    );
    send(&client(), get_req(&gw.url("/")).body(full("")).unwrap()).await;
    assert_eq!(hits.load(Ordering::Relaxed), 3, "a GET is retried once");
    gw.control
        .apply(
            base.replace(
                "    upstream: u\n",
                "    upstream: u\n    retry_non_idempotent: true\n",
            ),
            "test",
            false,
        )
        .await
        .unwrap();
    send(&client(), post()).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        5,
        "the opted-in POST is resent, body and all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_target_out_and_bring_it_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let sick = TestUpstream::start(Arc::new(move |req: Request<hyper::body::Incoming>| {
        let ok = h.load(Ordering::Relaxed);
        Box::pin(async move {
            let mut r = Response::new(full("b"));
            if req.uri().path() == "/healthz" && !ok {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            r.headers_mut()
                .insert("x-upstream", http::HeaderValue::from_static("b"));
            r
        })
    }))
    .await;
    let a = TestUpstream::echo("a").await;
    let targets = vec![format!("\"{}\"", a.url()), format!("\"{}\"", sick.url())];
    let extra = "    health: { active: { path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2 }, passive: { consecutive_failures: 0 }, slow_start: 1s }\n";
    let admin = "admin: { addr: \"127.0.0.1:0\" }\n";
    let gw = TestGateway::start(
        &upstream_config("round_robin", &targets, extra)
            .replace("access_log: off\n", &format!("access_log: off\n{admin}")),
    )
    .await;
    let state = |gw: &TestGateway| {
        let url = gw.admin_url("/upstreams");
        async move {
            get(&url).await.json()[0]["targets"][1]["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (seen, _) = traffic(&gw.url("/"), 40, 2, None).await;
    assert!(seen.get("b").copied().unwrap_or(0) > 10, "{seen:?}");
    assert_eq!(state(&gw).await, "healthy");

    // The checks start failing (traffic itself would still get 200s): out within ~3 intervals.
    healthy.store(false, Ordering::Relaxed);
    let mut out = false;
    for _ in 0..40 {
        if state(&gw).await == "unhealthy" {
            out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(out, "the failing target was not taken out");
    let m = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).into_owned();
    assert!(
        m.contains(&format!(
            "gatehouse_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}} 0",
            sick.addr
        )),
        "{m}"
    );
    let (seen, failed) = traffic(&gw.url("/"), 40, 2, None).await;
    assert_eq!(
        (seen.get("b").copied().unwrap_or(0), failed),
        (0, 0),
        "an unhealthy target got traffic: {seen:?}"
    );

    // Passing again: back after the healthy threshold.
    healthy.store(true, Ordering::Relaxed);
    let mut back = false;
    for _ in 0..40 {
        if state(&gw).await == "healthy" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the recovered target did not come back");
    // Slow start: right after coming back it gets a small share...
    let (seen, _) = traffic(&gw.url("/"), 40, 2, None).await;
    let early = seen.get("b").copied().unwrap_or(0);
    assert!(early < 12, "no slow start: {seen:?}");
    // ...and its full share once `slow_start` has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (seen, _) = traffic(&gw.url("/"), 40, 2, None).await;
    assert!(seen.get("b").copied().unwrap_or(0) >= 16, "{seen:?}");
}

async fn concurrent_gets(url: &str, n: usize) -> Vec<(StatusCode, Option<String>, Duration)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = get(&url).await;
            (
                r.status,
                r.header("retry-after").map(str::to_owned),
                t.elapsed(),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_excess_at_once_with_retry_after() {
    let slow = TestUpstream::delayed(Duration::from_millis(400), "slow").await;
    let targets = vec![format!("\"{}\"", slow.url())];

    // At most 2 requests in flight: of 6 at once, 4 are refused quickly.
    let gw = TestGateway::start(&upstream_config(
        "round_robin",
        &targets,
        "    limits: { max_in_flight: 2 }\n",
    ))
    .await;
    let results = concurrent_gets(&gw.url("/"), 6).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!((ok, refused.len()), (2, 4), "{results:?}");
    for r in &refused {
        assert_eq!(r.1.as_deref(), Some("1"), "Retry-After");
        assert!(
            r.2 < Duration::from_millis(300),
            "refused slowly: {:?}",
            r.2
        );
    }
    // Slots come back when the requests end.
    assert_eq!(get(&gw.url("/")).await.status, 200);

    // One connection, one waiting request: the third and fourth are refused at once, the
    // waiting one is served when the connection frees.
    let gw = TestGateway::start(&upstream_config(
        "round_robin",
        &targets,
        "    limits: { max_connections: 1, max_pending: 1 }\n",
    ))
    .await;
    let results = concurrent_gets(&gw.url("/"), 4).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, refused), (2, 2), "{results:?}");
    let body = get(&gw.url("/")).await;
    assert_eq!(body.status, 200);
    let r = results
        .iter()
        .find(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .unwrap();
    assert!(r.2 < Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_targets_become_one_target_per_address() {
    let up = TestUpstream::echo("a").await;
    let port = up.addr.port();
    let targets = vec![format!("\"http://localhost:{port}\"")];
    let gw = TestGateway::start(&upstream_config(
        "round_robin",
        &targets,
        "    dns_refresh: 1s\n",
    ))
    .await;
    // Before and after resolution, requests work (with the name resolved at connect, then per
    // address).
    assert_eq!(get(&gw.url("/")).await.status, 200);
    let mut resolved = false;
    for _ in 0..100 {
        let rt = gw.gw.runtime.load_full();
        let addrs: Vec<String> = rt.upstreams["u"]
            .targets
            .iter()
            .map(|t| t.authority.to_string())
            .collect();
        if addrs.contains(&format!("127.0.0.1:{port}")) {
            assert!(
                addrs.iter().all(|a| !a.starts_with("localhost")),
                "{addrs:?}"
            );
            assert!(
                rt.upstreams["u"]
                    .targets
                    .iter()
                    .all(|t| t.url == format!("http://localhost:{port}"))
            );
            resolved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(resolved, "localhost was never expanded into addresses");
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, 200);
    // Host is the client's by default; with preserve_host: false it is the name, not an address.
    let gw2 = TestGateway::start(&upstream_config(
        "round_robin",
        &targets,
        "    preserve_host: false\n",
    ))
    .await;
    for _ in 0..100 {
        if gw2.gw.runtime.load().upstreams["u"].targets[0]
            .authority
            .host()
            == "127.0.0.1"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&gw2.url("/")).await.json()["headers"]["host"][0],
        format!("localhost:{port}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_target_a_retryable_answer_is_passed_on_as_it_is() {
    let down = TestUpstream::start(Arc::new(|_req| {
        Box::pin(async {
            let mut r = Response::new(full("maintenance"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("120"));
            r
        })
    }))
    .await;
    let targets = vec![format!("\"{}\"", down.url())];
    let extra = "    retries: { attempts: 3, on: [503] }\n    health: { passive: { consecutive_failures: 0 } }\n";
    let gw = TestGateway::start(&upstream_config("round_robin", &targets, extra)).await;
    let r = get(&gw.url("/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"maintenance");
    assert_eq!(r.header("retry-after"), Some("120"));
    assert_eq!(down.hits(), 1, "nothing to retry on");
}
