//! `storageUri` → a local model folder.
//!
//! Plain paths and `file://` URIs are used in place. An `http://` URI names a folder that
//! serves `SHA256SUMS` (lines of `<sha256>  <file>`, as `sha256sum` writes them); every file
//! it lists is downloaded once into the cache (`<cache>/<sha256 of the URI>/`), checked
//! against its checksum, and reused on later loads when the checksums still match.
//! `https://` needs a TLS client, which this build does not carry: a clear error says so.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::model::LoadError;

/// Manifest listing a remote model folder's files and checksums.
pub const MANIFEST: &str = "SHA256SUMS";
/// Largest file downloaded.
pub const MAX_FILE_BYTES: u64 = 8 << 30;
/// Most files a manifest may list.
pub const MAX_FILES: usize = 64;

/// Resolves `uri` to a local folder, downloading into `cache` when remote.
pub fn fetch(uri: &str, cache: &Path) -> Result<PathBuf, LoadError> {
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if uri.starts_with("http://") {
        return download_folder(uri, cache);
    }
    if uri.starts_with("https://") {
        return Err(LoadError::Download {
            uri: uri.to_owned(),
            message: "https:// needs TLS, which this build does not include; use http:// \
                      inside the cluster or a local path"
                .into(),
        });
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

fn download_folder(uri: &str, cache: &Path) -> Result<PathBuf, LoadError> {
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

async fn get_to_file(url: &str, path: &Path, limit: u64) -> Result<(), LoadError> {
    let err = |m: String| download_err(url, m);
    let uri: http::Uri = url.parse().map_err(|e| err(format!("invalid URI: {e}")))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(uri)
        .await
        .map_err(|e| err(sluice_core::error_chain(&e)))?;
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
        let err = fetch("https://h/x", cache).unwrap_err().to_string();
        assert!(err.contains("https:// needs TLS"), "{err}");
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
