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
        // hyper accepts raw UTF-8 in the target (forwarded byte for byte): a bidi override
        // there reaches the log line as an escape too.
        let r = raw_request(
            gw.addr,
            "GET /x\u{202E}gnp.exe HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
                .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let lines = lines_of(&log, 3).await;
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

// ---------------------------------------------------------------------------------------------
// Finding 2: write-back exposed secrets and followed symlinks.

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// `PUT /config` writes the file back through a symlinked config to its target, and never
/// follows a symlink planted in the config's directory: not at the temporary names the old
/// code used (`.<file>.tmp-<pid>`, `.<file>.bak.tmp-<pid>`), not at `.bak`. The victims keep
/// their content, the links stay links, the new file and the backup are 0600 like the
/// original, and no temporary file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_follows_no_planted_symlink_and_keeps_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let up = TestUpstream::echo("u").await;
    let yaml = config(
        &up.url(),
        &format!("access_log: off\n{}", admin_block(Some(TOKEN))),
    );
    let tmp = TempConfig::new("");
    let real_dir = tmp.dir.join("real");
    let victims = tmp.dir.join("elsewhere");
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::create_dir_all(&victims).unwrap();
    let real = real_dir.join("gatehouse.yaml");
    std::fs::write(&real, &yaml).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The gateway is started with a symlink to the config, as a ConfigMap mounts one.
    let link = tmp.path.clone();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let pid = std::process::id();
    let planted: Vec<(std::path::PathBuf, std::path::PathBuf)> = [
        format!(".gatehouse.yaml.tmp-{pid}"),
        format!(".gatehouse.yaml.bak.tmp-{pid}"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, name)| {
        let victim = victims.join(format!("victim-{i}"));
        std::fs::write(&victim, "root-owned, do not touch\n").unwrap();
        let at = real_dir.join(name);
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        (at, victim)
    })
    .collect();
    let bak_victim = victims.join("bak-victim");
    std::fs::write(&bak_victim, "not a backup\n").unwrap();
    std::os::unix::fs::symlink(&bak_victim, real_dir.join("gatehouse.yaml.bak")).unwrap();

    let gw = TestGateway::start_with(&yaml, Some(link.clone())).await;
    let admin = gw.control.admin_addr().unwrap();
    let new = yaml.replace("path_prefix: /", "path_prefix: /new");
    let r = admin_at(admin, "PUT", "/config", Some(TOKEN), &new).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));

    for (at, victim) in &planted {
        assert!(
            std::fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_symlink()),
            "{} was replaced or moved (the old code renamed the followed link over the config)",
            at.display()
        );
        assert_eq!(
            std::fs::read_to_string(victim).unwrap(),
            "root-owned, do not touch\n",
            "{} was written through",
            at.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&bak_victim).unwrap(),
        "not a backup\n"
    );
    // Written through the link to its target; the link stays a link.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), new);
    assert_eq!(mode_of(&real), 0o600);
    let bak = real_dir.join("gatehouse.yaml.bak");
    assert!(
        !std::fs::symlink_metadata(&bak)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), yaml);
    assert_eq!(mode_of(&bak), 0o600);
    let mut left: Vec<String> = std::fs::read_dir(&real_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want = vec![
        "gatehouse.yaml".to_owned(),
        "gatehouse.yaml.bak".to_owned(),
        format!(".gatehouse.yaml.tmp-{pid}"),
        format!(".gatehouse.yaml.bak.tmp-{pid}"),
    ];
    want.sort();
    assert_eq!(left, want, "temporary files left behind");
}

/// The files write-back creates are 0600 from the moment they exist, and created new: the
/// binary runs under `strace`, and every `open` that creates a file in the config's directory
/// must carry `O_EXCL` and mode 0600 (the old code created them 0666 & umask, then chmod-ed).
/// Skipped, loudly, where strace cannot trace.
#[test]
fn write_back_creates_files_0600_and_exclusive() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let probe = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=none", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: strace is not available or may not trace here");
        return;
    }
    let yaml = "listen: \"127.0.0.1:0\"\naccess_log: off\nadmin: { addr: \"127.0.0.1:0\", token: \"TOKEN\" }\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: u\n"
        .replace("TOKEN", TOKEN);
    let tmp = TempConfig::new(&yaml);
    let trace = tmp.dir.join("strace.out");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,creat", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["run", "--no-watch", "--config"])
        .arg(&tmp.path)
        .env("GATEHOUSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    /// Ends the traced gateway first (killing strace alone would detach and leave it
    /// running), then strace.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let pid = self.0.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", child]).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(i) = line.find("admin API listening addr=") {
                let a = line[i + "admin API listening addr=".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send(a);
            }
        }
    });
    let admin: SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("admin listener")
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = yaml.replace("path_prefix: /", "path_prefix: /new");
    let r = rt.block_on(admin_at(admin, "PUT", "/config", Some(TOKEN), &new));
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    drop(child);
    let dir = tmp.dir.display().to_string();
    let creates: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir) && l.contains("O_CREAT"))
        .map(str::to_owned)
        .collect();
    // The temporary file and the backup's.
    assert!(creates.len() >= 2, "{creates:?}");
    for l in &creates {
        assert!(l.contains("O_EXCL"), "created without O_EXCL: {l}");
        assert!(
            l.contains(", 0600)"),
            "created with another mode than 0600: {l}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 3: secrets echoed in errors.

/// `gatehouse check` on a config with secrets where they do not fit: the expanded value of a
/// `${NAME}` never appears (the reference does), nor does a literal secret, nor one quoted by
/// a YAML syntax error's snippet, nor a credential in a health-check query.
#[test]
fn check_never_prints_a_secret() {
    use std::process::Command;
    let base = "listen: \"127.0.0.1:0\"\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n  - match: { path_prefix: / }\n    upstream: u\n";
    let cases = [
        (
            "admin token of the wrong type, from the environment",
            // Unquoted, so the number stays a number (a quoted reference is a string).
            format!("{base}admin:\n  addr: \"127.0.0.1:0\"\n  token: ${{GH_SECRET_NUM}}\n"),
            "9876543210987654321",
            Some("${GH_SECRET_NUM}"),
        ),
        (
            "a header map given as a string, from the environment",
            format!("{base}global:\n  headers: {{ request: {{ set: \"${{GH_SECRET_STR}}\" }} }}\n"),
            "sk_live_from_env_77",
            Some("${GH_SECRET_STR}"),
        ),
        (
            "a literal credential where a map belongs",
            format!("{base}global:\n  headers: {{ request: {{ append: \"Authorization: Bearer sk_literal_4242\" }} }}\n"),
            "sk_literal_4242",
            Some("<redacted>"),
        ),
        (
            "a YAML syntax error next to a credential",
            format!("{base}global:\n  headers: {{ request: {{ set: {{ authorization: \"Bearer sk_yaml_5151\" }} }}\n  oops: [\n"),
            "sk_yaml_5151",
            None,
        ),
        (
            "a health-check path with a credential in its query",
            base.replace(
                "u: { targets: [\"http://127.0.0.1:9\"] }",
                "u: { targets: [\"http://127.0.0.1:9\"], health: { active: { path: \"healthz?token=hc_literal_6161\" } } }",
            ),
            "hc_literal_6161",
            Some("token=<redacted>"),
        ),
    ];
    for (what, yaml, secret, shown) in cases {
        let file = TempConfig::new(&yaml);
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&file.path)
            .env("GH_SECRET_NUM", "9876543210987654321")
            .env("GH_SECRET_STR", "sk_live_from_env_77")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{what}: check passed: {all}");
        assert!(
            !all.contains(secret),
            "{what}: the secret is printed:\n{all}"
        );
        if let Some(shown) = shown {
            assert!(all.contains(shown), "{what}: {shown} not shown:\n{all}");
        }
    }
}

/// Through the admin API: `/config/validate`, a refused `PUT /config` and then `/status`
/// (the last reload's errors) show `${CARGO_MANIFEST_DIR}`, not its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_and_status_never_show_an_expanded_value() {
    let value = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let up = TestUpstream::echo("u").await;
    let yaml = config(
        &up.url(),
        &format!("access_log: off\n{}", admin_block(Some(TOKEN))),
    );
    let gw = TestGateway::start(&yaml).await;
    let admin = gw.control.admin_addr().unwrap();
    let bad = format!("workers: \"${{CARGO_MANIFEST_DIR}}\"\n{yaml}");
    let v = admin_at(admin, "POST", "/config/validate", Some(TOKEN), &bad).await;
    assert_eq!(v.status, StatusCode::BAD_REQUEST, "{}", text(&v));
    let r = admin_at(admin, "PUT", "/config", Some(TOKEN), &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
    let st = admin_at(admin, "GET", "/status", Some(TOKEN), "").await;
    for (what, body) in [
        ("validate", text(&v)),
        ("put", text(&r)),
        ("status", text(&st)),
    ] {
        assert!(!body.contains(&value), "{what}: {value} shown: {body}");
        assert!(body.contains("${CARGO_MANIFEST_DIR}"), "{what}: {body}");
    }
}

/// A credential in a health-check query string is hidden in `/config` and `/upstreams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_query_secrets_are_redacted() {
    let up = TestUpstream::echo("u").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\n{}upstreams:\n  u:\n    targets: [\"{}\"]\n    health: {{ active: {{ path: \"/healthz?token=hc-secret-4242&probe=deep\", interval: 5s }} }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        admin_block(Some(TOKEN)),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let admin = gw.control.admin_addr().unwrap();
    for path in ["/config", "/upstreams", "/stats"] {
        let r = admin_at(admin, "GET", path, Some(TOKEN), "").await;
        assert_eq!(r.status, StatusCode::OK);
        let body = text(&r);
        assert!(!body.contains("hc-secret-4242"), "{path}: {body}");
        assert!(
            body.contains("/healthz?token=<redacted>&probe=<redacted>"),
            "{path}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 4: validation blocked traffic.

/// A config of `n` routes, each its own prefix, all to upstream `u`.
fn many_routes(upstream: &str, n: usize) -> String {
    let mut s = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nadmin: {{ addr: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\nupstreams:\n  u: {{ targets: [\"{upstream}\"] }}\nroutes:\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ match: {{ path_prefix: /r{i}/x }}, upstream: u }}\n"
        ));
    }
    s
}

/// The admin address the binary logged, waited for (10 s).
fn admin_addr_of(gw: &GatewayProcess) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let lines = gw.stderr_lines.lock().unwrap().clone();
        if let Some(l) = lines.iter().find(|l| l.contains("admin API listening")) {
            let i = l.find("addr=").unwrap() + "addr=".len();
            return l[i..].split_whitespace().next().unwrap().parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no admin listener logged");
}

/// Two validations of a 34 000-route config through the admin API, at once, while a client
/// sends proxied requests to the built binary (2 workers): no proxied request takes a second.
/// Before, the O(n²) shadow check ran on a runtime worker and stalled traffic for many
/// seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_a_huge_config_does_not_stall_traffic() {
    let up = TestUpstream::echo("u").await;
    let small = format!(
        "workers: 2\n{}",
        config(
            &up.url(),
            &format!("access_log: off\n{}", admin_block(Some(TOKEN)))
        )
    );
    let file = TempConfig::new(&small);
    let gw = GatewayProcess::start_with_args(&file.path, &["--no-watch"]);
    let admin = admin_addr_of(&gw);
    let huge = std::sync::Arc::new(many_routes(&up.url(), 34_000));
    assert!(huge.len() < 4 * 1024 * 1024, "{} bytes", huge.len());

    let validations: Vec<_> = (0..2)
        .map(|_| {
            let huge = huge.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(120),
                    admin_at(admin, "POST", "/config/validate", Some(TOKEN), &huge),
                )
                .await
                .expect("validation took over 120 s");
                (r, t.elapsed())
            })
        })
        .collect();
    // Proxied requests until both validations answered (bounded: 120 s).
    let c = client();
    let url = gw.url("/traffic");
    let (mut worst, mut sent) = (Duration::ZERO, 0usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while validations.iter().any(|v| !v.is_finished()) && Instant::now() < deadline {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            c.request(Request::get(&url).body(full("")).unwrap()),
        )
        .await;
        let took = t.elapsed();
        assert!(matches!(&r, Ok(Ok(resp)) if resp.status() == 200), "{r:?}");
        worst = worst.max(took);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for v in validations {
        let (r, took) = v.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
        assert_eq!(r.json()["valid"], true);
        eprintln!("validation answered in {took:?}");
    }
    eprintln!("{sent} proxied requests during the validations, the slowest {worst:?}");
    assert!(
        sent >= 5,
        "the validations were too quick to overlap traffic ({sent})"
    );
    assert!(
        worst < Duration::from_secs(1),
        "a proxied request took {worst:?} during validation"
    );
}

/// A config above the admin API's cap (4 MiB) gets 413, whether it declares its length (the
/// answer comes before the body is sent) or streams it chunked (cut off at the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_config_gets_413() {
    let up = TestUpstream::echo("u").await;
    let gw = TestGateway::start(&config(
        &up.url(),
        &format!("access_log: off\n{}", admin_block(Some(TOKEN))),
    ))
    .await;
    let admin = gw.control.admin_addr().unwrap();
    let head = |method: &str, path: &str, framing: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/yaml\r\nAuthorization: Bearer {TOKEN}\r\n{framing}\r\n\r\n"
        )
    };
    for (method, path) in [("POST", "/config/validate"), ("PUT", "/config")] {
        // Declared: refused from the head alone.
        let h = head(method, path, "Content-Length: 5000000");
        let r = raw_request(admin, h.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{method} {path}: {r}");

        // Chunked: read up to the cap, then refused.
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        .unwrap()
        .unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let h = head(method, path, "Transfer-Encoding: chunked");
        let writer = tokio::spawn(async move {
            let chunk = format!("10000\r\n{}\r\n", "#".repeat(0x10000));
            let _ = wr.write_all(h.as_bytes()).await;
            // 5 MiB in 64 KiB chunks; the server may stop reading at any point.
            for _ in 0..80 {
                if wr.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = wr.write_all(b"0\r\n\r\n").await;
        });
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            r.starts_with("HTTP/1.1 413"),
            "{method} {path} chunked: {r}"
        );
        writer.abort();
    }
}

/// Nothing secret reaches the process log, even at `trace` for every crate: not the admin
/// token, a Redis password (in the URL of a Redis the gateway cannot reach, so its failures are
/// logged), the JWT secret, nor what clients send (passwords right and wrong, API keys in a
/// header and in the query, bearer tokens, admin tokens right and wrong, a config with a
/// plaintext password the admin API refuses), through to shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_process_log() {
    use base64::Engine;
    let up = TestUpstream::echo("u").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let jwt_secret = "jwt-secret-Q7x5-0123456789abcdef";
    let hash = {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(b"alice-pw-Q7x3")
            .unwrap()
            .to_string()
    };
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nadmin: {{ addr: \"127.0.0.1:0\", token: \"adm-token-Q7x1-0123456789\" }}\nstore: {{ redis: {{ url: \"redis://gate:redis-pw-Q7x2@{dead}/0\", timeout: 50ms }} }}\nconsumers:\n  - id: alice\n    basic_auth: {{ username: alice, password_hash: \"{hash}\" }}\n    api_keys: [{{ hash: \"{digest}\" }}]\nupstreams:\n  u: {{ targets: [\"{up}\"] }}\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n    rate_limit: {{ key: client_ip, limit: 100/s, burst: 100 }}\n    cache: {{ ttl: 30s }}\n    auth: {{ methods: [basic, api_key, jwt], api_key: {{ header: x-api-key, query: api_key }}, jwt: {{ secret: \"{jwt_secret}\", algorithms: [HS256] }} }}\n",
        digest = gatehouse::policy::consumers::key_digest(b"alice-key-Q7x4"),
        up = up.url(),
    );
    let cfg = TempConfig::new(&yaml);
    let gw = GatewayProcess::start_logging(&cfg.path, "trace");
    let admin = admin_addr_of(&gw);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "mallory", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(b"guessed-Q7xA-0123456789abcdef"),
    )
    .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let asks: Vec<(String, &str, u16)> = vec![
        (
            format!("Authorization: Basic {}", b64("alice:alice-pw-Q7x3")),
            "/a",
            200,
        ),
        (
            format!("Authorization: Basic {}", b64("alice:wrong-pw-Q7x6")),
            "/b",
            401,
        ),
        ("X-Api-Key: alice-key-Q7x4".to_owned(), "/c", 200),
        ("X-Api-Key: wrong-key-Q7x7".to_owned(), "/d", 401),
        (
            "X-Other: 1".to_owned(),
            "/e?api_key=alice-key-Q7x4&x=1",
            200,
        ),
        ("X-Other: 1".to_owned(), "/f?api_key=wrong-key-Q7x7", 401),
        (format!("Authorization: Bearer {token}"), "/g", 200),
        (format!("Authorization: Bearer {forged}"), "/h", 401),
    ];
    for (header, path, status) in &asks {
        let got = raw::exchange(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n"),
        )
        .await;
        let got = got.response();
        assert_eq!(got.status, *status, "{header} {path}: {}", got.text());
    }
    let r = admin_at(
        admin,
        "GET",
        "/status",
        Some("wrong-admin-Q7x8-0123456789"),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = admin_at(
        admin,
        "GET",
        "/status",
        Some("adm-token-Q7x1-0123456789"),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let bad = yaml.replace(&hash, "plain-Q7x9");
    let r = admin_at(
        admin,
        "PUT",
        "/config",
        Some("adm-token-Q7x1-0123456789"),
        &bad,
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    gw.signal("TERM");
    // Through to the last line: the gateway's `stopped`, then the end of its stderr.
    let stopped = |lines: &[String]| lines.iter().any(|l| l.ends_with("gatehouse: stopped"));
    for _ in 0..200 {
        if stopped(&gw.stderr_lines.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = gw.stderr_lines.lock().unwrap().clone();
    assert!(stopped(&lines), "the gateway did not stop: {lines:?}");
    let log = lines.join("\n");
    assert!(
        log.contains("redis"),
        "the Redis failures are logged:\n{log}"
    );
    let signature = token.rsplit('.').next().unwrap().to_owned();
    for secret in [
        "adm-token-Q7x1-0123456789",
        "redis-pw-Q7x2",
        "alice-pw-Q7x3",
        "alice-key-Q7x4",
        jwt_secret,
        "wrong-pw-Q7x6",
        "wrong-key-Q7x7",
        "wrong-admin-Q7x8-0123456789",
        "plain-Q7x9",
        &signature,
        &b64("alice:alice-pw-Q7x3"),
        &b64("alice:wrong-pw-Q7x6"),
    ] {
        assert!(
            !log.contains(secret),
            "{secret} is in the process log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The admin listener holds at most 64 connections, and a head that does not arrive within
/// 10 s closes its connection: 64 connections that send nothing make the 65th client wait,
/// and it is answered once they are cut off (about 10 s), while the proxy listener serves
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_caps_connections_and_times_out_heads() {
    let up = TestUpstream::echo("u").await;
    let yaml = config(
        &up.url(),
        &format!("access_log: off\n{}", admin_block(None)),
    );
    let gw = TestGateway::start(&yaml).await;
    let admin = gw.control.admin_addr().unwrap();
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let started = Instant::now();
    let waiting = tokio::spawn(async move { admin_at(admin, "GET", "/status", None, "").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a 65th admin connection was served at once"
    );
    let r = get(&gw.url("/proxied")).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the proxy listener is not held up"
    );
    let r = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("served once the silent connections were cut off")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "waited {waited:?}"
    );
    // The silent connections were closed by the gateway.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
