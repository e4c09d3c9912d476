//! W3C Trace Context (`traceparent`) and `x-request-id` propagation.
//!
//! Each proxy hop keeps the caller's trace id and request id, and records itself as a new
//! span: the `parent-id` it forwards is its own span id. A request without a valid
//! `traceparent` starts a new trace; one without `x-request-id` gets a fresh id.

use std::fmt;

use http::{HeaderMap, HeaderValue};

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `x-request-id` header.
pub const REQUEST_ID: &str = "x-request-id";

/// Request extension saying a hop already continued the trace as its own span (the
/// router's ingress, before routing): later steps of the same hop forward it as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Continued;

/// A parsed `traceparent` (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, never all zero.
    pub trace_id: u128,
    /// 8-byte id of the span that sent the request, never zero.
    pub parent_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00 traceparent.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        // Version 00 has exactly four fields; "ff" is forbidden.
        if parts.next().is_some()
            || version != "00"
            || !lower_hex(trace, 32)
            || !lower_hex(parent, 16)
            || !lower_hex(flags, 2)
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, sampled, with a random trace and span id.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_u128(),
            parent_id: random_span_id(),
            flags: 0x01,
        }
    }

    /// The same trace, sent on by a new span.
    pub fn child(self) -> Self {
        Self {
            parent_id: random_span_id(),
            ..self
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

thread_local! {
    /// splitmix64 state, seeded once per thread from the OS generator: ids need to be
    /// unique, not secret, and a system call per request costs more than the id is worth.
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(uuid::Uuid::new_v4().as_u128() as u64);
}

fn next_u64() -> u64 {
    RNG.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn random_u128() -> u128 {
    (u128::from(next_u64()) << 64) | u128::from(next_u64())
}

/// A fresh random (version 4) UUID for `x-request-id`.
fn request_id() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(random_u128().to_le_bytes()).into_uuid()
}

fn random_span_id() -> u64 {
    loop {
        let id = random_u128() as u64;
        if id != 0 {
            return id;
        }
    }
}

/// Prepares a request's headers for the next hop: keeps or creates `x-request-id`, and
/// continues (or starts) the trace as a new span. Returns the trace context forwarded.
pub fn propagate(headers: &mut HeaderMap) -> TraceParent {
    let valid_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty() && v.len() <= 200);
    if !valid_id && let Ok(v) = HeaderValue::from_str(&request_id().to_string()) {
        headers.insert(REQUEST_ID, v);
    }
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let next = match incoming {
        Some(parent) => parent.child(),
        None => {
            // An invalid traceparent also invalidates its tracestate.
            headers.remove("tracestate");
            TraceParent::new_root()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
        headers.insert(TRACEPARENT, v);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_round_trip() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.to_string(), SAMPLE);
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn propagate_keeps_trace_and_request_id_and_adds_a_span() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(SAMPLE));
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        let next = propagate(&mut h);
        assert_eq!(next.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(next.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(h[REQUEST_ID], "abc");
        assert_eq!(h[TRACEPARENT].to_str().unwrap(), next.to_string());
    }

    #[test]
    fn propagate_starts_what_is_missing() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert("tracestate", HeaderValue::from_static("a=b"));
        propagate(&mut h);
        assert!(TraceParent::parse(h[TRACEPARENT].to_str().unwrap()).is_some());
        assert!(!h.contains_key("tracestate"));
        assert_eq!(h[REQUEST_ID].len(), 36);
    }
}
