//! The `Model` trait every served model implements, and loading by format.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::InferError;
use crate::tensor::{DataType, NamedTensor};

/// A loaded model, ready to compute. Inference is synchronous CPU work: callers run it off
/// the async reactor.
pub trait Model: Send + Sync {
    /// What the model takes and returns.
    fn metadata(&self) -> &ModelMetadata;
    /// Computes every output for inputs already checked by [`validate_inputs`].
    fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError>;
    /// Whether every input and output has a leading batch dimension, so requests can be
    /// concatenated along it (dynamic batching).
    fn batchable(&self) -> bool {
        false
    }
    /// The model as a text embedder, when it is one (the embedding APIs serve these).
    fn text_embedder(&self) -> Option<&dyn TextEmbedder> {
        None
    }
}

/// A model that turns text into vectors: what `/v1/embeddings`, `/embed` and `/tokenize`
/// need besides [`Model::infer`].
pub trait TextEmbedder: Send + Sync {
    /// Width of an embedding.
    fn dimensions(&self) -> usize;
    /// Longest input in tokens (special tokens included); longer ones are cut to it.
    fn max_tokens(&self) -> usize;
    /// Each text's tokens, none cut off.
    fn tokenize(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<Token>>, InferError>;
    /// Each text's token count (special tokens included), none cut off: what a batch's
    /// token budget counts. Cheaper than [`TextEmbedder::tokenize`].
    fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, InferError> {
        Ok(self.tokenize(texts, true)?.iter().map(Vec::len).collect())
    }
    /// Embeddings of `texts` (each cut to [`TextEmbedder::max_tokens`]), row-major
    /// `[texts.len(), dimensions]`; of unit length with `normalize`.
    fn embed_texts(&self, texts: &[&str], normalize: bool) -> Result<Vec<f32>, InferError>;
}

/// One token of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Its vocabulary id.
    pub id: u32,
    /// The text it covers (a special token's own spelling).
    pub text: String,
    /// Added by the tokenizer (`[CLS]`, `[SEP]`), not in the text.
    pub special: bool,
    /// Byte offsets of what it covers in the text; `None` for a special token.
    pub offsets: Option<(usize, usize)>,
}

/// Checks inputs against the model's metadata: known names, each required input present
/// once, datatypes and fixed dimensions as declared (-1 = any). Errors name the tensor.
pub fn validate_inputs(meta: &ModelMetadata, inputs: &[NamedTensor]) -> Result<(), InferError> {
    for input in inputs {
        let Some(spec) = meta.inputs.iter().find(|m| m.name == input.name) else {
            let names: Vec<&str> = meta.inputs.iter().map(|m| m.name.as_str()).collect();
            return Err(input.invalid(format!("unknown input; the model's inputs are {names:?}")));
        };
        if input.datatype().as_str() != spec.datatype {
            return Err(input.invalid(format!(
                "datatype is {}, the model expects {}",
                input.datatype(),
                spec.datatype
            )));
        }
        let fits = input.shape.len() == spec.shape.len()
            && input
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(&d, &want)| want < 0 || d as i64 == want);
        if !fits {
            return Err(input.invalid(format!(
                "shape {:?} does not match the model's {:?}",
                input.shape, spec.shape
            )));
        }
        if input.shape.contains(&0) {
            return Err(input.invalid(format!(
                "shape {:?} holds no elements: send at least one row",
                input.shape
            )));
        }
    }
    for spec in &meta.inputs {
        if !inputs.iter().any(|i| i.name == spec.name) {
            return Err(InferError::InvalidInput {
                tensor: spec.name.clone(),
                message: "required input is missing".into(),
            });
        }
    }
    Ok(())
}

/// The device heavy models run on: the first GPU when built with `cuda` (or `metal`) and
/// one is present, otherwise the CPU. (`sluice-mlp` always runs on the CPU: it is too small
/// for a GPU to pay off.)
pub fn compute_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::cuda_if_available(0) {
        return d;
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = candle_core::Device::new_metal(0) {
        return d;
    }
    candle_core::Device::Cpu
}

/// Metadata entry for a tensor.
pub fn tensor_meta(name: &str, datatype: DataType, shape: Vec<i64>) -> TensorMetadata {
    TensorMetadata {
        name: name.to_owned(),
        datatype: datatype.as_str().to_owned(),
        shape,
    }
}

/// `GET /v2/models/{m}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions that may be requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Framework, e.g. `sluice-candle`.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor's name, datatype and shape (-1 = variable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// Datatype.
    pub datatype: String,
    /// Shape.
    pub shape: Vec<i64>,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The format is not one this server runs (`sluice-mlp`, `bert`, `safetensors`).
    #[error(
        "model format {0:?} is not supported by the candle runtime (supported: sluice-mlp, bert, safetensors)"
    )]
    UnsupportedFormat(String),
    /// The storage URI is not a local folder.
    #[error("storage URI {0:?} is not a local path or file:// URI")]
    UnsupportedUri(String),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The model's config is malformed.
    #[error("invalid model config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be loaded.
    #[error("invalid tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Downloading the model failed.
    #[error("cannot download {uri}: {message}")]
    Download {
        /// What was fetched.
        uri: String,
        /// Why it failed.
        message: String,
    },
    /// The weights are missing, malformed, or do not fit the config.
    #[error("invalid weights {path}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: candle_core::Error,
    },
}
