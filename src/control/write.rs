//! Writing the config file back (after an admin API apply) so that a crash never leaves half a
//! file, and never through a planted symlink.

use std::path::{Path, PathBuf};

/// Replaces the config file with `text` so that a crash at any moment leaves a complete
/// file: the new text goes to a temporary file beside it (synced), the current file is
/// preserved as `<file>.bak` the same way, then the temporary file is renamed over the
/// original (atomic on one filesystem) and the directory synced. A symlinked config is
/// written through the link. On any error nothing is replaced and the temporary file is removed.
///
/// The config holds secrets and its directory may be shared: every file this creates is
/// created new (`O_CREAT|O_EXCL`, which never follows a symlink, so a link planted at the name
/// fails the open rather than redirecting it), mode 0600 from the first moment, under an
/// unpredictable name. Only once the text is written does it take the config file's own mode.
pub(super) async fn write_config_file(path: &Path, text: &str) -> Result<(), String> {
    let path = path.to_owned();
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || write_config_file_blocking(&path, &text))
        .await
        .map_err(|e| e.to_string())?
}

fn write_config_file_blocking(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("gatehouse.yaml")
        .to_owned();
    // The mode its owner gave the config file; the new file and the backup end up with it.
    let mode = std::fs::metadata(&path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    let write_synced = |file: &mut std::fs::File, bytes: &[u8]| -> std::io::Result<()> {
        use std::io::Write;
        file.write_all(bytes)?;
        if let Some(m) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        file.sync_all()
    };
    let mut created: Vec<PathBuf> = Vec::new();
    let bak = dir.join(format!("{name}.bak"));
    let result = (|| -> Result<(), String> {
        let (tmp, mut f) = create_private(&dir, &format!(".{name}.tmp-"))
            .map_err(|e| format!("{}: cannot create a temporary file: {e}", dir.display()))?;
        created.push(tmp.clone());
        write_synced(&mut f, text.as_bytes())
            .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
        if let Ok(old) = std::fs::read(&path) {
            let (bak_tmp, mut b) = create_private(&dir, &format!(".{name}.bak.tmp-"))
                .map_err(|e| format!("{}: cannot create a backup: {e}", dir.display()))?;
            created.push(bak_tmp.clone());
            write_synced(&mut b, &old)
                .map_err(|e| format!("{}: cannot write backup: {e}", bak_tmp.display()))?;
            // rename() replaces whatever is at `.bak` (a symlink included) without following it.
            std::fs::rename(&bak_tmp, &bak)
                .map_err(|e| format!("{}: cannot write backup: {e}", bak.display()))?;
            created.pop();
        }
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("{}: cannot replace: {e}", path.display()))?;
        created.clear();
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    for f in created {
        let _ = std::fs::remove_file(f);
    }
    result
}

/// Creates a new file `<dir>/<prefix><16 random hex digits>`, mode 0600, failing rather than
/// opening anything that already exists at the name (a symlink included: `create_new` is
/// `O_CREAT|O_EXCL`, which does not follow a symlink in the last component). A name taken
/// by chance is retried with another.
fn create_private(dir: &Path, prefix: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for _ in 0..8 {
        let candidate = dir.join(format!("{prefix}{:016x}", fastrand::u64(..)));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&candidate)
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_new_and_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gatehouse-private-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, _) = create_private(&dir, ".x.tmp-").unwrap();
        let (b, _) = create_private(&dir, ".x.tmp-").unwrap();
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
