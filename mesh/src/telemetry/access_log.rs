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

/// The variable that turns a replica's access log on (`1`/`true`/`on`) or off (unset, empty,
/// `0`/`false`/`off`), as the command that starts the replica decides. Off by default, as
/// Istio's (`meshConfig.accessLogFile` empty) and Knative's queue-proxy request log are.
pub const ACCESS_LOG_ENV: &str = "SLUICE_ACCESS_LOG";

/// `$SLUICE_ACCESS_LOG` holds something other than an on or off word.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "${ACCESS_LOG_ENV}={0:?}: use 1, true or on to write the access log, 0, false or off (or unset) not to"
)]
pub struct BadAccessLogVar(pub String);

/// Whether `vars` turns the access log on (see [`ACCESS_LOG_ENV`]).
pub fn access_log_on(vars: &crate::vars::Vars) -> Result<bool, BadAccessLogVar> {
    match vars.get(ACCESS_LOG_ENV) {
        Err(_) => Err(BadAccessLogVar("(not UTF-8)".into())),
        Ok(None) => Ok(false),
        Ok(Some(v)) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "off" => Ok(false),
            "1" | "true" | "on" => Ok(true),
            _ => Err(BadAccessLogVar(v.to_owned())),
        },
    }
}

#[cfg(test)]
mod access_log_var_tests {
    use super::*;
    use crate::vars::Vars;

    #[test]
    fn the_access_log_is_off_unless_the_variable_says_on() {
        assert_eq!(access_log_on(&Vars::default()), Ok(false));
        for (value, on) in [
            ("1", true),
            ("TRUE", true),
            ("on", true),
            ("0", false),
            ("", false),
            ("off", false),
        ] {
            assert_eq!(
                access_log_on(&Vars::default().with(ACCESS_LOG_ENV, value)),
                Ok(on),
                "{value}"
            );
        }
        let err = access_log_on(&Vars::default().with(ACCESS_LOG_ENV, "yes please")).unwrap_err();
        assert!(
            err.to_string()
                .contains("$SLUICE_ACCESS_LOG=\"yes please\""),
            "{err}"
        );
    }
}
