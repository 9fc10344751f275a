//! The control plane of one process: the config file, reloads, the listeners, the admin API.
//!
//! A reload, whatever triggered it (SIGHUP, the watched file, the admin API), goes through
//! [`Control::apply`]: parse and compile the text (nothing changes on any error), bind the
//! listeners it adds, swap the runtime in atomically (requests in flight finish on the snapshot
//! they started with), then stop the listeners it dropped. Connection pools and metrics live in
//! [`State`], keyed by name, so they survive for the upstreams and routes that remain. Reloads
//! are serialised by one lock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::State;
use crate::config::compile::{AdminSettings, Runtime, compile};
use crate::config::{ConfigError, parse_str};
use crate::gateway::Gateway;
use crate::observe::access_log::AccessLog;
use crate::server::Server;

/// What the last reload did, for the admin API and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadResult {
    /// Unix seconds.
    pub at: u64,
    /// `startup`, `sighup`, `file_watch`, `admin`.
    pub source: &'static str,
    pub ok: bool,
    /// The new config's hash when it was applied.
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
}

impl ApplyError {
    pub fn messages(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(errs) => errs.iter().map(ToString::to_string).collect(),
            ApplyError::Failed(m) => vec![m.clone()],
        }
    }
}

struct Current {
    /// The config text as written (before `${ENV}` interpolation, so secrets stay references).
    text: String,
    hash: String,
    last_reload: ReloadResult,
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
}

struct AdminListener {
    settings: AdminSettings,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Control {
    /// Starts serving `text` (already known to compile into `rt`).
    pub async fn start(
        rt: Runtime,
        text: String,
        config_path: Option<PathBuf>,
        state: Arc<State>,
    ) -> std::io::Result<Arc<Control>> {
        let gw = crate::gateway_for(rt, &state)?;
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
                    hash: Some(hash.clone()),
                    errors: Vec::new(),
                },
                hash,
            }),
            server: tokio::sync::Mutex::new(Some(server)),
            admin: Mutex::new(None),
            stop,
        });
        let admin = control.gw.runtime.load().admin.clone();
        control.reconcile_admin(admin.as_ref())?;
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

    /// Re-reads the config file and applies it if it changed.
    pub async fn reload_file(self: &Arc<Self>, source: &'static str) -> Result<bool, ApplyError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApplyError::Failed(
                "this gateway was not started from a config file".into(),
            ));
        };
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                let err = ApplyError::Failed(format!("{}: cannot read file: {e}", path.display()));
                self.record(source, Err(&err));
                return Err(err);
            }
        };
        if hash_text(&text) == self.config_hash() {
            return Ok(false);
        }
        self.apply(text, source, false).await.map(|()| true)
    }

    /// Checks a config text without applying it.
    pub fn validate(&self, text: &str) -> Result<Runtime, Vec<ConfigError>> {
        let cfg = parse_str(text, &|k| std::env::var(k).ok())?;
        // A throwaway registry: validating must not touch the live pools.
        compile(&cfg, &State::default())
    }

    /// Applies a config text: validate, bind new listeners, swap, stop dropped listeners. With
    /// `write_file`, the text also replaces the config file (atomically, keeping a `.bak`), so
    /// the change survives a restart; the file is written before the swap and only renamed
    /// into place once the swap succeeded.
    pub async fn apply(
        self: &Arc<Self>,
        text: String,
        source: &'static str,
        write_file: bool,
    ) -> Result<(), ApplyError> {
        let mut server = self.server.lock().await;
        let result = self.apply_locked(&mut server, &text, write_file).await;
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
                for m in e.messages() {
                    tracing::error!(source, "config not applied: {m}");
                }
                self.record(source, Err(e));
            }
        }
        result
    }

    async fn apply_locked(
        self: &Arc<Self>,
        server: &mut Option<Server>,
        text: &str,
        write_file: bool,
    ) -> Result<(), ApplyError> {
        let cfg = parse_str(text, &|k| std::env::var(k).ok()).map_err(ApplyError::Invalid)?;
        let rt = compile(&cfg, &self.state).map_err(ApplyError::Invalid)?;
        let Some(srv) = server.as_mut() else {
            return Err(ApplyError::Failed("the gateway is shutting down".into()));
        };
        let prepared = srv
            .prepare(&rt)
            .map_err(|e| ApplyError::Failed(e.to_string()))?;
        let staged = match (&self.config_path, write_file) {
            (Some(path), true) => Some(stage_file(path, text).await.map_err(ApplyError::Failed)?),
            _ => None,
        };
        let old_workers = self.gw.runtime.load().workers;
        if rt.workers != old_workers {
            tracing::warn!("`workers` changed: it takes effect at the next restart");
        }
        let access_log = self.access_log_for(&rt).map_err(ApplyError::Failed)?;
        let admin = rt.admin.clone();
        let rt = Arc::new(rt);
        self.gw.runtime.store(rt.clone());
        if let Some(log) = access_log {
            self.gw.access_log.store(log);
        }
        srv.commit(&rt, prepared);
        if let Err(e) = self.reconcile_admin(admin.as_ref()) {
            tracing::error!("admin listener not changed: {e}");
        }
        if let (Some(staged), Some(path)) = (staged, &self.config_path) {
            commit_file(&staged, path)
                .await
                .map_err(ApplyError::Failed)?;
        }
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

    fn record(&self, source: &'static str, result: Result<(), &ApplyError>) {
        self.gw.metrics.reload(result.is_ok());
        let hash = result.is_ok().then(|| self.config_hash());
        if let Ok(mut c) = self.current.lock() {
            c.last_reload = ReloadResult {
                at: unix_now(),
                source,
                ok: result.is_ok(),
                hash,
                errors: result.err().map(ApplyError::messages).unwrap_or_default(),
            };
        }
    }

    /// Starts, moves or stops the admin listener to match the config.
    fn reconcile_admin(self: &Arc<Self>, want: Option<&AdminSettings>) -> std::io::Result<()> {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(cur), Some(w)) = (admin.as_mut(), want)
            && cur.settings.addr == w.addr
        {
            // Same socket; the token is read from the runtime on every request.
            cur.settings = w.clone();
            return Ok(());
        }
        if let Some(old) = admin.take() {
            let _ = old.stop.send(true);
        }
        if let Some(w) = want {
            let listener = crate::server::bind(w.addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("admin: cannot listen on {}: {e}", w.addr))
            })?;
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, "admin API listening");
            let (stop, stop_rx) = watch::channel(false);
            let mut global_stop = self.stop.subscribe();
            let mut stop_rx2 = stop_rx.clone();
            let control = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::select! {
                    _ = crate::admin::serve(listener, control, stop_rx) => {}
                    _ = global_stop.changed() => {}
                    _ = stop_rx2.changed() => {}
                }
            });
            *admin = Some(AdminListener {
                settings: w.clone(),
                local,
                stop,
            });
        }
        Ok(())
    }

    /// Stops everything: listeners drain their in-flight requests up to the shutdown deadline.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
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
        if let Ok(server) = self.server.try_lock()
            && let Some(s) = server.as_ref()
        {
            s.stop();
        }
    }
}

impl Control {
    /// Watches the config file and reloads it after changes settle (250 ms without events).
    /// The directory is watched, not the file: editors and Kubernetes ConfigMaps replace files
    /// by rename or symlink swap, which a watch on the file itself would lose.
    pub fn watch_file(self: &Arc<Self>) -> Result<(), String> {
        use notify::Watcher;
        let Some(path) = self.config_path.clone() else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_owned());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                let ours = ev.paths.iter().any(|p| p.file_name() == name.as_deref())
                    // A ConfigMap swaps a `..data` symlink, not the file name itself.
                    || ev.paths.iter().any(|p| p.file_name().is_some_and(|n| n == "..data"));
                if ours {
                    let _ = tx.try_send(());
                }
            }
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        let control = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            loop {
                tokio::select! {
                    ev = rx.recv() => if ev.is_none() { return },
                    _ = stop.changed() => return,
                }
                // Debounce: wait until the file has been quiet for a moment.
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(250), rx.recv()).await
                {
                }
                let Some(c) = control.upgrade() else { return };
                let _ = c.reload_file("file_watch").await;
            }
        });
        Ok(())
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

/// Writes `text` to a temporary file beside `path` and syncs it.
async fn stage_file(path: &Path, text: &str) -> Result<PathBuf, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("gatehouse.yaml");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let text = text.to_owned();
    let tmp2 = tmp.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp2)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Keeps the current file as `<file>.bak` (a copy, so the file itself never disappears), then
/// renames the staged file over it: a crash at any point leaves a complete old or new config.
async fn commit_file(staged: &Path, path: &Path) -> Result<(), String> {
    let bak = path.with_file_name(format!(
        "{}.bak",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("gatehouse.yaml")
    ));
    let (staged, path) = (staged.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        if path.exists() {
            std::fs::copy(&path, &bak)
                .map_err(|e| format!("{}: cannot write backup: {e}", bak.display()))?;
        }
        std::fs::rename(&staged, &path)
            .map_err(|e| format!("{}: cannot replace: {e}", path.display()))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}
