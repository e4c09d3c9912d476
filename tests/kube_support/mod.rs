//! Support for the Kubernetes tier: a real control plane started by
//! `scripts/kube-cluster` (stopped on drop), a client on it, the CRDs, `sluice controller
//! --kube` children (killed on drop), and polling with backoff under a bounded deadline.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::Value;
use tokio::time::Instant;

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// How long anything in the tier may take to converge.
pub const DEADLINE: Duration = Duration::from_secs(180);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cluster script: `SLUICE_KUBE_CLUSTER` or the repo's.
fn script() -> PathBuf {
    std::env::var_os("SLUICE_KUBE_CLUSTER")
        .map_or_else(|| repo().join("scripts/kube-cluster"), PathBuf::from)
}

/// A control plane on loopback; stopped (exactly its PIDs) on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn start(tag: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "sluice-kube-{tag}-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        let status = Command::new(script())
            .arg("start")
            .arg(&dir)
            // The cluster stops itself should this test process die without dropping it.
            .env("KUBE_CLUSTER_OWNER_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("scripts/kube-cluster runs");
        let cluster = Cluster {
            kubeconfig: dir.join("kubeconfig"),
            dir,
        };
        assert!(
            status.success(),
            "scripts/kube-cluster start failed: {status}"
        );
        cluster
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("client config");
        Client::try_from(config).expect("client")
    }

    /// `sluice ARGS` against this cluster: (success, stdout, stderr).
    pub fn sluice(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(SLUICE)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("sluice runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl ARGS` (the cluster's own build) as cluster-admin; panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let env = std::fs::read_to_string(self.dir.join("env")).unwrap();
        let bin = env
            .lines()
            .find_map(|l| l.strip_prefix("KUBE_BIN="))
            .expect("KUBE_BIN in the cluster's env")
            .trim_matches(['"', '\'']);
        let out = Command::new(Path::new(bin).join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `sluice controller --kube` as `identity`, with a short lease.
    pub fn controller(&self, identity: &str) -> ControllerProc {
        self.controller_with(identity, &self.kubeconfig, &[])
    }

    /// Starts `sluice controller --kube` as `identity` with another kubeconfig and flags.
    pub fn controller_with(
        &self,
        identity: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> ControllerProc {
        let log = self.dir.join(format!("controller-{identity}.log"));
        let out = self.dir.join(format!("controller-{identity}.out"));
        let child = Command::new(SLUICE)
            .args([
                "controller",
                "--kube",
                "--identity",
                identity,
                "--lease-duration",
                "3s",
                "--renew-deadline",
                "2s",
                "--retry-period",
                "250ms",
                "--image",
                "sluice:test",
                // kwok's Pod IPs are data only: nothing may dial them.
                "--scrape-stats",
                "false",
                "--scale-to-zero-grace",
                "600s",
                // Every replica serves the mesh CA; on loopback, a free port.
                "--mesh-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("SLUICE_LOG", "info,sluice_controller=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("sluice controller starts");
        ControllerProc {
            child,
            log,
            out,
            graceful: false,
        }
    }
}

impl Cluster {
    /// Starts `sluice ARGS` (a long-running component, e.g. `router --kube`) on this
    /// cluster; its stdout and log go to `DIR/NAME.out` and `DIR/NAME.log`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> ControllerProc {
        self.spawn_with_env(name, args, &[])
    }

    /// [`Cluster::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProc {
        let log = self.dir.join(format!("{name}.log"));
        let out = self.dir.join(format!("{name}.out"));
        let child = Command::new(SLUICE)
            .args(args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("SLUICE_LOG", "info,sluice=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("sluice starts");
        ControllerProc {
            child,
            log,
            out,
            graceful: false,
        }
    }
}

impl Cluster {
    /// A token of ServiceAccount `ns/sa` from the API server's TokenRequest (10 minutes),
    /// for `audience` (the API server's own when `None`), written to `DIR/<file>`.
    pub fn token_file(&self, ns: &str, sa: &str, audience: Option<&str>, file: &str) -> PathBuf {
        let mut args = vec!["create", "token", sa, "-n", ns, "--duration", "10m"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        let token = self.kubectl(&args);
        let path = self.dir.join(file);
        std::fs::write(&path, token.trim()).unwrap();
        path
    }
}

impl ControllerProc {
    /// The mesh CA's `host:port` this controller printed.
    pub async fn mesh_ca(&self) -> String {
        self.printed("sluice: controller mesh CA on https://").await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
    }
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}", t.as_nanos())
}

/// A `sluice controller --kube` child; killed (by its PID) on drop.
pub struct ControllerProc {
    pub child: Child,
    pub log: PathBuf,
    pub out: PathBuf,
    /// Stopped with SIGTERM on drop (a process with children of its own, e.g. `sluice
    /// queue`, which stops its user process then); SIGKILL otherwise.
    pub graceful: bool,
}

impl ControllerProc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    /// The rest of the first stdout line that starts with `prefix`, once it is printed.
    pub async fn printed(&self, prefix: &str) -> String {
        eventually(&format!("{prefix:?} on {}", self.out.display()), || async {
            self.stdout()
                .lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
        })
        .await
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControllerProc {
    /// SIGTERM, then waits (polling with backoff, at most 10 s) for the exit; SIGKILL after.
    pub fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let mut delay = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(delay);
            waited += delay;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        self.kill();
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        if self.graceful {
            self.terminate();
        } else {
            self.kill();
        }
    }
}

/// Polls `f` with backoff (50 ms doubling to 1 s) until it gives a value, failing with
/// `what` after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

pub fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// An API of a Sluice kind in `default`.
pub fn api(client: &Client, kind: sluice_crds::Kind) -> Api<DynamicObject> {
    let (group, version) = kind.api_version().split_once('/').unwrap();
    let ar = resource(group, version, kind.name(), kind.plural());
    if kind.cluster_scoped() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), "default", &ar)
    }
}

/// Installs every CRD of `crds/yaml` and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let ar = resource(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut names = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join("crds/yaml"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        crds.patch(
            &name,
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        names.push(name);
    }
    for name in names {
        eventually(&format!("CRD {name} Established"), || async {
            let crd = crds.get(&name).await.ok()?;
            condition(&serde_json::to_value(&crd).ok()?, "Established").then_some(())
        })
        .await;
    }
}

/// Whether a condition of `type_` is `True` in `v.status.conditions`.
pub fn condition(v: &Value, type_: &str) -> bool {
    v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

/// The object as JSON, once it exists.
pub async fn get(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|o| serde_json::to_value(o).ok())
}

/// Waits until `name` has `Ready=True`, and returns it.
pub async fn ready(api: &Api<DynamicObject>, what: &str, name: &str) -> Value {
    eventually(&format!("{what} {name} Ready=True"), || async {
        get(api, name).await.filter(|v| condition(v, "Ready"))
    })
    .await
}

impl Cluster {
    /// Stops kube-apiserver (TERM) and starts it again with the same arguments; the new
    /// process is added to the cluster's PID file, so `stop` ends it. Returns once the old
    /// one has exited (the caller waits for the new one to answer).
    pub async fn restart_apiserver(&self) {
        let pids = std::fs::read_to_string(self.dir.join("pids")).unwrap();
        let (pid, args) = pids
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.first()?
                    .ends_with("/kube-apiserver")
                    .then_some((pid, args))
            })
            .expect("the cluster's kube-apiserver");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        eventually("kube-apiserver to exit", || async {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .await;
        let log = std::fs::File::create(self.dir.join("kube-apiserver-restarted.log")).unwrap();
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver restarts");
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("pids"))
            .unwrap();
        std::io::Write::write_all(&mut pids, format!("{}\n", child.id()).as_bytes()).unwrap();
        // `kube-cluster stop` ends it; this thread reaps it then.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}
