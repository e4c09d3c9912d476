//! The `Model` trait every served model implements, and loading by format.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::InferError;
use crate::mlp::Mlp;
use crate::tensor::{InferRequest, InferResponse};

/// A loaded model, ready to compute. Inference is synchronous CPU work: callers run it off
/// the async reactor.
pub trait Model: Send + Sync {
    /// What the model takes and returns.
    fn metadata(&self) -> &ModelMetadata;
    /// Computes the response to one request.
    fn infer(&self, request: &InferRequest) -> Result<InferResponse, InferError>;
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
    /// The format is not one this server runs.
    #[error("model format {0:?} is not supported by the candle runtime (supported: sluice-mlp)")]
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

/// Turns a `storageUri` (plain path or `file://`) into a local folder.
pub fn local_path(storage_uri: &str) -> Result<PathBuf, LoadError> {
    if let Some(rest) = storage_uri.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if storage_uri.contains("://") {
        return Err(LoadError::UnsupportedUri(storage_uri.to_owned()));
    }
    Ok(PathBuf::from(storage_uri))
}

/// Loads the model in `dir` as `format`, serving it under `name`.
pub fn load_model(format: &str, name: &str, dir: &Path) -> Result<Box<dyn Model>, LoadError> {
    match format {
        "sluice-mlp" => Ok(Box::new(Mlp::load(name, dir)?)),
        other => Err(LoadError::UnsupportedFormat(other.to_owned())),
    }
}
