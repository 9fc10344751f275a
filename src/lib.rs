//! Gatehouse: an API gateway. One binary, one YAML file.
//!
//! The request path: `server` (listeners, limits) -> `gateway::handle` (route lookup on the
//! runtime snapshot) -> the route's `policy` chain -> `proxy` to an `upstream` target ->
//! response policies -> access log. `config` turns the YAML into the immutable `Runtime`.

pub mod admin;
pub mod aggregate;
pub mod body;
pub mod bufpool;
pub mod cidr;
pub mod compile;
pub mod config;
pub mod context;
pub mod control;
pub mod demo;
pub mod error;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hop;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use crate::compile::compile;
use crate::config::ConfigErrors;
use crate::runtime::Runtime;
pub use crate::state::State;

/// Loads and compiles a config file; errors name the file, key paths and problems.
pub fn load_runtime(path: &Path, state: &State) -> Result<Runtime, ConfigErrors> {
    load_config(path, state).map(|(_, rt)| rt)
}

/// Like [`load_runtime`], also returning the file's text.
pub fn load_config(path: &Path, state: &State) -> Result<(String, Runtime), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_owned(),
        errors: vec![config::ConfigError::new(
            "",
            format!("cannot read file: {e}"),
        )],
    })?;
    let cfg =
        config::parse_str(&text, &|k| std::env::var(k).ok()).map_err(|errors| ConfigErrors {
            file: path.to_owned(),
            errors,
        })?;
    let rt = compile(&cfg, state).map_err(|errors| ConfigErrors {
        file: path.to_owned(),
        errors,
    })?;
    Ok((text, rt))
}

/// Starts serving `text` (already compiled into `rt`): the proxy listeners, and the admin API
/// when the config has one. The one place that wires the admin handler into `control`.
pub async fn start(
    rt: Runtime,
    text: String,
    config_path: Option<std::path::PathBuf>,
    state: Arc<State>,
) -> std::io::Result<Arc<control::Control>> {
    control::Control::start(rt, text, config_path, state, |listener, control, stop| {
        Box::pin(admin::serve(listener, control, stop))
    })
    .await
}
