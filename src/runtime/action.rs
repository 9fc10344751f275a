//! What a route does with a request once its policies let it through: forward it to an
//! upstream ([`Action::Proxy`]), answer with a fixed response ([`Respond`]) or with a redirect
//! ([`Redirect`]), or compose one JSON answer from several upstream calls
//! ([`Action::Aggregate`]). Runs in `gateway::handle` after the
//! request-phase policies; the response-phase policies run on whatever it answers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::error::GatewayError;
use crate::router::RewriteTemplate;
use crate::upstream::Upstream;

pub enum Action {
    Proxy(Arc<Upstream>),
    Respond(Respond),
    Redirect(Redirect),
    Aggregate(Arc<crate::aggregate::Aggregate>),
}

impl Action {
    /// `proxy`, `respond` or `redirect`: for `explain`, the admin API and the dashboard.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Proxy(_) => "proxy",
            Action::Respond(_) => "respond",
            Action::Redirect(_) => "redirect",
            Action::Aggregate(_) => "aggregate",
        }
    }

    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match self {
            Action::Proxy(u) => Some(u),
            _ => None,
        }
    }
}

/// A fixed answer, built once at compile time; each request gets cheap clones of it.
pub struct Respond {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl Respond {
    pub fn compile(
        status: Option<u16>,
        body: Option<&str>,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<Respond, (String, String)> {
        let status = match status.unwrap_or(200) {
            s @ 200..=599 => {
                StatusCode::from_u16(s).map_err(|e| ("status".to_owned(), e.to_string()))?
            }
            s => {
                return Err((
                    "status".to_owned(),
                    format!("{s} is not a final status (200-599)"),
                ));
            }
        };
        if body.is_some_and(|b| !b.is_empty()) && matches!(status.as_u16(), 204 | 304) {
            return Err((
                "body".to_owned(),
                format!("a {status} response has no body"),
            ));
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| (format!("headers.{k}"), "not a valid header name".to_owned()))?;
            // The gateway frames the answer itself.
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
            {
                return Err((
                    format!("headers.{k}"),
                    "is set by the gateway, not by a fixed response".to_owned(),
                ));
            }
            let value = HeaderValue::from_str(v).map_err(|_| {
                (
                    format!("headers.{k}"),
                    "not a valid header value".to_owned(),
                )
            })?;
            map.append(name, value);
        }
        let body = Bytes::from(body.unwrap_or_default().to_owned());
        if !body.is_empty() && !map.contains_key(header::CONTENT_TYPE) {
            map.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        Ok(Respond {
            status,
            body,
            headers: map,
        })
    }

    pub fn response(&self) -> Response<Body> {
        let mut resp = Response::new(if self.body.is_empty() {
            Body::empty()
        } else {
            Body::full(self.body.clone())
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}

/// A redirect to a URL or path with `{param}` holes.
pub struct Redirect {
    pub status: StatusCode,
    /// `https://example.com` or empty (a path on this host).
    origin: String,
    path: RewriteTemplate,
    /// The target has its own query: the client's is not appended.
    own_query: bool,
    /// As written, for `explain`.
    pub to: String,
}

impl Redirect {
    pub fn compile(
        to: &str,
        status: Option<u16>,
        params: &[&str],
    ) -> Result<Redirect, (String, String)> {
        let status = match status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(s).map_err(|e| ("status".to_owned(), e.to_string()))?
            }
            s => {
                return Err((
                    "status".to_owned(),
                    format!("{s} is not a redirect status (301, 302, 303, 307 or 308)"),
                ));
            }
        };
        let (origin, path) = match to.split_once("://") {
            Some((scheme, rest)) => {
                if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                    return Err((
                        "to".to_owned(),
                        format!("{to:?}: the scheme must be http or https"),
                    ));
                }
                let (authority, path) = match rest.find('/') {
                    Some(i) => rest.split_at(i),
                    None => (rest, "/"),
                };
                if authority.is_empty()
                    || authority.contains(['{', '}', '@', '?', '#'])
                    || http::uri::Authority::try_from(authority).is_err()
                {
                    return Err(("to".to_owned(), format!("{to:?}: not a valid host")));
                }
                (format!("{scheme}://{authority}"), path)
            }
            None if to.starts_with('/') => (String::new(), to),
            None => {
                return Err((
                    "to".to_owned(),
                    format!("{to:?} must be an absolute http(s) URL or a path starting with `/`"),
                ));
            }
        };
        let path = RewriteTemplate::parse(path, params)
            .map_err(|e| ("to".to_owned(), e.replace("rewrite", "redirect")))?;
        Ok(Redirect {
            status,
            origin,
            own_query: to.contains('?'),
            path,
            to: to.to_owned(),
        })
    }

    pub fn response(
        &self,
        params: &[(String, String)],
        query: Option<&str>,
    ) -> Result<Response<Body>, GatewayError> {
        let path = self.path.render(params).map_err(GatewayError::BadRequest)?;
        let mut location = String::with_capacity(self.origin.len() + path.len() + 16);
        location.push_str(&self.origin);
        location.push_str(&path);
        if let Some(q) = query.filter(|_| !self.own_query) {
            location.push('?');
            location.push_str(q);
        }
        let value = HeaderValue::from_str(&location)
            .map_err(|_| GatewayError::BadRequest("the redirect target is not a valid URL"))?;
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(header::LOCATION, value);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_fill_params_and_keep_the_query() {
        let r = Redirect::compile("https://example.com/new/{*rest}", Some(308), &["rest"]).unwrap();
        let resp = r
            .response(&[("rest".into(), "a/b".into())], Some("x=1"))
            .unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            "https://example.com/new/a/b?x=1"
        );
        let own = Redirect::compile("/login?next=1", None, &[]).unwrap();
        let resp = own.response(&[], Some("x=1")).unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()["location"], "/login?next=1");
        for bad in ["ftp://x/", "example.com/x", "https://{h}/x", "https:///x"] {
            assert!(Redirect::compile(bad, None, &[]).is_err(), "{bad}");
        }
        assert!(Redirect::compile("/x", Some(200), &[]).is_err());
        assert!(
            Redirect::compile("/x/{id}", None, &[]).is_err(),
            "unknown param"
        );
    }

    #[test]
    fn fixed_answers() {
        let mut h = std::collections::BTreeMap::new();
        h.insert("x-a".to_owned(), "1".to_owned());
        let r = Respond::compile(Some(201), Some("pong"), &h).unwrap();
        let resp = r.response();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert!(Respond::compile(Some(100), None, &h).is_err());
        assert!(Respond::compile(Some(204), Some("x"), &h).is_err());
        let mut cl = std::collections::BTreeMap::new();
        cl.insert("Content-Length".to_owned(), "3".to_owned());
        assert!(Respond::compile(None, Some("x"), &cl).is_err());
        assert!(Respond::compile(Some(600), None, &h).is_err());
    }
}
