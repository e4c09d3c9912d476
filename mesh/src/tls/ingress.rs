//! Ingress TLS: the router's public listener with user-provided certificates, chosen per
//! host by SNI (exact names and `*.` wildcards), with an optional default for clients that
//! send no or an unknown server name. TLS 1.3, ALPN h2 and http/1.1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

use super::config::ALPN;
use crate::identity::svid::parse_pem;

/// One certificate for the hosts it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressCertificate {
    /// Host names (`iris.example.com`) or wildcards (`*.example.com`) it serves.
    pub hosts: Vec<String>,
    /// PEM file with the certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, SEC1 or PKCS#1).
    pub key_path: PathBuf,
}

/// An ingress certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IngressTlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is unusable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A host name is listed for two certificates, or is malformed.
    #[error("host {host:?}: {reason}")]
    Host {
        /// The host.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("ingress TLS config: {0}")]
    Config(#[from] rustls::Error),
    /// The flags naming the files do not go together.
    #[error("{0}")]
    Flags(&'static str),
}

fn invalid(path: &Path, reason: impl Into<String>) -> IngressTlsError {
    IngressTlsError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_pem(path: &Path) -> Result<Vec<(String, Vec<u8>)>, IngressTlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| IngressTlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_pem(&text).map_err(|e| invalid(path, e))
}

/// Loads one certificate chain and key, checking that they belong together.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, IngressTlsError> {
    let chain: Vec<CertificateDer<'static>> = read_pem(cert_path)?
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if chain.is_empty() {
        return Err(invalid(cert_path, "no CERTIFICATE block"));
    }
    let key = read_pem(key_path)?
        .into_iter()
        .find_map(|(label, der)| match label.as_str() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            _ => None,
        })
        .ok_or_else(|| {
            invalid(
                key_path,
                "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block",
            )
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(key_path, format!("key not usable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        invalid(
            cert_path,
            format!("certificate does not match {}: {e}", key_path.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Chooses a certificate by SNI: exact host, then the closest `*.` wildcard, then the default.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) -> Result<(), IngressTlsError> {
        let host_error = |reason: &str| IngressTlsError::Host {
            host: host.to_owned(),
            reason: reason.to_owned(),
        };
        let lower = host.to_ascii_lowercase();
        let (map, name) = match lower.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, lower.clone()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(host_error("not a DNS name or *.wildcard"));
        }
        if map.insert(name, key).is_some() {
            return Err(host_error("listed for more than one certificate"));
        }
        Ok(())
    }

    /// The certificate for `server_name` (`None` for no SNI).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            // `*.example.com` covers exactly one more label, as in certificates.
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// Ingress TLS from `--tls-cert/--tls-key` (served to every host) and `--tls-dir` (one
/// `<host>.crt` + `<host>.key` pair per host, chosen by SNI).
pub fn ingress_tls_from_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: Option<&Path>,
) -> Result<Option<Arc<ServerConfig>>, IngressTlsError> {
    let mut certs = Vec::new();
    let mut default = None;
    match (cert, key) {
        (Some(c), Some(k)) => {
            default = Some(0);
            certs.push(IngressCertificate {
                hosts: Vec::new(),
                cert_path: c.to_owned(),
                key_path: k.to_owned(),
            });
        }
        (None, None) => {}
        _ => {
            return Err(IngressTlsError::Flags(
                "--tls-cert and --tls-key go together",
            ));
        }
    }
    if let Some(dir) = dir {
        let mut found = false;
        let read = |source| IngressTlsError::Read {
            path: dir.to_owned(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.extension().is_some_and(|e| e == "crt")
                && let Some(host) = path.file_stem().and_then(|s| s.to_str())
            {
                let key = path.with_extension("key");
                if !key.exists() {
                    return Err(IngressTlsError::Invalid {
                        reason: format!("no matching {}", key.display()),
                        path,
                    });
                }
                certs.push(IngressCertificate {
                    hosts: vec![host.to_owned()],
                    cert_path: path.clone(),
                    key_path: key,
                });
                found = true;
            }
        }
        if !found {
            return Err(IngressTlsError::Invalid {
                path: dir.to_owned(),
                reason: "holds no <host>.crt files".into(),
            });
        }
    }
    if certs.is_empty() {
        return Ok(None);
    }
    Ok(Some(ingress_server_config(&certs, default)?))
}

/// Builds the ingress server config from `certificates`; `default` (an index into them)
/// serves clients whose SNI matches nothing. Without a default such handshakes fail.
pub fn ingress_server_config(
    certificates: &[IngressCertificate],
    default: Option<usize>,
) -> Result<Arc<ServerConfig>, IngressTlsError> {
    let mut resolver = SniResolver::default();
    for (i, c) in certificates.iter().enumerate() {
        let key = load_certified_key(&c.cert_path, &c.key_path)?;
        for host in &c.hosts {
            resolver.insert(host, key.clone())?;
        }
        if default == Some(i) {
            resolver.default = Some(key);
        }
    }
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
