//! SLO-gated rollouts (issue 19) through the real `sluice` binary, mesh on (the default),
//! under a closed-loop load, with a replica program Sluice did not write (a threaded Python
//! server behind `sluice queue`) made faulty on purpose per revision:
//!
//! 1. a canary failing one request in four is rolled back within its first step, with no
//!    more than that step's share of requests failing, and none after;
//! 2. a canary 25x slower than the baseline, under the absolute p99 bound, is rolled back by
//!    the comparison with the baseline;
//! 3. a healthy canary moves through the steps with no failed request; `sluice up` is
//!    restarted mid-rollout, the rollout resumes at the step it had reached, and the canary
//!    is promoted; it asks for two replicas but runs one until then (`rollout-max-surge`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use serde_json::Value;
use support::{ECHO_APP, Load, TempDir, Up, request};

const HOST: &str = "pyapp.default.localhost";
const INTERVAL_MS: i64 = 3_000;

/// Service `pyapp` (version `v`) with an SLO-gated rollout of 10 % → 50 % → 100 %, 3 s a
/// step, 10 requests for a verdict, p99 at most 2 s; `env` makes the revision faulty.
fn manifest(app: &std::path::Path, v: u32, env: &[(&str, &str)]) -> String {
    manifest_scaled(app, v, env, 1, None)
}

/// [`manifest`] with `min-scale` replicas and, if given, a surge bound on the canary.
fn manifest_scaled(
    app: &std::path::Path,
    v: u32,
    env: &[(&str, &str)],
    min_scale: u32,
    surge: Option<u32>,
) -> String {
    let surge = surge
        .map(|n| format!("    serving.sluice.dev/rollout-max-surge: \"{n}\"\n"))
        .unwrap_or_default();
    let mut out = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pyapp\n  namespace: default\n\
         \x20 annotations:\n\
         \x20   serving.sluice.dev/rollout-steps: \"10,50,100\"\n\
         \x20   serving.sluice.dev/rollout-step-interval: \"{INTERVAL_MS}ms\"\n\
         \x20   serving.sluice.dev/rollout-min-requests: \"10\"\n\
         \x20   serving.sluice.dev/rollout-max-p99-latency: \"2s\"\n\
         {surge}\
         spec:\n  template:\n    metadata:\n      annotations:\n\
         \x20       autoscaling.knative.dev/min-scale: \"{min_scale}\"\n\
         \x20   spec:\n      containerConcurrency: 10\n      containers:\n\
         \x20     - command: [python3, {}]\n        env:\n        - {{name: VERSION, value: \"v{v}\"}}\n",
        app.display()
    );
    for (k, val) in env {
        out.push_str(&format!("        - {{name: {k}, value: \"{val}\"}}\n"));
    }
    out
}

fn analysis(route: &Value) -> &Value {
    &route["status"]["rolloutAnalysis"]
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Waits until the Route's rollout to `canary` is in `phase`.
fn wait_phase(up: &Up, canary: &str, phase: &str) -> Value {
    up.wait_for("routes", "pyapp", &format!("{canary} {phase}"), |r| {
        analysis(r)["canary"] == canary && analysis(r)["phase"] == phase
    })
}

fn traffic(route: &Value) -> Vec<(String, i64)> {
    route["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap().to_owned(),
                t["percent"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn start(dir: &TempDir) -> Up {
    let up = Up::start(&dir.0, &["--autoscaler-tick", "1s"], "info");
    let warm = request(up.router, "POST", HOST, "/r/warm-up", b"").unwrap();
    assert_eq!(warm.status, 200, "{}", up.log());
    up
}

#[test]
fn faulty_canaries_roll_back_and_a_healthy_one_is_promoted_across_a_restart() {
    let dir = TempDir::new("rollout");
    let app = dir.0.join("app.py");
    std::fs::write(&app, ECHO_APP).unwrap();
    std::fs::write(dir.0.join("manifests/pyapp.yaml"), manifest(&app, 1, &[])).unwrap();
    let up = start(&dir);
    let load = Load::start(up.router, HOST, 4);
    load.run_for(50);

    // 1. Errors: one request in four fails on pyapp-00002.
    let before = load.peek(|t| (t.total(), t.failed()));
    up.apply("v2.yaml", &manifest(&app, 2, &[("FAIL_EVERY", "4")]));
    let route = wait_phase(&up, "pyapp-00002", "RolledBack");
    let during = load.peek(|t| (t.total() - before.0, t.failed() - before.1));
    let a = analysis(&route);
    let verdicts = a["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 1, "judged at its first step: {a:#}");
    assert_eq!(verdicts[0]["percent"], 10);
    assert_eq!(verdicts[0]["passed"], false);
    let judged_after = verdicts[0]["atMs"].as_i64().unwrap() - a["startedAtMs"].as_i64().unwrap();
    assert!(
        judged_after < 2 * INTERVAL_MS,
        "rolled back within one interval (+ the first reading): {judged_after} ms"
    );
    let healthy = condition(&route, "RolloutHealthy");
    assert_eq!(healthy["status"], "False", "{route:#}");
    assert_eq!(healthy["reason"], "RolledBack");
    let message = healthy["message"].as_str().unwrap();
    assert!(
        message.contains("success rate") && message.contains("< 99.0%"),
        "{message}"
    );
    assert_eq!(traffic(&route), [("pyapp-00001".to_owned(), 100)]);
    assert!(
        during.1 * 10 <= during.0,
        "at most the step's share (10 %) of requests failed: {} of {}",
        during.1,
        during.0
    );
    let (_, svc) = up.admin_get("/v1/services/default/pyapp");
    assert_eq!(condition(&svc, "RolloutHealthy")["reason"], "RolledBack");
    // None fail once it is rolled back.
    let failed = load.peek(|t| t.failed());
    load.run_for(100);
    assert_eq!(
        load.peek(|t| t.failed()),
        failed,
        "{:#?}",
        load.peek(|t| t.failures.clone())
    );

    // 2. Latency: pyapp-00003 answers in 500 ms (the baseline in 20 ms), under the 2 s bound.
    up.apply("v3.yaml", &manifest(&app, 3, &[("DELAY_MS", "500")]));
    let route = wait_phase(&up, "pyapp-00003", "RolledBack");
    let a = analysis(&route);
    let message = a["message"].as_str().unwrap();
    assert!(
        message.contains("over the previous revision's"),
        "{message}"
    );
    assert!(!message.contains("> 2000.0 ms"), "{message}");
    assert_eq!(a["baseline"], "pyapp-00001");
    assert_eq!(traffic(&route), [("pyapp-00001".to_owned(), 100)]);

    // 3. Healthy: pyapp-00004, with a restart of `sluice up` at the 50 % step. It asks for
    // two replicas, but the rollout lets the canary run one until it is promoted.
    let failed = load.peek(|t| t.failed());
    let v4 = manifest_scaled(&app, 4, &[], 2, Some(1));
    up.apply("v4.yaml", &v4);
    let route = up.wait_for("routes", "pyapp", "pyapp-00004 at 50 %", |r| {
        analysis(r)["canary"] == "pyapp-00004" && analysis(r)["step"] == 1
    });
    let (_, canary) = up.admin_get("/v1/revisions/default/pyapp-00004");
    assert_eq!(
        canary["status"]["desiredReplicas"], 1,
        "the surge bound: {canary:#}"
    );
    assert_eq!(
        traffic(&route),
        [
            ("pyapp-00001".to_owned(), 50),
            ("pyapp-00004".to_owned(), 50)
        ]
    );
    let tally = load.stop();
    tally.print("healthy canary before the restart");
    assert_eq!(tally.failed(), failed, "{:#?}", tally.failures);
    drop(up);
    // `sluice up` applies its folder first: it holds what was applied last.
    std::fs::write(dir.0.join("manifests/pyapp.yaml"), &v4).unwrap();

    let up = start(&dir);
    let (_, route) = up.admin_get("/v1/routes/default/pyapp");
    let a = analysis(&route);
    assert_eq!(
        (
            a["canary"].as_str(),
            a["step"].as_i64(),
            a["phase"].as_str()
        ),
        (Some("pyapp-00004"), Some(1), Some("Progressing")),
        "resumed at the step it had reached: {a:#}"
    );
    assert_eq!(a["verdicts"].as_array().unwrap().len(), 1);
    let load = Load::start(up.router, HOST, 4);
    let route = wait_phase(&up, "pyapp-00004", "Promoted");
    let tally = load.stop();
    tally.print("healthy canary after the restart");
    assert_eq!(tally.failed(), 0, "{:#?}", tally.failures);
    assert_eq!(traffic(&route), [("pyapp-00004".to_owned(), 100)]);
    let a = analysis(&route);
    let steps: Vec<(i64, bool)> = a["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["percent"].as_i64().unwrap(),
                v["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, [(10, true), (50, true)]);
    assert_eq!(condition(&route, "RolloutHealthy")["status"], "True");
    up.wait_for(
        "revisions",
        "pyapp-00004",
        "two replicas once promoted",
        |r| r["status"]["desiredReplicas"] == 2,
    );
    let shown = up.cli(&["rollout", "status", "pyapp"]);
    assert!(
        shown.contains("pyapp-00001 -> pyapp-00004  Promoted") && shown.contains("passed"),
        "{shown}"
    );
}

/// The dashboard in a real headless browser (Debian's chromium) during a live rollout under
/// load: signed in through the login link, it draws the route, both revisions with their
/// shares and golden signals, the replicas, and the rollout's steps and gates. A screenshot
/// goes to the test output; the page's data is refused without the token.
#[test]
fn the_dashboard_shows_a_live_rollout_under_load() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is installed (.ci/run installs Debian's chromium)");
    let dir = TempDir::new("rollout-ui");
    let app = dir.0.join("app.py");
    std::fs::write(&app, ECHO_APP).unwrap();
    // A long step, so the rollout is still at 10 % when the browser looks.
    let slow = manifest(&app, 1, &[]).replace(&format!("\"{INTERVAL_MS}ms\""), "\"10m\"");
    std::fs::write(dir.0.join("manifests/pyapp.yaml"), &slow).unwrap();
    let up = start(&dir);
    let load = Load::start(up.router, HOST, 4);
    up.apply(
        "v2.yaml",
        &manifest(&app, 2, &[]).replace(&format!("\"{INTERVAL_MS}ms\""), "\"10m\""),
    );
    wait_phase(&up, "pyapp-00002", "Progressing");
    load.until("requests on the canary", |t| {
        t.revisions().get("pyapp-00002").copied().unwrap_or(0) >= 5
    });

    // Without the token the dashboard's data is refused.
    let plain = request(up.admin, "GET", &up.admin.to_string(), "/ui/api/state", b"").unwrap();
    assert_eq!(plain.status, 401);

    let link = up.cli(&["ui"]).trim().to_owned();
    assert!(
        link.contains("/login?token=") && link.ends_with("&next=/ui"),
        "{link}"
    );
    let profile = dir.0.join("chromium-profile");
    let browse = |extra: &[&str]| {
        let out = std::process::Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&link)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    for needle in [
        "data-loaded=\"true\"",
        "data-route=\"pyapp\"",
        "Rollout pyapp-00001 → pyapp-00002",
        "Progressing",
        "90%",
        "10%",
        "req/s",
        "success ≥ 99%",
        "<circle",
        "RolloutStarted",
    ] {
        assert!(dom.contains(needle), "{needle:?} not on the page:\n{dom}");
    }
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-rollout.png");
    browse(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    println!("dashboard screenshot: {}", shot.display());
    let tally = load.stop();
    tally.print("dashboard under load");
    assert_eq!(tally.failed(), 0, "{:#?}", tally.failures);
}

/// An InferenceService whose transformer's new version fails one request in four: with the
/// success-rate gates opened wide, the model error gate (the inference service's own 500s)
/// alone rolls it back, and the InferenceService says so naming the component.
#[test]
fn the_model_error_gate_rolls_back_an_inference_service_component() {
    let dir = TempDir::new("rollout-isvc");
    let app = dir.0.join("app.py");
    std::fs::write(&app, ECHO_APP).unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    let isvc = |v: u32, fail_every: u32| {
        format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: iris\n  namespace: default\n\
             \x20 annotations:\n\
             \x20   serving.sluice.dev/rollout-steps: \"20,100\"\n\
             \x20   serving.sluice.dev/rollout-step-interval: \"{INTERVAL_MS}ms\"\n\
             \x20   serving.sluice.dev/rollout-min-requests: \"10\"\n\
             \x20   serving.sluice.dev/rollout-min-success-rate: \"0\"\n\
             \x20   serving.sluice.dev/rollout-max-success-rate-drop: \"100\"\n\
             spec:\n  predictor:\n    model:\n      modelFormat: {{name: sluice-mlp}}\n      storageUri: {}\n\
             \x20 transformer:\n    containers:\n    - command: [python3, {}]\n      env:\n\
             \x20     - {{name: VERSION, value: \"v{v}\"}}\n      - {{name: FAIL_EVERY, value: \"{fail_every}\"}}\n",
            model.display(),
            app.display()
        )
    };
    std::fs::write(dir.0.join("manifests/iris.yaml"), isvc(1, 0)).unwrap();
    let up = Up::start(&dir.0, &["--autoscaler-tick", "1s"], "info");
    let host = "iris.default.localhost";
    let warm = request(up.router, "POST", host, "/r/warm-up", b"").unwrap();
    assert_eq!(warm.status, 200, "{}", up.log());
    let load = Load::start(up.router, host, 4);
    load.run_for(30);
    up.apply("iris-v2.yaml", &isvc(2, 4));
    let route = up.wait_for(
        "routes",
        "iris-transformer",
        "the transformer rolled back",
        |r| analysis(r)["phase"] == "RolledBack",
    );
    let message = analysis(&route)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("model error rate") && message.contains("> 1.0%"),
        "{message}"
    );
    let failed = &analysis(&route)["verdicts"][0]["failed"];
    assert_eq!(
        failed.as_array().map(Vec::len),
        Some(1),
        "only the model error gate: {failed}"
    );
    assert!(
        failed[0].as_str().unwrap().starts_with("model error rate"),
        "{failed}"
    );
    assert_eq!(
        traffic(&route),
        [("iris-transformer-00001".to_owned(), 100)]
    );
    let isvc = up.wait_for("inferenceservices", "iris", "RolloutHealthy=False", |i| {
        condition(i, "RolloutHealthy")["status"] == "False"
    });
    let c = condition(&isvc, "RolloutHealthy");
    assert_eq!(c["reason"], "RolledBack");
    assert!(
        c["message"].as_str().unwrap().starts_with("transformer: "),
        "{c:#}"
    );
    // The predictor did not change: no rollout there.
    let (_, predictor) = up.admin_get("/v1/routes/default/iris-predictor");
    assert!(analysis(&predictor).is_null(), "{predictor:#}");
    load.stop().print("transformer rollout");
}
