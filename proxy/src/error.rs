//! Data-plane failures and the one place they become HTTP responses.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use sluice_core::NamespacedName;

use crate::body::{ProxyBody, full_body};
use crate::timeouts::TimeoutKind;

/// How an exchange with a replica failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Over HTTP/1.1.
    #[error(transparent)]
    Http1(#[from] crate::h1pool::H1Error),
    /// Over HTTP/2.
    #[error(transparent)]
    Http2(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether the replica could not even be connected to (so nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(e) => e.is_connect(),
            UpstreamError::Http2(e) => e.is_connect(),
        }
    }
}

/// Why the data plane could not deliver a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route for the request's Host.
    #[error("no service for host {host:?}")]
    UnknownHost {
        /// The Host the request named.
        host: String,
    },
    /// The request named no Host at all.
    #[error("request has no Host header")]
    MissingHost,
    /// The route names a revision the snapshot does not know.
    #[error("revision {0} not found")]
    UnknownRevision(NamespacedName),
    /// The revision has no ready replica and its replicas keep failing.
    #[error("revision {revision} is unavailable: {reason}")]
    Unavailable {
        /// The revision.
        revision: NamespacedName,
        /// Why (from its `Ready` condition).
        reason: String,
    },
    /// The activator's buffer for the revision is full.
    #[error("activator queue for revision {revision} is full ({limit} requests waiting)")]
    QueueFull {
        /// The revision.
        revision: NamespacedName,
        /// The configured bound.
        limit: usize,
    },
    /// The request's deadline passed before a replica started its response.
    #[error(
        "{hop} request timeout: revision {revision} gave no response within {timeout:?} ({kind})"
    )]
    Timeout {
        /// Which hop gave up (`router`, `activator`, `queue`).
        hop: &'static str,
        /// The revision.
        revision: NamespacedName,
        /// Which of the revision's limits fired.
        kind: TimeoutKind,
        /// Its value.
        timeout: Duration,
    },
    /// The request body is larger than allowed.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The replica could not be reached or broke the connection.
    #[error("upstream replica {endpoint} of revision {revision} failed")]
    Upstream {
        /// The revision.
        revision: NamespacedName,
        /// The replica address.
        endpoint: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: Box<UpstreamError>,
    },
    /// The replica's queue layer answered that it passed the request to nobody (its user
    /// process refused the connection: it has exited), so another replica may take it.
    #[error("replica {endpoint} of revision {revision} did not process the request: {reason}")]
    Unprocessed {
        /// The revision.
        revision: NamespacedName,
        /// The replica address.
        endpoint: std::net::SocketAddr,
        /// The queue layer's own words.
        reason: String,
    },
    /// The request could not be rewritten for forwarding.
    #[error("cannot forward request: {0}")]
    BadRequest(String),
}

impl ProxyError {
    /// The status code a client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost { .. } | ProxyError::UnknownRevision(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::QueueFull { .. } | ProxyError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream { .. } | ProxyError::Unprocessed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Whether the replica could not even be connected to, or said it passed the request to
    /// nobody: nothing was processed, so another replica may take it.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::Upstream { source, .. } if source.is_connect())
            || matches!(self, ProxyError::Unprocessed { .. })
    }

    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProxyError::UnknownHost { .. } => "unknown_host",
            ProxyError::MissingHost => "missing_host",
            ProxyError::UnknownRevision(_) => "unknown_revision",
            ProxyError::QueueFull { .. } => "queue_full",
            ProxyError::Unavailable { .. } => "unavailable",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Upstream { .. } | ProxyError::Unprocessed { .. } => "upstream",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
        }
    }

    /// The response: status plus `{"error": "..."}`, and `Retry-After` on overload.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let mut resp = error_response(status, &sluice_core::error_chain(&self));
        if matches!(self, ProxyError::QueueFull { .. }) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A JSON error response `{"error": message}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::to_string(&sluice_core::ErrorBody::new(message)).unwrap_or_default();
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn queue_full_is_503_with_retry_after_and_reason() {
        let err = ProxyError::QueueFull {
            revision: NamespacedName::new("default", "r-00001"),
            limit: 3,
        };
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["error"],
            "activator queue for revision default/r-00001 is full (3 requests waiting)"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ProxyError::UnknownHost { host: "x".into() }.status(),
            StatusCode::NOT_FOUND
        );
        let timeout = ProxyError::Timeout {
            hop: "activator",
            revision: NamespacedName::new("a", "b"),
            kind: TimeoutKind::ResponseStart,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            timeout.to_string(),
            "activator request timeout: revision a/b gave no response within 1s \
             (responseStartTimeoutSeconds)"
        );
        assert_eq!(
            ProxyError::PayloadTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
