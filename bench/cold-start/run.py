#!/usr/bin/env python3
"""Cold start from zero, local mode against a real Kubernetes node, in one run.

The same Service (`sluice hello` behind `sluice queue`, mesh on, the autoscaler's
scale-to-zero grace 1 s in both) is driven to zero replicas, then one request is sent through
the router and timed from send to response, N times in each mode:

* local: `sluice up` (the replica is a process the local runtime starts);
* real node: scripts/kube-cluster start --real-node, deploy/ installed with kubectl, the
  request sent inside the cluster's network namespace to the router's Service (the replica
  is a Pod: the autoscaler scales the Deployment, the scheduler places the Pod, the kubelet
  has containerd start the sandbox and the container, the replica gets its SVID from the CA,
  the kubelet's readiness probe passes, the EndpointSlice says so, the router forwards).

    bench/cold-start/run.py [-n N]

Needs what scripts/kube-nodes-test needs (root, buildah, containerd, runc, the CNI plugins).
Prints each mode's times and the medians; bench/RESULTS.md keeps the results.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SLUICE = os.path.join(TARGET, "release", "sluice")

SERVICE = """apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: cold, namespace: default}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "6s"
    spec:
      containers:
      - image: sluice:0.1.0
        command: ["sluice"]
        args: ["hello"]
        env: [{name: TARGET, value: cold}]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, check, limit=180.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def timed_get(cmd_prefix, url, host):
    """One GET through the router (curl, inside the namespace for the real node): ms."""
    start = time.monotonic()
    out = subprocess.run(
        cmd_prefix + ["curl", "-sS", "-m", "120", "-H", f"Host: {host}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    took = (time.monotonic() - start) * 1e3
    if "Hello cold!" not in out:
        raise SystemExit(f"unexpected answer: {out!r}")
    return took


def local_mode(n):
    state = tempfile.mkdtemp(prefix="sluice-cold-local.")
    router, admin = free_port(), free_port()
    log = open(os.path.join(state, "up.log"), "w")
    up = subprocess.Popen(
        [SLUICE, "up", "--listen", f"127.0.0.1:{router}", "--admin", f"127.0.0.1:{admin}",
         "--state-dir", state, "--scale-to-zero-grace", "1s"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    cli = [SLUICE]
    flags = ["--state-dir", state, "--server", f"http://127.0.0.1:{admin}"]
    try:
        wait("sluice up", lambda: subprocess.run(
            cli + ["get", "ksvc"] + flags, capture_output=True).returncode == 0)
        manifest = os.path.join(state, "cold.yaml")
        with open(manifest, "w") as f:
            f.write(SERVICE)
        subprocess.run(cli + ["apply", "-f", manifest] + flags, check=True, capture_output=True)

        def revision():
            r = subprocess.run(cli + ["get", "revision", "cold-00001", "-o", "json"] + flags,
                               capture_output=True, text=True)
            return json.loads(r.stdout) if r.returncode == 0 else {}

        wait("cold-00001 ready", lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in revision().get("status", {}).get("conditions", [])))
        url = f"http://127.0.0.1:{router}/"
        host = "cold.default.localhost"
        times = []
        for _ in range(n):
            wait("zero replicas", lambda: revision().get("status", {}).get("actualReplicas") == 0)
            times.append(timed_get([], url, host))
        return times
    finally:
        up.terminate()
        up.wait(timeout=60)
        log.close()
        shutil.rmtree(state, ignore_errors=True)


def real_node(n):
    images = os.path.join(TARGET, "images")
    subprocess.run([os.path.join(ROOT, "deploy", "build-image"), images], check=True,
                   stdout=subprocess.DEVNULL)
    cluster = tempfile.mkdtemp(prefix="sluice-cold-node.")
    env = dict(os.environ, KUBE_NODE_IMAGES=images, KUBE_CLUSTER_OWNER_PID=str(os.getpid()))
    kc = os.path.join(ROOT, "scripts", "kube-cluster")
    try:
        subprocess.run([kc, "start", "--real-node", cluster], check=True, env=env)
        conf = {}
        for line in open(os.path.join(cluster, "env")).read().splitlines():
            key, _, value = line.partition("=")
            conf[key] = value.strip('"')
        ns = ["ip", "netns", "exec", conf["KUBE_NETNS"]]
        kubectl = ns + [os.path.join(conf["KUBE_BIN"], "kubectl"), "--kubeconfig", conf["KUBECONFIG"]]

        def k(*args, **kw):
            return subprocess.run(kubectl + list(args), capture_output=True, text=True, **kw)

        deploy = os.path.join(ROOT, "deploy")
        k("apply", "-f", os.path.join(deploy, "crds"), "-f", deploy, check=True)
        k("apply", "-f", os.path.join(deploy, "optional"), check=True)
        k("set", "env", "-n", "sluice-system", "deployment/sluice-controller",
          "SLUICE_SCALE_TO_ZERO_GRACE=1s", check=True)
        for d in ("sluice-controller", "sluice-router"):
            k("rollout", "status", "-n", "sluice-system", f"deployment/{d}", "--timeout=180s", check=True)
        subprocess.run(kubectl + ["apply", "-f", "-"], input=SERVICE, text=True, check=True,
                       capture_output=True)
        k("wait", "--for=condition=Ready", "ksvc/cold", "--timeout=180s", check=True)
        ip = k("get", "svc", "-n", "sluice-system", "sluice-router",
               "-o", "jsonpath={.spec.clusterIP}", check=True).stdout
        times = []
        for _ in range(n):
            k("wait", "--for=jsonpath={.status.actualReplicas}=0", "rev/cold-00001",
              "--timeout=180s", check=True)
            k("wait", "--for=delete", "pod", "-l", "serving.knative.dev/revision=cold-00001",
              "--timeout=180s", check=True)
            times.append(timed_get(ns, f"http://{ip}/", "cold.default.example.com"))
        return times
    finally:
        subprocess.run([kc, "stop", cluster])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=5)
    a = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sluice-cli"], cwd=ROOT,
                   check=True)
    results = {"local (sluice up)": local_mode(a.n), "real node (kubelet, containerd)": real_node(a.n)}
    print(f"\ncold start from zero, request to response, ms ({a.n} each, mesh on):")
    print("| mode | runs | median | min | max |")
    print("|---|---|---|---|---|")
    for mode, t in results.items():
        print(f"| {mode} | {', '.join(f'{x:.0f}' for x in t)} | {statistics.median(t):.0f} | "
              f"{min(t):.0f} | {max(t):.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
