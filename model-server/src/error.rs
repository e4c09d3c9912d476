//! Inference errors and their single mapping to HTTP.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `Retry-After` on a 429 for a full model queue: a batch takes milliseconds to seconds.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// Why an inference (or metadata) request failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// No model of that name is served here.
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    /// The model exists but is not loaded yet.
    #[error("model {0:?} is not ready")]
    NotReady(String),
    /// The request body is not a valid inference request.
    #[error("invalid request body at {path}: {message}")]
    InvalidBody {
        /// JSON path of the offending field (`inputs[0].shape`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An input tensor does not fit the model.
    #[error("input {tensor:?}: {message}")]
    InvalidInput {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A request header is malformed.
    #[error("header {header}: {message}")]
    InvalidHeader {
        /// Header name.
        header: String,
        /// What is wrong.
        message: String,
    },
    /// The model's batching queue is full: 429 (gRPC RESOURCE_EXHAUSTED), retry later.
    #[error("model {0:?} is overloaded: its request queue is full; retry later")]
    QueueFull(String),
    /// The model could not be (re)loaded from the repository.
    #[error("model {name:?} failed to load: {message}")]
    LoadFailed {
        /// Model name.
        name: String,
        /// Why.
        message: String,
    },
    /// The request is not allowed here: the repository API's load/unload while model
    /// control is off, or a model folder leading outside the repository.
    #[error("{0}")]
    Forbidden(String),
    /// The endpoint or feature is not implemented.
    #[error("{0} is not implemented")]
    NotImplemented(String),
    /// A requested output does not exist.
    #[error("output {0:?} is not an output of this model")]
    UnknownOutput(String),
    /// The model failed while computing.
    #[error("inference failed")]
    Compute(#[from] candle_core::Error),
    /// The blocking inference task died.
    #[error("inference task failed: {0}")]
    Task(String),
}

impl InferError {
    /// The HTTP status for this error (OIP §errors). A full model queue is 429, as the
    /// embedding servers (text-embeddings-inference) and OpenAI answer overload: the replica
    /// is healthy and a retry, here or on another replica, can succeed. (503 stays the
    /// queue layer's answer for its own full queue, SEMANTICS §3.)
    pub fn status(&self) -> StatusCode {
        match self {
            InferError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            InferError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            InferError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            InferError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            InferError::Forbidden(_) => StatusCode::FORBIDDEN,
            InferError::InvalidBody { .. }
            | InferError::InvalidHeader { .. }
            | InferError::InvalidInput { .. }
            | InferError::UnknownOutput(_) => StatusCode::BAD_REQUEST,
            InferError::Compute(_) | InferError::Task(_) | InferError::LoadFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        let message = match &self {
            // candle's errors can carry a backtrace in their text: the client gets the first
            // line, the log the whole of it.
            InferError::Compute(e) => {
                let text = e.to_string();
                tracing::warn!("inference failed: {text}");
                format!(
                    "inference failed: {}",
                    text.lines().next().unwrap_or_default()
                )
            }
            _ => sluice_core::error_chain(&self),
        };
        let mut resp = (self.status(), Json(sluice_core::ErrorBody::new(message))).into_response();
        if matches!(self, InferError::QueueFull(_)) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_compute_error_answers_its_first_line_only() {
        let err = InferError::Compute(candle_core::Error::Msg(
            "empty tensor for reduce\n   0: bt\n   at candle-core/src/error.rs:260".into(),
        ));
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "inference failed: empty tensor for reduce");
    }
}
