//! sluice-model-server: the reference model runtime.
//!
//! Owns loading models with candle (`sluice-mlp` today), the Open Inference Protocol REST
//! surface (health, metadata, infer), inference errors and their status codes, and the
//! process lifecycle of `sluice model-server` (announce address, load, serve, drain). The
//! queue layer from `sluice-activator` runs in-process in front of inference routes.
//!
//! Not here: deciding how many servers run (`sluice-autoscaler`), starting them
//! (`sluice-controller`), routing to them (`sluice-router`).

pub mod error;
pub mod http;
pub mod mlp;
pub mod model;
pub mod server;
pub mod tensor;

pub use error::InferError;
pub use model::{Model, ModelMetadata, TensorMetadata, load_model};
pub use server::{ModelServerConfig, ServeError, run};
