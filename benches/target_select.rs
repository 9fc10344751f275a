//! Target selection cost as an upstream grows: 2, 10, 100 and 1,000 targets, for each
//! balancer. Prints nanoseconds per pick and the ratio to 2 targets (issue 14's target: flat
//! within 2x). Run with `cargo bench --bench target_select`; timings are for reading only.

use std::hint::black_box;
use std::time::Instant;

fn main() {
    println!("balancer        targets  ns/pick  vs 2 targets");
    for balance in ["random", "least_request", "ewma", "round_robin"] {
        let mut base = None;
        for n in [2usize, 10, 100, 1_000] {
            let targets: Vec<String> = (0..n)
                .map(|i| format!("\"http://127.0.0.1:{}\"", 20_000 + i))
                .collect();
            let yaml = format!(
                "listen: \"127.0.0.1:0\"\nupstreams:\n  u:\n    balance: {balance}\n    targets: [{}]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: u\n",
                targets.join(", ")
            );
            let Ok(cfg) = gatehouse::config::parse_str(&yaml, &|_| None) else {
                eprintln!("config did not parse");
                return;
            };
            let Ok(rt) = gatehouse::compile::compile(&cfg, &Default::default()) else {
                eprintln!("config did not compile");
                return;
            };
            let Some(u) = rt.upstreams.get("u") else {
                return;
            };
            let rounds = 200_000;
            let t = Instant::now();
            let mut picked = 0usize;
            for _ in 0..rounds {
                if black_box(u.select(None, &[])).is_some() {
                    picked += 1;
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / rounds as f64;
            assert_eq!(picked, rounds);
            let b = *base.get_or_insert(ns);
            println!("{balance:<15} {n:>7}  {ns:>7.1}  {:>6.2}x", ns / b);
        }
    }
}
