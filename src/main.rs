//! The `gatehouse` command line: parse arguments, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use gatehouse::runtime::Runtime;
use gatehouse::{State, demo, explain, load_config, load_runtime};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An API gateway: one binary, one YAML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a config file (reloaded on SIGHUP, on change, and by the admin API).
    Run {
        #[arg(short, long, env = "GATEHOUSE_CONFIG")]
        config: PathBuf,
        /// Do not watch the config file for changes (SIGHUP and the admin API still reload).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file: exit 0 if it would load, 1 with every problem otherwise.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show which route would handle a request, its params, upstream path and policies.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        /// e.g. GET
        method: String,
        /// e.g. https://api.example.com/users/7
        url: String,
        /// Extra request headers, `-H 'x-api-version: 2'`.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Print the JSON Schema of the config file (for editors).
    Schema,
    /// Read a password from stdin (one line) and print its argon2id hash, for
    /// `consumers[].basic_auth.password_hash`. With `--api-key`, read an API key and print its
    /// `sha256:` digest, for `consumers[].api_keys[].hash`.
    HashPassword {
        #[arg(long)]
        api_key: bool,
    },
    /// Run the gateway on a built-in config in front of built-in demo services.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where it also listens with TLS, on a self-signed certificate it makes for
        /// `localhost` and 127.0.0.1 (`off`: no HTTPS listener).
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: String,
    },
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::HashPassword { api_key } => hash_password(api_key),
        Command::Schema => {
            let schema = schemars::schema_for!(gatehouse::config::Config);
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("cannot render schema: {e}")),
            }
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => match load_runtime(&config, &State::default()) {
            Err(e) => fail(&e.to_string()),
            Ok(rt) => match explain::explain(&rt, &method, &url, &headers) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(s) => {
                    print!("{s}");
                    ExitCode::FAILURE
                }
            },
        },
        Command::Run { config, no_watch } => {
            let state = Arc::new(State::default());
            let (text, rt) = match load_config(&config, &state) {
                Ok(x) => x,
                Err(e) => return fail(&e.to_string()),
            };
            for w in &rt.warnings {
                tracing::warn!("{}: {}", config.display(), w);
            }
            serve(rt, text, Some(config), state, !no_watch, None)
        }
        Command::Demo { listen, https } => demo(&listen, &https),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match load_runtime(config, &State::default()) {
        Err(e) => fail(&e.to_string()),
        Ok(rt) => {
            for w in &rt.warnings {
                eprintln!("warning: {}: {}", config.display(), w);
            }
            println!(
                "{}: OK ({} route{}, {} upstream{}, {} warning{})",
                config.display(),
                rt.routes.len(),
                plural(rt.routes.len()),
                rt.upstreams.len(),
                plural(rt.upstreams.len()),
                rt.warnings.len(),
                plural(rt.warnings.len())
            );
            ExitCode::SUCCESS
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn build_runtime(workers: usize, per_core: bool) -> std::io::Result<tokio::runtime::Runtime> {
    // One worker needs no work stealing: the single-threaded scheduler runs woken tasks in
    // order (reads of a burst, then their writes), which measured 10-15% more req/s on one
    // core than the multi-threaded scheduler with one worker (bench/RESULTS.md). With
    // `scheduler: per_core` the connections run on the server's own per-core runtimes; this
    // one only runs the control side (reloads, the admin API, health checks, signals).
    if workers == 1 || per_core {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("gatehouse-worker")
        .enable_all()
        .build()
}

fn control_scheduler(per_core: bool) -> &'static str {
    if per_core {
        "per_core"
    } else {
        "work_stealing"
    }
}

/// Printed once the gateway listens: (the proxy addresses in config order, admin address).
type Banner = Box<dyn FnOnce(&[std::net::SocketAddr], Option<std::net::SocketAddr>) + Send>;

/// Serves until SIGTERM or SIGINT, then shuts down gracefully and exits 0. SIGHUP reloads.
fn serve(
    rt: Runtime,
    text: String,
    path: Option<PathBuf>,
    state: Arc<State>,
    watch: bool,
    banner: Option<Banner>,
) -> ExitCode {
    let workers = gatehouse::runtime::worker_count(rt.workers);
    let per_core = rt.scheduler == gatehouse::runtime::Scheduler::PerCore;
    let tokio_rt = match build_runtime(workers, per_core) {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start runtime: {e}")),
    };
    tokio_rt.block_on(async move {
        let control = match gatehouse::start(rt, text, path, state).await {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        };
        if watch && let Err(e) = control.watch_file() {
            tracing::warn!("config file changes will not be noticed: {e}");
        }
        tracing::info!(workers, scheduler = ?control_scheduler(per_core), "gatehouse {} started", env!("CARGO_PKG_VERSION"));
        let addrs = control.proxy_addrs().await;
        if let Some(b) = banner
            && !addrs.is_empty()
        {
            b(&addrs, control.admin_addr());
        }
        // Reloads run in a task of their own, so the shutdown signals below (listened for the
        // whole time) are never missed while a reload is under way.
        let reloader = control.clone();
        let sighup = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot watch SIGHUP; reload through the file or the admin API");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config file");
                let _ = reloader.reload_file("sighup").await;
            }
        });
        wait_for_signal().await;
        sighup.abort();
        tracing::info!("shutting down: finishing in-flight requests");
        control.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C will stop the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn demo(listen: &str, https: &str) -> ExitCode {
    // The demo services need a runtime before the gateway's config can name their ports.
    // Its own multi-threaded runtime: its worker keeps serving after `block_on` returns.
    let services = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start runtime: {e}")),
    };
    let addrs = services.block_on(async {
        let mut users = Vec::new();
        for i in 1..=3 {
            users.push(demo::start_demo_service("users", format!("users-{i}")).await?);
        }
        let orders = demo::start_demo_service("orders", "orders-1".into()).await?;
        Ok::<_, std::io::Error>((users, orders))
    });
    let (users, orders) = match addrs {
        Ok(a) => a,
        Err(e) => return fail(&format!("cannot start demo services: {e}")),
    };
    // One directory per demo process (config, certificate), removed however `demo` returns (a
    // signal stops it gracefully).
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(&format!("cannot create {}: {e}", dir.display()));
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    let tls = if https == "off" {
        None
    } else {
        match demo::self_signed(&dir) {
            Ok((cert, key)) => Some((https.to_owned(), cert, key)),
            Err(e) => return fail(&format!("cannot make the demo certificate: {e}")),
        }
    };
    let yaml = demo::demo_config(listen, tls.as_ref(), &users, orders);
    let path = dir.join("gatehouse.yaml");
    if let Err(e) = std::fs::write(&path, &yaml) {
        return fail(&format!("cannot write {}: {e}", path.display()));
    }
    let state = Arc::new(State::default());
    let (text, rt) = match load_config(&path, &state) {
        Ok(x) => x,
        Err(e) => return fail(&e.to_string()),
    };
    let path2 = path.clone();
    let code = serve(
        rt,
        text,
        Some(path),
        state,
        false,
        Some(Box::new(move |addrs, admin| {
            println!("{}", demo::demo_help(addrs, admin, &path2))
        })),
    );
    // Keep the service runtime alive until the gateway stops.
    drop(Arc::new(services));
    code
}

/// `gatehouse hash-password`: the secret comes from stdin (a prompt on stderr when it is a
/// terminal), never from the command line, where `ps` and shell history would keep it.
fn hash_password(api_key: bool) -> ExitCode {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _ = write!(
            std::io::stderr(),
            "{} (input is shown): ",
            if api_key { "API key" } else { "Password" }
        );
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        return fail(&format!("cannot read stdin: {e}"));
    }
    let secret = line.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return fail("empty input: nothing to hash");
    }
    if api_key {
        println!(
            "{}",
            gatehouse::policy::consumers::key_digest(secret.as_bytes())
        );
        return ExitCode::SUCCESS;
    }
    use argon2::PasswordHasher;
    match argon2::Argon2::default().hash_password(secret.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot hash: {e}")),
    }
}

/// Removes a temporary directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
