//! The start-up handshake between a replica process and the runtime that started it.
//!
//! A replica binds its serving socket (port 0 is fine), then prints one line
//! `SLUICE_LISTENING <addr>` on stdout; once it can serve it prints `SLUICE_READY`. The
//! runtime confirms readiness with a probe before routing to it. A replica that can no longer
//! serve (its user process died) prints `SLUICE_NOT_READY` at once, so the runtime stops
//! routing to it before it closes its connections. The replica exits when its stdin closes,
//! so replicas never outlive the process that supervises them.

use std::net::SocketAddr;

/// Path of a replica's readiness probe (answered by its queue layer).
pub const PROBE_PATH: &str = "/healthz";
/// Header marking a readiness probe; a ready queue layer answers 200 with body `queue`.
pub const PROBE_HEADER: &str = "k-network-probe";
/// Header the activator sets (`activator`) on requests it proxies.
pub const PROXY_HEADER: &str = "k-proxy-request";
/// Path where the autoscaler scrapes a replica's per-period `PeriodStats` (JSON).
pub const STATS_PATH: &str = "/sluice/queue/stats";
/// Path on a replica's port serving its Prometheus metrics (to the control plane only).
pub const METRICS_PATH: &str = "/sluice/metrics";

/// Prefix of the line announcing the bound address.
pub const LISTENING_PREFIX: &str = "SLUICE_LISTENING ";
/// Line announcing that the replica can serve.
pub const READY_LINE: &str = "SLUICE_READY";
/// Line announcing that the replica can no longer serve and is about to exit.
pub const NOT_READY_LINE: &str = "SLUICE_NOT_READY";

/// A line of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeLine {
    /// The replica listens here.
    Listening(SocketAddr),
    /// The replica is ready.
    Ready,
    /// The replica can no longer serve: route no new request to it.
    NotReady,
}

/// Parses a stdout line of a replica; other output is not part of the handshake.
pub fn parse_handshake(line: &str) -> Option<HandshakeLine> {
    let line = line.trim_end();
    if line == READY_LINE {
        return Some(HandshakeLine::Ready);
    }
    if line == NOT_READY_LINE {
        return Some(HandshakeLine::NotReady);
    }
    line.strip_prefix(LISTENING_PREFIX)
        .and_then(|addr| addr.parse().ok())
        .map(HandshakeLine::Listening)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        assert_eq!(
            parse_handshake("SLUICE_LISTENING 127.0.0.1:4000\n"),
            Some(HandshakeLine::Listening("127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(parse_handshake("SLUICE_READY"), Some(HandshakeLine::Ready));
        assert_eq!(
            parse_handshake("SLUICE_NOT_READY\n"),
            Some(HandshakeLine::NotReady)
        );
        assert_eq!(parse_handshake("SLUICE_LISTENING nowhere"), None);
        assert_eq!(parse_handshake("hello"), None);
    }
}
