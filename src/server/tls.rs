//! TLS termination: the certificate chosen by SNI, the handshake (bounded by the request-head
//! timeout), and the identity of a verified client certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::context::ClientCert;

/// Certificates by server name: exact names, then `*.example.com` wildcards (one label, as
/// RFC 6125 allows), then the default (the first configured) for a client that sends no name
/// or one no certificate covers.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(default: Arc<CertifiedKey>) -> SniResolver {
        SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Serves `name` (from a certificate's SAN) with `key`, unless an earlier certificate
    /// already does.
    pub fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(base) => self.wildcard.entry(base.to_owned()),
            None => self.exact.entry(name),
        }
        .or_insert_with(|| key.clone());
    }

    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, base)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(base)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// What a leaf certificate says of its holder: subject and subject alternative names.
pub struct CertNames {
    pub subject: String,
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

pub fn cert_names(der: &[u8]) -> Result<CertNames, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
    let mut names = CertNames {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        dns: Vec::new(),
        uris: Vec::new(),
        emails: Vec::new(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                GeneralName::URI(u) => names.uris.push((*u).to_owned()),
                GeneralName::RFC822Name(e) => names.emails.push((*e).to_owned()),
                _ => {}
            }
        }
    }
    Ok(names)
}

/// The identity of a client certificate rustls has verified.
pub fn client_cert(der: &[u8]) -> Option<ClientCert> {
    let n = cert_names(der).ok()?;
    Some(ClientCert {
        subject: n.subject,
        common_name: n.common_name,
        dns: n.dns,
        uris: n.uris,
        emails: n.emails,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let der = ck.signing_key.serialize_der();
        let key = rustls_pki_types::PrivateKeyDer::try_from(der).unwrap();
        let signer = crate::tls::provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        Arc::new(CertifiedKey::new(vec![ck.cert.der().clone()], signer))
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a, w, d) = (key("api.example.com"), key("*.example.org"), key("default"));
        let mut r = SniResolver::new(d.clone());
        r.add("api.example.com", &a);
        r.add("*.example.org", &w);
        r.add("API.example.com", &d); // already served: the first certificate keeps it
        assert!(Arc::ptr_eq(&r.pick(Some("api.example.com")), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("Api.Example.Com.")), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("x.example.org")), &w));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(&r.pick(Some("a.b.example.org")), &d));
        assert!(Arc::ptr_eq(&r.pick(Some("example.org")), &d));
        assert!(Arc::ptr_eq(&r.pick(None), &d));
    }

    #[test]
    fn names_come_from_the_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["alice.example.com".to_owned()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let k = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&k).unwrap();
        let n = cert_names(cert.der()).unwrap();
        assert_eq!(n.common_name.as_deref(), Some("alice"));
        assert_eq!(n.dns, ["alice.example.com"]);
        assert!(n.subject.contains("CN=alice"), "{}", n.subject);
        assert!(n.not_after > n.not_before);
    }
}
