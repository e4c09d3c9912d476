//! The model formats the server loads (`modelFormat.name` of a runtime): `sluice-mlp`,
//! `bert` sentence embeddings and generic `safetensors` dense networks.

use std::path::Path;

use crate::bert::Bert;
use crate::dense::{DENSE_FORMAT, Dense};
use crate::mlp::Mlp;
use crate::model::{LoadError, Model};

/// Loads the model in `dir` as `format`, serving it under `name`.
pub fn load_model(format: &str, name: &str, dir: &Path) -> Result<Box<dyn Model>, LoadError> {
    match format {
        "sluice-mlp" => Ok(Box::new(Mlp::load(name, dir)?)),
        "bert" => Ok(Box::new(Bert::load(name, dir)?)),
        DENSE_FORMAT => Ok(Box::new(Dense::load(name, dir)?)),
        other => Err(LoadError::UnsupportedFormat(other.to_owned())),
    }
}
