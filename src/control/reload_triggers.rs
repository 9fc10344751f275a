//! What makes the running config reload by itself: host-name targets re-resolved, TLS and htpasswd files
//! changed on disk, the config file changed on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{CERT_POLL, Control};
use crate::runtime::Runtime;

impl Control {
    /// Resolves the host-name targets of the running config at start and then at the shortest
    /// `dns_refresh` among its upstreams; when an address set changes, recompiles the running
    /// config so the targets follow.
    pub fn resolve_names(self: &Arc<Self>) {
        let control = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(c) = control.upgrade() else { return };
                let rt = c.gw.runtime.load_full();
                let names: Vec<String> = rt
                    .upstreams
                    .values()
                    .flat_map(|u| u.names.iter().cloned())
                    .collect();
                let every = rt
                    .upstreams
                    .values()
                    .filter(|u| !u.names.is_empty())
                    .map(|u| u.dns_refresh)
                    .min()
                    .unwrap_or(Duration::from_secs(30));
                if !names.is_empty() {
                    let c2 = c.clone();
                    let changed = tokio::task::spawn_blocking(move || c2.state.dns.refresh(&names))
                        .await
                        .unwrap_or(false);
                    if changed || first {
                        let _ = c.reapply_current("dns").await;
                    }
                }
                first = false;
                drop(rt);
                drop(c);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Re-reads the config's TLS files (certificates, keys, CA bundles) and htpasswd files when they change on
    /// disk, as cert-manager and certbot rewrite them in place: every [`CERT_POLL`], each
    /// file's size and modification time are compared with the last look, and a change
    /// recompiles the running config. A certificate caught half-written fails that reload (the
    /// old one keeps serving) and the next change is tried again.
    pub fn watch_certificates(self: &Arc<Self>) {
        let control = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        // The first look is taken now, before anything else can change the files (a few
        // `stat`s, once at startup).
        let mut seen = Some(tls_file_stamps(tls_files(&self.gw.runtime.load())));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(CERT_POLL) => {}
                    _ = stop.changed() => return,
                }
                let Some(c) = control.upgrade() else { return };
                let paths = tls_files(&c.gw.runtime.load());
                let now = tokio::task::spawn_blocking(move || tls_file_stamps(paths))
                    .await
                    .unwrap_or_default();
                let changed = seen.as_ref().is_some_and(|seen| {
                    now.iter()
                        .any(|(p, m)| seen.iter().any(|(q, n)| p == q && m != n))
                });
                seen = Some(now);
                if changed {
                    tracing::info!("TLS or htpasswd files changed on disk: reloading");
                    let _ = c.reapply_current("certificate_change").await;
                }
            }
        });
    }

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
            if let Ok(ev) = ev
                && is_change(&ev.kind)
            {
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

/// The files a runtime read that change under it: certificates, keys, CA bundles, htpasswd.
fn tls_files(rt: &Runtime) -> Vec<String> {
    rt.file_paths
        .iter()
        .filter(|(key, _)| key.contains(".tls.") || key.ends_with(".htpasswd"))
        .map(|(_, p)| p.clone())
        .collect()
}

/// Each file's size and modification time (`None` when it cannot be read).
fn tls_file_stamps(paths: Vec<String>) -> Vec<(String, Option<(u64, SystemTime)>)> {
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (p, m)
        })
        .collect()
}

/// Whether a file event can mean new content. Opening, reading and closing a file unwritten
/// are not changes: inotify reports them too, and the reload's own read of the file would
/// otherwise trigger the next reload, forever.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reading_the_file_is_not_a_change() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!is_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(is_change(&kind), "{kind:?}");
        }
    }
}
