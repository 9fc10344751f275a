//! Upstream servers that users deploy, started by the tests on ephemeral loopback ports: nginx
//! (Debian's package) and Python's standard-library `http.server`. Each is a child process,
//! killed on drop. A missing program is a test failure that says how to install it: the
//! README's test command (`scripts/test.sh`) installs both.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find(program: &str, also: &[&str]) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: run scripts/test.sh, which installs what the tests need")
        })
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited before listening: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "gatehouse-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx serving two name-based virtual hosts (`a.test` and `b.test`, each with its own
/// `hello.txt`), an `/echo` location that answers with the request line and fields nginx
/// received, and `/status/N` locations.
pub struct Nginx {
    pub addr: SocketAddr,
    pub dir: TempDir,
    child: Child,
}

impl Nginx {
    pub fn start() -> Nginx {
        let nginx = find("nginx", &["/usr/sbin"]);
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.0.display();
        for site in ["a", "b"] {
            std::fs::create_dir_all(dir.0.join(site)).expect("site dir");
            std::fs::write(
                dir.0.join(site).join("hello.txt"),
                format!("hello from {site}\n"),
            )
            .expect("site file");
        }
        // One process (no master, no workers to orphan), as the user that runs the tests.
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        location / {{ return 421 "no such site\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name a.test;
        root {d}/a;
        location = /echo {{
            return 200 "line=$request\nhost=$host\nhttp_host=$http_host\nxff=$http_x_forwarded_for\nvia=$http_via\nconnection=$http_connection\ncl=$content_length\nte=$http_transfer_encoding\n";
        }}
        location = /status/204 {{ return 204; }}
        location = /status/404 {{ return 404 "missing\n"; }}
        location = /upload {{
            client_max_body_size 10m;
            # Reading the body (to pass it on) is what makes nginx check its framing.
            proxy_pass http://127.0.0.1:{port}/sink;
            proxy_set_header Host b.test;
        }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name b.test;
        root {d}/b;
        location = /sink {{ client_max_body_size 10m; return 200 "received=$content_length\n"; }}
    }}
}}
"#
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_listening(addr, &mut child, "nginx");
        // The port was free a moment ago; if nginx lost it to another process, it has
        // exited by now.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "nginx exited ({st}): {}",
                std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
            );
        }
        Nginx { addr, dir, child }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    find("python3", &["/usr/bin"])
}

/// A Python `http.server` child process listening on 127.0.0.1.
pub struct Python {
    pub addr: SocketAddr,
    child: Child,
}

impl Python {
    /// `python3 -m http.server` serving `dir`: the file server a new user tries first. It
    /// answers with HTTP/1.0 status lines and closes each connection. It binds port 0 and
    /// says which port it got.
    pub fn file_server(dir: &Path) -> Python {
        let mut cmd = Command::new(python());
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir);
        Self::spawn(cmd, |line| {
            // "Serving HTTP on 127.0.0.1 port 40233 (http://127.0.0.1:40233/) ..."
            line.split_whitespace()
                .skip_while(|w| *w != "port")
                .nth(1)
                .and_then(|p| p.parse().ok())
        })
    }

    /// Starts `cmd` (stdout piped, stdin piped so the child can tell when the tests are gone)
    /// and reads its port from the first stdout line.
    fn spawn(mut cmd: Command, port_of: fn(&str) -> Option<u16>) -> Python {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let Some(port) = port_of(&line) else {
            let _ = child.kill();
            panic!("python did not start: {line:?}")
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_listening(addr, &mut child, "python");
        Python { addr, child }
    }

    /// `tests/fixtures/python_upstream.py`: http.server with `/echo` (what arrived, de-chunked
    /// by hand) and `/dubious/NAME` (scripted raw answers).
    pub fn scripted() -> Python {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python_upstream.py");
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(&script);
        Self::spawn(cmd, |line| line.trim().strip_prefix("port ")?.parse().ok())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on an ephemeral loopback port, no persistence (a restart starts empty).
/// Optionally TLS only (`start_tls`); [`Redis::restart`] brings it back on the same port.
pub struct Redis {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        // A free port: bind 0, read it, release it (redis-server cannot report a port 0 bind).
        let port = free_port();
        Redis::launch(port, vec!["--port".into(), port.to_string()])
    }

    /// TLS only, on `cert`/`key` (PEM files); clients are verified against `ca` when
    /// `client_certs` is true.
    pub fn start_tls(cert: &str, key: &str, ca: &str, client_certs: bool) -> Redis {
        let port = free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ];
        Redis::launch(port, args.iter().map(|a| a.to_string()).collect())
    }

    fn launch(port: u16, mut args: Vec<String>) -> Redis {
        for a in [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ] {
            args.push(a.into());
        }
        let mut r = Redis {
            port,
            args,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_listening(addr, &mut child, "redis-server");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered; [`Redis::resume`]
    /// thaws it.
    pub fn pause(&self) {
        self.send_signal("STOP");
    }

    pub fn resume(&self) {
        self.send_signal("CONT");
    }

    fn send_signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} redis-server");
    }

    /// Starts it again, empty, on the same port and settings.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `n` masters (no replicas) on ephemeral loopback ports, each with its
/// own bus port, made with `redis-cli --cluster create` and waited for until every node says
/// `cluster_state:ok`. Killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    nodes: Vec<Child>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        // Every node is in `c` as soon as it runs, so a failure below still kills it.
        let mut c = RedisCluster {
            ports: Vec::new(),
            nodes: Vec::new(),
            _dir: TempDir::new("redis-cluster"),
        };
        let dir = c._dir.0.clone();
        // Two free ports a node: the bus port is given explicitly, as port + 10000 may not
        // exist for an ephemeral port.
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        for (port, bus) in &ports {
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.join(format!("nodes-{port}.conf")).to_string_lossy(),
                    "--dir",
                    &dir.to_string_lossy(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/test.sh installs it)");
            wait_listening(([127, 0, 0, 1], *port).into(), &mut child, "redis-server");
            c.nodes.push(child);
            c.ports.push(*port);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for p in &c.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in c.ports.clone() {
            loop {
                if c.cli(p, &["cluster", "info"]).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster was not ok within 15 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c
    }

    /// `redis-cli -p PORT ARGS...`, its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
