#!/usr/bin/env python3
"""Control-plane benchmark: many InferenceServices on one local `sluice up`.

Measures, in one run on this machine:
  * time from applying N InferenceServices (one apply request per 100) until all N report
    Ready=True, their revisions at zero replicas (`minReplicas: 0` with Knative's
    `initial-scale: 0`, so no replica process starts), target: 1,000 within 60 s;
  * the store's size on disk (state.db plus its WAL), target: under 50 MB;
  * reconcile latency of one object while N exist: an edit of one InferenceService's spec
    (scaleTarget, so a new revision is stamped), from the write until the controller has
    written that object's status Ready for the new generation (observedGeneration), over
    the admin API's long poll; target p99 <= 10 ms;
  * baseline, same run: the store floor, Python's sqlite3 writing the same N objects as
    JSON rows with WAL and synchronous=FULL, one transaction per 100 (what any control
    plane on this store pays before reconciling anything).

With `--workload ksvc-image` the N objects are Knative Services whose container is only an
image (local mode runs no images: each revision is reconciled to Ready=False,
ContainerMissing, without a process), "Ready" above reads "status final" (observedGeneration
current, the new revision as latestCreatedRevisionName, a final Ready condition) and an
edit changes the template (an env value), stamping a new revision.

`initial-scale: "0"` needs Knative's `allow-zero-initial-scale` (default false, as
upstream), so the isvc-at-zero workload starts `sluice up --allow-zero-initial-scale`;
without it 1,000 InferenceServices would start 1,000 model servers. The run also counts the
child processes of `sluice up` once all are Ready: 0 means no replica was started.

Usage: bench/control-plane/bench.py [--count N] [--edits N] [--binary PATH] [--workload W]
Without --binary it builds target/release/sluice. Standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "samples", "iris", "model")


def isvc(name, target=None):
    ann = {"autoscaling.knative.dev/initial-scale": "0"}
    scale = f"    scaleTarget: {target}\n" if target else ""
    return (
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n"
        f"metadata:\n  name: {name}\n  annotations: {json.dumps(ann)}\n"
        f"spec:\n  predictor:\n    minReplicas: 0\n{scale}    model:\n"
        f"      modelFormat: {{name: sluice-mlp}}\n      storageUri: {MODEL}\n"
    )


def ksvc(name, version=1):
    """A Knative Service whose container is only an image: local mode runs no images, so
    its revision is reconciled to Ready=False (ContainerMissing) without starting a
    process. Each `version` is a new template, so a new revision."""
    return (
        "apiVersion: serving.knative.dev/v1\nkind: Service\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n  template:\n    spec:\n      containers:\n"
        "      - image: bench.invalid/server:1\n"
        f"        env: [{{name: VERSION, value: \"{version}\"}}]\n"
    )


def ksvc_reconciled(obj, generation=None, old_latest=None):
    """Status written for `generation` (default: the object's), with a revision newer
    than `old_latest` stamped for it and a final (True or False) Ready condition."""
    st = obj.get("status") or {}
    generation = generation or obj["metadata"]["generation"]
    if st.get("observedGeneration") != generation:
        return False
    latest = st.get("latestCreatedRevisionName")
    if not latest or latest == old_latest:
        return False
    return any(c.get("type") == "Ready" and c.get("status") in ("True", "False")
               for c in st.get("conditions", []))


class Admin:
    def __init__(self, addr, state_dir):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        # The admin API takes the bearer token `sluice up` keeps in its state directory.
        with open(os.path.join(state_dir, "admin-token")) as f:
            self.token = f.read().strip()

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
        return json.loads(payload)


def ready(obj, generation=None):
    st = obj.get("status") or {}
    if generation is not None and st.get("observedGeneration") != generation:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in st.get("conditions", []))


def start_up(binary, state_dir, allow_zero_initial_scale):
    flags = ["--allow-zero-initial-scale"] if allow_zero_initial_scale else []
    proc = subprocess.Popen(
        [binary, "up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--state-dir", state_dir, *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("sluice: admin API on http://"):
            return proc, line.strip().rsplit("http://", 1)[1]
    raise RuntimeError("sluice up exited before announcing its admin API")


def children(pid):
    """Processes whose parent is `pid` (Linux /proc), e.g. replicas `sluice up` started."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The field after the parenthesized command name is the state, then the ppid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            n += 1
    return n


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def store_floor(count, tmp):
    path = os.path.join(tmp, "floor.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE objects (kind TEXT, namespace TEXT, name TEXT, body TEXT, "
               "PRIMARY KEY (kind, namespace, name))")
    t0 = time.perf_counter()
    for start in range(0, count, 100):
        db.execute("BEGIN")
        for i in range(start, min(count, start + 100)):
            body = json.dumps({"metadata": {"name": f"m-{i:05}"}, "spec": isvc(f"m-{i:05}")})
            db.execute("INSERT INTO objects VALUES ('InferenceService', 'default', ?, ?)",
                       (f"m-{i:05}", body))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--binary")
    ap.add_argument("--workload", choices=["isvc-at-zero", "ksvc-image"], default="isvc-at-zero",
                    help="isvc-at-zero: InferenceServices with initial-scale 0 (sluice up "
                         "runs with --allow-zero-initial-scale); ksvc-image: Knative Services "
                         "whose container is an image (reconciled, never run)")
    args = ap.parse_args()
    binary = args.binary
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "sluice-cli"],
                       cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "sluice")

    tmp = tempfile.mkdtemp(prefix="sluice-cp-bench-")
    state = os.path.join(tmp, "state")
    ks = args.workload == "ksvc-image"
    proc, addr = start_up(binary, state, allow_zero_initial_scale=not ks)
    try:
        admin = Admin(addr, state)
        names = [f"m-{i:05}" for i in range(args.count)]
        t0 = time.perf_counter()
        plural = "services" if ks else "isvc"
        for start in range(0, args.count, 100):
            files = [{"source": f"{n}.yaml", "base_dir": "/", "text": ksvc(n) if ks else isvc(n)}
                     for n in names[start:start + 100]]
            admin.call("POST", "/v1/apply", {"files": files})
        applied = time.perf_counter() - t0
        print(f"applied {args.count} in {applied:.2f} s", file=sys.stderr)
        while True:
            items = admin.call("GET", f"/v1/{plural}")["items"]
            n_ready = sum(1 for o in items if (ksvc_reconciled(o) if ks else ready(o)))
            if n_ready == args.count:
                break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"only {n_ready}/{args.count} ready after 600 s")
            time.sleep(0.2)
        all_ready = time.perf_counter() - t0
        print(f"all ready after {all_ready:.2f} s", file=sys.stderr)
        revs = admin.call("GET", "/v1/revisions")["items"]
        at_zero = sum(1 for r in revs if (r.get("status") or {}).get("actualReplicas", 0) == 0)
        processes = children(proc.pid)

        # Reconcile latency of one object: edit its spec, wait for its status to catch up.
        lat = []
        for i in range(args.edits):
            name = names[(i * 7919) % args.count]
            obj = admin.call("GET", f"/v1/{plural}/default/{name}")
            manifest = ksvc(name, version=2 + i) if ks else isvc(name, target=100 + i)
            old_latest = (obj.get("status") or {}).get("latestCreatedRevisionName")
            t1 = time.perf_counter()
            res = admin.call("POST", "/v1/apply",
                             {"files": [{"source": "e.yaml", "base_dir": "/", "text": manifest}]})
            assert res["results"][0]["outcome"] == "configured", res
            version = obj["metadata"]["resourceVersion"]
            generation = obj["metadata"]["generation"] + 1
            while True:
                obj = admin.call("GET", f"/v1/{plural}/default/{name}?after={version}&timeout=30")
                if ksvc_reconciled(obj, generation, old_latest) if ks else ready(obj, generation):
                    break
                version = obj["metadata"]["resourceVersion"]
            lat.append((time.perf_counter() - t1) * 1e3)
            print(f"edit {i}: {lat[-1]:.1f} ms", file=sys.stderr)
        admin.conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("warning: sluice up did not stop on SIGTERM within 30 s; killed", file=sys.stderr)
            proc.kill()
            proc.wait()

    size = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state)
               if f.startswith("state.db"))
    floor = store_floor(args.count, tmp)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.count} objects ({args.workload}), {args.edits} single-object edits, binary {binary}")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| apply requests acknowledged (sluice) | {applied:.2f} s | |")
    final = "statuses final" if ks else "Ready at zero"
    print(f"| all {final} (sluice) | {all_ready:.2f} s ({at_zero}/{len(revs)} revisions at 0) | <= 60 s |")
    print(f"| child processes of sluice up when all were {final} | {processes} | 0 |")
    print(f"| store floor: sqlite3 inserts only (baseline) | {floor:.2f} s | |")
    print(f"| store on disk (state.db + WAL) | {size / 1e6:.1f} MB | < 50 MB |")
    print(f"| one-object reconcile, median | {statistics.median(lat):.1f} ms | |")
    print(f"| one-object reconcile, p90 | {pct(lat, 90):.1f} ms | |")
    print(f"| one-object reconcile, p99 | {pct(lat, 99):.1f} ms | <= 10 ms |")


if __name__ == "__main__":
    sys.exit(main())
