//! State that outlives a config reload, beside the runtime snapshot: the named long-lived
//! resources (pools, balancer positions, retry budgets, target health), the metric registry,
//! the health-check tasks and the DNS answers. Compiling reads it; [`State::adopt`] is the one
//! step that changes it, for a runtime that is going live.

use std::sync::Arc;

use crate::observe::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::upstream;

#[derive(Default)]
pub struct State {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub health: upstream::health::HealthCheckers,
    pub dns: upstream::dns::DnsCache,
}

impl State {
    /// Called just before `rt` goes live: the registry becomes what `rt` claimed, its routes
    /// and targets get their metric series (a refused config never had any), the health
    /// checkers follow its upstreams, and the series of what is gone are dropped.
    pub fn adopt(&self, rt: &Runtime) {
        self.registry.adopt(&rt.claims);
        for u in rt.upstreams.values() {
            let authorities: Vec<&str> = u.targets.iter().map(|t| t.authority.as_str()).collect();
            u.pool.retain(&authorities);
            for t in &u.targets {
                let _ = t.stats.set(
                    self.metrics
                        .target(&u.name, &Arc::from(t.authority.as_str())),
                );
            }
        }
        for r in &rt.routes {
            let _ = r.stats.set(self.metrics.route(&r.name));
        }
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
