//! JWT verification (being built on branch `jwt`; until it lands, a config that uses `jwt` is
//! refused at compile time, never silently accepted).

use http::{HeaderName, HeaderValue};

use super::PolicyCx;
use crate::config::ConfigError;
use crate::config::model::JwtConfig;
use crate::context::Consumer;

pub struct Jwt {
    names: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct JwtError;

impl JwtError {
    pub fn reason(&self) -> &'static str {
        "JWT verification unavailable"
    }
}

impl Jwt {
    pub fn compile(
        _cfg: &JwtConfig,
        _cx: &PolicyCx<'_>,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Jwt> {
        errors.push(ConfigError::new(
            path.to_owned(),
            "JWT verification is not available in this build yet",
        ));
        None
    }

    pub async fn verify(
        &self,
        _token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
        Err(JwtError)
    }

    pub fn consumer(
        &self,
        _claims: serde_json::Map<String, serde_json::Value>,
    ) -> Option<Consumer> {
        None
    }

    pub fn forward_headers(
        &self,
        _claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    pub fn forwarded_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.names.iter()
    }
}
