//! Model weights, mapped from safetensors files rather than read: a replica is ready as soon
//! as the tensors it needs are built, with no copy of the whole file in between.
//!
//! This module holds the workspace's one `unsafe` call (STYLE.md: "weights via mmap of
//! safetensors inside one documented `unsafe` function"); every other module, and every
//! other crate, forbids `unsafe`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::model::LoadError;

/// Largest safetensors header read (the JSON index of the tensors), in bytes.
const MAX_HEADER: u64 = 16 << 20;

/// A safetensors file read tensor by tensor into `f32` vectors, without mapping it: the
/// process holds only the weights it built, never the file's pages beside them (a mapped
/// load peaks at about twice the weights).
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    data_start: u64,
    tensors: HashMap<String, TensorEntry>,
}

#[derive(serde::Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn bad(path: &Path, message: String) -> LoadError {
    LoadError::Weights {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(message),
    }
}

impl SafetensorsFile {
    /// Opens `path` and reads its index; errors name the file and what is wrong.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut size = [0u8; 8];
        file.read_exact(&mut size).map_err(io)?;
        let size = u64::from_le_bytes(size);
        if size > MAX_HEADER || size + 8 > len {
            return Err(bad(
                path,
                format!("safetensors header of {size} bytes (file {len}, limit {MAX_HEADER})"),
            ));
        }
        let mut header = vec![0u8; size as usize];
        file.read_exact(&mut header).map_err(io)?;
        let mut index: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(path, format!("safetensors header is not JSON: {e}")))?;
        index.remove("__metadata__");
        let data_start = 8 + size;
        let mut tensors = HashMap::with_capacity(index.len());
        for (name, entry) in index {
            let entry: TensorEntry = serde_json::from_value(entry)
                .map_err(|e| bad(path, format!("safetensors entry {name:?}: {e}")))?;
            let [start, end] = entry.data_offsets;
            if start > end || data_start + end > len {
                return Err(bad(
                    path,
                    format!("tensor {name:?}: bytes {start}..{end} are outside the file"),
                ));
            }
            tensors.insert(name, entry);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            tensors,
        })
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads tensor `name`, which must have `shape`, as `f32` (F32, F16 and BF16 stored).
    pub fn read_f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let path = self.path.clone();
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(&path, format!("no tensor {name:?}")))?;
        if entry.shape != shape {
            return Err(bad(
                &path,
                format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?}",
                    entry.shape
                ),
            ));
        }
        let count: usize = shape.iter().product();
        let width = match entry.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(bad(
                    &path,
                    format!("tensor {name:?} is {other}; expected F32, F16 or BF16"),
                ));
            }
        };
        let [start, end] = entry.data_offsets;
        if end - start != (count * width) as u64 {
            return Err(bad(
                &path,
                format!("tensor {name:?}: {} bytes for {count} values", end - start),
            ));
        }
        let dtype = entry.dtype.clone();
        let io = |source| LoadError::Io {
            path: path.clone(),
            source,
        };
        self.file
            .seek(SeekFrom::Start(self.data_start + start))
            .map_err(io)?;
        let mut values = vec![0f32; count];
        if width == 4 {
            // Straight into the vector's bytes: no second copy of the largest tensors.
            self.file
                .read_exact(bytemuck::cast_slice_mut(&mut values))
                .map_err(io)?;
            for v in &mut values {
                *v = f32::from_bits(u32::from_le(v.to_bits()));
            }
        } else {
            let mut raw = vec![0u8; count * 2];
            self.file.read_exact(&mut raw).map_err(io)?;
            for (v, b) in values.iter_mut().zip(raw.chunks_exact(2)) {
                let bits = u16::from_le_bytes([b[0], b[1]]);
                *v = if dtype == "F16" {
                    half::f16::from_bits(bits).to_f32()
                } else {
                    half::bf16::from_bits(bits).to_f32()
                };
            }
        }
        Ok(values)
    }
}

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

    #[test]
    fn reads_tensors_one_by_one_and_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("sluice-st-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let f32s = Tensor::new(&[[1f32, -2.5], [3.0, 4.25]], &Device::Cpu).unwrap();
        let f16s = f32s.to_dtype(DType::F16).unwrap();
        let bf16s = f32s.to_dtype(DType::BF16).unwrap();
        let ids = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &[("a", f32s), ("b", f16s), ("c", bf16s), ("ids", ids)]
                .into_iter()
                .collect(),
            &path,
        )
        .unwrap();
        let mut file = SafetensorsFile::open(&path).unwrap();
        assert!(file.contains("a") && !file.contains("z"));
        for name in ["a", "b", "c"] {
            assert_eq!(
                file.read_f32(name, &[2, 2]).unwrap(),
                [1.0, -2.5, 3.0, 4.25]
            );
        }
        let message = |e: LoadError| format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            message(file.read_f32("a", &[4]).unwrap_err())
                .contains("has shape [2, 2], expected [4]")
        );
        assert!(message(file.read_f32("z", &[1]).unwrap_err()).contains("no tensor \"z\""));
        assert!(message(file.read_f32("ids", &[2]).unwrap_err()).contains("is I64"));

        // A truncated file: the index points past its end.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let Err(e) = SafetensorsFile::open(&path) else {
            panic!("a truncated file opened");
        };
        assert!(message(e).contains("outside the file"));
        // Not a safetensors file at all.
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(SafetensorsFile::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
