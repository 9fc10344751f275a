//! The dashboard in a real headless browser (Debian's chromium): the page loads, fetches live
//! numbers with the admin token, and the numbers change after traffic. A screenshot is saved
//! to `target/dashboard.png` for a developer to look at.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const TOKEN: &str = "dashboard-test-token-0123456789";

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Loads `url` in headless chromium, lets its scripts run, and returns the DOM (or, with
/// `screenshot`, writes a PNG there). Bounded by `timeout 60`.
async fn browse(url: String, screenshot: Option<PathBuf>) -> String {
    let browser = chromium().expect(
        "chromium is needed for the dashboard test (.ci/run installs it: apt-get install -y chromium)",
    );
    tokio::task::spawn_blocking(move || {
        let profile =
            std::env::temp_dir().join(format!("gatehouse-chromium-{}", fastrand::u64(..)));
        let mut cmd = Command::new("timeout");
        cmd.arg("60").arg(browser).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,860",
            "--virtual-time-budget=4000",
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.display()));
        match &screenshot {
            Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
            None => cmd.arg("--dump-dom"),
        };
        let out = cmd.arg(&url).output().expect("run chromium");
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// The text of the element with this id.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap() + open;
    rest[open..close].trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_numbers_in_a_real_browser() {
    // An echo upstream that answers 404 for paths that contain "missing".
    let echo = TestUpstream::echo_handler("u");
    let up = TestUpstream::start(std::sync::Arc::new(move |req: http::Request<_>| {
        let missing = req.uri().path().contains("missing");
        let f = echo(req);
        Box::pin(async move {
            let mut resp = f.await;
            if missing {
                *resp.status_mut() = http::StatusCode::NOT_FOUND;
            }
            resp
        })
    }))
    .await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nadmin: {{ addr: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\nupstreams:\n  users: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: users, match: {{ path_prefix: /users }}, upstream: users }}\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let page = gw.admin_url(&format!("/dashboard#token={TOKEN}"));

    let before = browse(page.clone(), None).await;
    assert_eq!(text_of(&before, "error"), "", "the page reported an error");
    assert_eq!(text_of(&before, "total-requests"), "0");
    assert_eq!(text_of(&before, "version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(text_of(&before, "hash"), gw.control.config_hash());
    assert!(before.contains(&up.url()), "the upstream target is listed");
    assert_eq!(text_of(&before, "store"), "memory");
    assert_eq!(text_of(&before, "store-state"), "up");

    let c = client();
    for _ in 0..25 {
        let r = send(&c, get_req(&gw.url("/users/1")).body(full("")).unwrap()).await;
        assert_eq!(r.status, 200);
    }

    // 5 of 30 requests answered 4xx: the route's row shows that share, next to its 5xx.
    for _ in 0..5 {
        let r = send(
            &c,
            get_req(&gw.url("/users/missing")).body(full("")).unwrap(),
        )
        .await;
        assert_eq!(r.status, 404);
    }

    let after = browse(page.clone(), None).await;
    assert_eq!(
        text_of(&after, "total-requests"),
        "30",
        "the numbers did not follow the traffic"
    );
    assert!(
        after.contains("data-route=\"users\">30<"),
        "the route row shows its requests"
    );
    let row_4xx = after
        .split("route-4xx\" data-route=\"users\">")
        .nth(1)
        .expect("a 4xx cell for the route");
    assert!(
        row_4xx.contains(">16.7%<"),
        "the 4xx share is not shown: {}",
        &row_4xx[..row_4xx.len().min(200)]
    );
    let row_5xx = after
        .split("route-5xx\" data-route=\"users\">")
        .nth(1)
        .expect("a 5xx cell for the route");
    assert!(
        row_5xx.contains(">0.0%<"),
        "{}",
        &row_5xx[..row_5xx.len().min(200)]
    );

    // Without the token the page says so instead of showing numbers.
    let locked = browse(gw.admin_url("/dashboard"), None).await;
    assert!(text_of(&locked, "error").contains("unauthorized"));

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(page, Some(shot.clone())).await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is not a real PNG"
    );
}
