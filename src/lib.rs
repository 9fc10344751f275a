//! Gatehouse: an API gateway. One binary, one YAML file.
//!
//! The request path: `server` (listeners, limits) -> `gateway::handle` (route lookup on the
//! runtime snapshot) -> the route's `policy` chain -> `proxy` to an `upstream` target ->
//! response policies -> access log. `config` turns the YAML into the immutable `Runtime`.

pub mod admin;
pub mod body;
pub mod config;
pub mod context;
pub mod control;
pub mod demo;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::ConfigErrors;
use crate::config::compile::{Runtime, compile};
use crate::observe::metrics::Metrics;
use crate::upstream::Pools;

/// State that outlives a config reload, keyed by stable names: connection pools and metrics.
#[derive(Default)]
pub struct State {
    pub pools: Pools,
    /// Round-robin positions and retry budgets that outlive reloads.
    pub kept: upstream::Kept,
    pub metrics: Arc<Metrics>,
    pub health: upstream::health::HealthCheckers,
    pub dns: upstream::dns::DnsCache,
}

impl State {
    /// Called once `rt` is live: keep what it uses, drop what no config uses any more.
    pub fn adopt(&self, rt: &Runtime) {
        self.pools.adopt(rt.upstreams.values().map(|u| u.as_ref()));
        self.kept.adopt(rt.upstreams.values().map(|u| u.as_ref()));
        self.health
            .reconcile(rt.upstreams.values().map(|u| u.as_ref()));
        let routes: Vec<Arc<str>> = rt.routes.iter().map(|r| r.name.clone()).collect();
        let targets: Vec<(Arc<str>, Arc<str>)> = rt
            .upstreams
            .values()
            .flat_map(|u| {
                u.targets
                    .iter()
                    .map(|t| (u.name.clone(), Arc::from(t.authority.as_str())))
            })
            .collect();
        self.metrics.retain(&routes, &targets);
    }
}

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

/// Builds the shared gateway state for a runtime (starting the access-log writer).
pub fn gateway_for(rt: Runtime, state: &State) -> std::io::Result<Arc<gateway::Gateway>> {
    let access_log = match &rt.access_log {
        Some(cfg) => Some(Arc::new(observe::access_log::AccessLog::start(cfg)?)),
        None => None,
    };
    Ok(Arc::new(gateway::Gateway {
        runtime: ArcSwap::from_pointee(rt),
        access_log: ArcSwapOption::new(access_log),
        metrics: state.metrics.clone(),
    }))
}
