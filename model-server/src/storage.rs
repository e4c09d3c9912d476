//! `storageUri` → a local model folder.
//!
//! Plain paths and `file://` URIs are used in place. An `http://` URI names a folder that
//! serves `SHA256SUMS` (lines of `<sha256>  <file>`, as `sha256sum` writes them); every file
//! it lists is downloaded once into the cache (`<cache>/<sha256 of the URI>/`), checked
//! against its checksum, and reused on later loads when the checksums still match.
//! `https://` works the same over TLS (rustls, ring): servers are trusted when their chain
//! ends at a root in the system's bundle (`SSL_CERT_FILE`, or the usual bundle files of
//! Linux distributions) or in the PEM file given as the CA file
//! (`SLUICE_MODEL_CA_FILE` for `sluice model-server`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::model::LoadError;

/// Manifest listing a remote model folder's files and checksums.
pub const MANIFEST: &str = "SHA256SUMS";
/// Largest file downloaded.
pub const MAX_FILE_BYTES: u64 = 8 << 30;
/// Most files a manifest may list.
pub const MAX_FILES: usize = 64;

/// Environment variable naming an extra PEM file of CA certificates for `https://`.
pub const CA_FILE_ENV: &str = "SLUICE_MODEL_CA_FILE";

/// System CA bundles tried, in order, when `SSL_CERT_FILE` is unset.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Resolves `uri` to a local folder, downloading into `cache` when remote (`https://`
/// trusts the system's roots only).
pub fn fetch(uri: &str, cache: &Path) -> Result<PathBuf, LoadError> {
    fetch_with(uri, cache, None)
}

/// As [`fetch`], trusting also the CA certificates in the PEM file `ca_file` for `https://`.
pub fn fetch_with(uri: &str, cache: &Path, ca_file: Option<&Path>) -> Result<PathBuf, LoadError> {
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if uri.starts_with("http://") {
        return download_folder(uri, cache, None);
    }
    if uri.starts_with("https://") {
        let tls = tls_config(ca_file).map_err(|m| download_err(uri, m))?;
        return download_folder(uri, cache, Some(tls));
    }
    if uri.contains("://") {
        return Err(LoadError::UnsupportedUri(uri.to_owned()));
    }
    Ok(PathBuf::from(uri))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn download_err(uri: &str, message: impl Into<String>) -> LoadError {
    LoadError::Download {
        uri: uri.to_owned(),
        message: message.into(),
    }
}

/// Parses `SHA256SUMS`: `(sha256, file name)` pairs; names must be plain file names.
pub fn parse_manifest(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((sum, name)) = line.split_once(char::is_whitespace) else {
            return Err(format!("line {}: expected `<sha256>  <file>`", i + 1));
        };
        let name = name.trim().trim_start_matches('*');
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "line {}: {sum:?} is not a SHA-256 hex digest",
                i + 1
            ));
        }
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!("line {}: {name:?} is not a plain file name", i + 1));
        }
        out.push((sum.to_ascii_lowercase(), name.to_owned()));
    }
    if out.is_empty() || out.len() > MAX_FILES {
        return Err(format!(
            "expected 1 to {MAX_FILES} files, found {}",
            out.len()
        ));
    }
    Ok(out)
}

/// The TLS client: system roots plus those in `ca_file`; errors name the file.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            SYSTEM_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        });
    if let Some(bundle) = system
        && let Ok(certs) = CertificateDer::pem_file_iter(&bundle)
    {
        // Like every TLS client reading a distribution's bundle: entries that do not
        // parse are skipped rather than failing every download.
        let certs: Vec<_> = certs.filter_map(Result::ok).collect();
        roots.add_parsable_certificates(certs);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {}: no certificates", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates: no system bundle found and no {CA_FILE_ENV} given"
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn download_folder(
    uri: &str,
    cache: &Path,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<PathBuf, LoadError> {
    let base = uri.trim_end_matches('/');
    let dir = cache.join(hex(&Sha256::digest(base.as_bytes())));
    std::fs::create_dir_all(&dir).map_err(|source| LoadError::Io {
        path: dir.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| download_err(uri, "downloads need the async runtime"))?;
    let manifest_path = dir.join(MANIFEST);
    runtime.block_on(get_to_file(
        &format!("{base}/{MANIFEST}"),
        &manifest_path,
        1 << 20,
        tls.as_ref(),
    ))?;
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| LoadError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let files = parse_manifest(&text).map_err(|m| download_err(uri, format!("{MANIFEST}: {m}")))?;
    for (sum, name) in files {
        let path = dir.join(&name);
        if file_sha256(&path).is_ok_and(|have| have == sum) {
            continue;
        }
        let part = dir.join(format!(".{name}.part"));
        runtime.block_on(get_to_file(
            &format!("{base}/{name}"),
            &part,
            MAX_FILE_BYTES,
            tls.as_ref(),
        ))?;
        let have = file_sha256(&part).map_err(|source| LoadError::Io {
            path: part.clone(),
            source,
        })?;
        if have != sum {
            let _ = std::fs::remove_file(&part);
            return Err(download_err(
                uri,
                format!("{name}: checksum {have} does not match {MANIFEST}'s {sum}"),
            ));
        }
        std::fs::rename(&part, &path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(dir)
}

/// One HTTP/1.1 GET on its own connection, over TLS when `tls` is given.
async fn get(
    uri: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let host = uri.host().ok_or("the URI has no host")?;
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    // `[::1]` in a URI is `::1` to connect to and to name in TLS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let fail = |e: hyper::Error| sluice_core::error_chain(&e);
    match tls {
        None => {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(fail)?;
            tokio::spawn(conn);
            send.send_request(request).await.map_err(fail)
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(fail)?;
            tokio::spawn(conn);
            send.send_request(request).await.map_err(fail)
        }
    }
}

async fn get_to_file(
    url: &str,
    path: &Path,
    limit: u64,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), LoadError> {
    let err = |m: String| download_err(url, m);
    let uri: http::Uri = url.parse().map_err(|e| err(format!("invalid URI: {e}")))?;
    let resp = get(&uri, tls).await.map_err(err)?;
    if !resp.status().is_success() {
        return Err(err(format!("server answered {}", resp.status())));
    }
    let mut file = std::fs::File::create(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut body = resp.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| err(sluice_core::error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            if written > limit {
                return Err(err(format!("larger than the {limit}-byte limit")));
            }
            file.write_all(&data).map_err(|source| LoadError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_uris_resolve_in_place() {
        let cache = Path::new("/nonexistent-cache");
        assert_eq!(fetch("file:///m/x", cache).unwrap(), PathBuf::from("/m/x"));
        assert_eq!(fetch("rel/x", cache).unwrap(), PathBuf::from("rel/x"));
        assert!(matches!(
            fetch("s3://b/x", cache),
            Err(LoadError::UnsupportedUri(_))
        ));
        let missing = Path::new("/nonexistent/ca.pem");
        let err =
            sluice_core::error_chain(&fetch_with("https://h/x", cache, Some(missing)).unwrap_err());
        assert!(err.contains("CA file /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn manifests_are_checked() {
        let sum = "a".repeat(64);
        assert_eq!(
            parse_manifest(&format!("{sum}  config.json\n")).unwrap(),
            vec![(sum.clone(), "config.json".to_owned())]
        );
        assert!(parse_manifest(&format!("{sum}  ../etc/passwd")).is_err());
        assert!(parse_manifest("abc  f").is_err());
        assert!(parse_manifest("").is_err());
    }
}
