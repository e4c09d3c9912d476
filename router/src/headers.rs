//! The proxy headers the router adds for replicas: `Forwarded` (RFC 7239),
//! `X-Forwarded-For`, `X-Forwarded-Proto`, plus the trace context and request id.

use std::net::{IpAddr, SocketAddr};

use http::header::{FORWARDED, HeaderName};
use http::{HeaderMap, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client connection a request came in on (set by the accept loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Adds this hop to `Forwarded` and `X-Forwarded-For` (keeping what earlier proxies wrote)
/// and sets `X-Forwarded-Proto` to the scheme the router was reached with (the router is
/// the edge: a client's own claim is not kept).
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<IpAddr>, proto: &str, host: &str) {
    let mut element = String::with_capacity(64);
    if let Some(ip) = client {
        match ip {
            IpAddr::V4(v4) => element.push_str(&format!("for={v4};")),
            IpAddr::V6(v6) => element.push_str(&format!("for=\"[{v6}]\";")),
        }
    }
    element.push_str("proto=");
    element.push_str(proto);
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    append(headers, FORWARDED, &element);
    if let Some(ip) = client {
        append(headers, X_FORWARDED_FOR, &ip.to_string());
    }
    if let Ok(v) = HeaderValue::from_str(proto) {
        headers.insert(X_FORWARDED_PROTO, v);
    }
}

/// Appends `value` to a list-valued header, folding earlier values into one line.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let joined = {
        let earlier: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if earlier.is_empty() {
            value.to_owned()
        } else {
            format!("{}, {value}", earlier.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_this_hop_and_keeps_earlier_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(
            &mut h,
            Some("127.0.0.1".parse().unwrap()),
            "http",
            "hello.default.localhost:8080",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=127.0.0.1;proto=http;host=\"hello.default.localhost:8080\""
        );
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn ipv6_clients_are_quoted() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("::1".parse().unwrap()), "http", "a");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http;host=\"a\"");
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
