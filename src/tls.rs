//! What both TLS sides share: the one crypto provider (aws-lc-rs, chosen explicitly so that no
//! feature unification can make rustls pick another or panic) and PEM loading with errors that
//! name the file.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The provider every rustls config of the gateway is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    certs_from_pem(&pem).map_err(|e| format!("{path}: {e}"))
}

pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{path}: no usable PEM private key ({e})"))
}

/// A root store from a PEM bundle of CA certificates.
pub fn load_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{path}: not a usable CA certificate ({e})"))?;
    }
    Ok(roots)
}

/// The system's trust store, read once per process (rustls-native-certs: the distribution's
/// bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`). Certificates it cannot parse are skipped.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system trust store");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (_, skipped) = roots.add_parsable_certificates(found.certs);
            if skipped > 0 {
                tracing::debug!(
                    skipped,
                    "system CA certificates rustls cannot use were skipped"
                );
            }
            Arc::new(roots)
        })
        .clone()
}
