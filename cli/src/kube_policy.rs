//! The `--kube` backend of `sluice apply/get/delete` for Istio's security policies: the
//! work is `sluice_controller::kube_policy_api`; this connects and prints kubectl-style.

use anyhow::Context;
use serde_json::Value;
use sluice_controller::kube_policies::GROUP;
use sluice_controller::kube_policy_api::{self, Validated};
use sluice_controller::store::kube::infer_client;

pub(crate) use kube_policy_api::validate_all;

/// Applies validated policies; prints one line per object (`created`, `configured`,
/// `unchanged`) and each warning.
pub(crate) async fn apply(docs: Vec<Validated>) -> anyhow::Result<()> {
    if docs.is_empty() {
        return Ok(());
    }
    let client = infer_client().await.context("connecting to Kubernetes")?;
    for applied in kube_policy_api::apply(&client, docs).await? {
        let kind = applied.kind.name();
        for w in &applied.warnings {
            eprintln!("Warning: {kind}/{}: {w}", applied.name);
        }
        println!(
            "{}.{GROUP}/{} {}",
            kind.to_ascii_lowercase(),
            applied.name,
            applied.outcome
        );
    }
    Ok(())
}

/// `GET` of the admin API's shape: one object, or `{"items": [...]}`.
pub(crate) async fn get(
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Value> {
    let client = infer_client().await.context("connecting to Kubernetes")?;
    Ok(kube_policy_api::get(&client, plural, namespace, name).await?)
}

/// Deletes one policy; prints what was deleted.
pub(crate) async fn delete(plural: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let kind = kube_policy_api::delete(&client, plural, namespace, name).await?;
    println!(
        "deleted {}.{GROUP}/{name}",
        kind.name().to_ascii_lowercase()
    );
    Ok(())
}
