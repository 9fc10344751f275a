//! `gatehouse explain`: which route would handle a request, what it captures, what path goes
//! upstream and which policies run — answered from the compiled runtime, with the same router
//! the gateway uses.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

use crate::body::Body;
use crate::proxy;
use crate::router::{self, HostPattern, PathPattern};
use crate::runtime::{PathAction, Runtime};

pub fn explain(
    rt: &Runtime,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<String, String> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {method:?}"))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let mut hmap = HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} must look like `name: value`"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("invalid header value in {h:?}"))?;
        hmap.append(name, value);
    }
    let host = router::request_host(&uri, &hmap);
    let (path, restructured) = router::normalize_ext(uri.path());
    let mut out = String::new();
    let _ = writeln!(out, "request:    {method} {url}");
    if path != uri.path() {
        let used = if restructured {
            "used for matching and forwarded"
        } else {
            "used for matching; the client's spelling is forwarded"
        };
        let _ = writeln!(out, "normalised: {path} ({used})");
    }
    let Some(found) = rt.router.find(host.as_deref(), &path, &method, &hmap) else {
        let _ = writeln!(
            out,
            "route:      none: the gateway answers 404 {{\"error\": \"no_route\"}}"
        );
        return Err(out);
    };
    let r = found.route;
    let _ = writeln!(out, "route:      {} (routes[{}])", r.name, r.index);
    let m = &r.matcher;
    let mut cond = Vec::new();
    if !m.hosts.is_empty() {
        cond.push(format!(
            "hosts [{}]",
            m.hosts
                .iter()
                .map(HostPattern::display)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    cond.push(match &m.path {
        PathPattern::Prefix(p) => format!("path_prefix {p}"),
        p => format!("path {}", p.display()),
    });
    if !m.methods.is_empty() {
        cond.push(format!(
            "methods [{}]",
            m.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (k, v) in &m.headers {
        cond.push(format!("header {k}: {}", v.to_str().unwrap_or("?")));
    }
    let _ = writeln!(out, "matched on: {}", cond.join(", "));
    if !found.params.is_empty() {
        let ps: Vec<String> = found
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "params:     {}", ps.join(", "));
    }
    let req = {
        let mut b = Request::builder().method(method.clone()).uri(uri.clone());
        for (k, v) in &hmap {
            b = b.header(k, v);
        }
        b.body(Body::empty()).map_err(|e| e.to_string())?
    };
    match &r.action {
        crate::runtime::Action::Respond(a) => {
            let _ = writeln!(
                out,
                "answers:    {} with a fixed body of {} bytes (respond)",
                a.status,
                a.body.len()
            );
        }
        crate::runtime::Action::Redirect(a) => {
            let location = a
                .response(&found.params, uri.query())
                .ok()
                .and_then(|r| {
                    r.headers()
                        .get(http::header::LOCATION)
                        .and_then(|v| v.to_str().ok().map(str::to_owned))
                })
                .unwrap_or_else(|| a.to.clone());
            let _ = writeln!(out, "redirects:  {} to {location}", a.status);
        }
        crate::runtime::Action::Aggregate(agg) => {
            let _ = writeln!(
                out,
                "aggregates: {} call{} into one JSON answer (deadline {:?})",
                agg.calls.len(),
                if agg.calls.len() == 1 { "" } else { "s" },
                agg.deadline
            );
            for line in crate::aggregate::describe(agg) {
                let _ = writeln!(out, "              {line}");
            }
        }
        crate::runtime::Action::Proxy(upstream) => {
            let normalized = restructured.then_some(path.as_ref());
            let pq = proxy::upstream_path(&r.path_action, req.uri(), normalized, &found.params)
                .map_err(|e| e.to_string())?;
            let how = match &r.path_action {
                PathAction::Keep => "as sent by the client".to_owned(),
                PathAction::StripPrefix(p) => format!("prefix {p} stripped"),
                PathAction::Rewrite(_) => "rewritten".to_owned(),
            };
            let _ = writeln!(
                out,
                "upstream:   {} ({} target{}, round_robin)",
                upstream.name,
                upstream.targets.len(),
                if upstream.targets.len() == 1 { "" } else { "s" }
            );
            for t in &upstream.targets {
                let _ = writeln!(out, "              {} weight {}", t.url, t.weight);
            }
            let _ = writeln!(out, "forwards:   {method} {} ({how})", pq.as_str());
            let host_note = if upstream.preserve_host {
                // What goes upstream is the Host the client sends, port and all: a given `Host`
                // header, else the URL's authority (without userinfo), as curl would send it. The
                // lowercased, port-less form above is only what routes are matched on.
                let sent = hmap
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| {
                        uri.authority()
                            .map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_owned())
                    });
                format!("{} (client's, preserved)", sent.as_deref().unwrap_or("-"))
            } else {
                "the target's host:port (preserve_host: false)".to_owned()
            };
            let _ = writeln!(out, "host:       {host_note}");
        }
    }
    if r.chain.is_empty() {
        let _ = writeln!(out, "policies:   none");
    } else {
        let _ = writeln!(
            out,
            "policies:   (in the order they run: by phase, then source)"
        );
        for (i, b) in r.chain.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. {} [{}] (from {})",
                i + 1,
                b.policy.kind(),
                b.policy.phase().name(),
                b.source
            );
        }
    }
    if let Some(l) = r.max_body_size {
        let _ = writeln!(out, "body limit: {l} bytes");
    }
    Ok(out)
}
