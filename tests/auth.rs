//! Authentication and access control, tried from outside: real gateway, real echo upstream,
//! raw HTTP/1.1 clients. Every test sends from its own client address (through a trusted
//! proxy's X-Forwarded-For), because failed attempts are counted per address.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::raw::RawClient;
use common::{TestGateway, TestUpstream};

fn hash(pw: &str) -> String {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(pw.as_bytes())
        .expect("hash")
        .to_string()
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// One request from `client` (an address the gateway believes: it trusts 127.0.0.1).
async fn call(
    gw: &TestGateway,
    client: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> common::raw::RawResponse {
    let mut c = RawClient::connect(gw.addr).await;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(&req).await;
    c.response().await.response()
}

fn config(upstream: &str, consumers: &str, auth: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nserver: {{ trusted_proxies: [\"127.0.0.1\"] }}\nconsumers:\n{consumers}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    auth: {auth}\n"
    )
}

fn consumers() -> String {
    format!(
        "  - id: alice\n    groups: [admins]\n    basic_auth: {{ username: alice, password_hash: \"{}\" }}\n    api_keys: [{{ hash: \"{}\" }}]\n  - id: bob\n    groups: [users]\n    basic_auth: {{ username: bob, password_hash: \"{}\" }}\n",
        hash("alice-pw"),
        gatehouse::policy::consumers::key_digest(b"alice-key"),
        hash("bob-pw"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_admits_the_right_caller_and_tells_the_upstream() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &consumers(),
        "{ methods: [basic, api_key] }",
    ))
    .await;
    let ip = "198.51.100.1";

    let r = call(&gw, ip, "/x", &[]).await;
    assert_eq!(r.status, 401);
    let challenges: Vec<&str> = r.headers_all("www-authenticate");
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Basic realm=\"gatehouse\"")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("ApiKey ")),
        "{challenges:?}"
    );
    assert!(
        r.json()["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(up.hits(), 0);

    let r = call(
        &gw,
        ip,
        "/x",
        &[("authorization", &basic("alice", "wrong"))],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = call(
        &gw,
        ip,
        "/x",
        &[("authorization", &basic("nobody", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.hits(), 0);

    // Right password; the client's own identity headers are replaced, the credential removed.
    let r = call(
        &gw,
        ip,
        "/x",
        &[
            ("authorization", &basic("alice", "alice-pw")),
            ("x-consumer-id", "root"),
            ("x-consumer-groups", "superusers"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["headers"]["x-consumer-id"], serde_json::json!(["alice"]));
    assert_eq!(
        v["headers"]["x-consumer-groups"],
        serde_json::json!(["admins"])
    );
    assert!(v["headers"].get("authorization").is_none(), "{v}");

    // A second call is served from the verified cache: fast.
    let started = Instant::now();
    let r = call(
        &gw,
        ip,
        "/x",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    // Hostile credentials: malformed, oversized, empty; each a 401, and the gateway serves on.
    let huge = format!("Basic {}", "A".repeat(16_000));
    for bad in [
        "Basic !!!",
        "Basic",
        "Basic Og==",
        "Bearer ",
        "basic YWxpY2U=",
        huge.as_str(),
    ] {
        let r = call(&gw, "198.51.100.9", "/x", &[("authorization", bad)]).await;
        assert_eq!(r.status, 401, "{bad:.40}");
    }
    assert_eq!(
        up.hits(),
        2,
        "only the two admitted requests reached the upstream"
    );

    // Spoofed identity without credentials: refused, never forwarded.
    let r = call(&gw, ip, "/x", &[("x-consumer-id", "alice")]).await;
    assert_eq!(r.status, 401);

    let metrics = gw.gw.metrics.encode();
    assert!(
        metrics.contains("gatehouse_auth_total{route=\"/\",method=\"basic\",result=\"success\"}")
            || metrics.contains("method=\"basic\",result=\"success\""),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"failure\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_a_header_or_the_query() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &consumers(),
        "{ methods: [api_key], api_key: { header: x-api-key, query: api_key } }",
    ))
    .await;
    let ip = "198.51.100.2";
    let r = call(&gw, ip, "/k", &[("x-api-key", "alice-key")]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["headers"]["x-consumer-id"], serde_json::json!(["alice"]));
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key is not forwarded"
    );

    let r = call(&gw, ip, "/k?a=1&api_key=alice-key&b=2", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/k?a=1&b=2",
        "the key is taken out of the query"
    );

    let r = call(&gw, ip, "/k", &[("x-api-key", "alice-keyX")]).await;
    assert_eq!(r.status, 401);
}

/// An API key sent in the query is a credential: the access log shows the query without it,
/// for a valid key and for a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_in_the_query_never_reaches_the_access_log() {
    let up = TestUpstream::echo("u").await;
    let dir = common::servers::TempDir::new("auth-log");
    let log = dir.0.join("access.log");
    // An IP rule refuses one address before `auth` runs: its line hides the key too.
    let yaml = config(
        &up.url(),
        &consumers(),
        "{ methods: [api_key], api_key: { header: x-api-key, query: api_key } }\n    ip_rules: { deny: [198.51.100.66] }",
    )
    .replace(
        "access_log: off\n",
        &format!(
            "access_log: {{ format: json, path: \"{}\" }}\n",
            log.display()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    let ip = "198.51.100.12";
    let r = call(&gw, ip, "/k?a=1&api_key=alice-key&b=2", &[]).await;
    assert_eq!(r.status, 200);
    let r = call(&gw, ip, "/k?api_key=wrong-secret-key", &[]).await;
    assert_eq!(r.status, 401);
    let r = call(&gw, "198.51.100.66", "/k?x=1&api_key=alice-key", &[]).await;
    assert_eq!(r.status, 403);
    // Refused before routing (two Host fields): its line hides the key as well.
    let r = call(&gw, ip, "/k?api_key=alice-key&z=1", &[("host", "y")]).await;
    assert_eq!(r.status, 400);
    let mut lines = Vec::new();
    for _ in 0..250 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    let paths: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
        .collect();
    assert_eq!(
        paths,
        ["\"/k?a=1&b=2\"", "\"/k\"", "\"/k?x=1\"", "\"/k?z=1\""],
        "{lines:?}"
    );
    for l in &lines {
        assert!(
            !l.contains("alice-key") && !l.contains("wrong-secret"),
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_consumers_decide_who_passes() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &consumers(),
        "{ methods: [basic], groups: [admins] }",
    ))
    .await;
    let ip = "198.51.100.3";
    let r = call(&gw, ip, "/", &[("authorization", &basic("bob", "bob-pw"))]).await;
    assert_eq!(r.status, 403, "authenticated but not admitted");
    assert_eq!(r.json()["error"], "forbidden");
    let r = call(
        &gw,
        ip,
        "/",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 200);

    let gw = TestGateway::start(&config(
        &up.url(),
        &consumers(),
        "{ methods: [basic], consumers: [bob] }",
    ))
    .await;
    let r = call(
        &gw,
        ip,
        "/",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(&gw, ip, "/", &[("authorization", &basic("bob", "bob-pw"))]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_access_still_refuses_wrong_credentials() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &consumers(),
        "{ methods: [basic], anonymous: true }",
    ))
    .await;
    let ip = "198.51.100.4";
    let r = call(&gw, ip, "/", &[("x-consumer-id", "alice")]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-consumer-id").is_none(),
        "spoofed id removed"
    );
    let r = call(&gw, ip, "/", &[("authorization", &basic("alice", "nope"))]).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_address_out() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(&up.url(), &consumers(), "{ methods: [basic] }")).await;
    let ip = "198.51.100.5";
    for _ in 0..10 {
        let r = call(&gw, ip, "/", &[("authorization", &basic("alice", "guess"))]).await;
        assert_eq!(r.status, 401);
    }
    // Locked out: even the right password waits, with Retry-After.
    let r = call(
        &gw,
        ip,
        "/",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // Another address is not affected.
    let r = call(
        &gw,
        "198.51.100.6",
        "/",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_users_and_a_changed_file() {
    let up = TestUpstream::echo("u").await;
    let dir = common::pki::Dir::new();
    let carol = bcrypt::hash("carol-pw", 4).expect("bcrypt");
    let file = dir.write("users.htpasswd", &format!("carol:{carol}\n"));
    let gw = TestGateway::start(&config(
        &up.url(),
        "  []\n",
        &format!("{{ methods: [basic], basic: {{ htpasswd: \"{file}\" }} }}"),
    ))
    .await;
    let ip = "198.51.100.7";
    let r = call(
        &gw,
        ip,
        "/",
        &[("authorization", &basic("carol", "carol-pw"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-consumer-id"],
        serde_json::json!(["carol"])
    );
    // A new user appears in the file: picked up without a reload command.
    let dave = bcrypt::hash("dave-pw", 4).expect("bcrypt");
    dir.write("users.htpasswd", &format!("carol:{carol}\ndave:{dave}\n"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(
            &gw,
            "198.51.100.8",
            "/",
            &[("authorization", &basic("dave", "dave-pw"))],
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "dave was not picked up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn config_errors_name_the_key_and_never_the_secret() {
    let bad = "listen: \"127.0.0.1:0\"\nconsumers:\n  - id: alice\n    basic_auth: { username: alice, password_hash: \"hunter2\" }\n    api_keys: [{ hash: \"plain-key\" }]\nupstreams:\n  u: { targets: [\"http://127.0.0.1:1\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: u\n    auth: { methods: [basic, magic], consumers: [mallory] }\n";
    let cfg = gatehouse::config::parse_str(bad, &|_| None).expect("parses");
    let errors = gatehouse::compile::compile(&cfg, &gatehouse::State::default())
        .err()
        .expect("refused");
    let text = format!("{errors:?}");
    for key in [
        "consumers[0].basic_auth.password_hash",
        "consumers[0].api_keys[0].hash",
        "routes[0].auth.methods[1]",
        "routes[0].auth.consumers[0]",
    ] {
        assert!(errors.iter().any(|e| e.path == key), "{key} not in {text}");
    }
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("plain-key"), "{text}");
}

fn jwt_token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// JWT on a route, end to end: the consumer and chosen claims reach the upstream, spoofed
/// copies do not, and a bad token gets a Bearer challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_tokens_end_to_end() {
    let up = TestUpstream::echo("u").await;
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let auth = format!(
        "{{ methods: [jwt], groups: [staff], jwt: {{ secret: \"{secret}\", algorithms: [HS256], issuer: \"https://id.test/\", audiences: [api], forward_claims: {{ email: x-user-email }} }} }}"
    );
    let gw = TestGateway::start(&config(&up.url(), "  []\n", &auth)).await;
    let ip = "198.51.100.20";
    let good = jwt_token(
        secret,
        serde_json::json!({"sub": "carol", "groups": ["staff"], "email": "carol@example.com", "iss": "https://id.test/", "aud": "api", "exp": now() + 300}),
    );
    let r = call(
        &gw,
        ip,
        "/j",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("x-user-email", "admin@example.com"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["headers"]["x-consumer-id"], serde_json::json!(["carol"]));
    assert_eq!(
        v["headers"]["x-user-email"],
        serde_json::json!(["carol@example.com"])
    );
    assert!(v["headers"].get("authorization").is_none());

    for (why, claims) in [
        (
            "expired",
            serde_json::json!({"sub": "carol", "groups": ["staff"], "iss": "https://id.test/", "aud": "api", "exp": now() - 3600}),
        ),
        (
            "wrong issuer",
            serde_json::json!({"sub": "carol", "groups": ["staff"], "iss": "https://evil.test/", "aud": "api", "exp": now() + 300}),
        ),
        (
            "wrong audience",
            serde_json::json!({"sub": "carol", "groups": ["staff"], "iss": "https://id.test/", "aud": "other", "exp": now() + 300}),
        ),
    ] {
        let t = jwt_token(secret, claims);
        let r = call(&gw, ip, "/j", &[("authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(r.status, 401, "{why}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer")),
            "{why}"
        );
    }
    let forged = jwt_token(
        "another-secret-another-secret-another",
        serde_json::json!({"sub": "carol", "groups": ["staff"], "iss": "https://id.test/", "aud": "api", "exp": now() + 300}),
    );
    let r = call(
        &gw,
        "198.51.100.21",
        "/j",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(r.status, 401, "forged signature");
    let outsider = jwt_token(
        secret,
        serde_json::json!({"sub": "dan", "groups": ["guests"], "iss": "https://id.test/", "aud": "api", "exp": now() + 300}),
    );
    let r = call(
        &gw,
        "198.51.100.21",
        "/j",
        &[("authorization", &format!("Bearer {outsider}"))],
    )
    .await;
    assert_eq!(r.status, 403, "valid token, wrong group");
}

/// CORS headers are on the 401 a browser gets, so its script can read the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_on_a_401() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nconsumers:\n{}upstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    cors: {{ origins: [\"https://app.example.com\"] }}\n    auth: {{ methods: [basic] }}\n",
        consumers(),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.send("GET /x HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // The preflight is answered by the gateway, without credentials and without the upstream.
    let mut c = RawClient::connect(gw.addr).await;
    c.send("OPTIONS /x HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\n\r\n")
        .await;
    let r = c.response().await.response();
    assert!(r.status == 204 || r.status == 200, "{}", r.status);
    assert_eq!(up.hits(), 0);
}

/// The headers that say who a caller is are the gateway's on every route, not only where
/// `auth` or `forward_auth` runs: a client cannot tell the service behind an unguarded route
/// (or one guarded by another policy) that it is `root`. Other client headers pass, and so do
/// credentials (`Authorization`, cookies, API key headers), whoever else writes those names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_removed_on_every_route() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u: {{ targets: [\"{u}\"] }}\n  authz: {{ targets: [\"{u}\"] }}\nroutes:\n  - match: {{ path_prefix: /guarded }}\n    upstream: u\n    auth:\n      methods: [jwt]\n      identity_headers: {{ consumer_id: x-caller }}\n      jwt: {{ secret: \"a secret long enough for HS256 keys here\", forward_claims: {{ email: x-user-email }} }}\n  - match: {{ path_prefix: /checked }}\n    upstream: u\n    forward_auth: {{ url: \"{u}/check\", response_headers: [x-auth-user, authorization] }}\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        u = up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let req = "GET /open HTTP/1.1\r\nHost: gw.test\r\nX-Caller: root\r\nX-Consumer-Groups: admins\r\nX-User-Email: boss@example.com\r\nX-Auth-User: mallory\r\nX-Other: kept\r\nAuthorization: Bearer client-token\r\n\r\n";
    let r = match common::raw::exchange(gw.addr, req).await {
        common::raw::Got::Response(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"].clone();
    for h in [
        "x-caller",
        "x-consumer-groups",
        "x-user-email",
        "x-auth-user",
    ] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen}");
    }
    assert_eq!(seen["x-other"][0], "kept", "{seen}");
    // A name some policy reads credentials from is not an identity header everywhere, even
    // when a `forward_auth` writes it on its own route: the client's Authorization passes.
    assert_eq!(seen["authorization"][0], "Bearer client-token", "{seen}");
}

/// The binary with one `auth: basic` route answering `ok` for `consumers`, trusting
/// 127.0.0.1's `X-Forwarded-For` (so each request can come from an address of its own, and no
/// lockout interferes); the config file lives as long as the returned pair.
fn basic_binary(consumers: &str) -> (common::TempConfig, common::GatewayProcess) {
    let cfg = common::TempConfig::new(&format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nserver: {{ trusted_proxies: [\"127.0.0.1\"] }}\nconsumers:\n{consumers}routes:\n  - match: {{ path_prefix: / }}\n    respond: {{ body: ok }}\n    auth: {{ methods: [basic] }}\n"
    ));
    let gw = common::GatewayProcess::start(&cfg.path);
    (cfg, gw)
}

/// One request from `client` (as `X-Forwarded-For`) with Basic `alice:pw`, answered within
/// `wait`.
async fn ask_as_alice(
    addr: std::net::SocketAddr,
    client: String,
    pw: &str,
    wait: Duration,
) -> common::raw::RawResponse {
    let mut c = RawClient::connect(addr).await;
    c.send(format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\nAuthorization: {}\r\n\r\n",
        basic("alice", pw)
    ))
    .await;
    c.response_within(false, wait).await.response()
}

/// Password checks do not pile up memory: argon2's working memory (19 MiB at the default
/// parameters) is reused, not left resident by every check (before, 60 wrong passwords took
/// the binary from 12 to 240 MiB: glibc kept each freed buffer in another arena). 40 wrong
/// passwords, from 40 addresses (no lockout), in the real binary: it grows by about one buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_reuse_their_memory() {
    let (_cfg, gw) = basic_binary(&consumers());
    let ask = |n: u32, pw: &'static str| {
        let addr = gw.addr;
        async move {
            ask_as_alice(addr, format!("198.51.100.{n}"), pw, Duration::from_secs(10))
                .await
                .status
        }
    };
    // The first check makes the buffer (and the runtime's threads): the baseline is after it.
    assert_eq!(ask(1, "alice-pw").await, 200);
    let before = gw.rss_mib();
    for n in 0..40 {
        assert_eq!(ask(10 + n, "wrong").await, 401);
    }
    let after = gw.rss_mib();
    eprintln!("40 password checks: RSS {before:.1} -> {after:.1} MiB");
    assert!(
        after < before + 40.0,
        "40 password checks took RSS from {before:.1} to {after:.1} MiB"
    );
}

/// When every password-check slot stays busy (half the cores; here a hash of 64 MiB and four
/// passes, about 0.25 s optimised and seconds in a debug build, so far fewer than 100 checks
/// fit in 5 s per slot either way), a request that gets none within 5 s is answered 503
/// `auth_unavailable` with its request id, not 401: a wrong password is not reported as
/// checked, nor a right one as wrong. Once the burst is over, checks run again. In the binary,
/// whose check slots are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_password_checks_answer_503() {
    let heavy = {
        use argon2::password_hash::CustomizedPasswordHasher;
        let params = argon2::Params::new(64 * 1024, 4, 1, None).unwrap();
        argon2::Argon2::default()
            .hash_password_customized(b"alice-pw", b"0123456789abcdef", None, None, params)
            .unwrap()
            .to_string()
    };
    let (_cfg, gw) = basic_binary(&format!(
        "  - id: alice\n    basic_auth: {{ username: alice, password_hash: \"{heavy}\" }}\n"
    ));
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get()) / 2;
    // Far more checks than the slots finish in 5 s, each from its own address (no lockout).
    let n = 100 * slots.max(1);
    let asks: Vec<_> = (0..n)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let client = format!("10.9.{}.{}", i / 250, i % 250 + 1);
                ask_as_alice(addr, client, "wrong", Duration::from_secs(30)).await
            })
        })
        .collect();
    let (mut checked, mut busy) = (0, 0);
    for a in asks {
        let r = a.await.unwrap();
        match r.status {
            401 => checked += 1,
            503 => {
                busy += 1;
                assert_eq!(r.json()["error"], "auth_unavailable", "{}", r.text());
                assert!(r.json()["request_id"].is_string());
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    eprintln!("{checked} checked, {busy} answered 503 of {n}");
    assert!(
        checked >= 1 && busy >= 1,
        "{checked} checked, {busy} answered 503 of {n}"
    );
    // The burst is over: checks run again.
    let r = ask_as_alice(
        gw.addr,
        "10.8.0.1".into(),
        "alice-pw",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.status, 200);
}
