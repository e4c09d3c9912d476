//! `sluice describe KIND NAME`: an object's metadata, status conditions, traffic and the
//! objects it owns, in kubectl's layout.

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;
use sluice_crds::Kind;

use sluice_server::admin_client::{kube_admin_server, server_error};

use crate::client::{AdminArgs, age, kind, s};

/// Flags of `sluice describe`.
#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    /// Kind (isvc, ksvc, configuration, revision, route, servingruntime…).
    kind: String,
    /// Name.
    name: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    admin: AdminArgs,
    /// Use the Kubernetes API of the current kubeconfig instead of `sluice up`.
    #[arg(long, conflicts_with = "server")]
    kube: bool,
}

/// Renders the description of `o`, with `owned` objects (kind, name, ready) and its
/// `events` listed.
pub(crate) fn render(kind: Kind, o: &Value, owned: &[(Kind, Value)], events: &[Value]) -> String {
    let mut out = String::new();
    let meta = &o["metadata"];
    let _ = writeln!(out, "Name:         {}", s(&meta["name"]));
    let _ = writeln!(out, "Namespace:    {}", s(&meta["namespace"]));
    let _ = writeln!(
        out,
        "Kind:         {} ({})",
        kind.name(),
        kind.api_version()
    );
    let _ = writeln!(out, "Age:          {}", age(o));
    let _ = writeln!(out, "Generation:   {}", s(&meta["generation"]));
    for (title, field) in [("Labels:", "labels"), ("Annotations:", "annotations")] {
        let entries = meta[field].as_object().cloned().unwrap_or_default();
        if entries.is_empty() {
            let _ = writeln!(out, "{title:<14}<none>");
        }
        for (i, (k, v)) in entries.iter().enumerate() {
            let head = if i == 0 { title } else { "" };
            let _ = writeln!(out, "{head:<14}{k}={}", s(v));
        }
    }
    let st = &o["status"];
    status_section(&mut out, st);
    conditions_section(&mut out, st);
    owned_section(&mut out, owned);
    events_section(&mut out, events);
    out
}

/// URL, latest revisions, the predictor's revisions, traffic and model status.
fn status_section(out: &mut String, st: &Value) {
    if let Some(url) = st["url"].as_str() {
        let _ = writeln!(out, "URL:          {url}");
    }
    for (label, field) in [
        ("Latest Created", "latestCreatedRevisionName"),
        ("Latest Ready", "latestReadyRevisionName"),
    ] {
        if let Some(v) = st[field].as_str() {
            let _ = writeln!(out, "{:<15} {v}", format!("{label}:"));
        }
    }
    let traffic = st["traffic"]
        .as_array()
        .or_else(|| st["components"]["predictor"]["traffic"].as_array());
    if let Some(p) = st["components"]["predictor"].as_object() {
        let _ = writeln!(out, "Predictor:");
        for key in [
            "latestCreatedRevision",
            "latestReadyRevision",
            "latestRolledoutRevision",
            "previousRolledoutRevision",
        ] {
            if let Some(v) = p.get(key).and_then(Value::as_str) {
                let _ = writeln!(out, "  {key}: {v}");
            }
        }
    }
    if let Some(traffic) = traffic.filter(|t| !t.is_empty()) {
        let _ = writeln!(out, "Traffic:");
        for t in traffic {
            let tag = t["tag"]
                .as_str()
                .map(|t| format!(" #{t}"))
                .unwrap_or_default();
            let latest = if t["latestRevision"] == true {
                " (latest)"
            } else {
                ""
            };
            let url = t["url"]
                .as_str()
                .map(|u| format!("  {u}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>4}%  {}{tag}{latest}{url}",
                s(&t["percent"]),
                s(&t["revisionName"])
            );
        }
    }
    if let Some(m) = st["modelStatus"].as_object() {
        let _ = writeln!(out, "Model Status:");
        let _ = writeln!(
            out,
            "  Transition:  {}",
            m.get("transitionStatus").map(s).unwrap_or_default()
        );
        if let Some(states) = m.get("states") {
            let _ = writeln!(
                out,
                "  States:      active={} target={}",
                s(&states["activeModelState"]),
                s(&states["targetModelState"])
            );
        }
        if let Some(f) = m.get("lastFailureInfo") {
            let _ = writeln!(
                out,
                "  Last Failure: {}: {}",
                s(&f["reason"]),
                s(&f["message"])
            );
        }
    }
}

/// The conditions table.
fn conditions_section(out: &mut String, st: &Value) {
    let _ = writeln!(out, "Conditions:");
    let conditions = st["conditions"].as_array().cloned().unwrap_or_default();
    if conditions.is_empty() {
        let _ = writeln!(out, "  <none yet>");
    } else {
        let _ = writeln!(
            out,
            "  {:<22}{:<9}{:<24}MESSAGE",
            "TYPE", "STATUS", "REASON"
        );
        for c in &conditions {
            let _ = writeln!(
                out,
                "  {:<22}{:<9}{:<24}{}",
                s(&c["type"]),
                s(&c["status"]),
                s(&c["reason"]),
                s(&c["message"])
            );
        }
    }
}

/// What the object owns, with each one's readiness.
fn owned_section(out: &mut String, owned: &[(Kind, Value)]) {
    if !owned.is_empty() {
        let _ = writeln!(out, "Owns:");
        for (k, child) in owned {
            let ready = child["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map_or_else(|| "Unknown".to_owned(), |c| s(&c["status"]));
            let _ = writeln!(
                out,
                "  {}/{}  Ready={ready}",
                k.name(),
                s(&child["metadata"]["name"])
            );
        }
    }
}

/// The events table.
fn events_section(out: &mut String, events: &[Value]) {
    let _ = writeln!(out, "Events:");
    if events.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        let _ = writeln!(out, "  {:<9}{:<22}{:<8}MESSAGE", "TYPE", "REASON", "AGE");
        for e in events {
            let when = serde_json::json!({"metadata": {"creationTimestamp": e["time"]}});
            let _ = writeln!(
                out,
                "  {:<9}{:<22}{:<8}{}",
                s(&e["type"]),
                s(&e["reason"]),
                age(&when),
                s(&e["message"])
            );
        }
    }
}

/// `sluice describe KIND NAME`.
pub(crate) async fn run(args: DescribeArgs) -> anyhow::Result<()> {
    let admin = if args.kube {
        kube_admin_server().await?
    } else {
        args.admin.admin()?
    };
    let kind = kind(&args.kind)?;
    let ns = if kind.cluster_scoped() {
        ""
    } else {
        args.namespace.as_str()
    };
    let (status, obj) = if kind.cluster_scoped() {
        // Cluster-scoped objects have no namespace segment: find it in the list.
        let (status, list) = admin
            .call(http::Method::GET, &format!("/v1/{}", kind.plural()), None)
            .await?;
        let found = list["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|i| i["metadata"]["name"] == args.name.as_str())
                .cloned()
        });
        match found {
            Some(o) => (status, o),
            None if status.is_success() => {
                anyhow::bail!("{} {} not found", kind.plural(), args.name)
            }
            None => (status, list),
        }
    } else {
        admin
            .call(
                http::Method::GET,
                &format!("/v1/{}/{ns}/{}", kind.plural(), args.name),
                None,
            )
            .await?
    };
    if !status.is_success() {
        return Err(server_error(status, &obj));
    }
    // What it owns, one level down.
    let uid = obj["metadata"]["uid"].clone();
    let mut owned = Vec::new();
    for child in Kind::ALL {
        let (st, list) = admin
            .call(
                http::Method::GET,
                &format!("/v1/{}?namespace={}", child.plural(), args.namespace),
                None,
            )
            .await?;
        if !st.is_success() {
            continue;
        }
        for item in list["items"].as_array().into_iter().flatten() {
            let mine = item["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
            if mine {
                owned.push((child, item.clone()));
            }
        }
    }
    let events_path = format!(
        "/v1/{}/{}/{}/events",
        kind.plural(),
        if ns.is_empty() { "-" } else { ns },
        args.name
    );
    let (st, events) = admin.call(http::Method::GET, &events_path, None).await?;
    let events = if st.is_success() {
        events["items"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    print!("{}", render(kind, &obj, &owned, &events));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_conditions_traffic_and_children() {
        let o = serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default", "labels": {"a": "b"}},
            "status": {"url": "http://hello.default.localhost",
              "traffic": [{"revisionName": "hello-00001", "percent": 100, "latestRevision": true, "tag": "cur", "url": "http://cur-hello.default.localhost"}],
              "conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "boom"}]}
        });
        let child = serde_json::json!({"metadata": {"name": "hello"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let events = [
            serde_json::json!({"type": "Warning", "reason": "RevisionFailed", "message": "boom", "time": "2020-01-01T00:00:00Z"}),
        ];
        let text = render(Kind::Service, &o, &[(Kind::Route, child)], &events);
        assert!(text.contains("Warning  RevisionFailed"), "{text}");
        assert!(text.contains("Labels:       a=b"), "{text}");
        assert!(
            text.contains(" 100%  hello-00001 #cur (latest)  http://cur-hello.default.localhost"),
            "{text}"
        );
        assert!(
            text.contains("Ready                 False    RevisionFailed          boom"),
            "{text}"
        );
        assert!(text.contains("Route/hello  Ready=True"), "{text}");
    }
}
