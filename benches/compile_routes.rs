//! Compiling (validating and building) a config of 10,000 routes, as a reload does: parse,
//! compile, and the shadowed-route check. Prints the time of each step. Run with
//! `cargo bench --bench compile_routes`; timings are for reading only (issue 14's target: a
//! reload with 10,000 routes in under 1 s).

use std::time::Instant;

fn main() {
    for n in [1_000usize, 10_000] {
        let mut yaml = String::from(
            "listen: \"127.0.0.1:0\"\nupstreams:\n  u: { targets: [\"http://127.0.0.1:9\"] }\nroutes:\n",
        );
        for i in 0..n {
            let route = match i % 4 {
                0 => format!(
                    "  - match: {{ path: \"/svc{i}/items/{{id}}\", methods: [GET] }}\n    upstream: u\n"
                ),
                1 => format!(
                    "  - match: {{ path_prefix: /svc{i} }}\n    upstream: u\n    strip_prefix: true\n"
                ),
                2 => format!(
                    "  - match: {{ hosts: [\"h{i}.example.com\"], path_prefix: / }}\n    upstream: u\n"
                ),
                _ => format!(
                    "  - match: {{ path: /svc{i}/me, headers: {{ x-v: \"2\" }} }}\n    upstream: u\n    headers: {{ response: {{ set: {{ x-r: \"{i}\" }} }} }}\n"
                ),
            };
            yaml.push_str(&route);
        }
        let t = Instant::now();
        let Ok(cfg) = gatehouse::config::parse_str(&yaml, &|_| None) else {
            eprintln!("config did not parse");
            return;
        };
        let parsed = t.elapsed();
        let t = Instant::now();
        let Ok(rt) = gatehouse::compile::compile(&cfg, &Default::default()) else {
            eprintln!("config did not compile");
            return;
        };
        let compiled = t.elapsed();
        let t = Instant::now();
        let shadowed = rt.router.shadowed().len();
        let checked = t.elapsed();
        println!(
            "{n:>6} routes ({} bytes): parse {parsed:?}, compile {compiled:?}, shadow check {checked:?} ({shadowed} shadowed), total {:?}",
            yaml.len(),
            parsed + compiled + checked
        );
    }
}
