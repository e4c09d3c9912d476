//! What the REST surface (`http`) and the gRPC surface (`grpc`) share: their state, the
//! protocol extensions the server implements, and executing one decoded request.

use std::sync::Arc;

use sluice_queue::Queue;
use tokio::time::Instant;

use crate::codec::{InferRequest, InferResponse};
use crate::error::InferError;
use crate::model::validate_inputs;
use crate::repository::{Repository, ServedModel};

/// Protocol extensions this server implements (`GET /v2`, gRPC ServerMetadata).
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "kserve_v1",
    "metrics",
];

/// What the handlers share.
pub struct AppState {
    /// The served models.
    pub repository: Arc<Repository>,
    /// The in-process queue layer.
    pub queue: Arc<Queue>,
}

/// Validates, queues and computes a decoded request; returns the response before encoding.
pub async fn execute(
    served: &ServedModel,
    name: &str,
    version: Option<String>,
    request: InferRequest,
) -> Result<InferResponse, InferError> {
    let metadata = served.model.metadata();
    validate_inputs(metadata, &request.inputs)?;
    if let Some(wanted) = &request.outputs {
        for w in wanted {
            if !metadata.outputs.iter().any(|o| o.name == w.name) {
                return Err(InferError::UnknownOutput(w.name.clone()));
            }
        }
    }
    let started = Instant::now();
    let mut outputs = served.executor.run(request.inputs).await?;
    served.metrics.predict.observe_duration(started.elapsed());
    let outputs = match &request.outputs {
        None => outputs
            .into_iter()
            .map(|t| (t, request.binary_output))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .filter_map(|w| {
                let i = outputs.iter().position(|o| o.name == w.name)?;
                Some((outputs.swap_remove(i), w.binary))
            })
            .collect(),
    };
    Ok(InferResponse {
        model_name: name.to_owned(),
        model_version: version,
        id: request.id,
        parameters: request.parameters,
        outputs,
    })
}
