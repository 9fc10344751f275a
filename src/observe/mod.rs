//! Observability: the access log, Prometheus metrics and W3C trace context.

pub mod access_log;
pub mod metrics;
pub mod trace;
