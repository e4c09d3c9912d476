//! sluice-model-server: the reference model runtime.
//!
//! Owns loading models with candle (`sluice-mlp`, `bert` sentence
//! embeddings, generic `safetensors` dense networks described by a config), the model
//! repository (folder, `storageUri` download cache, load/unload), the Open Inference
//! Protocol v2 and KServe v1 REST surface with the binary tensor extension (HTTP/1.1 and
//! h2c on one port), dynamic batching per model (token-budget batching for text models),
//! Prometheus metrics, inference errors and their status codes, and the process lifecycle
//! of `sluice model-server` (announce address, load, serve, drain). The queue layer from
//! `sluice-queue` runs in-process in front of inference routes.
//!
//! Not here: deciding how many servers run (`sluice-autoscaler`), starting them
//! (`sluice-controller`), routing to them (`sluice-router`).

pub mod batch;
pub mod bert;
pub mod codec;
pub mod dense;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod formats;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod mlp;
pub mod model;
pub mod repository;
pub mod server;
pub mod service;
pub mod storage;
pub mod tensor;
pub mod text_batch;
pub mod weights;

pub use batch::{BatchConfig, BatchConfigError};
pub use error::InferError;
pub use formats::load_model;
pub use model::{Model, ModelMetadata, TensorMetadata};
pub use repository::{ModelControl, ModelSource, Repository};
pub use server::{ModelServerConfig, ServeError, run};
