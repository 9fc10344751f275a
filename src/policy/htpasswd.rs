//! Users from an htpasswd file (`user:hash` per line): bcrypt (`htpasswd -B`) and argon2
//! entries. Other schemes (MD5 `$apr1$`, `{SHA}`, crypt) are refused with the line that uses
//! them: they are too weak to accept. The file is read when the config compiles, so a reload
//! (and a change on disk, which triggers one) picks up new users.

use std::collections::HashMap;
use std::sync::Arc;

use super::consumers::PasswordHash;
use crate::context::Consumer;

pub struct Htpasswd {
    users: HashMap<String, (Arc<Consumer>, PasswordHash)>,
}

impl Htpasswd {
    pub fn load(path: &str) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected `user:hash`", n + 1));
            };
            let hash = PasswordHash::parse(hash).map_err(|_| {
                let scheme = if hash.starts_with("$apr1$") {
                    "MD5 ($apr1$)"
                } else if hash.starts_with("{SHA}") {
                    "SHA-1 ({SHA})"
                } else {
                    "an unsupported scheme"
                };
                format!(
                    "line {}: user {user:?} uses {scheme}: use bcrypt (`htpasswd -B`) or argon2",
                    n + 1
                )
            })?;
            let consumer = Arc::new(Consumer {
                id: user.into(),
                ..Consumer::default()
            });
            users.insert(user.to_owned(), (consumer, hash));
        }
        Ok(Htpasswd { users })
    }

    pub fn user(&self, name: &str) -> Option<(Arc<Consumer>, PasswordHash)> {
        self.users.get(name).cloned()
    }

    pub fn hashes(&self) -> impl Iterator<Item = &PasswordHash> {
        self.users.values().map(|(_, h)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_and_argon2_only() {
        let bc = bcrypt::hash("pw", 4).unwrap();
        let h = Htpasswd::parse(&format!("# users\nbob:{bc}\n")).unwrap();
        assert!(h.user("bob").unwrap().1.verify(b"pw"));
        assert!(h.user("eve").is_none());
        let e = Htpasswd::parse("old:$apr1$abc$def\n").err().unwrap();
        assert!(e.contains("line 1") && e.contains("MD5"), "{e}");
        let e = Htpasswd::parse("sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
            .err()
            .unwrap();
        assert!(e.contains("SHA-1"), "{e}");
    }
}
