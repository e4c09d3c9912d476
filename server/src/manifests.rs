//! Reading manifest files, for `sluice up <dir>` and `sluice apply -f`.

use std::path::Path;

use anyhow::{Context, bail};
use sluice_controller::admin::ManifestFile;

/// Reads every `*.yaml`/`*.yml` file of `path` (a file or a folder, not recursive).
pub fn manifest_files(path: &Path) -> anyhow::Result<Vec<ManifestFile>> {
    let mut paths = Vec::new();
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let p = entry?.path();
            let is_yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            // kustomize's own file is not an API object (kubectl applies it with -k).
            let is_kustomization = p
                .file_stem()
                .is_some_and(|s| s.eq_ignore_ascii_case("kustomization"));
            if is_kustomization {
                tracing::warn!(
                    "skipping {}: a kustomize file, not an API object",
                    p.display()
                );
                continue;
            }
            if is_yaml && p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            bail!("{} holds no *.yaml or *.yml files", path.display());
        }
    } else {
        paths.push(path.to_owned());
    }
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let dir = p.parent().unwrap_or(Path::new("."));
            Ok(ManifestFile {
                source: p.display().to_string(),
                base_dir: std::path::absolute(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?,
                text,
            })
        })
        .collect()
}
