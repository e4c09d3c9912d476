#!/usr/bin/env python3
"""Control-plane benchmark in Kubernetes mode: N InferenceServices against a real API server.

On a control plane started by scripts/kube-cluster (kube-apiserver, etcd,
kube-controller-manager, kube-scheduler, kwok nodes, all on loopback), measures in one run:
  * baseline, same run: the API server's write floor, `kubectl apply --server-side` of the
    same N InferenceServices with no controller running (what any controller on this API
    pays before reconciling anything); they are deleted again before the measured run;
  * `sluice controller --kube`: time from applying N InferenceServices (`kubectl apply
    --server-side`, as a Kubernetes user would) until all N report Ready=True; each becomes a
    Service, Configuration, Route, Revision and a Deployment + Service at zero replicas
    (`minReplicas: 0`, `initial-scale: 0`, so no Pod is created); target: 1,000 within 120 s;
  * the controller's memory (VmRSS and VmHWM) once all are Ready.

Usage: bench/control-plane/kube.py [--count N] [--binary PATH]
Without --binary it builds target/release/sluice. Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "scripts", "kube-cluster")


def isvcs(count, namespace):
    docs = []
    for i in range(count):
        docs.append(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n"
            f"metadata:\n  name: m{i:04d}\n  namespace: {namespace}\n"
            '  annotations: {"autoscaling.knative.dev/initial-scale": "0"}\n'
            "spec:\n  predictor:\n    minReplicas: 0\n    model:\n"
            "      modelFormat: {name: sluice-mlp}\n      storageUri: /models/iris\n"
        )
    return "---\n".join(docs)


def kubectl(env, *args, stdin=None):
    return subprocess.run(
        [env["KUBECTL"], *args], input=stdin, env=env, check=True, capture_output=True, text=True
    ).stdout


def ready_count(env, namespace):
    items = json.loads(kubectl(env, "get", "isvc", "-n", namespace, "-o", "json"))["items"]
    ready = 0
    for o in items:
        for c in o.get("status", {}).get("conditions", []):
            if c.get("type") == "Ready" and c.get("status") == "True":
                ready += 1
    return ready, len(items)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apiserver_pid(cdir):
    with open(os.path.join(cdir, "pids")) as f:
        for line in f:
            pid = line.strip()
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if c.read().split(b"\0")[0].endswith(b"/kube-apiserver"):
                        return int(pid)
            except (OSError, ValueError):
                continue
    return None


def mem_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--binary")
    ap.add_argument("--deadline", type=float, default=600.0)
    args = ap.parse_args()
    binary = args.binary
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sluice-cli"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "sluice")

    work = tempfile.mkdtemp(prefix="sluice-kube-bench-")
    cdir = os.path.join(work, "cluster")
    env = dict(os.environ, KUBE_CLUSTER_OWNER_PID=str(os.getpid()))
    subprocess.run([CLUSTER, "start", cdir], env=env, check=True)
    controller = None
    try:
        with open(os.path.join(cdir, "env")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    env[k] = v.strip("'\"")
        env["KUBECONFIG"] = os.path.join(cdir, "kubeconfig")
        env["KUBECTL"] = os.path.join(env["KUBE_BIN"], "kubectl")
        kubectl(env, "apply", "--server-side", "-f", os.path.join(ROOT, "crds", "yaml"))
        kubectl(env, "wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")

        # Baseline: the API server's write floor for the same objects, no controller.
        kubectl(env, "create", "namespace", "floor")
        t = time.monotonic()
        kubectl(env, "apply", "--server-side", "-f", "-", stdin=isvcs(args.count, "floor"))
        floor = time.monotonic() - t
        kubectl(env, "delete", "namespace", "floor", "--wait=true", "--timeout=300s")

        log = open(os.path.join(work, "controller.log"), "w")
        controller = subprocess.Popen(
            [binary, "controller", "--kube", "--identity", "bench", "--scrape-stats", "false",
             "--image", "sluice:bench"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        api_pid = apiserver_pid(cdir)
        api_cpu0 = cpu_seconds(api_pid) if api_pid else 0.0
        t0 = time.monotonic()
        kubectl(env, "apply", "--server-side", "-f", "-", stdin=isvcs(args.count, "default"))
        applied = time.monotonic() - t0
        ready, total = 0, 0
        while time.monotonic() - t0 < args.deadline:
            ready, total = ready_count(env, "default")
            if ready == args.count:
                break
            time.sleep(1.0)  # a benchmark's sampling interval, not test synchronization
        elapsed = time.monotonic() - t0
        rss, hwm = mem_kb(controller.pid, "VmRSS"), mem_kb(controller.pid, "VmHWM")
        ctl_cpu = cpu_seconds(controller.pid)
        api_cpu = cpu_seconds(api_pid) - api_cpu0 if api_pid else float("nan")
        deployments = json.loads(kubectl(env, "get", "deployments", "-n", "default", "-o", "json"))["items"]
        replicas = sum(d["spec"].get("replicas", 0) for d in deployments)
        print(f"\nKubernetes mode, {args.count} InferenceServices, real API server (loopback):")
        print(f"| what | value |")
        print(f"|---|---|")
        print(f"| baseline: kubectl apply --server-side of {args.count} isvcs, no controller | {floor:.1f} s |")
        print(f"| kubectl apply of the {args.count} isvcs (controller running) | {applied:.1f} s |")
        print(f"| all {args.count} Ready=True (from the apply) | {elapsed:.1f} s ({ready}/{total} ready) |")
        print(f"| Deployments created / their replicas | {len(deployments)} / {replicas} |")
        print(f"| controller VmRSS / VmHWM | {rss / 1024:.0f} MB / {hwm / 1024:.0f} MB |")
        print(f"| CPU until all Ready: controller / kube-apiserver | {ctl_cpu:.1f} s / {api_cpu:.1f} s |")
        ok = ready == args.count
        print(f"\ntarget: {args.count} Ready within 120 s: {'met' if ok and elapsed <= 120 else 'MISSED'}")
        return 0 if ok else 1
    finally:
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(timeout=10)
            except subprocess.TimeoutExpired:
                controller.kill()
        subprocess.run([CLUSTER, "stop", cdir], env=env)


if __name__ == "__main__":
    sys.exit(main())
