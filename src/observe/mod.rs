//! Observability: the access log (metrics and tracing arrive with the operations capability).

pub mod access_log;
