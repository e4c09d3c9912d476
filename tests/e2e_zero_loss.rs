//! The zero-loss scenario suite (issue 14): the real `sluice` binary, mesh on (the default)
//! and off, a replica program not written by Sluice (a threaded Python server behind
//! `sluice queue`), and the situations users hit under load:
//!
//! * a burst of 500 requests onto a revision at zero;
//! * scale-up under load at `containerConcurrency` 1 and 10;
//! * scale-down under load;
//! * a replica's process killed with SIGKILL under load;
//! * a new revision taking a 50/50 split, then 100 %, under load;
//! * certificate rotation under load (a 4 s certificate life), mesh on;
//! * a policy change under load, mesh on.
//!
//! Every request posts a body of its own (0–16 KiB) that the replica hashes and echoes: a
//! request counts as served only with a 200, the replica's SHA-256 of what it received equal
//! to the sender's, and the echoed body identical. Every other outcome is counted by cause
//! and printed; each scenario says which ones the semantics document allows (none, except
//! where it says so). Each scenario is bounded in requests and time (see [`support::WAIT`]);
//! they run one at a time, so that one's load does not change another's scaling.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod support;

use std::path::Path;
use std::sync::Mutex;

use support::{ECHO_APP, Load, Tally, TempDir, Up, alive, burst, request};

const HOST: &str = "pyapp.default.localhost";

/// One scenario at a time (their loads would change each other's scaling).
static SERIAL: Mutex<()> = Mutex::new(());

/// A Service `pyapp` running [`ECHO_APP`] with `containerConcurrency: cc`, the given
/// revision annotations, environment, and `spec.traffic` (YAML lines, indented by 2).
fn service(app: &Path, cc: u32, annotations: &[(&str, &str)], env: &[(&str, &str)]) -> String {
    service_with_traffic(app, cc, annotations, env, "")
}

fn service_with_traffic(
    app: &Path,
    cc: u32,
    annotations: &[(&str, &str)],
    env: &[(&str, &str)],
    traffic: &str,
) -> String {
    let mut out = String::from(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: pyapp, namespace: default}\n\
         spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"6s\"\n",
    );
    for (k, v) in annotations {
        out.push_str(&format!("        autoscaling.knative.dev/{k}: \"{v}\"\n"));
    }
    out.push_str(&format!(
        "    spec:\n      containerConcurrency: {cc}\n      containers:\n      - command: [python3, {}]\n        env:\n        - {{name: DELAY_MS, value: \"20\"}}\n",
        app.display()
    ));
    for (k, v) in env {
        out.push_str(&format!("        - {{name: {k}, value: \"{v}\"}}\n"));
    }
    out.push_str(traffic);
    out
}

/// A test's folder with the app written into it.
fn setup(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let app = dir.0.join("app.py");
    std::fs::write(&app, ECHO_APP).unwrap();
    (dir, app)
}

fn mesh_flag(mesh: bool) -> &'static str {
    if mesh { "--mesh=on" } else { "--mesh=off" }
}

/// `sluice up` with the manifest already in its folder, and one request through it (the
/// activator holds it until the first replica is ready).
fn up_with_service(dir: &TempDir, mesh: bool, manifest: &str, extra: &[&str]) -> Up {
    std::fs::write(dir.0.join("manifests/pyapp.yaml"), manifest).unwrap();
    let mut flags = vec![mesh_flag(mesh), "--autoscaler-tick", "1s"];
    flags.extend_from_slice(extra);
    let up = Up::start(&dir.0, &flags, "info");
    let warm = request(up.router, "POST", HOST, "/r/warm-up", b"").unwrap();
    assert_eq!(
        warm.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&warm.body),
        up.log()
    );
    up
}

/// No failure of any cause, and the caller attestation never reached the user process.
fn assert_zero_loss(tally: &Tally, up: &Up) {
    assert_eq!(
        tally.failed(),
        0,
        "every request gets a 200 with its body intact: {:#?}\n--- sluice up log (end):\n{}",
        tally.failures,
        tail(&up.log(), 60)
    );
    assert_eq!(
        tally.leaked(),
        0,
        "the caller attestation reached a user process"
    );
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The scenarios, each run with the mesh on and off.

/// 500 requests at once onto a revision at zero (`initial-scale: 0`): the activator buffers
/// them all (its queue holds 1000) and releases them as replicas come up.
fn burst_from_zero(mesh: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-burst");
    let manifest = service(
        &app,
        10,
        &[("initial-scale", "0"), ("max-scale", "30")],
        &[],
    );
    std::fs::write(dir.0.join("manifests/pyapp.yaml"), manifest).unwrap();
    let up = Up::start(
        &dir.0,
        &[
            mesh_flag(mesh),
            "--autoscaler-tick",
            "1s",
            "--allow-zero-initial-scale",
        ],
        "info",
    );
    // `sluice up` announces its router once its first pass has published the routes; with
    // `initial-scale: 0` no replica has been started by then.
    let started = "sluice_controller::runtime::local: started replica";
    assert!(!up.log().contains(started), "{}", up.log());
    let tally = burst(up.router, HOST, 500);
    assert!(up.log().contains(started), "the burst started a replica");
    tally.print(&format!("burst of 500 from zero, mesh {mesh}"));
    assert_eq!(tally.total(), 500);
    assert_zero_loss(&tally, &up);
}

/// Closed-loop load from `clients` clients on a revision with `containerConcurrency: cc`
/// and one replica: it must scale up to at least 3 replicas without a request lost.
fn scale_up(mesh: bool, cc: u32, clients: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-scale-up");
    let up = up_with_service(
        &dir,
        mesh,
        &service(&app, cc, &[("min-scale", "1"), ("max-scale", "20")], &[]),
        &[],
    );
    let load = Load::start(up.router, HOST, clients);
    load.until("3 replicas serving", |t| t.pids().len() >= 3);
    load.run_for(200);
    let tally = load.stop();
    tally.print(&format!(
        "scale-up at cc={cc}, {clients} clients, mesh {mesh}"
    ));
    assert_zero_loss(&tally, &up);
}

/// Scaled up under heavy load, then the load drops to 2 clients, which go on sending while
/// replicas are drained and stopped: none of their requests may be lost.
fn scale_down(mesh: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-scale-down");
    let up = up_with_service(
        &dir,
        mesh,
        &service(&app, 1, &[("min-scale", "1"), ("max-scale", "20")], &[]),
        &[],
    );
    let load = Load::start(up.router, HOST, 24);
    load.until("4 replicas serving", |t| t.pids().len() >= 4);
    load.run_for(200);
    let busy = load.peek(|t| t.pids());
    load.set_clients(2);
    load.until("a replica stopped after the load dropped", |_| {
        busy.iter().any(|pid| !alive(*pid))
    });
    load.run_for(100);
    let tally = load.stop();
    let stopped = busy.iter().filter(|pid| !alive(**pid)).count();
    tally.print(&format!(
        "scale-down under load, mesh {mesh}: {stopped} of {} replicas stopped",
        busy.len()
    ));
    assert_zero_loss(&tally, &up);
}

/// Under load, the user process of one of three replicas is killed with SIGKILL. The
/// requests it was serving are lost with it: at most `containerConcurrency` of them, each
/// answered 502 (the semantics' "upstream failure"), never a hang or a cut body. Every
/// other request must be served, and the revision must go on serving.
fn replica_killed(mesh: bool) {
    const CC: u32 = 4;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-kill");
    let up = up_with_service(
        &dir,
        mesh,
        &service(&app, CC, &[("min-scale", "3"), ("max-scale", "6")], &[]),
        &[],
    );
    let load = Load::start(up.router, HOST, 12);
    load.until("3 replicas serving", |t| t.pids().len() >= 3);
    load.run_for(100);
    let victim = load.peek(|t| t.served.last().unwrap().pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    load.run_for(400);
    let tally = load.stop();
    tally.print(&format!("SIGKILL of a replica under load, mesh {mesh}"));
    let served_after_kill = tally.served.iter().rev().take(300).all(|s| s.pid != victim);
    assert!(served_after_kill, "the killed replica still 'served'");
    let allowed: usize = tally
        .failures
        .iter()
        .filter(|(what, _)| what.starts_with("502"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        allowed,
        tally.failed(),
        "only the killed process's requests may fail, each with a 502: {:#?}\n{}",
        tally.failures,
        tail(&up.log(), 60)
    );
    assert!(
        tally.failed() <= CC as usize,
        "at most cc = {CC} requests were on the killed process: {:#?}\n{}",
        tally.failures,
        tail(&up.log(), 80)
    );
    assert_eq!(tally.leaked(), 0);
}

/// A new revision under load: first a 50/50 split between the old and the new revision,
/// then the new one at 100 %. No request is lost at either switch, the split is about even,
/// and after the second switch only the new revision answers.
fn rollout(mesh: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-rollout");
    let annotations = [("min-scale", "1"), ("max-scale", "10")];
    let up = up_with_service(&dir, mesh, &service(&app, 10, &annotations, &[]), &[]);
    let load = Load::start(up.router, HOST, 16);
    load.run_for(100);

    let split = "  traffic:\n  - {revisionName: pyapp-00001, percent: 50}\n  - {latestRevision: true, percent: 50}\n";
    up.apply(
        "split.yaml",
        &service_with_traffic(&app, 10, &annotations, &[("VERSION", "2")], split),
    );
    load.until("the new revision answering", |t| {
        t.served.iter().any(|s| s.revision == "pyapp-00002")
    });
    let start = load.done();
    load.run_for(400);
    let (old, new) = load.peek(|t| {
        let window = &t.served[start.min(t.served.len())..];
        let new = window
            .iter()
            .filter(|s| s.revision == "pyapp-00002")
            .count();
        (window.len() - new, new)
    });
    println!("50/50 split, mesh {mesh}: {old} from pyapp-00001, {new} from pyapp-00002");

    up.apply(
        "all.yaml",
        &service(&app, 10, &annotations, &[("VERSION", "2")]),
    );
    // Requests sent before the switch may still answer from the old revision; once 400
    // more have been answered, the last 200 must all be the new revision's.
    load.run_for(400);
    let tally = load.stop();
    tally.print(&format!("rollout 50/50 then 100 %, mesh {mesh}"));
    assert_zero_loss(&tally, &up);
    let share = new as f64 / (old + new) as f64;
    assert!(
        (0.35..=0.65).contains(&share),
        "a 50/50 split sent {new} of {} to the new revision",
        old + new
    );
    let last: Vec<&str> = tally.served[tally.served.len() - 200..]
        .iter()
        .map(|s| s.revision.as_str())
        .collect();
    assert!(
        last.iter().all(|r| *r == "pyapp-00002"),
        "after the switch to 100 % the old revision still answered: {last:?}"
    );
}

/// Certificates that live 4 s, so every identity (router, activator, replicas) renews about
/// every 2 s while the load runs: no request may be lost to a handshake or a rotation.
fn certificate_rotation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-rotation");
    std::fs::write(
        dir.0.join("manifests/pyapp.yaml"),
        service(&app, 10, &[("min-scale", "2"), ("max-scale", "6")], &[]),
    )
    .unwrap();
    let up = Up::start(
        &dir.0,
        &["--mesh=on", "--autoscaler-tick", "1s", "--cert-ttl", "4s"],
        "info,sluice_mesh::identity::rotate=debug",
    );
    let warm = request(up.router, "POST", HOST, "/r/warm-up", b"").unwrap();
    assert_eq!(warm.status, 200, "{}", up.log());
    let renewals = |up: &Up| up.log().matches("certificate renewed").count();
    let before = renewals(&up);
    let load = Load::start(up.router, HOST, 16);
    load.until("six renewals under load", |_| renewals(&up) >= before + 6);
    load.run_for(200);
    let tally = load.stop();
    tally.print(&format!(
        "certificate rotation under load: {} renewals",
        renewals(&up) - before
    ));
    assert_zero_loss(&tally, &up);
}

/// Security policies change under load: a DENY for another path is applied and then deleted.
/// The denied path gets 403 while it is in force, and the load on the allowed paths loses
/// nothing through either change.
fn policy_change() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, app) = setup("zero-loss-policy");
    let up = up_with_service(
        &dir,
        true,
        &service(&app, 10, &[("min-scale", "2"), ("max-scale", "6")], &[]),
        &[],
    );
    let load = Load::start(up.router, HOST, 16);
    load.run_for(100);
    let said = up.apply(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: no-admin, namespace: default}\n\
         spec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n",
    );
    assert!(said.contains("no-admin created"), "{said}");
    let denied = |status: u16| {
        let deadline = std::time::Instant::now() + support::WAIT;
        loop {
            let r = request(up.router, "GET", HOST, "/admin", b"").unwrap();
            if r.status == status {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/admin never answered {status}"
            );
            load.run_for(10);
        }
    };
    let r = denied(403);
    assert_eq!(String::from_utf8_lossy(&r.body), "RBAC: access denied");
    load.run_for(100);
    up.cli(&["delete", "authorizationpolicy", "no-admin"]);
    denied(200);
    load.run_for(100);
    let tally = load.stop();
    tally.print("policy change under load");
    assert_zero_loss(&tally, &up);
}

#[test]
fn burst_of_500_from_zero_mesh_on() {
    burst_from_zero(true);
}

#[test]
fn burst_of_500_from_zero_mesh_off() {
    burst_from_zero(false);
}

#[test]
fn scale_up_at_cc1_mesh_on() {
    scale_up(true, 1, 30);
}

#[test]
fn scale_up_at_cc1_mesh_off() {
    scale_up(false, 1, 30);
}

#[test]
fn scale_up_at_cc10_mesh_on() {
    scale_up(true, 10, 60);
}

#[test]
fn scale_up_at_cc10_mesh_off() {
    scale_up(false, 10, 60);
}

#[test]
fn scale_down_under_load_mesh_on() {
    scale_down(true);
}

#[test]
fn scale_down_under_load_mesh_off() {
    scale_down(false);
}

#[test]
fn replica_killed_under_load_mesh_on() {
    replica_killed(true);
}

#[test]
fn replica_killed_under_load_mesh_off() {
    replica_killed(false);
}

#[test]
fn rollout_split_then_full_under_load_mesh_on() {
    rollout(true);
}

#[test]
fn rollout_split_then_full_under_load_mesh_off() {
    rollout(false);
}

#[test]
fn certificate_rotation_under_load() {
    certificate_rotation();
}

#[test]
fn policy_change_under_load() {
    policy_change();
}
