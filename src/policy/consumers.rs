//! Consumers: the identities `auth` policies admit, with the credentials that prove them.
//! Compiled once per config: password hashes parsed, API-key digests decoded, so a request
//! only looks things up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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
            let h = argon2::PasswordHash::new(s)
                .map_err(|e| format!("not a valid argon2 hash ({e})"))?;
            let params = argon2::Params::try_from(&h)
                .map_err(|e| format!("not a valid argon2 hash ({e})"))?;
            // Each check takes this much memory: a typo must not make one take all of it.
            if params.m_cost() > MAX_ARGON2_KIB {
                return Err(format!(
                    "argon2 memory cost m={} KiB is over the limit of {MAX_ARGON2_KIB} KiB",
                    params.m_cost()
                ));
            }
            return Ok(PasswordHash::Argon2(s.to_owned()));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            if s.len() != 60 {
                return Err("not a valid bcrypt hash (expected 60 characters)".into());
            }
            return Ok(PasswordHash::Bcrypt(s.to_owned()));
        }
        Err("is not a password hash: store an argon2id hash (from `gatehouse hash-password`) or a bcrypt one, never the password".into())
    }

    /// What the time to verify depends on: the scheme and its cost parameters
    /// (`$argon2id$v=19$m=19456,t=2,p=1`, `$2b$10`), not the salt or the digest.
    pub fn shape(&self) -> String {
        match self {
            PasswordHash::Argon2(phc) => match argon2::PasswordHash::new(phc) {
                Ok(h) => format!(
                    "${}$v={}${}",
                    h.algorithm,
                    h.version.unwrap_or_default(),
                    h.params
                ),
                Err(_) => String::new(),
            },
            PasswordHash::Bcrypt(h) => h.get(..6).unwrap_or(h).to_owned(),
        }
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
            PasswordHash::Argon2(phc) => argon2_verify(phc, password),
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

/// Checks `password` against an argon2 PHC string, as `argon2`'s own verifier does, but in
/// working memory taken from [`ARGON2_MEMORY`] instead of a fresh allocation per check: the
/// buffer (19 MiB at the default parameters) that every check freed stayed resident (glibc
/// serves it from its per-thread arenas once its mmap threshold has risen), and 60 wrong
/// passwords took the process from 12 to 240 MiB (found by `bench/soak.sh`).
fn argon2_verify(phc: &str, password: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(h) = argon2::PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(h.algorithm.as_str()),
        argon2::Params::try_from(&h),
    ) else {
        return false;
    };
    let Ok(version) = h.version.map(argon2::Version::try_from).transpose() else {
        return false;
    };
    let blocks = params.block_count();
    let argon = argon2::Argon2::new(algorithm, version.unwrap_or_default(), params);
    let mut out = vec![0u8; expected.len()];
    let Some(mut memory) = ARGON2_MEMORY.take(blocks) else {
        return false;
    };
    let hashed = argon.hash_password_into_with_memory(
        password,
        salt.as_ref(),
        &mut out,
        &mut memory[..blocks],
    );
    ARGON2_MEMORY.give(memory);
    hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// Argon2 working memory, kept for the next check. Checks run at most a few at a time
/// (`auth`'s verification slots, half the cores), so it holds at most that many buffers, each
/// the size the largest parameters in use need; a buffer is wiped before it is kept.
struct Argon2Memory(std::sync::Mutex<Vec<Vec<argon2::Block>>>);

static ARGON2_MEMORY: Argon2Memory = Argon2Memory(std::sync::Mutex::new(Vec::new()));

impl Argon2Memory {
    /// A buffer of at least `blocks` blocks; `None` when the memory cannot be had.
    fn take(&self, blocks: usize) -> Option<Vec<argon2::Block>> {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        if v.len() < blocks {
            v.try_reserve_exact(blocks - v.len()).ok()?;
            v.resize(blocks, argon2::Block::new());
        }
        Some(v)
    }

    fn give(&self, mut v: Vec<argon2::Block>) {
        // What a check derived from a password does not outlive it.
        v.fill(argon2::Block::new());
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < 8 {
            kept.push(v);
        }
    }
}

/// The largest argon2 memory cost a stored hash may ask for (1 GiB; the OWASP advice is
/// 19–46 MiB).
const MAX_ARGON2_KIB: u32 = 1024 * 1024;

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

/// The hash a user table's unknown names are checked against: of the shape most of its users'
/// hashes have (scheme and cost), so that an unknown name costs as long as a known one and
/// the time taken does not tell which names exist; `None` for an empty table. Ties go to the
/// smallest shape, so the choice does not depend on hash-map order.
pub fn typical<'a>(hashes: impl Iterator<Item = &'a PasswordHash>) -> Option<PasswordHash> {
    let mut count: std::collections::BTreeMap<String, (usize, &PasswordHash)> = Default::default();
    for h in hashes {
        count.entry(h.shape()).or_insert((0, h)).0 += 1;
    }
    let most = count.values().map(|(n, _)| *n).max()?;
    count
        .into_values()
        .find(|(n, _)| *n == most)
        .map(|(_, h)| h.clone())
}

/// A decoy of `model`'s shape, made once per shape and kept: slow (one hash), so call it on
/// the blocking pool the first time ([`cached_decoy`] says whether it is made).
pub fn decoy_like(model: &PasswordHash) -> PasswordHash {
    let shape = model.shape();
    if let Some(d) = cached_decoy(&shape) {
        return d;
    }
    #[cfg(test)]
    MADE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(shape.clone());
    let made = match model {
        PasswordHash::Argon2(phc) => argon2_decoy(phc),
        PasswordHash::Bcrypt(h) => h
            .get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .and_then(|cost| bcrypt::hash(decoy_password(), cost).ok())
            .map(PasswordHash::Bcrypt),
    }
    .unwrap_or_else(|| decoy_hash().clone());
    let mut decoys = DECOYS.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: shapes come from config files, but a long life of reloads could bring many.
    if decoys.len() >= 64 {
        decoys.clear();
    }
    decoys.insert(shape, made.clone());
    made
}

/// [`decoy_like`] on the blocking pool, one at a time: a burst of unknown names before the
/// decoy of a shape exists (just after a start or a reload) makes it once, not once per
/// request (argon2 allocates its whole memory cost, up to 1 GiB, for every hash it makes).
/// The maker holds the turn until its hash is done, even if the request that started it is
/// gone.
pub async fn decoy_of(model: &PasswordHash) -> PasswordHash {
    static TURN: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    let shape = model.shape();
    if let Some(d) = cached_decoy(&shape) {
        return d;
    }
    let turn = TURN
        .get_or_init(Default::default)
        .clone()
        .lock_owned()
        .await;
    if let Some(d) = cached_decoy(&shape) {
        return d;
    }
    let model = model.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        decoy_like(&model)
    })
    .await
    .unwrap_or_else(|_| decoy_hash().clone())
}

/// The shapes of the decoys made, in order (for the tests).
#[cfg(test)]
static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The decoy of this shape, if one was made.
pub fn cached_decoy(shape: &str) -> Option<PasswordHash> {
    DECOYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(shape)
        .cloned()
}

static DECOYS: std::sync::Mutex<std::collections::BTreeMap<String, PasswordHash>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A password nobody sends: random per decoy.
fn decoy_password() -> [u8; 16] {
    std::array::from_fn(|_| fastrand::u8(..))
}

/// An argon2 hash with `phc`'s algorithm, version and parameters.
fn argon2_decoy(phc: &str) -> Option<PasswordHash> {
    use argon2::password_hash::CustomizedPasswordHasher;
    let model = argon2::PasswordHash::new(phc).ok()?;
    let params = argon2::Params::try_from(&model).ok()?;
    let salt: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let made = argon2::Argon2::default()
        .hash_password_customized(
            &decoy_password(),
            &salt,
            Some(model.algorithm.as_str()),
            model.version,
            params,
        )
        .ok()?;
    Some(PasswordHash::Argon2(made.to_string()))
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

    /// Every consumer's stored password hash.
    pub fn password_hashes(&self) -> impl Iterator<Item = &PasswordHash> {
        self.basic.values().map(|(_, h)| h)
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

    fn argon2_with(m: u32, t: u32) -> PasswordHash {
        use argon2::password_hash::CustomizedPasswordHasher;
        let params = argon2::Params::new(m, t, 1, None).unwrap();
        let h = argon2::Argon2::default()
            .hash_password_customized(b"pw", b"0123456789abcdef", None, None, params)
            .unwrap();
        PasswordHash::parse(&h.to_string()).unwrap()
    }

    /// An unknown name is checked against a hash of the users' own scheme and cost, so it
    /// takes as long as a known one: a bcrypt table gets a bcrypt decoy of the same cost, an
    /// argon2 table one with the same parameters; the decoy verifies nothing.
    #[test]
    fn decoys_have_the_shape_of_the_users_hashes() {
        let bcrypt4 = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        let light = argon2_with(8, 1);
        let other = argon2_with(16, 2);
        assert_eq!(bcrypt4.shape(), bcrypt4.stored()[..6]);
        assert_eq!(light.shape(), "$argon2id$v=19$m=8,t=1,p=1");
        // The majority's shape; a tie goes to the smallest shape, whatever the order.
        let t = typical([&light, &bcrypt4, &light].into_iter()).unwrap();
        assert_eq!(t.shape(), light.shape());
        let t1 = typical([&light, &other].into_iter()).unwrap();
        let t2 = typical([&other, &light].into_iter()).unwrap();
        assert_eq!(t1.shape(), t2.shape());
        assert!(typical(std::iter::empty()).is_none());
        for model in [&bcrypt4, &light, &other] {
            let d = decoy_like(model);
            assert_eq!(d.shape(), model.shape());
            assert_ne!(d.stored(), model.stored());
            assert!(!d.verify(b"pw") && !d.verify(b""));
            // Made once per shape.
            assert_eq!(decoy_like(model).stored(), d.stored());
            assert!(cached_decoy(&model.shape()).is_some());
        }
    }

    /// Fifty unknown names at once, before the decoy of their table's shape exists, make it
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_unknown_names_makes_one_decoy() {
        let model = argon2_with(4096, 2);
        let shape = model.shape();
        let made = || MADE.lock().unwrap().iter().filter(|s| **s == shape).count();
        let asks: Vec<_> = (0..50)
            .map(|_| {
                let model = model.clone();
                tokio::spawn(async move { decoy_of(&model).await })
            })
            .collect();
        let mut decoys = std::collections::BTreeSet::new();
        for a in asks {
            decoys.insert(a.await.unwrap().stored().to_owned());
        }
        assert_eq!(made(), 1, "decoys made");
        assert_eq!(decoys.len(), 1, "one decoy for all");
        assert_eq!(decoy_of(&model).await.shape(), model.shape());
    }

    /// A stored hash decides how much memory each check takes: a cost no machine has (a typo,
    /// or a planted htpasswd line) is refused when the config loads, not met by an abort.
    #[test]
    fn argon2_costs_over_a_gibibyte_are_refused() {
        let ok = argon2_with(8, 1);
        let huge = ok.stored().replace("m=8,", "m=4194304,");
        let err = PasswordHash::parse(&huge).unwrap_err();
        assert!(err.contains("m=4194304") && err.contains("limit"), "{err}");
        assert!(PasswordHash::parse(ok.stored()).is_ok());
    }

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
