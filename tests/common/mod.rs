//! Test harness: a real gateway (in-process, or the real binary) and real upstream HTTP servers,
//! all on 127.0.0.1 with ephemeral ports, torn down on drop. Every wait is bounded.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

pub mod pki;
pub mod raw;
pub mod servers;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::State;
use gatehouse::compile::compile;
use gatehouse::config::parse_str;
use gatehouse::control::Control;
use gatehouse::gateway::Gateway;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A real HTTP upstream on an ephemeral loopback port.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(handler: Handler) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener, handler)
    }

    /// Serves on an already-bound listener (to restart a target on the same port).
    pub fn serve(listener: TcpListener, handler: Handler) -> TestUpstream {
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h2 = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let hits = h2.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let f = handler(req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestUpstream { addr, hits, task }
    }

    /// Answers with JSON describing what arrived: name, method, path, headers, body length.
    pub async fn echo(name: &str) -> TestUpstream {
        Self::start(Self::echo_handler(name)).await
    }

    pub fn echo_handler(name: &str) -> Handler {
        let name = name.to_owned();
        Arc::new(move |req: Request<Incoming>| {
            let name = name.clone();
            Box::pin(async move {
                let method = req.method().to_string();
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let mut headers = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers
                        .entry(k.to_string())
                        .or_insert_with(Vec::new)
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                // Count the body frame by frame: never buffer it.
                let mut body = req.into_body();
                let mut len = 0u64;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => len += f.data_ref().map_or(0, |d| d.len() as u64),
                        Err(_) => break,
                    }
                }
                let v = serde_json::json!({ "name": name, "method": method, "path": path, "headers": headers, "body_len": len });
                let mut resp = Response::new(full(v.to_string()));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                resp.headers_mut().insert(
                    "x-upstream",
                    http::HeaderValue::from_str(&name).expect("name"),
                );
                resp
            })
        })
    }

    /// Answers `body` after `delay`.
    pub async fn delayed(delay: Duration, body: &'static str) -> TestUpstream {
        Self::start(Arc::new(move |_req| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Response::new(full(body))
            })
        }))
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and drops every open connection.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-process gateway on an ephemeral port (the whole control plane: listeners, reloads,
/// admin API when configured).
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gw: Arc<Gateway>,
    pub control: Arc<Control>,
}

impl TestGateway {
    /// `yaml` must listen on `127.0.0.1:0`.
    pub async fn start(yaml: &str) -> TestGateway {
        Self::start_with(yaml, None).await
    }

    /// Serves `yaml`, which is also what `path` (if any) holds, as `gatehouse run` would.
    pub async fn start_with(yaml: &str, path: Option<std::path::PathBuf>) -> TestGateway {
        let cfg = parse_str(yaml, &|k| std::env::var(k).ok())
            .unwrap_or_else(|e| panic!("config: {e:?}\n{yaml}"));
        let state = Arc::new(State::default());
        let rt = compile(&cfg, &state).unwrap_or_else(|e| panic!("compile: {e:?}\n{yaml}"));
        let control = gatehouse::start(rt, yaml.to_owned(), path, state)
            .await
            .expect("start gateway");
        let addr = control.proxy_addrs().await[0];
        TestGateway {
            addr,
            gw: control.gw.clone(),
            control,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.control.admin_addr().expect("admin listener"),
            path
        )
    }

    /// The value of one series on the admin API's `/metrics` (its line's start, labels
    /// included, e.g. `gatehouse_downstream_rejected_total{reason="head_timeout"}`); 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics")).await.body;
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn shutdown(self) {
        self.control.shutdown().await;
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.control.stop();
    }
}

/// A config with one upstream `u` of these targets and one catch-all route, access log off.
pub fn simple_config(targets: &[String]) -> String {
    let t: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
        t.join(", ")
    )
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends a request and reads the whole response (bounded by a 20 s timeout).
pub async fn send(c: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> TestResponse {
    let fut = async {
        let resp = c.request(req).await.expect("request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("request timed out")
}

pub async fn get(url: &str) -> TestResponse {
    send(
        &client(),
        Request::get(url).body(full("")).expect("request"),
    )
    .await
}

pub fn get_req(url: &str) -> http::request::Builder {
    Request::get(url)
}

/// Waits (at most 5 s) for the first line of a log file.
pub async fn first_line(path: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = s.lines().next() {
            return l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line written to {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway in front of two echo upstreams named `public` and `admin`, with these routes.
pub async fn public_and_admin(routes: &str) -> (TestGateway, TestUpstream, TestUpstream) {
    let public = TestUpstream::echo("public").await;
    let admin = TestUpstream::echo("admin").await;
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\naccess_log: off\nupstreams:\n  public: {{ targets: [\"{}\"] }}\n  admin: {{ targets: [\"{}\"] }}\nroutes:\n{routes}",
        public.url(),
        admin.url()
    );
    (TestGateway::start(&yaml).await, public, admin)
}

/// The gatehouse binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

/// Writes a config file into a fresh temp dir (removed on drop).
pub struct TempConfig {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(yaml: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gatehouse.yaml");
        std::fs::write(&path, yaml).expect("write config");
        TempConfig { dir, path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real binary running `run --config`, killed on drop. `addr` is read from its log.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    pub fn start(config: &std::path::Path) -> GatewayProcess {
        Self::start_with_args(config, &[])
    }

    pub fn start_with_args(config: &std::path::Path, extra: &[&str]) -> GatewayProcess {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--config"]).arg(config).args(extra);
        Self::spawn(cmd)
    }

    /// The binary with `GATEHOUSE_LOG` set to `filter` (the others log at `info`).
    pub fn start_logging(config: &std::path::Path, filter: &str) -> GatewayProcess {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--config"])
            .arg(config)
            .env("GATEHOUSE_LOG", filter);
        Self::spawn(cmd)
    }

    /// The binary started by `sh` with its open-file limit (`ulimit -n`) lowered to `n`.
    pub fn start_with_fd_limit(config: &std::path::Path, n: u32) -> GatewayProcess {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" run --config \"$1\""))
            .arg(bin())
            .arg(config);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> GatewayProcess {
        if !cmd.get_envs().any(|(k, _)| k == "GATEHOUSE_LOG") {
            cmd.env("GATEHOUSE_LOG", "info");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find(" listening addr=").map(|i| i + 1) {
                    let a = line[i + "listening addr=".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(a);
                }
                l2.lock().expect("lock").push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "gateway did not start: {:?}",
                    lines.lock().map(|l| l.clone())
                )
            });
        GatewayProcess {
            child,
            addr: addr.parse().expect("addr"),
            stderr_lines: lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The gateway's resident memory (VmRSS), in MiB; 0 if it cannot be read.
    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
