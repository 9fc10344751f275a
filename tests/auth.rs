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
