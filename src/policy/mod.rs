//! The policy chain: small objects with one job each, compiled once per route. Each kind
//! declares its [`Phase`]; a route's chain runs by phase (access, authentication,
//! authorization, rate limit, cache, transform), and source order (`global`, then the route's
//! `use:` list, then its inline kinds) only breaks ties within a phase. So a global rate limit
//! keyed by consumer always runs after the route's authentication has set the consumer.
//!
//! Both hooks may wait (a store, the blocking pool). The response hooks run, in reverse
//! order, on every answer the request gets: the upstream's, a policy's denial, the gateway's
//! own 404 or 502. A policy lets the request continue (possibly changed) or answers it; it
//! never knows which policy runs before or after it, and keeps what it needs for the response
//! in its own slot of the [`RequestCtx`].
//!
//! Adding a kind: one file here, and one line in [`KINDS`].

pub mod auth;
pub mod cache;
pub mod consumers;
pub mod cors;
pub mod forward_auth;
pub mod headers;
pub mod htpasswd;
pub mod ip_rules;
pub mod jwt;
pub mod rate_limit;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};

use crate::body::Body;
use crate::config::ConfigError;
use crate::config::model::PolicySetConfig;
use crate::error::GatewayError;

pub use crate::context::{Consumer, RequestCtx};

/// When a policy runs, relative to the others. The order is fixed, whatever the config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// IP rules, CORS.
    Access,
    Authentication,
    Authorization,
    RateLimit,
    Cache,
    /// Header and body changes, closest to the upstream.
    Transform,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Access => "access",
            Phase::Authentication => "authentication",
            Phase::Authorization => "authorization",
            Phase::RateLimit => "rate_limit",
            Phase::Cache => "cache",
            Phase::Transform => "transform",
        }
    }
}

pub enum Flow {
    Continue,
    /// Boxed: rare, and a response is much larger than `Continue`.
    Respond(Box<Response<Body>>),
    /// Answer the client with this now, and carry the request on to the action in the
    /// background (a stale cache answer, refreshed behind it): the rest of the chain and the
    /// action run with a forked context holding only this policy's slot; that answer goes
    /// through the response hooks and is then read to its end and dropped.
    Background(Box<Response<Body>>),
}

/// What the request hooks decided.
pub enum Early {
    /// On to the action.
    Continue,
    /// A policy answered.
    Respond(Response<Body>),
    /// A policy answered, and the request goes on in the background from `next` (the chain
    /// position after that policy) with `cx`.
    Background {
        resp: Response<Body>,
        next: usize,
        cx: Box<RequestCtx>,
    },
}

pub type PolicyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// What a hook returns: synchronous policies answer at once (no allocation); those that must
/// wait (a store, a hash on the blocking pool) return a future.
pub enum Step<'a, T> {
    Done(Result<T, GatewayError>),
    Wait(PolicyFuture<'a, T>),
}

impl<T> Step<'_, T> {
    async fn resolve(self) -> Result<T, GatewayError> {
        match self {
            Step::Done(r) => r,
            Step::Wait(f) => f.await,
        }
    }
}

pub trait Policy: Send + Sync {
    /// The kind, e.g. `headers`; used by `explain`, the admin API and logs.
    fn kind(&self) -> &'static str;

    fn phase(&self) -> Phase;

    /// Runs before the other policies of its phase, whatever the source order. For CORS: its
    /// response hook needs the `Origin` its request hook read, so it must see the request even
    /// when an IP rule of the same phase then refuses it (the 403 carries CORS headers, and the
    /// browser lets the page read it).
    fn first_in_phase(&self) -> bool {
        false
    }

    /// Request headers whose value only this policy may give (who the caller is): a client's
    /// copies are removed from every request on every route, not only where this policy runs,
    /// so that a service behind a route without it cannot be told a forged identity either.
    fn identity_headers(&self) -> Vec<http::HeaderName> {
        Vec::new()
    }

    /// Request headers this policy reads a client's credential from (an API key header, what
    /// `forward_auth` passes to its service). Never removed everywhere as an identity header,
    /// even when another policy also writes one of those names: that would strip the
    /// credential a route's own `auth` needs.
    fn credential_headers(&self) -> Vec<http::HeaderName> {
        Vec::new()
    }

    /// A query parameter that carries a credential this policy reads (an API key): removed
    /// from the path the access log shows, whichever policy answers the request, even one that
    /// refuses it before this one runs.
    fn query_secret(&self) -> Option<&str> {
        None
    }

    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        cx: &'a mut RequestCtx,
    ) -> Step<'a, Flow>;

    /// Runs on every answer the request gets, even when this policy's `on_request` did not
    /// run (an earlier policy answered, or no route matched): read your slot to know.
    fn on_response<'a>(
        &'a self,
        _resp: &'a mut Response<Body>,
        _cx: &'a mut RequestCtx,
    ) -> Step<'a, ()> {
        Step::Done(Ok(()))
    }
}

/// A compiled policy and where it came from (for `explain`).
#[derive(Clone)]
pub struct Bound {
    pub policy: Arc<dyn Policy>,
    /// `global`, `policies.<name>` or `inline`.
    pub source: Arc<str>,
}

/// Compiles one kind out of a policy set, if the set configures it; `path` is the set's key
/// path, for errors.
pub type CompileFn =
    fn(&PolicySetConfig, &PolicyCx<'_>, &str, &mut Vec<ConfigError>) -> Option<Arc<dyn Policy>>;

/// What a policy may need at compile time besides its own config: the consumers, the live
/// state (to claim long-lived resources such as a JWKS cache), and where to put warnings.
pub struct PolicyCx<'a> {
    pub consumers: &'a Arc<consumers::Consumers>,
    pub registry: &'a crate::registry::Registry,
    pub metrics: &'a Arc<crate::observe::metrics::Metrics>,
    /// Where rate limits keep their counters (`store:`), kept across reloads.
    pub store: &'a Arc<crate::store::Store>,
    /// Where the response cache lives (memory, or the Redis `store:`), kept across reloads.
    pub cache: &'a crate::store::cache::Backend,
    pub claims: &'a std::sync::Mutex<crate::registry::Claims>,
    pub warnings: &'a std::sync::Mutex<Vec<ConfigError>>,
}

/// One registered policy kind: its config key and how it compiles from a policy set.
pub struct Kind {
    pub key: &'static str,
    pub compile: CompileFn,
}

/// Every policy kind. A new kind adds its file and one line here (and its key to
/// `PolicySetConfig`).
pub const KINDS: &[Kind] = &[
    Kind {
        key: "headers",
        compile: headers::compile,
    },
    Kind {
        key: "auth",
        compile: auth::compile,
    },
    Kind {
        key: "ip_rules",
        compile: ip_rules::compile,
    },
    Kind {
        key: "cors",
        compile: cors::compile,
    },
    Kind {
        key: "forward_auth",
        compile: forward_auth::compile,
    },
    Kind {
        key: "rate_limit",
        compile: rate_limit::compile,
    },
    Kind {
        key: "cache",
        compile: cache::compile,
    },
];

/// Compiles the kinds a policy set configures (`path` is its key path, e.g. `policies.cors`).
pub fn compile_set(
    set: &PolicySetConfig,
    cx: &PolicyCx<'_>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<dyn Policy>> {
    KINDS
        .iter()
        .filter_map(|k| (k.compile)(set, cx, path, errors))
        .collect()
}

/// A route's policies, in the order they run.
#[derive(Clone, Default)]
pub struct Chain {
    items: Vec<Bound>,
}

impl Chain {
    /// Orders `bound` (given in source order) by phase, [`Policy::first_in_phase`] ones first
    /// within it; the sort is stable, so source order breaks ties.
    pub fn new(mut bound: Vec<Bound>) -> Chain {
        bound.sort_by_key(|b| (b.policy.phase(), !b.policy.first_in_phase()));
        Chain { items: bound }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bound> {
        self.items.iter()
    }

    /// Runs the request hooks in order. Returns a response if a policy answered.
    pub async fn run_request(
        &self,
        req: &mut Request<Body>,
        cx: &mut RequestCtx,
    ) -> Result<Option<Response<Body>>, GatewayError> {
        match self.run_request_from(0, req, cx).await? {
            Early::Continue => Ok(None),
            Early::Respond(r) | Early::Background { resp: r, .. } => Ok(Some(r)),
        }
    }

    /// Runs the request hooks from position `from` on (0: all of them).
    pub async fn run_request_from(
        &self,
        from: usize,
        req: &mut Request<Body>,
        cx: &mut RequestCtx,
    ) -> Result<Early, GatewayError> {
        for (i, b) in self.items.iter().enumerate().skip(from) {
            cx.enter(i);
            match b.policy.on_request(req, cx).resolve().await? {
                Flow::Continue => {}
                Flow::Respond(resp) => return Ok(Early::Respond(*resp)),
                Flow::Background(resp) => {
                    return Ok(Early::Background {
                        resp: *resp,
                        next: i + 1,
                        cx: Box::new(cx.fork()),
                    });
                }
            }
        }
        Ok(Early::Continue)
    }

    /// Runs the response hooks, last phase first. A hook that fails turns the answer into
    /// that error (made by `to_response`), and the hooks after it still run on it.
    pub async fn run_response(
        &self,
        resp: &mut Response<Body>,
        cx: &mut RequestCtx,
        to_response: &mut (dyn FnMut(GatewayError) -> Response<Body> + Send),
    ) {
        for (i, b) in self.items.iter().enumerate().rev() {
            cx.enter(i);
            if let Err(e) = b.policy.on_response(resp, cx).resolve().await {
                *resp = to_response(e);
            }
        }
    }
}

/// The path and query the access log shows for `uri` when it differs from the client's:
/// without any of the query parameters `secrets` (credentials a policy reads from the query).
pub fn log_path(secrets: &[String], uri: &http::Uri) -> Option<http::uri::PathAndQuery> {
    if secrets.is_empty() || uri.query().is_none() {
        return None;
    }
    let mut clean: Option<http::Uri> = None;
    // Most queries carry none of them: no copy is made for those.
    for q in secrets
        .iter()
        .filter(|q| uri.query().is_some_and(|qs| qs.contains(q.as_str())))
    {
        if let Some(u) = auth::without_query_param(clean.as_ref().unwrap_or(uri), q) {
            clean = Some(u);
        }
    }
    clean.and_then(|u| u.path_and_query().cloned())
}

#[cfg(test)]
mod tests {
    //! The chain's rules, shown with small test policies: a stand-in for authentication (sets
    //! the consumer from a header), for a rate limit keyed by consumer, and for a denial.
    use super::*;
    use http::HeaderValue;

    struct SetConsumer;
    impl Policy for SetConsumer {
        fn kind(&self) -> &'static str {
            "test_auth"
        }
        fn phase(&self) -> Phase {
            Phase::Authentication
        }
        fn on_request<'a>(
            &'a self,
            req: &'a mut Request<Body>,
            cx: &'a mut RequestCtx,
        ) -> Step<'a, Flow> {
            // Waits, like a policy that reads a store.
            Step::Wait(Box::pin(async move {
                tokio::task::yield_now().await;
                let id = req
                    .headers()
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .ok_or(GatewayError::BadRequest("no x-user"))?;
                cx.consumer = Some(Arc::new(Consumer {
                    id: id.into(),
                    ..Consumer::default()
                }));
                Ok(Flow::Continue)
            }))
        }
    }

    /// Counts per consumer; answers 429 past `limit`, and reports what it saw on the response.
    struct Quota {
        limit: usize,
        seen: std::sync::Mutex<Vec<String>>,
    }
    impl Policy for Quota {
        fn kind(&self) -> &'static str {
            "test_quota"
        }
        fn phase(&self) -> Phase {
            Phase::RateLimit
        }
        fn on_request<'a>(
            &'a self,
            _req: &'a mut Request<Body>,
            cx: &'a mut RequestCtx,
        ) -> Step<'a, Flow> {
            let who = cx
                .consumer
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |c| c.id.to_string());
            let mut seen = self.seen.lock().unwrap();
            seen.push(who.clone());
            let used = seen.iter().filter(|s| **s == who).count();
            if used > self.limit {
                return Step::Done(Ok(Flow::Respond(Box::new(
                    Response::builder().status(429).body(Body::empty()).unwrap(),
                ))));
            }
            cx.put(self.limit - used);
            Step::Done(Ok(Flow::Continue))
        }
        fn on_response<'a>(
            &'a self,
            resp: &'a mut Response<Body>,
            cx: &'a mut RequestCtx,
        ) -> Step<'a, ()> {
            Step::Wait(Box::pin(async move {
                tokio::task::yield_now().await;
                if let Some(left) = cx.take::<usize>() {
                    resp.headers_mut()
                        .insert("x-quota-left", HeaderValue::from(left));
                }
                Ok(())
            }))
        }
    }

    struct Deny;
    impl Policy for Deny {
        fn kind(&self) -> &'static str {
            "test_deny"
        }
        fn phase(&self) -> Phase {
            Phase::Authorization
        }
        fn on_request<'a>(
            &'a self,
            req: &'a mut Request<Body>,
            _cx: &'a mut RequestCtx,
        ) -> Step<'a, Flow> {
            Step::Done(if req.headers().contains_key("x-deny") {
                Err(GatewayError::BadRequest("denied by test policy"))
            } else {
                Ok(Flow::Continue)
            })
        }
    }

    fn headers_policy(yaml_set: &str) -> Arc<dyn Policy> {
        let cfg: PolicySetConfig = serde_json::from_str(yaml_set).unwrap();
        let mut errors = Vec::new();
        let registry = crate::registry::Registry::default();
        let cx = PolicyCx {
            consumers: &Arc::default(),
            registry: &registry,
            metrics: &Arc::default(),
            store: &Arc::default(),
            cache: &crate::store::cache::Backend::Memory(Arc::default()),
            claims: &Default::default(),
            warnings: &Default::default(),
        };
        let p = compile_set(&cfg, &cx, "test", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        p.into_iter().next().unwrap()
    }

    fn bound(policy: Arc<dyn Policy>, source: &str) -> Bound {
        Bound {
            policy,
            source: source.into(),
        }
    }

    fn cx() -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("rid"),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        )
    }

    /// What the gateway does around an action: request hooks, then the answer (a policy's,
    /// an error's, or the action's), then the response hooks on it.
    async fn through(chain: &Chain, req: Request<Body>) -> Response<Body> {
        let mut req = req;
        let mut cx = cx();
        let mut to_response = |e: GatewayError| e.into_response("rid");
        let mut resp = match chain.run_request(&mut req, &mut cx).await {
            Ok(Some(r)) => r,
            Ok(None) => Response::builder().status(502).body(Body::empty()).unwrap(),
            Err(e) => to_response(e),
        };
        chain
            .run_response(&mut resp, &mut cx, &mut to_response)
            .await;
        resp
    }

    #[tokio::test]
    async fn global_rate_limit_sees_the_consumer_a_route_policy_set() {
        let quota = Arc::new(Quota {
            limit: 1,
            seen: Default::default(),
        });
        // Source order puts the global quota first; phases put authentication before it.
        let chain = Chain::new(vec![
            bound(quota.clone(), "global"),
            bound(Arc::new(SetConsumer), "inline"),
        ]);
        assert_eq!(
            chain.iter().map(|b| b.policy.kind()).collect::<Vec<_>>(),
            ["test_auth", "test_quota"]
        );
        let req = |user: &str| {
            Request::get("/")
                .header("x-user", user)
                .body(Body::empty())
                .unwrap()
        };
        let r = through(&chain, req("alice")).await;
        assert_eq!(r.status(), 502, "reached the action");
        assert_eq!(
            r.headers()["x-quota-left"],
            "0",
            "slot kept to the response"
        );
        assert_eq!(through(&chain, req("bob")).await.status(), 502);
        assert_eq!(through(&chain, req("alice")).await.status(), 429);
        assert_eq!(*quota.seen.lock().unwrap(), ["alice", "bob", "alice"]);
    }

    #[tokio::test]
    async fn response_hooks_run_on_a_denial_and_on_an_error() {
        let chain = Chain::new(vec![
            bound(
                headers_policy(r#"{"headers": {"response": {"set": {"x-cors": "yes"}}}}"#),
                "global",
            ),
            bound(Arc::new(Deny), "inline"),
            bound(
                Arc::new(Quota {
                    limit: 0,
                    seen: Default::default(),
                }),
                "inline",
            ),
        ]);
        let denied = through(
            &chain,
            Request::get("/")
                .header("x-deny", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(denied.status(), 400);
        assert_eq!(denied.headers()["x-cors"], "yes");
        assert!(
            !denied.headers().contains_key("x-quota-left"),
            "a policy that did not run has nothing in its slot"
        );
        let limited = through(&chain, Request::get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["x-cors"], "yes");
        let failed = through(
            &Chain::new(vec![bound(
                headers_policy(r#"{"headers": {"response": {"set": {"x-cors": "yes"}}}}"#),
                "global",
            )]),
            Request::get("/").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(failed.status(), 502);
        assert_eq!(failed.headers()["x-cors"], "yes");
    }

    #[test]
    fn slots_are_per_policy() {
        let mut cx = cx();
        cx.enter(0);
        cx.put(1u32);
        cx.enter(1);
        assert_eq!(cx.get::<u32>(), None);
        cx.put(2u32);
        cx.enter(0);
        assert_eq!(cx.take::<u32>(), Some(1));
        assert_eq!(cx.take::<u32>(), None);
        cx.enter(1);
        assert_eq!(cx.get::<u32>(), Some(&2));
    }
}
