//! A client cannot speak for Sluice's hops: the router drops every `x-sluice-*` header a
//! request arrives with (an attestation made up or replayed, or any other), on the direct
//! path to a replica and through the activator alike.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{h1, replica, send, single, start};
use sluice_proxy::full_body;

/// The replica answers with the names of the `x-sluice-*` headers it received.
async fn internal_headers_seen() -> common::Replica {
    replica(|req| async move {
        let mut names: Vec<String> = req
            .headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| k.starts_with("x-sluice"))
            .collect();
        names.sort();
        http::Response::new(full_body(names.join(",")))
    })
    .await
}

#[tokio::test]
async fn the_router_drops_internal_headers_a_client_sends() {
    let r = internal_headers_seen().await;
    let h = start(single(&[r.addr], 0, Duration::from_secs(30)).build()).await;
    let client = h1();
    let sent = [
        (
            "x-sluice-caller-attestation",
            "v1-bound.eyJjYWxsZXIiOiJyZXBsYXllZCJ9",
        ),
        ("X-Sluice-Anything", "1"),
        ("x-sluicer", "not ours"),
    ];
    let direct = send(&client, h.addr, common::HOST, "/", &sent).await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.body, "x-sluicer", "the direct path");

    // Through the activator (the revision has no burst capacity).
    h.publish.send_replace(
        single(&[r.addr], 0, Duration::from_secs(30))
            .activator("hello-00001", true)
            .build(),
    );
    let buffered = send(&client, h.addr, common::HOST, "/", &sent).await;
    assert_eq!(buffered.status, 200);
    assert_eq!(buffered.body, "x-sluicer", "through the activator");
}
