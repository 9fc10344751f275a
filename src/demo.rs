//! `gatehouse demo`: the gateway on a built-in config in front of built-in demo services (three
//! instances of `users`, one of `orders`) on loopback, to show routing and balancing with curl.
//! The demo services are tiny hyper servers that echo what reached them as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts one demo service on an ephemeral loopback port; runs until the process ends.
pub async fn start_demo_service(
    service: &'static str,
    instance: String,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let instance = instance.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = serde_json::json!({
                        "service": service,
                        "instance": instance,
                        "method": req.method().as_str(),
                        "path": req.uri().path_and_query().map(|p| p.as_str()),
                        "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                        "x_forwarded_for": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
                        "x_consumer_id": req.headers().get("x-consumer-id").and_then(|v| v.to_str().ok()),
                        "x_request_id": req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
                    });
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written into `dir` as
/// `demo.pem` and `demo.key` (the key readable by this user only).
pub fn self_signed(dir: &std::path::Path) -> Result<(String, String), String> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| e.to_string())?;
    let cert = dir.join("demo.pem");
    let key = dir.join("demo.key");
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    ))
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The demo's config, pointing at the demo services. `tls`: an HTTPS listener (address,
/// certificate, key) besides the plain one.
pub fn demo_config(
    listen: &str,
    tls: Option<&(String, String, String)>,
    users: &[SocketAddr],
    orders: SocketAddr,
) -> String {
    let mut targets = String::new();
    for (i, a) in users.iter().enumerate() {
        // The last instance gets twice the share, to show weights.
        let weight = if i + 1 == users.len() { 2 } else { 1 };
        targets.push_str(&format!(
            "      - {{ url: \"http://{a}\", weight: {weight} }}\n"
        ));
    }
    let listen = match tls {
        None => format!("listen: \"{listen}\""),
        Some((addr, cert, key)) => format!(
            "listen:\n  - addr: \"{listen}\"\n  - addr: \"{addr}\"\n    tls:\n      certificates: [{{ cert: \"{cert}\", key: \"{key}\" }}]\n      hsts: {{ max_age: 300 }}"
        ),
    };
    // The demo user's password is `demo`; only its hash goes into the config.
    let demo_hash = {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(b"demo")
            .map(|h| h.to_string())
            .unwrap_or_default()
    };
    format!(
        r#"{listen}
access_log: {{ format: text }}
admin: {{ addr: "127.0.0.1:0" }}
consumers:
  - id: demo
    groups: [admins]
    basic_auth: {{ username: demo, password_hash: "{demo_hash}" }}
upstreams:
  users:
    targets:
{targets}  orders:
    targets: ["http://{orders}"]
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: users
    auth: {{ methods: [basic], groups: [admins] }}
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: users
    rate_limit: {{ key: client_ip, limit: 2/s, burst: 3 }}
  - name: dashboard
    match: {{ path: "/dashboard/{{id}}", methods: [GET] }}
    aggregate:
      user:   {{ upstream: users, path: "/v1/users/{{id}}", select: [path, instance] }}
      orders: {{ upstream: orders, path: "/orders?user={{id}}&limit={{query.limit}}", required: false, timeout: 500ms, select: [path] }}
  - name: cached
    match: {{ path_prefix: /cached }}
    upstream: users
    cache: {{ ttl: 10s }}
  - name: users
    match: {{ path_prefix: /users }}
    upstream: users
  - name: user-by-id
    match: {{ path: "/users/{{id}}", methods: [GET] }}
    upstream: users
    rewrite: "/v1/users/{{id}}"
  - name: orders
    match: {{ path_prefix: /api/orders }}
    upstream: orders
    strip_prefix: true
    headers:
      response: {{ set: {{ x-served-by: gatehouse-demo }} }}
"#
    )
}

pub fn demo_help(
    addrs: &[SocketAddr],
    admin: Option<SocketAddr>,
    config_path: &std::path::Path,
) -> String {
    let admin = admin.map_or_else(|| "(admin API off)".to_owned(), |a| format!("http://{a}"));
    let addr = addrs[0];
    let https = match addrs.get(1) {
        Some(h) => {
            let cert = config_path.with_file_name("demo.pem");
            format!(
                r#"
  # HTTPS with the self-signed certificate the demo made (HTTP/2 when the client offers it)
  curl -s --cacert {cert} https://localhost:{port}/users --http2 -o /dev/null -w '%{{http_version}}
'
  curl -sk https://{h}/users
"#,
                cert = cert.display(),
                port = h.port()
            )
        }
        None => String::new(),
    };
    let config_path = config_path.display();
    format!(
        r#"
Gatehouse demo is running on http://{addr}  (Ctrl-C to stop)
{https}
  # balancing: 3 instances of `users`, the third with weight 2 (watch "instance")
  for i in 1 2 3 4 5 6 7 8; do curl -s http://{addr}/users | grep instance; done

  # the most specific route wins: /users/{{id}} is rewritten to /v1/users/{{id}}
  curl -s http://{addr}/users/42

  # strip_prefix: /api/orders/7 reaches the orders service as /7, with a response header added
  curl -si http://{addr}/api/orders/7

  # a protected route: 401 with a Basic challenge, then the demo user (password `demo`);
  # the service sees who called in x-consumer-id, not the password
  curl -si http://{addr}/admin
  curl -s -u demo:demo http://{addr}/admin

  # aggregation: one request, two services (users and orders, called at once), one JSON answer
  curl -s 'http://{addr}/dashboard/42?limit=5'

  # a cached route (ttl 10s): the first answer is stored, the next ones come from the cache
  # (Cache-Status: hit, with Age), so one instance answers them all until it expires
  for i in 1 2 3; do curl -si http://{addr}/cached | grep -iE '^(cache-status|age)|instance'; done

  # a rate limit (2/s, burst 3): the first four pass, then 429 with Retry-After
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' http://{addr}/limited; done; echo

  # no route: a JSON 404 with the request id
  curl -si http://{addr}/nope

  # live dashboard, metrics, and the admin API
  open {admin}/dashboard
  curl -s {admin}/metrics | grep gatehouse_http_requests_total
  curl -s {admin}/routes

  # which route would handle a request, without sending one
  # (the demo's config is in {config_path})
  cargo run --release -- explain --config {config_path} GET http://{addr}/users/42
"#
    )
}
