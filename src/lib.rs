//! Gatehouse: an API gateway. One binary, one YAML file.
//!
//! The request path: `server` (listeners, limits) -> `gateway::handle` (route lookup on the
//! runtime snapshot) -> the route's `policy` chain -> `proxy` to an `upstream` target ->
//! response policies -> access log. `config` turns the YAML into the immutable `Runtime`.

pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod server;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::compile::{Runtime, compile};
use crate::config::{ConfigErrors, load_file};
use crate::upstream::Pools;

/// Loads and compiles a config file; errors name the file, key paths and problems.
pub fn load_runtime(path: &Path, pools: &Pools) -> Result<Runtime, ConfigErrors> {
    let cfg = load_file(path)?;
    compile(&cfg, pools).map_err(|errors| ConfigErrors {
        file: path.to_owned(),
        errors,
    })
}

/// Builds the shared gateway state for a runtime (starting the access-log writer).
pub fn gateway_for(rt: Runtime) -> std::io::Result<Arc<gateway::Gateway>> {
    let access_log = match &rt.access_log {
        Some(cfg) => Some(observe::access_log::AccessLog::start(cfg)?),
        None => None,
    };
    Ok(Arc::new(gateway::Gateway {
        runtime: ArcSwap::from_pointee(rt),
        access_log,
    }))
}
