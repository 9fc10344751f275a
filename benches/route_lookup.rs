//! Route lookup cost as the table grows: 10, 100, 1,000 and 10,000 routes, each request
//! matching a route near the end of the table's order (the worst case of a scan). Prints
//! nanoseconds per lookup and the ratio to the 10-route table (issue 14's target: flat within
//! 2x). Run with `cargo bench --bench route_lookup`; timings are for reading, never asserted.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use gatehouse::router::{HostPattern, Matcher, PathPattern, Routable, Router};
use http::{HeaderMap, Method};

struct R(Matcher);

impl Routable for R {
    fn matcher(&self) -> &Matcher {
        &self.0
    }
}

fn table(n: usize) -> Router<R> {
    let mut routes = Vec::with_capacity(n + 1);
    for i in 0..n {
        // Half templates, half prefixes, each under its own first segment.
        let path = if i % 2 == 0 {
            PathPattern::parse_path(&format!("/svc{i}/items/{{id}}"))
        } else {
            PathPattern::parse_prefix(&format!("/svc{i}"))
        };
        let Ok(path) = path else {
            continue;
        };
        routes.push(Arc::new(R(Matcher {
            hosts: vec![HostPattern::Any],
            path,
            methods: vec![],
            headers: vec![],
        })));
    }
    Router::new(routes)
}

fn main() {
    let headers = HeaderMap::new();
    let mut base = None;
    println!("routes  ns/lookup  vs 10 routes");
    for n in [10usize, 100, 1_000, 10_000] {
        let r = table(n);
        let paths: Vec<String> = (0..64)
            .map(|k| {
                let i = n - 1 - (k % n.min(64));
                if i % 2 == 0 {
                    format!("/svc{i}/items/42")
                } else {
                    format!("/svc{i}/x")
                }
            })
            .collect();
        let rounds = 200_000;
        let t = Instant::now();
        let mut found = 0usize;
        for k in 0..rounds {
            let p = &paths[k % paths.len()];
            if r.find(None, black_box(p), &Method::GET, &headers).is_some() {
                found += 1;
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(found, rounds, "every path has its route");
        let b = *base.get_or_insert(ns);
        println!("{n:>6}  {ns:>9.1}  {:>6.2}x", ns / b);
    }
}
