//! Model weights, mapped from safetensors files rather than read: a replica is ready as soon
//! as the tensors it needs are built, with no copy of the whole file in between.
//!
//! This module holds the workspace's one `unsafe` call (STYLE.md: "weights via mmap of
//! safetensors inside one documented `unsafe` function"); every other module, and every
//! other crate, forbids `unsafe`.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::model::LoadError;

/// Maps one safetensors file of F32 weights for building a model; errors name the file.
pub fn map_file(path: &Path, device: &Device) -> Result<VarBuilder<'static>, LoadError> {
    if !path.is_file() {
        return Err(LoadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    mmap_var_builder(&[path], DType::F32, device).map_err(|source| LoadError::Weights {
        path: path.to_path_buf(),
        source,
    })
}

/// Maps `paths` (safetensors files) read-only and returns a `VarBuilder` over them.
///
/// # Why the `unsafe` is sound here
///
/// Mapping a file is `unsafe` because another process could truncate or rewrite it while it
/// is mapped, and the mapped bytes would change (or fault) under Rust references. Sluice maps
/// only model files it never writes (the storage cache, filled once and checksum-verified, or
/// a folder the user points at), and only for the duration of loading: each tensor is copied
/// out of the mapping into candle's own storage while the model is built, and the mapping is
/// released when the `VarBuilder` is dropped at the end of the load. Rewriting model files in
/// place while a replica loads them is outside what Sluice supports (replace them by rename,
/// as every tool that writes models does).
#[allow(unsafe_code)]
pub fn mmap_var_builder<P: AsRef<Path>>(
    paths: &[P],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: see the function's documentation: the files are read-only inputs that Sluice
    // never writes, and the mapping lives only while the model is built from it.
    unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;

    #[test]
    fn maps_a_safetensors_file_and_reads_its_tensors() {
        let dir = std::env::temp_dir().join(format!("sluice-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("layer.weight", t)].into_iter().collect(), &path)
            .unwrap();
        let vb = mmap_var_builder(&[&path], DType::F32, &Device::Cpu).unwrap();
        let got = vb.get((2, 2), "layer.weight").unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        assert!(vb.get((2, 2), "missing").is_err());
        assert!(
            mmap_var_builder(&[dir.join("absent.safetensors")], DType::F32, &Device::Cpu).is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
