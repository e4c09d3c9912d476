//! `sluice apply`, `get` and `delete`: thin clients of the admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;
use sluice_controller::admin::{ApplyRequest, ApplyResult};
use sluice_crds::Kind;

use sluice_server::admin_client::{Admin, DEFAULT_SERVER, kube_admin_server, server_error};
use sluice_server::manifests::manifest_files;

/// Where the admin API of a running `sluice up` is and how to authenticate to it: flags
/// every client command shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct AdminArgs {
    /// Admin API of the running `sluice up`.
    #[arg(long, env = "SLUICE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// The admin API's bearer token; by default read from `<state-dir>/admin-token`.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// State directory of that `sluice up`, where its admin token is.
    #[arg(long, env = "SLUICE_STATE_DIR", default_value = "./.sluice")]
    state_dir: PathBuf,
}

impl AdminArgs {
    /// The admin API these flags name, with its token from `--token`, `SLUICE_TOKEN`, or
    /// the state directory's token file (in that order).
    pub(crate) fn admin(&self) -> anyhow::Result<Admin> {
        Admin::discover(&self.server, self.token.as_deref(), &self.state_dir)
    }
}

/// Flags of `sluice apply`.
#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// Manifest file or folder; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
    /// Use the Kubernetes API of the current kubeconfig instead of `sluice up`.
    #[arg(long, conflicts_with = "server")]
    kube: bool,
}

/// Output formats of `sluice get`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Output {
    /// JSON (`{"items": [...]}` for lists).
    Json,
    /// YAML.
    Yaml,
}

/// Flags of `sluice get`.
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// inferenceservice/isvc, service/ksvc, revision/rev, authorizationpolicy/ap,
    /// peerauthentication/pa, …
    kind: String,
    /// One object's name; all when absent.
    name: Option<String>,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// List across all namespaces (cluster-scoped kinds always are).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format; a table when absent.
    #[arg(short, long, value_enum)]
    output: Option<Output>,
    #[command(flatten)]
    admin: AdminArgs,
    /// Use the Kubernetes API of the current kubeconfig instead of `sluice up`.
    #[arg(long, conflicts_with = "server")]
    kube: bool,
}

/// Flags of `sluice delete`.
#[derive(Args, Debug)]
pub(crate) struct DeleteArgs {
    /// inferenceservice/isvc, service/ksvc, revision/rev, authorizationpolicy/ap,
    /// peerauthentication/pa, …
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

pub(crate) fn kind(name: &str) -> anyhow::Result<Kind> {
    Kind::from_user_name(name).with_context(|| {
        format!("unknown kind {name:?} (known: inferenceservice/isvc, service/ksvc, configuration/config, revision/rev, route/rt, servingruntime, clusterservingruntime, authorizationpolicy/ap, peerauthentication/pa)")
    })
}

/// `sluice apply -f …`.
pub(crate) async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for path in &args.files {
        files.extend(manifest_files(path)?);
    }
    if args.kube {
        // Istio's policies go to the API server directly (validated first, all or nothing,
        // before anything else is applied); the rest through the admin API.
        let (mut rest, mut policy_text) = (Vec::new(), Vec::new());
        for file in files {
            let (policies, others) = sluice_mesh::policy::partition(&file.text);
            policy_text.push(policies);
            if !others.trim().is_empty() {
                rest.push(sluice_controller::admin::ManifestFile {
                    text: others,
                    ..file
                });
            }
        }
        let policies = crate::kube_policy::validate_all(&policy_text.join("\n---\n"))?;
        if !rest.is_empty() {
            let admin = kube_admin_server().await?;
            apply_files(&admin, rest).await?;
        }
        return crate::kube_policy::apply(policies).await;
    }
    apply_files(&args.admin.admin()?, files).await
}

/// Applies manifest files through `admin`.
async fn apply_files(
    admin: &Admin,
    files: Vec<sluice_controller::admin::ManifestFile>,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&ApplyRequest { files })?;
    let (status, resp) = admin
        .call(http::Method::POST, "/v1/apply", Some(body))
        .await?;
    if !status.is_success() {
        if let Some(errors) = resp["errors"].as_array() {
            for e in errors {
                eprintln!("error: {}", e.as_str().unwrap_or_default());
            }
        }
        return Err(server_error(status, &resp));
    }
    let results: Vec<ApplyResult> = serde_json::from_value(resp["results"].clone())
        .context("the admin API answered without apply results")?;
    print_apply_results(&results);
    Ok(())
}

/// One line per object on stdout, kubectl style, with its warnings on stderr.
pub(crate) fn print_apply_results(results: &[ApplyResult]) {
    for r in results {
        if sluice_controller::policies::plural_of(&r.kind).is_some() {
            let outcome = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            print_policy(&r.kind, &r.name, &outcome, &r.warnings);
        } else {
            for w in &r.warnings {
                eprintln!("Warning: {w}");
            }
            println!("{r}");
        }
    }
}

/// [`print_apply_results`] for the policies `sluice up` applied from its folder.
pub(crate) fn print_policy_results(results: &[sluice_controller::policies::PolicyApplied]) {
    for r in results {
        print_policy(&r.kind, &r.name, r.outcome, &r.warnings);
    }
}

/// A policy's line: Istio's kinds are not the controller's, so their group is named here;
/// their warnings are bare field paths, so they say whose.
fn print_policy(kind: &str, name: &str, outcome: &str, warnings: &[String]) {
    for w in warnings {
        eprintln!("Warning: {kind}/{name}: {w}");
    }
    println!(
        "{}.security.istio.io/{name} {outcome}",
        kind.to_ascii_lowercase()
    );
}

/// `sluice get` of a security policy kind (`plural` as the admin API names it): from
/// `sluice up`'s admin API, or with `--kube` from the API server.
async fn get_policies(args: GetArgs, plural: &str) -> anyhow::Result<()> {
    let body = if args.kube {
        let namespace =
            (!args.all_namespaces || args.name.is_some()).then_some(args.namespace.as_str());
        crate::kube_policy::get(plural, namespace, args.name.as_deref()).await?
    } else {
        let path = match &args.name {
            Some(name) => format!("/v1/{plural}/{}/{name}", args.namespace),
            None if args.all_namespaces => format!("/v1/{plural}"),
            None => format!("/v1/{plural}?namespace={}", args.namespace),
        };
        let admin = args.admin.admin()?;
        let (status, body) = admin.call(http::Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(server_error(status, &body));
        }
        body
    };
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&body)?),
        Some(Output::Yaml) => print!("{}", serde_yaml::to_string(&body)?),
        None => {
            let items = match args.name {
                Some(_) => vec![body],
                None => body["items"].as_array().cloned().unwrap_or_default(),
            };
            if items.is_empty() {
                let scope = if args.all_namespaces {
                    "any namespace"
                } else {
                    &args.namespace
                };
                println!("No {plural} found in {scope}.");
                return Ok(());
            }
            print!("{}", policy_table(plural, &items, args.all_namespaces));
        }
    }
    Ok(())
}

/// kubectl's table for policies: NAME, then ACTION (authorization) or MODE (peer
/// authentication), and the selector.
fn policy_table(plural: &str, items: &[Value], with_namespace: bool) -> String {
    let second = if plural == "peerauthentications" {
        "MODE"
    } else {
        "ACTION"
    };
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "NAME".to_owned(),
        second.to_owned(),
        "SELECTOR".to_owned(),
    ]];
    for o in items {
        let spec = &o["spec"];
        let value = if plural == "peerauthentications" {
            spec["mtls"]["mode"].as_str().unwrap_or("UNSET").to_owned()
        } else {
            spec["action"].as_str().unwrap_or("ALLOW").to_owned()
        };
        let selector = spec["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<all>".to_owned());
        rows.push(vec![
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            s(&o["metadata"]["name"]),
            value,
            selector,
        ]);
    }
    let skip = usize::from(!with_namespace);
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = (skip..4)
            .map(|i| format!("{:<w$}", r[i], w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `sluice get KIND [NAME]`.
pub(crate) async fn get(args: GetArgs) -> anyhow::Result<()> {
    if let Some(plural) = sluice_controller::policies::plural_of(&args.kind) {
        return get_policies(args, plural).await;
    }
    let kind = kind(&args.kind)?;
    let admin = if args.kube {
        kube_admin_server().await?
    } else {
        args.admin.admin()?
    };
    let path = match &args.name {
        Some(name) => format!("/v1/{}/{}/{name}", kind.plural(), args.namespace),
        None if args.all_namespaces || kind.cluster_scoped() => {
            format!("/v1/{}", kind.plural())
        }
        None => format!("/v1/{}?namespace={}", kind.plural(), args.namespace),
    };
    let (status, body) = admin.call(http::Method::GET, &path, None).await?;
    if !status.is_success() {
        return Err(server_error(status, &body));
    }
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&body)?),
        Some(Output::Yaml) => print!("{}", serde_yaml::to_string(&body)?),
        None => {
            let items = match args.name {
                Some(_) => vec![body],
                None => body["items"].as_array().cloned().unwrap_or_default(),
            };
            if items.is_empty() {
                println!(
                    "No {} found in {}.",
                    kind.plural(),
                    if args.all_namespaces {
                        "any namespace"
                    } else {
                        &args.namespace
                    }
                );
            } else {
                print_table(kind, &items, args.all_namespaces);
            }
        }
    }
    Ok(())
}

/// `sluice delete KIND NAME`.
pub(crate) async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let plural = match sluice_controller::policies::plural_of(&args.kind) {
        Some(p) if args.kube => {
            return crate::kube_policy::delete(p, &args.namespace, &args.name).await;
        }
        Some(p) => p,
        None => kind(&args.kind)?.plural(),
    };
    let admin = if args.kube {
        kube_admin_server().await?
    } else {
        args.admin.admin()?
    };
    let path = format!("/v1/{}/{}/{}", plural, args.namespace, args.name);
    let (status, body) = admin.call(http::Method::DELETE, &path, None).await?;
    if !status.is_success() {
        return Err(server_error(status, &body));
    }
    for d in body["deleted"].as_array().into_iter().flatten() {
        println!("deleted {}", d.as_str().unwrap_or_default());
    }
    Ok(())
}

pub(crate) fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A table column: its header and how to read it from an object.
type Column = (&'static str, fn(&Value) -> String);

fn ready(o: &Value) -> String {
    condition(o, "Ready").map_or_else(|| "Unknown".into(), |c| s(&c["status"]))
}

fn reason(o: &Value) -> String {
    condition(o, "Ready")
        .map(|c| s(&c["reason"]))
        .unwrap_or_default()
}

/// The percent and revision of the predictor's traffic target matching `pick`.
fn predictor_target(o: &Value, pick: impl Fn(&Value) -> bool) -> Option<&Value> {
    o["status"]["components"]["predictor"]["traffic"]
        .as_array()?
        .iter()
        .find(|t| pick(t))
}

fn is_prev(t: &Value) -> bool {
    t["tag"] == "prev"
}

fn is_latest(t: &Value) -> bool {
    t["latestRevision"] == true
}

/// Age as kubectl prints it (`45s`, `5m12s`, `3h4m`, `2d`).
pub(crate) fn age(o: &Value) -> String {
    let Some(created) = o["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return "<unknown>".into();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(created)
        .map_or(0, |d| d.as_secs());
    human_duration(secs)
}

/// Kubernetes' `HumanDuration`.
pub(crate) fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 && !secs.is_multiple_of(60) => format!("{m}m{}s", secs % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && !m.is_multiple_of(60) => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && !h.is_multiple_of(24) => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 && !d.is_multiple_of(365) => format!("{}y{}d", d / 365, d % 365),
        _ => format!("{}y", d / 365),
    }
}

/// kn's `CONDITIONS`: `3 OK / 3` (and ` 1 ERR`, ` 1 ??` when some are False/Unknown).
fn conditions_summary(o: &Value) -> String {
    let conditions = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let count = |st: &str| conditions.iter().filter(|c| c["status"] == st).count();
    let mut out = format!("{} OK / {}", count("True"), conditions.len());
    if count("False") > 0 {
        out = format!(
            "{} OK / {} {} ERR",
            count("True"),
            conditions.len(),
            count("False")
        );
    }
    out
}

fn columns(kind: Kind) -> Vec<Column> {
    let name: Column = ("NAME", |o| s(&o["metadata"]["name"]));
    let url: Column = ("URL", |o| s(&o["status"]["url"]));
    let age_col: Column = ("AGE", age);
    match kind {
        // `kubectl get isvc`.
        Kind::InferenceService => vec![
            name,
            url,
            ("READY", ready),
            ("PREV", |o| {
                predictor_target(o, is_prev)
                    .map(|t| s(&t["percent"]))
                    .unwrap_or_default()
            }),
            ("LATEST", |o| {
                predictor_target(o, is_latest)
                    .map(|t| s(&t["percent"]))
                    .unwrap_or_default()
            }),
            ("PREVROLLEDOUTREVISION", |o| {
                predictor_target(o, is_prev)
                    .map(|t| s(&t["revisionName"]))
                    .unwrap_or_default()
            }),
            ("LATESTREADYREVISION", |o| {
                predictor_target(o, is_latest)
                    .map(|t| s(&t["revisionName"]))
                    .unwrap_or_default()
            }),
            age_col,
        ],
        // `kn service list`.
        Kind::Service => vec![
            name,
            url,
            ("LATEST", |o| s(&o["status"]["latestReadyRevisionName"])),
            age_col,
            ("CONDITIONS", conditions_summary),
            ("READY", ready),
            ("REASON", reason),
        ],
        Kind::Configuration => vec![
            name,
            ("LATESTCREATED", |o| {
                s(&o["status"]["latestCreatedRevisionName"])
            }),
            ("LATESTREADY", |o| {
                s(&o["status"]["latestReadyRevisionName"])
            }),
            ("READY", ready),
            ("REASON", reason),
        ],
        Kind::Route => vec![name, url, ("READY", ready), ("REASON", reason)],
        // `kn revision list`, plus the replica counts.
        Kind::Revision => vec![
            name,
            ("SERVICE", |o| {
                s(&o["metadata"]["labels"]["serving.knative.dev/service"])
            }),
            ("GENERATION", |o| {
                s(&o["metadata"]["labels"]["serving.knative.dev/configurationGeneration"])
            }),
            age_col,
            ("CONDITIONS", conditions_summary),
            ("READY", ready),
            ("ACTUAL", |o| s(&o["status"]["actualReplicas"])),
            ("DESIRED", |o| s(&o["status"]["desiredReplicas"])),
            ("REASON", reason),
        ],
        // `kubectl get servingruntimes`.
        Kind::ServingRuntime | Kind::ClusterServingRuntime => vec![
            name,
            ("DISABLED", |o| s(&o["spec"]["disabled"])),
            ("MODELTYPE", |o| {
                s(&o["spec"]["supportedModelFormats"][0]["name"])
            }),
            ("CONTAINERS", |o| s(&o["spec"]["containers"][0]["name"])),
            age_col,
        ],
    }
}

fn print_table(kind: Kind, items: &[Value], with_namespace: bool) {
    let mut columns = columns(kind);
    if with_namespace {
        columns.insert(0, ("NAMESPACE", |o| s(&o["metadata"]["namespace"])));
    }
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|o| columns.iter().map(|(_, read)| read(o)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isvc_columns_read_the_predictor_traffic() {
        let o = serde_json::json!({
            "metadata": {"name": "iris"},
            "status": {"url": "http://iris.default.localhost", "conditions": [{"type": "Ready", "status": "True"}],
              "components": {"predictor": {"traffic": [
                {"tag": "latest", "revisionName": "iris-predictor-00002", "latestRevision": true, "percent": 10},
                {"tag": "prev", "revisionName": "iris-predictor-00001", "latestRevision": false, "percent": 90}]}}}
        });
        let cells: Vec<String> = columns(Kind::InferenceService)
            .iter()
            .map(|(_, f)| f(&o))
            .collect();
        assert_eq!(
            cells,
            [
                "iris",
                "http://iris.default.localhost",
                "True",
                "90",
                "10",
                "iris-predictor-00001",
                "iris-predictor-00002",
                "<unknown>"
            ]
        );
        let headers: Vec<&str> = columns(Kind::InferenceService)
            .iter()
            .map(|(h, _)| *h)
            .collect();
        assert_eq!(
            headers,
            [
                "NAME",
                "URL",
                "READY",
                "PREV",
                "LATEST",
                "PREVROLLEDOUTREVISION",
                "LATESTREADYREVISION",
                "AGE"
            ]
        );
        let headers: Vec<&str> = columns(Kind::Service).iter().map(|(h, _)| *h).collect();
        assert_eq!(
            headers,
            [
                "NAME",
                "URL",
                "LATEST",
                "AGE",
                "CONDITIONS",
                "READY",
                "REASON"
            ]
        );
    }

    #[test]
    fn ages_print_as_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(312), "5m12s");
        assert_eq!(human_duration(3600 * 3 + 240), "3h4m");
        assert_eq!(human_duration(86400 * 2), "2d");
        assert_eq!(human_duration(86400 * 3 + 3600 * 5), "3d5h");
    }
}

/// Flags of `sluice ui`.
#[derive(Args, Debug)]
pub(crate) struct UiArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

/// `sluice ui`: prints the link that signs a browser in to the dashboard.
pub(crate) fn ui(args: UiArgs) -> anyhow::Result<()> {
    let admin = args.admin.admin()?;
    eprintln!(
        "Open this link to sign this browser in to the dashboard (it carries the admin token: \
         keep it to yourself):"
    );
    println!("{}", admin.login_link("/ui"));
    Ok(())
}
