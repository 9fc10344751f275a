//! The security findings of SECURITY.md, each pinned against the real thing: the admin API over
//! HTTP (in-process gateway or the built binary), the access-log file, the config file on disk.
//! Every test here failed before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "security-test-token-0123456789";

/// A config with one upstream and one catch-all route; `extra` goes before `upstreams:`.
fn config(upstream: &str, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\n{extra}upstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n"
    )
}

fn admin_block(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("admin: {{ addr: \"127.0.0.1:0\", token: \"{t}\" }}\n"),
        None => "admin: { addr: \"127.0.0.1:0\" }\n".to_owned(),
    }
}

async fn admin_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> TestResponse {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/yaml");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(full(body.to_owned())).unwrap()).await
}

fn text(r: &TestResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Finding 1: the admin API could write any file.

/// A `PUT /config` that points the access log at another file (a shell profile, say) is
/// refused with 403 naming `access_log.path`; nothing is created, the file on disk keeps its
/// path, and `/config/validate` says the same. A config that keeps the path applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_cannot_add_or_change_a_file_path() {
    let up = TestUpstream::echo("u").await;
    let dir = TempConfig::new("");
    let log = dir.dir.join("access.log");
    let on_disk = config(
        &up.url(),
        &format!(
            "{}access_log: {{ format: text, path: \"{}\" }}\n",
            admin_block(Some(TOKEN)),
            log.display()
        ),
    );
    std::fs::write(&dir.path, &on_disk).unwrap();
    let gw = TestGateway::start_with(&on_disk, Some(dir.path.clone())).await;
    let admin = gw.control.admin_addr().unwrap();

    let profile = dir.dir.join("profile.sh");
    for (what, access_log) in [
        (
            "changed",
            format!(
                "access_log: {{ format: text, path: \"{}\" }}\n",
                profile.display()
            ),
        ),
        (
            "changed, with the same format and a relative path",
            "access_log: { format: text, path: \"profile.sh\" }\n".to_owned(),
        ),
    ] {
        let evil = config(
            &up.url(),
            &format!("{}{access_log}", admin_block(Some(TOKEN))),
        );
        let r = admin_at(admin, "PUT", "/config", Some(TOKEN), &evil).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", text(&r));
        let body = r.json();
        assert_eq!(body["applied"], false);
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .starts_with("access_log.path: "),
            "{what}: {body}"
        );
        let v = admin_at(admin, "POST", "/config/validate", Some(TOKEN), &evil).await;
        assert_eq!(v.status, StatusCode::BAD_REQUEST, "{what}: {}", text(&v));
        assert!(text(&v).contains("access_log.path"), "{}", text(&v));
        // A request whose path carries a command substitution: it must not reach the profile.
        get(&gw.url("/$(touch%20pwned)")).await;
        assert!(!profile.exists(), "{what}: the profile was created");
        assert_eq!(std::fs::read_to_string(&dir.path).unwrap(), on_disk);
    }

    // Adding a file where the running config logs to stdout is refused as well.
    let stdout_cfg = config(&up.url(), &admin_block(Some(TOKEN)));
    let gw2 = TestGateway::start(&format!("access_log: off\n{stdout_cfg}")).await;
    let evil = config(
        &up.url(),
        &format!(
            "{}access_log: {{ path: \"{}\" }}\n",
            admin_block(Some(TOKEN)),
            profile.display()
        ),
    );
    let r = admin_at(
        gw2.control.admin_addr().unwrap(),
        "PUT",
        "/config",
        Some(TOKEN),
        &evil,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    assert!(text(&r).contains("access_log.path"));
    assert!(!profile.exists());

    // The same path (and a new log format) is no change of path: it applies.
    let same = on_disk.replace("format: text", "format: json");
    let r = admin_at(admin, "PUT", "/config", Some(TOKEN), &same).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(std::fs::read_to_string(&dir.path).unwrap(), same);
}

/// An admin API without a token (allowed on loopback) serves reads but refuses every write:
/// PUT /config, POST /reload and POST /config/validate get 403, and the config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_without_a_token_is_read_only() {
    let up = TestUpstream::echo("u").await;
    let yaml = config(
        &up.url(),
        &format!("access_log: off\n{}", admin_block(None)),
    );
    let dir = TempConfig::new(&yaml);
    let gw = TestGateway::start_with(&yaml, Some(dir.path.clone())).await;
    let admin = gw.control.admin_addr().unwrap();
    for path in ["/status", "/routes", "/upstreams", "/config", "/metrics"] {
        let r = admin_at(admin, "GET", path, None, "").await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}");
    }
    let hash = gw.control.config_hash();
    let changed = yaml.replace("path_prefix: /", "path_prefix: /other");
    for (method, path, body) in [
        ("PUT", "/config", changed.as_str()),
        ("POST", "/config/validate", changed.as_str()),
        ("POST", "/reload", ""),
    ] {
        let r = admin_at(admin, method, path, None, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            text(&r)
        );
        assert_eq!(r.json()["error"], "read_only");
    }
    assert_eq!(gw.control.config_hash(), hash);
    assert_eq!(std::fs::read_to_string(&dir.path).unwrap(), yaml);
}

/// Sends raw bytes and reads the response head (bounded).
async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits (at most 5 s) until the file holds `n` lines.
async fn lines_of(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = s.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{n} lines never came: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a shell or a terminal would act on never appears raw in an access-log line, text or
/// JSON: `$(...)`, `;`, `&`, quotes in the path, backticks, `|`, `>` in the request id, a `|` in an
/// extension method, and U+202E (right-to-left override), ESC and U+009B (8-bit CSI) in a
/// route name (the wire refuses them in a path; a config can carry them). The JSON line
/// still parses to the exact values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_escape_shell_control_and_bidi_characters() {
    let up = TestUpstream::echo("u").await;
    let dir = TempConfig::new("");
    let route = "gnp.\u{202E}exe\u{1b}[31m\u{9B}2J";
    for format in ["text", "json"] {
        let log = dir.dir.join(format!("access-{format}.log"));
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\naccess_log: {{ format: {format}, path: \"{}\" }}\nupstreams:\n  u: {{ targets: [\"{}\"] }}\nroutes:\n  - name: \"gnp.\\u202Eexe\\e[31m\\x9b2J\"\n    match: {{ path_prefix: / }}\n    upstream: u\n",
            log.display(),
            up.url()
        );
        let gw = TestGateway::start(&yaml).await;
        let path = "/a/$(id)/x;y&w'v!";
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: $(reboot)`id`|x>y\r\nConnection: close\r\n\r\n"
        );
        let r = raw_request(gw.addr, head.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = raw_request(
            gw.addr,
            b"P|NG /b HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 "), "{r}");
        let lines = lines_of(&log, 2).await;
        for line in &lines {
            for bad in ["$(", "`", "\u{202E}", "\u{9B}", "\x1b", ";", "|", "&", ">"] {
                assert!(!line.contains(bad), "{format}: {bad:?} raw in {line}");
            }
        }
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(v["path"], path);
            assert_eq!(v["request_id"], "$(reboot)`id`|x>y");
            assert_eq!(v["route"], route);
            let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
            assert_eq!(v["method"], "P|NG");
        } else {
            for want in [
                "/a/\\x24\\x28id\\x29/x\\x3by\\x26w\\x27v\\x21",
                "request_id=\\x24\\x28reboot\\x29\\x60id\\x60\\x7cx\\x3ey",
                "route=gnp.\\u{202e}exe\\x1b[31m\\u{9b}2J",
            ] {
                assert!(lines[0].contains(want), "{want} not in {}", lines[0]);
            }
            assert!(lines[1].contains("\"P\\x7cNG /b"), "{}", lines[1]);
        }
        gw.shutdown().await;
    }
}
