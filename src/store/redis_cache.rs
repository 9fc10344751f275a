//! The response cache in Redis: one value per key (the bytes of [`cache::encode`]) under
//! `SET .. PX` with the answer's lifetime, so Redis drops what is no longer useful, and a
//! short fill lock per key (`SET NX PX`) so that, across every instance, one request fills a
//! cold key while the others wait and read the result.

use std::time::Duration;

use super::cache::{self, Stored, Unavailable};
use super::redis::RedisStore;

const CACHE: &[u8] = b"gatehouse:cache:";
const LOCK: &[u8] = b"gatehouse:fill:";

/// Deletes the lock only if it still holds our token (it may have expired and been taken).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn key(prefix: &[u8], k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(prefix.len() + k.len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(k);
    v
}

/// Escapes Redis glob characters, so a purge prefix matches only itself.
fn glob_escape(p: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.len() + 8);
    for &b in p {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            v.push(b'\\');
        }
        v.push(b);
    }
    v
}

impl RedisStore {
    async fn call<T, F>(&self, f: F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let why = match tokio::time::timeout(self.timeout(), f).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.timeout()),
        };
        self.report(&why, "the response cache is bypassed");
        Err(Unavailable)
    }

    pub(crate) async fn cache_get(&self, k: &[u8]) -> Result<Option<Stored>, Unavailable> {
        self.call(async {
            let mut c = self.connection().await?;
            let raw: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key(CACHE, k))
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(raw.and_then(|r| cache::decode(bytes::Bytes::from(r))))
        })
        .await
    }

    pub(crate) async fn cache_put(&self, k: &[u8], v: &Stored) -> Result<(), Unavailable> {
        let ms = v.lifetime().as_millis().max(1) as u64;
        let bytes = cache::encode(v);
        self.call(async {
            let mut c = self.connection().await?;
            redis::cmd("SET")
                .arg(key(CACHE, k))
                .arg(bytes)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    pub(crate) async fn cache_remove(&self, k: &[u8]) -> Result<bool, Unavailable> {
        self.call(async {
            let mut c = self.connection().await?;
            let n: i64 = redis::cmd("DEL")
                .arg(key(CACHE, k))
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(n > 0)
        })
        .await
    }

    /// SCAN (never KEYS: it would block Redis) for what a purge names, deleting each match.
    /// The pattern narrows the scan; `matches` decides. Not bounded by the store timeout: a
    /// purge may take as long as the keyspace needs.
    pub(crate) async fn cache_purge(
        &self,
        route: Option<&str>,
        what: &[u8],
        matches: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<usize, Unavailable> {
        let mut pattern = glob_escape(CACHE);
        match route {
            Some(r) => pattern.extend(glob_escape(&super::cache::route_part(r))),
            None => pattern.push(b'*'),
        }
        pattern.push(super::cache::SEP);
        pattern.extend(glob_escape(what));
        pattern.push(b'*');
        let run = async {
            let mut c = self.connection().await?;
            let mut cursor: u64 = 0;
            let mut removed = 0usize;
            // Bounded: SCAN ends when the cursor is back at 0; the cap only guards a bug.
            for _ in 0..1_000_000 {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                for k in keys {
                    if !k.strip_prefix(CACHE).is_some_and(matches) {
                        continue;
                    }
                    // One key per DEL: in a cluster, keys of one batch may sit on
                    // different slots.
                    let n: i64 = redis::cmd("DEL")
                        .arg(k)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                    removed += n as usize;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            Ok::<usize, String>(removed)
        };
        run.await.map_err(|why| {
            self.report(&why, "the response cache is bypassed");
            Unavailable
        })
    }

    pub(crate) async fn cache_lock(
        &self,
        k: &[u8],
        ttl: Duration,
    ) -> Result<Option<u64>, Unavailable> {
        let token = fastrand::u64(1..);
        let ms = ttl.as_millis().max(1) as u64;
        self.call(async {
            let mut c = self.connection().await?;
            let ok: Option<String> = redis::cmd("SET")
                .arg(key(LOCK, k))
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ok.map(|_| token))
        })
        .await
    }

    pub(crate) async fn cache_locked(&self, k: &[u8]) -> Result<bool, Unavailable> {
        self.call(async {
            let mut c = self.connection().await?;
            let n: i64 = redis::cmd("EXISTS")
                .arg(key(LOCK, k))
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(n > 0)
        })
        .await
    }

    pub(crate) async fn cache_unlock(&self, k: &[u8], token: u64) {
        let _ = self
            .call(async {
                let mut c = self.connection().await?;
                redis::Script::new(UNLOCK)
                    .key(key(LOCK, k))
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_patterns_match_only_the_prefix() {
        assert_eq!(
            super::glob_escape(b"a*b?[c]\\"),
            b"a\\*b\\?\\[c\\]\\\\".to_vec()
        );
    }
}
