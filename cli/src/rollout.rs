//! `sluice rollout status NAME [--watch]`: where an SLO-gated rollout stands (the Route's
//! `status.rolloutAnalysis`): the step, the traffic, each judged step's numbers against the
//! gates, and the verdict. `--watch` redraws in place on a terminal until the rollout is
//! promoted (exit 0) or rolled back (exit 1).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::Value;
use sluice_crds::slo_rollout::{
    Gates, Measured, RolloutAnalysis, RolloutPhase, SloRollout, slo_rollout,
};
use sluice_server::admin_client::{Admin, kube_admin_server, server_error};

use crate::client::AdminArgs;

/// `sluice rollout …`.
#[derive(Args, Debug)]
pub(crate) struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Show an SLO-gated rollout: step, traffic, numbers against the gates, verdict.
    Status(StatusArgs),
}

/// Flags of `sluice rollout status`.
#[derive(Args, Debug)]
struct StatusArgs {
    /// The Service, InferenceService or Route.
    name: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Keep showing it until the rollout is promoted or rolled back.
    #[arg(short, long)]
    watch: bool,
    #[command(flatten)]
    admin: AdminArgs,
    /// Use the Kubernetes API of the current kubeconfig instead of `sluice up`.
    #[arg(long, conflicts_with = "server")]
    kube: bool,
}

/// Runs `sluice rollout`.
pub(crate) async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let RolloutCommand::Status(args) = args.command;
    let admin = if args.kube {
        kube_admin_server().await?
    } else {
        args.admin.admin()?
    };
    let terminal = std::io::stdout().is_terminal();
    let mut drawn = String::new();
    loop {
        let routes = routes_of(&admin, &args.namespace, &args.name).await?;
        let frame = render(&args.name, &routes);
        if frame != drawn {
            let mut out = std::io::stdout().lock();
            if terminal && !drawn.is_empty() {
                // Back to the top of the previous frame, and clear below.
                write!(out, "\x1b[{}A\x1b[J", drawn.lines().count())?;
            } else if !drawn.is_empty() {
                writeln!(out)?;
            }
            write!(out, "{frame}")?;
            out.flush()?;
            drawn = frame;
        }
        let phases: Vec<RolloutPhase> = routes
            .iter()
            .filter_map(|(_, r)| r.analysis.as_ref().map(|a| a.phase))
            .collect();
        if !args.watch {
            return Ok(());
        }
        let progressing = |r: &RouteView| {
            r.analysis
                .as_ref()
                .is_some_and(|a| a.phase == RolloutPhase::Progressing)
        };
        let waiting = match routes.iter().find(|(_, r)| r.pending().is_some()) {
            Some(pending) => pending,
            None if phases.contains(&RolloutPhase::RolledBack) => {
                bail!("the rollout was rolled back")
            }
            None => match routes.iter().find(|(_, r)| progressing(r)) {
                Some(progressing) => progressing,
                None => return Ok(()),
            },
        };
        let (route, view) = waiting;
        // The admin API's long poll: back as soon as the Route changes (the controller
        // rewrites its progress every few seconds), or after WATCH_POLL.
        let path = format!(
            "/v1/routes/{}/{route}?after={}&timeout={}",
            args.namespace,
            view.version,
            WATCH_POLL.as_secs()
        );
        get(&admin, &path).await?;
    }
}

/// The longest one `--watch` long poll waits for the Route to change.
const WATCH_POLL: Duration = Duration::from_secs(10);

/// One Route's rollout as read from the admin API.
struct RouteView {
    analysis: Option<RolloutAnalysis>,
    config: Option<SloRollout>,
    traffic: Vec<(String, i64, String)>,
    inference: bool,
    /// The newest revision of the configuration the Route follows.
    latest_created: Option<String>,
    /// The Route's `resourceVersion` as read.
    version: String,
}

impl RouteView {
    /// The newest revision when its rollout has not started yet (it is not ready).
    fn pending(&self) -> Option<&str> {
        let latest = self.latest_created.as_deref()?;
        self.config.as_ref()?;
        let known = self.traffic.iter().any(|(r, _, _)| r == latest)
            || self.analysis.as_ref().is_some_and(|a| a.canary == latest);
        (!known).then_some(latest)
    }
}

async fn get(admin: &Admin, path: &str) -> anyhow::Result<Option<Value>> {
    let (status, body) = admin.call(http::Method::GET, path, None).await?;
    if status == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(server_error(status, &body));
    }
    Ok(Some(body))
}

/// The Routes behind `name`: an InferenceService's component Routes, a Service's Route, or
/// the Route itself.
async fn routes_of(
    admin: &Admin,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, RouteView)>> {
    let mut names = Vec::new();
    if let Some(isvc) = get(admin, &format!("/v1/inferenceservices/{namespace}/{name}")).await? {
        names.push(format!("{name}-predictor"));
        if isvc["spec"].get("transformer").is_some() {
            names.push(format!("{name}-transformer"));
        }
    } else {
        names.push(name.to_owned());
    }
    let mut out = Vec::new();
    for route in names {
        let Some(obj) = get(admin, &format!("/v1/routes/{namespace}/{route}")).await? else {
            continue;
        };
        let mut v = view(&obj);
        // A Service's (or component's) Route follows the Configuration of its own name.
        if let Some(config) = get(admin, &format!("/v1/configurations/{namespace}/{route}")).await?
        {
            v.latest_created = config["status"]["latestCreatedRevisionName"]
                .as_str()
                .map(str::to_owned);
        }
        out.push((route, v));
    }
    if out.is_empty() {
        bail!("no Service, InferenceService or Route {name:?} in namespace {namespace:?}");
    }
    Ok(out)
}

fn view(route: &Value) -> RouteView {
    let annotations =
        serde_json::from_value(route["metadata"]["annotations"].clone()).unwrap_or_default();
    RouteView {
        analysis: serde_json::from_value(route["status"]["rolloutAnalysis"].clone()).ok(),
        config: slo_rollout(&annotations).ok().flatten(),
        traffic: route["status"]["traffic"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["revisionName"].as_str().unwrap_or_default().to_owned(),
                    t["percent"].as_i64().unwrap_or_default(),
                    t["tag"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        inference: route["metadata"]["labels"]
            .get(sluice_crds::inference_service::INFERENCE_SERVICE_LABEL)
            .is_some(),
        latest_created: None,
        version: route["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

fn numbers(m: &Measured, inference: bool) -> String {
    let p99 = m.p99_us.map_or_else(
        || "-".to_owned(),
        |us| format!("{:.1} ms", us as f64 / 1000.0),
    );
    let mut s = format!(
        "{:>6} req  {:>6} ok  p99 {:>9}",
        m.requests,
        pct(m.success_rate()),
        p99
    );
    if inference {
        s.push_str(&format!("  model err {:>5}", pct(m.model_error_rate())));
    }
    s
}

fn gates_line(g: &Gates, inference: bool) -> String {
    let mut parts = vec![
        format!("success >= {}", pct(g.min_success_rate)),
        format!(
            "and >= baseline - {:.1} pt",
            g.max_success_rate_drop * 100.0
        ),
    ];
    if let Some(max) = g.max_p99 {
        parts.push(format!("p99 <= {} ms", max.as_millis()));
    }
    parts.push(format!(
        "p99 <= baseline + {:.0}%",
        g.max_p99_increase * 100.0
    ));
    if inference {
        parts.push(format!("model errors <= {}", pct(g.max_model_error_rate)));
    }
    parts.push(format!("at least {} requests a step", g.min_requests));
    parts.join(", ")
}

/// The text shown for `name`'s Routes.
fn render(name: &str, routes: &[(String, RouteView)]) -> String {
    let mut out = String::new();
    for (route, v) in routes {
        if let Some(latest) = v.pending() {
            out.push_str(&format!(
                "{route}: waiting for {latest} to become ready before its rollout starts\n"
            ));
        }
        let Some(a) = &v.analysis else {
            let why = if v.config.is_some() {
                "no rollout yet (the first revision takes the traffic at once)"
            } else {
                "not an SLO-gated rollout (no serving.sluice.dev/rollout-steps annotation)"
            };
            out.push_str(&format!("{route}: {why}\n"));
            continue;
        };
        let phase = match a.phase {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Promoted => "Promoted",
            RolloutPhase::RolledBack => "RolledBack",
        };
        let title = if route == name {
            route.clone()
        } else {
            format!("{name} ({route})")
        };
        out.push_str(&format!(
            "{title}: {} -> {}  {phase}\n",
            a.baseline, a.canary
        ));
        let steps: Vec<String> = a
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == a.step as usize && a.phase == RolloutPhase::Progressing {
                    format!("[{s}%]")
                } else {
                    format!("{s}%")
                }
            })
            .collect();
        out.push_str(&format!("  steps    {}\n", steps.join(" -> ")));
        let traffic: Vec<String> = v
            .traffic
            .iter()
            .map(|(rev, p, tag)| {
                if tag.is_empty() {
                    format!("{rev} {p}%")
                } else {
                    format!("{rev} {p}% #{tag}")
                }
            })
            .collect();
        out.push_str(&format!("  traffic  {}\n", traffic.join(", ")));
        if let Some(c) = &v.config {
            out.push_str(&format!(
                "  gates    {} (every {}s)\n",
                gates_line(&c.gates, v.inference),
                c.interval.as_secs_f64()
            ));
        }
        for verdict in &a.verdicts {
            out.push_str(&format!(
                "  {:>4}%   canary {}{}  {}\n",
                verdict.percent,
                numbers(&verdict.canary, v.inference),
                verdict
                    .baseline
                    .as_ref()
                    .map(|b| format!("  | baseline {}", numbers(b, v.inference)))
                    .unwrap_or_default(),
                if verdict.passed { "passed" } else { "FAILED" }
            ));
            for f in &verdict.failed {
                out.push_str(&format!("          - {f}\n"));
            }
        }
        out.push_str(&format!("  {}\n", a.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_steps_traffic_verdicts_and_the_message() {
        let route = serde_json::json!({
            "metadata": {"annotations": {"serving.sluice.dev/rollout-steps": "10,50,100"}},
            "status": {
                "traffic": [
                    {"revisionName": "hello-00001", "percent": 50},
                    {"revisionName": "hello-00002", "percent": 50}
                ],
                "rolloutAnalysis": {
                    "configurationName": "hello", "percent": 100,
                    "baseline": "hello-00001", "canary": "hello-00002",
                    "steps": [10, 50, 100], "step": 1, "phase": "Progressing",
                    "startedAtMs": 0,
                    "verdicts": [{"percent": 10, "passed": true, "atMs": 1,
                        "canary": {"requests": 40, "errors": 0, "modelErrors": 0, "p99Us": 4900},
                        "baseline": {"requests": 360, "errors": 0, "modelErrors": 0, "p99Us": 4800}}],
                    "message": "step 2/3 (50%): measuring, 12 requests so far"
                }
            }
        });
        let text = render("hello", &[("hello".into(), view(&route))]);
        assert!(
            text.contains("hello: hello-00001 -> hello-00002  Progressing"),
            "{text}"
        );
        assert!(text.contains("10% -> [50%] -> 100%"), "{text}");
        assert!(text.contains("hello-00002 50%"), "{text}");
        assert!(text.contains("success >= 99.0%"), "{text}");
        assert!(text.contains("40 req") && text.contains("passed"), "{text}");
        assert!(text.contains("measuring, 12 requests"), "{text}");
        let plain = render("x", &[("x".into(), view(&serde_json::json!({})))]);
        assert!(plain.contains("not an SLO-gated rollout"), "{plain}");
    }
}
