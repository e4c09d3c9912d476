#!/usr/bin/env python3
"""Skeleton benchmark: the cost of Sluice's request path and of a cold start.

Measures, in one run on this machine:
  * warm inference latency straight to a `sluice model-server` replica (baseline: direct),
  * the same request through `sluice up`'s router (and activator, which stays in path for
    small revisions as in Knative),
  * cold-start latency: a request that arrives while the revision is at zero, from send
    to response (the activator holds it while a replica process starts and loads).

Usage: bench/skeleton.py [--requests N] [--cold-starts N]   (builds target/release/sluice)
Standard library only; one client connection with keep-alive, sequential requests.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                               "data": [6.8, 2.8, 4.8, 1.4]}]}).encode()


def start(args, marker):
    """Starts a process and returns it with the first stdout line starting with marker."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.PIPE, text=True)
    found = {}
    for line in proc.stdout:
        for key, prefix in marker.items():
            if line.startswith(prefix):
                found[key] = line.strip().split()[-1].replace("http://", "")
        if len(found) == len(marker):
            return proc, found
    raise RuntimeError(f"{args[0]} exited before announcing {marker}")


def timed_requests(addr, host, n, model="iris"):
    h, p = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(h, int(p))
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body=BODY, headers={"Host": host})
        resp = conn.getresponse()
        data = resp.read()
        samples.append((time.perf_counter() - t0) * 1e3)
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {data!r}")
    conn.close()
    return samples


def admin_get(admin, path):
    h, p = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(h, int(p))
    conn.request("GET", path)
    resp = conn.getresponse()
    body = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, body


def wait_for(admin, path, ok, what):
    """Long-polls the admin API until ok(object) holds."""
    version = ""
    deadline = time.time() + 120
    while time.time() < deadline:
        status, obj = admin_get(admin, f"{path}?after={version}&timeout=10")
        if status == 200 and ok(obj):
            return
        version = (obj or {}).get("metadata", {}).get("resourceVersion", "")
    raise RuntimeError(f"timed out waiting for {what}")


def ready(obj):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in obj.get("status", {}).get("conditions", []))


def wait_zero(admin, rev):
    wait_for(admin, f"/v1/revisions/default/{rev}",
             lambda o: o["status"].get("actualReplicas") == 0 and o["status"].get("desiredReplicas") == 0,
             "scale to zero")


def summary(name, samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return f"| {name} | {len(s)} | {statistics.median(s):.3f} | {pick(0.9):.3f} | {pick(0.99):.3f} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--cold-starts", type=int, default=5)
    a = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sluice-cli"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    sluice = os.path.join(target, "release", "sluice")
    model = os.path.join(ROOT, "samples", "iris", "model")
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    procs = []
    try:
        direct, found = start([sluice, "model-server", "--model-name", "iris",
                               "--storage-uri", model, "--listen", "127.0.0.1:0"],
                              {"addr": "SLUICE_LISTENING"})
        procs.append(direct)
        for line in direct.stdout:
            if line.startswith("SLUICE_READY"):
                break
        os.makedirs(os.path.join(work, "m"))
        with open(os.path.join(work, "m", "iris.yaml"), "w") as f:
            f.write(f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: warm}}
spec:
  predictor:
    minReplicas: 1
    model: {{modelFormat: {{name: sluice-mlp}}, storageUri: {model}}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  annotations: {{autoscaling.knative.dev/window: "6s"}}
spec:
  predictor:
    minReplicas: 0
    model: {{modelFormat: {{name: sluice-mlp}}, storageUri: {model}}}
""")
        up, addrs = start([sluice, "up", os.path.join(work, "m"), "--listen", "127.0.0.1:0",
                           "--admin", "127.0.0.1:0", "--state-dir", os.path.join(work, "state"),
                           "--scale-to-zero-grace", "1s", "--autoscaler-tick", "1s"],
                          {"router": "sluice: router", "admin": "sluice: admin"})
        procs.append(up)
        wait_for(addrs["admin"], "/v1/inferenceservices/default/warm", ready, "warm to be ready")
        timed_requests(addrs["router"], "warm.default.localhost", 50, "warm")
        timed_requests(found["addr"], "direct", 50)

        rows = [summary("model-server direct (baseline)", timed_requests(found["addr"], "direct", a.requests)),
                summary("through sluice router + activator", timed_requests(addrs["router"], "warm.default.localhost", a.requests, "warm"))]
        cold = []
        for _ in range(a.cold_starts):
            wait_zero(addrs["admin"], "iris-predictor-00001")
            cold += timed_requests(addrs["router"], "iris.default.localhost", 1)
        rows.append(summary("cold start through activator (request at zero)", cold))

        print(f"# sluice skeleton benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
        print("| path | requests | median ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
