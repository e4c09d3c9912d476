//! `sluice promote ISVC` and `sluice rollback ISVC`: the canary edits KServe users make by
//! hand, as a read-modify-write guarded by `resourceVersion` (retried on conflict).

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use sluice_server::admin_client::server_error;

use crate::client::AdminArgs;

/// Flags of `sluice promote` and `sluice rollback`.
#[derive(Args, Debug)]
pub(crate) struct CanaryArgs {
    /// The InferenceService.
    name: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Which edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edit {
    /// Remove `canaryTrafficPercent`: the latest revision takes all traffic.
    Promote,
    /// `canaryTrafficPercent: 0`: all traffic back to the last rolled-out revision (`prev`).
    Rollback,
}

/// Writes the edit into an InferenceService object; `Ok(false)` when it is already so.
pub(crate) fn edit(isvc: &mut Value, edit: Edit) -> anyhow::Result<bool> {
    let predictor = isvc["spec"]["predictor"]
        .as_object_mut()
        .context("the object has no spec.predictor")?;
    match edit {
        Edit::Promote => Ok(predictor.remove("canaryTrafficPercent").is_some()),
        Edit::Rollback => {
            let rolled_out = &isvc["status"]["components"]["predictor"];
            if rolled_out["latestRolledoutRevision"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                bail!(
                    "nothing to roll back to: no revision of this InferenceService has been \
                     rolled out yet (status.components.predictor.latestRolledoutRevision is empty)"
                );
            }
            let predictor = isvc["spec"]["predictor"]
                .as_object_mut()
                .context("the object has no spec.predictor")?;
            let was = predictor.insert("canaryTrafficPercent".into(), Value::from(0));
            Ok(was != Some(Value::from(0)))
        }
    }
}

/// Runs `promote` or `rollback`.
pub(crate) async fn run(args: CanaryArgs, what: Edit) -> anyhow::Result<()> {
    let admin = args.admin.admin()?;
    let path = format!("/v1/inferenceservices/{}/{}", args.namespace, args.name);
    // A concurrent writer makes our read stale: read again and retry, a few times.
    for _ in 0..5 {
        let (status, mut isvc) = admin.call(http::Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(server_error(status, &isvc));
        }
        if !edit(&mut isvc, what)? {
            println!(
                "inferenceservice.serving.kserve.io/{} unchanged ({})",
                args.name,
                match what {
                    Edit::Promote => "no canary in progress",
                    Edit::Rollback => "already rolled back",
                }
            );
            return Ok(());
        }
        let body = serde_json::to_vec(&isvc)?;
        let (status, resp) = admin.call(http::Method::PUT, &path, Some(body)).await?;
        if status == http::StatusCode::CONFLICT {
            continue;
        }
        if !status.is_success() {
            if let Some(errors) = resp["errors"].as_array() {
                for e in errors {
                    eprintln!("error: {}", e.as_str().unwrap_or_default());
                }
            }
            return Err(server_error(status, &resp));
        }
        println!(
            "inferenceservice.serving.kserve.io/{} {}",
            args.name,
            match what {
                Edit::Promote => "promoted",
                Edit::Rollback => "rolled back",
            }
        );
        return Ok(());
    }
    bail!("{} kept changing under us; try again", args.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_the_canary_field() {
        let mut isvc = serde_json::json!({
            "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {}}},
            "status": {"components": {"predictor": {"latestRolledoutRevision": "iris-predictor-00001"}}}
        });
        assert!(edit(&mut isvc, Edit::Promote).unwrap());
        assert!(
            isvc["spec"]["predictor"]
                .get("canaryTrafficPercent")
                .is_none()
        );
        assert!(!edit(&mut isvc, Edit::Promote).unwrap());
        assert!(edit(&mut isvc, Edit::Rollback).unwrap());
        assert_eq!(isvc["spec"]["predictor"]["canaryTrafficPercent"], 0);
        assert!(!edit(&mut isvc, Edit::Rollback).unwrap());
        let mut fresh = serde_json::json!({"spec": {"predictor": {}}});
        assert!(
            edit(&mut fresh, Edit::Rollback)
                .unwrap_err()
                .to_string()
                .contains("nothing to roll back to")
        );
    }
}
