//! The control plane of one process: the config file, reloads, the listeners, the admin API.
//!
//! A reload, whatever triggered it (SIGHUP, the watched file, the admin API), goes through
//! [`Control::apply`]: parse and compile the text (nothing changes on any error), bind the
//! listeners it adds, swap the runtime in atomically (requests in flight finish on the snapshot
//! they started with), then stop the listeners it dropped. Connection pools and metrics live in
//! [`State`], keyed by name, so they survive for the upstreams and routes that remain. Reloads
//! are serialised by one lock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::compile::{compile, file_path_changes};
use crate::config::{ConfigError, parse_str};
use crate::gateway::Gateway;
use crate::observe::access_log::AccessLog;
use crate::runtime::{AdminSettings, Runtime};
use crate::server::Server;
use crate::state::State;

mod reload_triggers;
mod write;

use write::write_config_file;

/// What the last reload did, for the admin API and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadResult {
    /// Unix seconds.
    pub at: u64,
    /// `startup`, `sighup`, `file_watch`, `admin`, `dns` (host-name targets re-resolved).
    pub source: &'static str,
    /// False only when this attempt was refused; the previous config then still runs.
    pub ok: bool,
    /// `applied`, `unchanged` (the file holds the running config; nothing to do) or `failed`.
    pub outcome: &'static str,
    /// The running config's hash after this attempt (on failure: the one still running).
    pub hash: Option<String>,
    pub errors: Vec<String>,
}

/// Why a config was not applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The config is invalid: every problem, with its key path.
    Invalid(Vec<ConfigError>),
    /// It is valid but could not be put in place (a port in use, a file not writable).
    Failed(String),
    /// It is valid but changes what the admin API may not change (a filesystem path).
    Refused(Vec<ConfigError>),
}

impl ApplyError {
    pub fn messages(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(errs) | ApplyError::Refused(errs) => {
                errs.iter().map(ToString::to_string).collect()
            }
            ApplyError::Failed(m) => vec![m.clone()],
        }
    }
}

struct Current {
    /// The config text as written (before `${ENV}` interpolation, so secrets stay references).
    text: String,
    hash: String,
    last_reload: ReloadResult,
    /// The hash of the last file text that failed to apply: the watcher does not try the same
    /// text again (SIGHUP and the admin API do), so a bad file costs one attempt per change.
    failed_hash: Option<String>,
}

pub struct Control {
    pub gw: Arc<Gateway>,
    pub state: Arc<State>,
    /// The file the config came from and is written back to (`None` for in-memory configs).
    pub config_path: Option<PathBuf>,
    pub started: Instant,
    current: Mutex<Current>,
    /// Serialises reloads; holds the listeners they change.
    server: tokio::sync::Mutex<Option<Server>>,
    admin: Mutex<Option<AdminListener>>,
    stop: watch::Sender<bool>,
    /// Config compiles in progress: parsing and compiling run on the blocking pool, at most
    /// [`MAX_COMPILES`] at once, so a large config never occupies a runtime worker and a
    /// burst of validations cannot take every core.
    compiles: Arc<tokio::sync::Semaphore>,
    admin_service: AdminService,
}

/// How often TLS files are checked for changes on disk.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// Config compiles (validate, apply, reload) running at once; more wait their turn.
const MAX_COMPILES: usize = 1;

struct AdminListener {
    settings: AdminSettings,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

enum AdminPlan {
    Nothing,
    Keep(AdminSettings),
    Stop,
    Start(AdminSettings, tokio::net::TcpListener),
}

/// Serves the admin API on a listener until `stop` turns true. Given to [`Control::start`]
/// (by `crate::start`), so that control runs the admin listener without importing the admin
/// module, which imports control.
pub type AdminService = fn(
    tokio::net::TcpListener,
    std::sync::Weak<Control>,
    watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Control {
    /// Starts serving `text` (already known to compile into `rt`).
    pub async fn start(
        rt: Runtime,
        text: String,
        config_path: Option<PathBuf>,
        state: Arc<State>,
        admin_service: AdminService,
    ) -> std::io::Result<Arc<Control>> {
        state.adopt(&rt);
        let gw = Gateway::new(rt, state.metrics.clone())?;
        let server = Server::start(gw.clone()).await?;
        let hash = hash_text(&text);
        gw.metrics.config_loaded(&hash);
        let (stop, _) = watch::channel(false);
        let control = Arc::new(Control {
            gw,
            state,
            config_path,
            started: Instant::now(),
            current: Mutex::new(Current {
                text,
                last_reload: ReloadResult {
                    at: unix_now(),
                    source: "startup",
                    ok: true,
                    outcome: "applied",
                    hash: Some(hash.clone()),
                    errors: Vec::new(),
                },
                hash,
                failed_hash: None,
            }),
            server: tokio::sync::Mutex::new(Some(server)),
            admin: Mutex::new(None),
            stop,
            compiles: Arc::new(tokio::sync::Semaphore::new(MAX_COMPILES)),
            admin_service,
        });
        let admin = control.gw.runtime.load().admin.clone();
        let plan = control.prepare_admin(admin.as_ref())?;
        control.commit_admin(plan);
        control.resolve_names();
        control.watch_certificates();
        Ok(control)
    }

    /// Where the proxy listeners are bound, in config order.
    pub async fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.server
            .lock()
            .await
            .as_ref()
            .map(Server::local_addrs)
            .unwrap_or_default()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.local))
    }

    pub fn config_hash(&self) -> String {
        self.current
            .lock()
            .map(|c| c.hash.clone())
            .unwrap_or_default()
    }

    pub fn config_text(&self) -> String {
        self.current
            .lock()
            .map(|c| c.text.clone())
            .unwrap_or_default()
    }

    pub fn last_reload(&self) -> Option<ReloadResult> {
        self.current.lock().ok().map(|c| c.last_reload.clone())
    }

    /// Re-reads the config file and applies it if it changed. The read and the comparison
    /// happen under the reload lock, so a stale read cannot be applied over a newer apply.
    /// Every outcome is logged, "unchanged" included, except the watcher's silent cases: a
    /// file that still holds the running config, or the same text that already failed.
    pub async fn reload_file(self: &Arc<Self>, source: &'static str) -> Result<bool, ApplyError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApplyError::Failed(
                "this gateway was not started from a config file".into(),
            ));
        };
        let mut server = self.server.lock().await;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                let err = ApplyError::Failed(format!("{}: cannot read file: {e}", path.display()));
                tracing::error!(source, "config not applied: {}", err.messages().join("; "));
                self.record(source, Err(&err));
                return Err(err);
            }
        };
        let hash = hash_text(&text);
        let (running, failed, last_ok) = self
            .current
            .lock()
            .map(|c| (c.hash.clone(), c.failed_hash.clone(), c.last_reload.ok))
            .unwrap_or_default();
        let watcher = source == "file_watch";
        if hash == running {
            // The file holds the running config: nothing to apply. Say so when asked, and
            // whenever it clears a failure that the status still shows.
            if !watcher || !last_ok {
                tracing::info!(source, hash = %hash, "config file unchanged: still running it");
                self.record_unchanged(source);
            }
            return Ok(false);
        }
        if watcher && failed.as_deref() == Some(hash.as_str()) {
            return Ok(false);
        }
        let result = self
            .apply_locked(&mut server, text, source, false, false)
            .await;
        if result.is_err()
            && let Ok(mut c) = self.current.lock()
        {
            c.failed_hash = Some(hash);
        }
        result.map(|()| true)
    }

    /// Compiles the running config's text again (e.g. when host-name targets resolve to new
    /// addresses). The text is read under the reload lock, so a newer apply is never undone.
    pub async fn reapply_current(self: &Arc<Self>, source: &'static str) -> Result<(), ApplyError> {
        let mut server = self.server.lock().await;
        let text = self.config_text();
        self.apply_locked(&mut server, text, source, false, false)
            .await
    }

    /// Parses and compiles `text` on the blocking pool (at most [`MAX_COMPILES`] at once).
    /// `state: None` compiles against a throwaway registry, for validation.
    async fn compile_text(
        &self,
        text: String,
        state: Option<Arc<State>>,
    ) -> Result<Runtime, Vec<ConfigError>> {
        let _permit = self
            .compiles
            .acquire()
            .await
            .map_err(|_| vec![ConfigError::new("", "the gateway is shutting down")])?;
        tokio::task::spawn_blocking(move || {
            let cfg = parse_str(&text, &|k| std::env::var(k).ok())?;
            match state {
                Some(state) => compile(&cfg, &state),
                // A throwaway registry: validating must not touch live pools and metrics.
                None => compile(&cfg, &State::default()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(vec![ConfigError::new("", format!("compiling failed: {e}"))]))
    }

    /// Checks a config text as the admin API would apply it, without applying it: the
    /// warnings when it is valid, else every error (a filesystem path it adds or changes
    /// included). Runs on the blocking pool.
    pub async fn validate(&self, text: String) -> Result<Vec<String>, Vec<ConfigError>> {
        let running = self.gw.runtime.load().file_paths.clone();
        let rt = self.compile_text(text, None).await?;
        let refused = file_path_changes(&running, &rt.file_paths);
        let warnings = rt.warnings.iter().map(ToString::to_string).collect();
        // A large runtime is dropped off the runtime workers too.
        tokio::task::spawn_blocking(move || drop(rt));
        if refused.is_empty() {
            Ok(warnings)
        } else {
            Err(refused)
        }
    }

    /// Applies a config text sent to the admin API: like [`Control::apply`] with the file
    /// written back, but a config that adds or changes a filesystem path is refused.
    pub async fn apply_from_admin(self: &Arc<Self>, text: String) -> Result<(), ApplyError> {
        let mut server = self.server.lock().await;
        self.apply_locked(&mut server, text, "admin", true, true)
            .await
    }

    /// Applies a config text, all or nothing. With `write_file`, the text also replaces the
    /// config file (see [`write_config_file`]) before it goes live, so an applied change
    /// survives a restart and a file that cannot be written means nothing changed.
    pub async fn apply(
        self: &Arc<Self>,
        text: String,
        source: &'static str,
        write_file: bool,
    ) -> Result<(), ApplyError> {
        let mut server = self.server.lock().await;
        self.apply_locked(&mut server, text, source, write_file, false)
            .await
    }

    /// `from_admin`: the text came through the admin API, which may not change paths.
    async fn apply_locked(
        self: &Arc<Self>,
        server: &mut Option<Server>,
        text: String,
        source: &'static str,
        write_file: bool,
        from_admin: bool,
    ) -> Result<(), ApplyError> {
        let result = self.try_apply(server, &text, write_file, from_admin).await;
        match &result {
            Ok(()) => {
                let hash = hash_text(&text);
                self.gw.metrics.config_loaded(&hash);
                tracing::info!(source, hash = %hash, "config reloaded");
                if let Ok(mut c) = self.current.lock() {
                    c.text = text;
                    c.hash = hash;
                }
                self.record(source, Ok(()));
            }
            Err(e) => {
                let messages = e.messages();
                tracing::error!(
                    source,
                    errors = messages.len(),
                    running = %self.config_hash(),
                    "config reload failed: the running config stays"
                );
                for m in messages {
                    tracing::error!(source, "config not applied: {m}");
                }
                self.record(source, Err(e));
            }
        }
        result
    }

    /// Everything that can fail happens before the runtime is swapped: compile, bind the new
    /// listeners (proxy and admin), open a new access log, write the file. After the swap
    /// nothing can fail.
    async fn try_apply(
        self: &Arc<Self>,
        server: &mut Option<Server>,
        text: &str,
        write_file: bool,
        from_admin: bool,
    ) -> Result<(), ApplyError> {
        let rt = self
            .compile_text(text.to_owned(), Some(self.state.clone()))
            .await
            .map_err(ApplyError::Invalid)?;
        if from_admin {
            let refused = file_path_changes(&self.gw.runtime.load().file_paths, &rt.file_paths);
            if !refused.is_empty() {
                return Err(ApplyError::Refused(refused));
            }
        }
        let Some(srv) = server.as_mut() else {
            return Err(ApplyError::Failed("the gateway is shutting down".into()));
        };
        let prepared = srv
            .prepare(&rt)
            .map_err(|e| ApplyError::Failed(e.to_string()))?;
        let admin = self
            .prepare_admin(rt.admin.as_ref())
            .map_err(|e| ApplyError::Failed(e.to_string()))?;
        let access_log = self.access_log_for(&rt).map_err(ApplyError::Failed)?;
        if let (Some(path), true) = (&self.config_path, write_file) {
            write_config_file(path, text)
                .await
                .map_err(ApplyError::Failed)?;
        }
        if rt.workers != self.gw.runtime.load().workers {
            tracing::warn!("`workers` changed: it takes effect at the next restart");
        }
        if rt.scheduler != self.gw.runtime.load().scheduler {
            tracing::warn!("`scheduler` changed: it takes effect at the next restart");
        }
        // The point of no return. State first, so the first request on the new runtime
        // finds its metric series and its kept resources.
        self.state.adopt(&rt);
        let rt = Arc::new(rt);
        self.gw.runtime.store(rt.clone());
        if let Some(log) = access_log {
            self.gw.access_log.store(log);
        }
        srv.commit(&rt, prepared);
        self.commit_admin(admin);
        Ok(())
    }

    /// A new access-log writer when the log settings changed (`Some(None)`: turned off).
    fn access_log_for(&self, rt: &Runtime) -> Result<Option<Option<Arc<AccessLog>>>, String> {
        let old = self.gw.runtime.load();
        let same = match (&old.access_log, &rt.access_log) {
            (None, None) => true,
            (Some(a), Some(b)) => a.format == b.format && a.path == b.path,
            _ => false,
        };
        if same {
            return Ok(None);
        }
        match &rt.access_log {
            None => Ok(Some(None)),
            Some(cfg) => AccessLog::start(cfg)
                .map(|l| Some(Some(Arc::new(l))))
                .map_err(|e| format!("access_log.path: cannot open: {e}")),
        }
    }

    /// Records an attempt that applied or failed, and counts it.
    fn record(&self, source: &'static str, result: Result<(), &ApplyError>) {
        self.gw.metrics.reload(result.is_ok());
        if let Ok(mut c) = self.current.lock() {
            c.last_reload = ReloadResult {
                at: unix_now(),
                source,
                ok: result.is_ok(),
                outcome: if result.is_ok() { "applied" } else { "failed" },
                hash: Some(c.hash.clone()),
                errors: result.err().map(ApplyError::messages).unwrap_or_default(),
            };
            if result.is_ok() {
                c.failed_hash = None;
            }
        }
    }

    /// Records that the file was read and holds the running config: the status then shows
    /// the config that runs, not an older failure. Not a reload, so not counted.
    fn record_unchanged(&self, source: &'static str) {
        if let Ok(mut c) = self.current.lock() {
            c.last_reload = ReloadResult {
                at: unix_now(),
                source,
                ok: true,
                outcome: "unchanged",
                hash: Some(c.hash.clone()),
                errors: Vec::new(),
            };
            c.failed_hash = None;
        }
    }

    /// What the admin listener must do for `want`; binds a new socket if one is needed, so a
    /// failure (address in use) refuses the config before anything changed.
    fn prepare_admin(&self, want: Option<&AdminSettings>) -> std::io::Result<AdminPlan> {
        let admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match (admin.as_ref(), want) {
            (None, None) => AdminPlan::Nothing,
            (Some(_), None) => AdminPlan::Stop,
            (Some(cur), Some(w)) if cur.settings.addr == w.addr => AdminPlan::Keep(w.clone()),
            (_, Some(w)) => {
                let listener = crate::server::bind(w.addr).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("admin.addr: cannot listen on {}: {e}", w.addr),
                    )
                })?;
                AdminPlan::Start(w.clone(), listener)
            }
        })
    }

    fn commit_admin(self: &Arc<Self>, plan: AdminPlan) {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        match plan {
            AdminPlan::Nothing => {}
            AdminPlan::Keep(w) => {
                // Same socket; the token is read from the runtime on every request.
                if let Some(cur) = admin.as_mut() {
                    cur.settings = w;
                }
            }
            AdminPlan::Stop => {
                if let Some(old) = admin.take() {
                    let _ = old.stop.send(true);
                }
            }
            AdminPlan::Start(w, listener) => {
                if let Some(old) = admin.take() {
                    let _ = old.stop.send(true);
                }
                let Ok(local) = listener.local_addr() else {
                    return;
                };
                tracing::info!(addr = %local, "admin API listening");
                let (stop, stop_rx) = watch::channel(false);
                let mut global_stop = self.stop.subscribe();
                let control = Arc::downgrade(self);
                let (tx, rx) = watch::channel(false);
                tokio::spawn((self.admin_service)(listener, control, rx));
                // One stop signal for the listener, whichever asks first.
                let mut stop_rx2 = stop_rx;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = global_stop.changed() => {}
                        _ = stop_rx2.changed() => {}
                    }
                    let _ = tx.send(true);
                });
                *admin = Some(AdminListener {
                    settings: w,
                    local,
                    stop,
                });
            }
        }
    }

    /// Stops everything: listeners drain their in-flight requests up to the shutdown deadline.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.state.health.stop_all();
        if let Some(server) = self.server.lock().await.take() {
            server.shutdown().await;
        }
        if let Some(log) = self.gw.access_log.load_full() {
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(5))).await;
        }
    }

    /// Signals every listener to stop without waiting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.state.health.stop_all();
        if let Ok(server) = self.server.try_lock()
            && let Some(s) = server.as_ref()
        {
            s.stop();
        }
    }
}

/// A short, stable identity of a config text.
pub fn hash_text(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
