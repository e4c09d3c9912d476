//! One JSON access-log line per request, with the fields an operator needs to follow a
//! request across hops: trace and request ids, who called whom, revision, status, duration.

use serde::Serialize;

/// One request's access-log record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccessLogEntry {
    /// Start time, RFC 3339 UTC with milliseconds.
    pub start_time: String,
    /// Which hop logged it (`router`, `activator`, `queue`, `model-server`).
    pub reporter: String,
    /// W3C trace id (32 hex), empty when none.
    pub trace_id: String,
    /// This hop's span id (16 hex).
    pub span_id: String,
    /// `x-request-id`.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Authority (Host).
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`, …
    pub protocol: String,
    /// Response status.
    pub response_code: u16,
    /// Total time in milliseconds.
    pub duration_ms: u64,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Caller's SPIFFE ID (attested original caller behind the activator), empty if none.
    pub source_principal: String,
    /// This workload's SPIFFE ID.
    pub destination_principal: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
    /// Revision served.
    pub revision: String,
    /// Upstream address the request went to, if it was proxied.
    pub upstream_host: String,
    /// Why it ended early (`RBAC` for a policy denial, `UO` for overload, …), empty if none.
    pub response_flags: String,
}

impl AccessLogEntry {
    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Formats `time` as the `start_time` field expects.
    pub fn format_time(time: std::time::SystemTime) -> String {
        let t = time::OffsetDateTime::from(time);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}
