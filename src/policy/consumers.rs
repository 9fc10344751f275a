//! Consumers: the identities `auth` policies admit, with the credentials that prove them.
//! Compiled once per config: password hashes parsed, API-key digests decoded, so a request
//! only looks things up.

use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::ConfigError;
use crate::config::model::ConsumerConfig;
use crate::context::{ClientCert, Consumer};

/// A stored password hash, checked on the blocking pool.
#[derive(Debug, Clone)]
pub enum PasswordHash {
    /// A PHC string: `$argon2id$v=19$m=...`.
    Argon2(String),
    /// `$2a$`, `$2b$` or `$2y$` (imported htpasswd entries).
    Bcrypt(String),
}

impl PasswordHash {
    /// Reads a stored hash; anything else (a plaintext password above all) is refused, and the
    /// error never repeats the value.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$argon2") {
            return argon2::PasswordHash::new(s)
                .map(|_| PasswordHash::Argon2(s.to_owned()))
                .map_err(|e| format!("not a valid argon2 hash ({e})"));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            if s.len() != 60 {
                return Err("not a valid bcrypt hash (expected 60 characters)".into());
            }
            return Ok(PasswordHash::Bcrypt(s.to_owned()));
        }
        Err("is not a password hash: store an argon2id hash (from `gatehouse hash-password`) or a bcrypt one, never the password".into())
    }

    /// The stored hash as written (part of the verified-credential cache key).
    pub fn stored(&self) -> &str {
        match self {
            PasswordHash::Argon2(s) | PasswordHash::Bcrypt(s) => s,
        }
    }

    /// Checks `password` against the hash. Slow on purpose (tens of ms): call it on the
    /// blocking pool.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(phc) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(phc).is_ok_and(|h| {
                    argon2::Argon2::default()
                        .verify_password(password, &h)
                        .is_ok()
                })
            }
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

/// A hash to verify unknown users against, so that they cost as much time as known ones.
pub fn decoy_hash() -> &'static PasswordHash {
    static DECOY: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        use argon2::PasswordHasher;
        let phc = argon2::Argon2::default()
            .hash_password(b"gatehouse-decoy-password")
            .map(|h| h.to_string())
            .unwrap_or_default();
        PasswordHash::Argon2(phc)
    })
}

/// Which client certificates identify a consumer: every given field must match.
#[derive(Debug, Clone, Default)]
struct CertMatch {
    cn: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
}

impl CertMatch {
    fn matches(&self, c: &ClientCert) -> bool {
        self.cn
            .as_ref()
            .is_none_or(|cn| c.common_name.as_ref() == Some(cn))
            && self
                .dns
                .as_ref()
                .is_none_or(|d| c.dns.iter().any(|x| x.eq_ignore_ascii_case(d)))
            && self
                .uri
                .as_ref()
                .is_none_or(|u| c.uris.iter().any(|x| x == u))
    }
}

/// Every consumer of a config, by each way of finding one.
#[derive(Default)]
pub struct Consumers {
    by_id: HashMap<String, Arc<Consumer>>,
    basic: HashMap<String, (Arc<Consumer>, PasswordHash)>,
    api_keys: Vec<([u8; 32], Arc<Consumer>)>,
    certs: Vec<(CertMatch, Arc<Consumer>)>,
}

impl Consumers {
    pub fn compile(list: &[ConsumerConfig], errors: &mut Vec<ConfigError>) -> Consumers {
        let mut out = Consumers::default();
        for (i, c) in list.iter().enumerate() {
            let path = format!("consumers[{i}]");
            if c.id.trim().is_empty() {
                errors.push(ConfigError::new(format!("{path}.id"), "must not be empty"));
                continue;
            }
            if out.by_id.contains_key(&c.id) {
                errors.push(ConfigError::new(
                    format!("{path}.id"),
                    format!("duplicate consumer id {:?}", c.id),
                ));
                continue;
            }
            let consumer = Arc::new(Consumer {
                id: c.id.as_str().into(),
                groups: c.groups.iter().map(|g| g.as_str().into()).collect(),
                claims: serde_json::Map::new(),
            });
            out.by_id.insert(c.id.clone(), consumer.clone());
            if let Some(b) = &c.basic_auth {
                match PasswordHash::parse(&b.password_hash) {
                    Ok(h) => {
                        if out.basic.contains_key(&b.username) {
                            errors.push(ConfigError::new(
                                format!("{path}.basic_auth.username"),
                                format!("username {:?} belongs to another consumer", b.username),
                            ));
                        } else {
                            out.basic.insert(b.username.clone(), (consumer.clone(), h));
                        }
                    }
                    Err(e) => errors.push(ConfigError::new(
                        format!("{path}.basic_auth.password_hash"),
                        e,
                    )),
                }
            }
            for (k, key) in c.api_keys.iter().enumerate() {
                match parse_key_digest(&key.hash) {
                    Ok(d) => {
                        if out.api_keys.iter().any(|(x, _)| *x == d) {
                            errors.push(ConfigError::new(
                                format!("{path}.api_keys[{k}].hash"),
                                "this key belongs to another consumer too",
                            ));
                        } else {
                            out.api_keys.push((d, consumer.clone()));
                        }
                    }
                    Err(e) => {
                        errors.push(ConfigError::new(format!("{path}.api_keys[{k}].hash"), e))
                    }
                }
            }
            if let Some(m) = &c.client_cert {
                if m.cn.is_none() && m.dns.is_none() && m.uri.is_none() {
                    errors.push(ConfigError::new(
                        format!("{path}.client_cert"),
                        "give at least one of cn, dns, uri",
                    ));
                } else {
                    out.certs.push((
                        CertMatch {
                            cn: m.cn.clone(),
                            dns: m.dns.clone(),
                            uri: m.uri.clone(),
                        },
                        consumer.clone(),
                    ));
                }
            }
        }
        out
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The consumer with this basic-auth username and its stored hash.
    pub fn basic(&self, username: &str) -> Option<&(Arc<Consumer>, PasswordHash)> {
        self.basic.get(username)
    }

    /// The consumer holding this API key. Every stored digest is compared, in constant time,
    /// so the time taken says nothing about which (or whether one) matched.
    pub fn api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(key).into();
        let mut found = None;
        for (d, c) in &self.api_keys {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(c);
            }
        }
        found
    }

    /// The consumer a verified client certificate identifies (the first that matches).
    pub fn by_cert(&self, cert: &ClientCert) -> Option<&Arc<Consumer>> {
        self.certs
            .iter()
            .find(|(m, _)| m.matches(cert))
            .map(|(_, c)| c)
    }
}

/// `sha256:<64 hex digits>`.
pub fn parse_key_digest(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or("must be `sha256:` and 64 hex digits (the SHA-256 of the key, never the key)")?;
    if hex.len() != 64 {
        return Err("must be `sha256:` and 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "must be `sha256:` and 64 hex digits".to_owned())?;
    }
    Ok(out)
}

/// `sha256:<hex>` of a key, as the config stores it.
pub fn key_digest(key: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ApiKeyConfig, BasicCredentialConfig};

    #[test]
    fn plaintext_passwords_and_bad_keys_are_refused_without_echo() {
        let list = vec![ConsumerConfig {
            id: "alice".into(),
            basic_auth: Some(BasicCredentialConfig {
                username: "alice".into(),
                password_hash: "hunter2".into(),
            }),
            api_keys: vec![ApiKeyConfig {
                hash: "my-secret-key".into(),
            }],
            ..Default::default()
        }];
        let mut errors = Vec::new();
        Consumers::compile(&list, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| !e.to_string().contains("hunter2")));
        assert!(
            errors
                .iter()
                .all(|e| !e.to_string().contains("my-secret-key"))
        );
        assert_eq!(errors[0].path, "consumers[0].basic_auth.password_hash");
    }

    #[test]
    fn keys_and_passwords_verify() {
        use argon2::PasswordHasher;
        let phc = argon2::Argon2::default()
            .hash_password(b"s3cret")
            .unwrap()
            .to_string();
        let list = vec![ConsumerConfig {
            id: "alice".into(),
            groups: vec!["admins".into()],
            basic_auth: Some(BasicCredentialConfig {
                username: "al".into(),
                password_hash: phc,
            }),
            api_keys: vec![ApiKeyConfig {
                hash: key_digest(b"k-123"),
            }],
            ..Default::default()
        }];
        let mut errors = Vec::new();
        let c = Consumers::compile(&list, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let (who, hash) = c.basic("al").unwrap();
        assert_eq!(&*who.id, "alice");
        assert!(hash.verify(b"s3cret"));
        assert!(!hash.verify(b"s3cret!"));
        assert_eq!(c.api_key(b"k-123").map(|c| &*c.id), Some("alice"));
        assert!(c.api_key(b"k-124").is_none());
        let bc = bcrypt::hash("pw", 4).unwrap();
        let h = PasswordHash::parse(&bc).unwrap();
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        assert!(!decoy_hash().verify(b"anything"));
    }
}
