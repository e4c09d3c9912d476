#!/usr/bin/env python3
"""The soak (issue 14): mixed traffic against `sluice up` (mesh on, the default) for a fixed
time, with a fault every 30 s, cycling through: a replica's user process killed with SIGKILL,
a rollout (a new revision at 100 %), a policy change (a DENY applied, or deleted), and
`sluice up` restarted (SIGTERM, then started again on the same state dir and ports).

Traffic, each from its own threads, all through the router on loopback:
  * HTTP/1.1 POSTs with a random body the replica hashes and echoes (checked both ways);
  * h2c (HTTP/2 with prior knowledge, httpx) POSTs, checked the same way, one multiplexed
    connection per thread;
  * WebSocket: connections of 20 echoed frames each;
  * inference: the Iris model over the Open Inference Protocol, REST and gRPC (tritonclient).

Prints requests and failures per protocol, failures by cause and by the fault that preceded
them, latency p50/p99 per protocol, and the RSS (and open files) of every process of the run at
start and end, plus `sluice up`'s over time. Usage: bench/soak/run (builds, makes the venv).
"""

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
APP_HOST = "soak.default.localhost"
IRIS_HOST = "iris.default.localhost"
IRIS_INPUT = [6.8, 2.8, 4.8, 1.4]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service(app, version, cc=4):
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: soak, namespace: default}}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "6"
        autoscaling.knative.dev/window: "6s"
    spec:
      containerConcurrency: {cc}
      containers:
      - command: [python3, {app}]
        env:
        - {{name: DELAY_MS, value: "10"}}
        - {{name: VERSION, value: "{version}"}}
"""


IRIS = f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris, namespace: default}}
spec:
  predictor:
    minReplicas: 1
    model:
      modelFormat: {{name: sluice-mlp}}
      storageUri: {ROOT}/samples/iris/model
"""

DENY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: soak-deny, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/blocked]}}]
"""


class Sluice:
    """`sluice up` on fixed ports over a state dir that survives restarts."""

    def __init__(self, binary, work, mesh="on"):
        self.binary, self.work, self.mesh = binary, work, mesh
        self.router_port, self.admin_port = free_port(), free_port()
        self.state = os.path.join(work, "state")
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.work, f"up-{self.starts}.log"), "wb")
        self.proc = subprocess.Popen(
            [self.binary, "up", "--listen", f"127.0.0.1:{self.router_port}",
             "--admin", f"127.0.0.1:{self.admin_port}", "--state-dir", self.state,
             "--autoscaler-tick", "1s", f"--mesh={self.mesh}",
             os.path.join(self.work, "manifests")],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            env=dict(os.environ, SLUICE_LOG="warn"))
        for line in self.proc.stdout:
            if line.startswith(b"sluice: admin token"):
                break
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def cli(self, *args):
        subprocess.run([self.binary, *args, "--server", f"http://127.0.0.1:{self.admin_port}",
                        "--state-dir", self.state], check=True, capture_output=True)

    def apply(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        self.cli("apply", "-f", path)


def processes_under(root):
    """(pid, role, rss KiB, open files) of `root` and every process below it."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
        out.append((pid, role(argv), rss, fds))
    return sorted(out, key=lambda p: (p[1], p[0]))


def role(argv):
    if not argv:
        return "?"
    name = os.path.basename(argv[0])
    if name == "sluice" and len(argv) > 1:
        return f"sluice {argv[1]}"
    if name.startswith("python"):
        return "user app (python)"
    return name


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = collections.Counter()
        self.failures = collections.Counter()  # (protocol, cause, after fault)
        self.latency = collections.defaultdict(list)
        self.fault = "none"
        self.fault_at = time.monotonic()
        self.pids = collections.deque(maxlen=64)

    def record(self, proto, started, error=None):
        with self.lock:
            if error is None:
                self.ok[proto] += 1
                self.latency[proto].append(time.monotonic() - started)
            else:
                since = time.monotonic() - self.fault_at
                after = f"{self.fault} ({'<' if since < 10 else '>='}10 s before)"
                self.failures[(proto, error[:140], after)] += 1


def check_echo(status, body, sent):
    if status != 200:
        return f"{status} {body[:100]!r}"
    head, _, echoed = body.partition(b"\n")
    if head.split(b" ")[0].decode() != hashlib.sha256(sent).hexdigest() or echoed != sent:
        return "200 with a damaged body"
    return None


def h1_worker(stats, sluice, stop):
    rng = random.Random()
    while not stop.is_set():
        sent = rng.randbytes(rng.randint(0, 8192))
        started = time.monotonic()
        try:
            c = http.client.HTTPConnection("127.0.0.1", sluice.router_port, timeout=60)
            c.request("POST", "/h1", body=sent, headers={"Host": APP_HOST})
            r = c.getresponse()
            body = r.read()
            c.close()
            error = check_echo(r.status, body, sent)
            if error is None:
                stats.pids.append(int(body.split(b"pid=")[1].split(b"\n")[0]))
        except Exception as e:  # noqa: BLE001 - every failure is counted by cause
            error = f"{type(e).__name__}: {e}"
        stats.record("http/1.1", started, error)


def h2c_worker(stats, sluice, stop):
    import httpx

    rng = random.Random()
    client = httpx.Client(http1=False, http2=True, timeout=60)
    url = f"http://127.0.0.1:{sluice.router_port}/h2"
    while not stop.is_set():
        sent = rng.randbytes(rng.randint(0, 8192))
        started = time.monotonic()
        try:
            r = client.post(url, content=sent, headers={"Host": APP_HOST})
            error = check_echo(r.status_code, r.content, sent)
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
            client.close()
            client = httpx.Client(http1=False, http2=True, timeout=60)
        stats.record("h2c", started, error)
    client.close()


def ws_frame(payload, opcode=2):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def ws_worker(stats, sluice, stop):
    rng = random.Random()
    while not stop.is_set():
        started = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", sluice.router_port), timeout=60)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /ws HTTP/1.1\r\nHost: {APP_HOST}\r\nConnection: Upgrade\r\n"
                       f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                       f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(1)
                if not chunk:
                    raise EOFError("closed before the 101")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
            for _ in range(20):
                sent = rng.randbytes(rng.randint(1, 4096))
                s.sendall(ws_frame(sent))
                b0, b1 = recv_exact(s, 2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", recv_exact(s, 2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", recv_exact(s, 8))
                if recv_exact(s, n) != sent:
                    raise RuntimeError("websocket echo differs")
            s.sendall(ws_frame(b"", opcode=8))
            s.close()
            error = None
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        stats.record("websocket", started, error)


def rest_infer_worker(stats, sluice, stop):
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                                   "data": IRIS_INPUT}]}).encode()
    while not stop.is_set():
        started = time.monotonic()
        try:
            c = http.client.HTTPConnection("127.0.0.1", sluice.router_port, timeout=60)
            c.request("POST", "/v2/models/iris/infer", body=body,
                      headers={"Host": IRIS_HOST, "Content-Type": "application/json"})
            r = c.getresponse()
            out = r.read()
            c.close()
            if r.status != 200:
                error = f"{r.status} {out[:100]!r}"
            else:
                data = json.loads(out)["outputs"][0]["data"]
                error = None if data == [1] else f"wrong class {data}"
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        stats.record("inference REST", started, error)


def grpc_infer_worker(stats, sluice, stop):
    import numpy as np
    import tritonclient.grpc as grpcclient

    def connect():
        return grpcclient.InferenceServerClient(
            url=f"127.0.0.1:{sluice.router_port}",
            channel_args=[("grpc.default_authority", IRIS_HOST)])

    client = connect()
    while not stop.is_set():
        started = time.monotonic()
        try:
            x = grpcclient.InferInput("input-0", [1, 4], "FP32")
            x.set_data_from_numpy(np.array([IRIS_INPUT], dtype=np.float32))
            result = client.infer("iris", [x], client_timeout=60)
            data = result.as_numpy("output-0").tolist()
            error = None if data == [1] else f"wrong class {data}"
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            client.close()
            client = connect()
        stats.record("inference gRPC", started, error)
    client.close()


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def snapshot(sluice):
    return processes_under(sluice.proc.pid)


def print_processes(title, procs):
    print(f"\n{title}: {len(procs)} processes, {sum(p[2] for p in procs) / 1024:.1f} MiB RSS")
    for pid, what, rss, fds in procs:
        print(f"  {pid:>7}  {what:<24} {rss / 1024:7.1f} MiB  {fds:4} open files")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sluice", required=True, help="the sluice binary")
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    parser.add_argument("--fault-every", type=float, default=30, help="seconds between faults")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--mesh", default="on", choices=["on", "off"])
    parser.add_argument("--only", help="run only these workers (comma-separated: h1, h2c, ws, "
                        "rest, grpc)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-soak-")
    os.makedirs(os.path.join(work, "manifests"))
    app = os.path.join(HERE, "app.py")
    with open(os.path.join(work, "manifests", "soak.yaml"), "w") as f:
        f.write(service(app, 0))
    with open(os.path.join(work, "manifests", "iris.yaml"), "w") as f:
        f.write(IRIS)
    sluice = Sluice(args.sluice, work, args.mesh)
    sluice.start()
    stats = Stats()
    stop = threading.Event()
    mix = {"h1": [h1_worker] * 4, "h2c": [h2c_worker] * 2, "ws": [ws_worker],
           "rest": [rest_infer_worker] * 2, "grpc": [grpc_infer_worker] * 2}
    chosen = args.only.split(",") if args.only else list(mix)
    workers = [w for name in chosen for w in mix[name]]
    threads = [threading.Thread(target=w, args=(stats, sluice, stop), daemon=True)
               for w in workers]
    try:
        # Warm-up: the activator holds the first requests until the replicas are ready.
        for t in threads:
            t.start()
        while sum(stats.ok.values()) < 50:
            time.sleep(0.2)
        with stats.lock:
            stats.ok.clear()
            stats.failures.clear()
            stats.latency.clear()
        start_procs = snapshot(sluice)
        begin = time.monotonic()
        faults = ["replica SIGKILL", "rollout", "policy change", "sluice up restart"]
        timeline, n, deny = [], 0, False
        while time.monotonic() - begin < args.duration:
            time.sleep(min(args.fault_every, max(0, args.duration - (time.monotonic() - begin))))
            if time.monotonic() - begin >= args.duration:
                break
            procs = snapshot(sluice)
            up = next((p for p in procs if p[0] == sluice.proc.pid), None)
            fault = faults[n % len(faults)]
            n += 1
            with stats.lock:
                stats.fault, stats.fault_at = fault, time.monotonic()
            t0 = time.monotonic()
            if fault == "replica SIGKILL":
                pid = stats.pids[-1] if stats.pids else None
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            elif fault == "rollout":
                sluice.apply("soak.yaml", service(app, n))
            elif fault == "policy change":
                if deny:
                    sluice.cli("delete", "authorizationpolicy", "soak-deny")
                else:
                    sluice.apply("deny.yaml", DENY)
                deny = not deny
            else:
                sluice.stop()
                sluice.start()
            took = time.monotonic() - t0
            timeline.append({"t": round(t0 - begin), "fault": fault, "took_s": round(took, 2),
                             "processes": len(procs),
                             "up_rss_mib": round(up[2] / 1024, 1) if up else None,
                             "up_fds": up[3] if up else None,
                             "total_rss_mib": round(sum(p[2] for p in procs) / 1024, 1)})
            print(f"t={timeline[-1]['t']:>4}s  {fault:<18} ({took:.2f} s)  "
                  f"sluice up {timeline[-1]['up_rss_mib']} MiB, {timeline[-1]['up_fds']} fds; "
                  f"{len(procs)} processes, {timeline[-1]['total_rss_mib']} MiB", flush=True)
        elapsed = time.monotonic() - begin
        end_procs = snapshot(sluice)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
        sluice.stop()

    print(f"\n== soak: {elapsed:.0f} s of traffic, a fault every {args.fault_every:.0f} s, "
          f"mesh {args.mesh}, {os.cpu_count()} CPUs")
    print(f"{'protocol':<16} {'ok':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}")
    protos = sorted(set(stats.ok) | {k[0] for k in stats.failures})
    for proto in protos:
        failed = sum(v for k, v in stats.failures.items() if k[0] == proto)
        lat = stats.latency[proto]
        print(f"{proto:<16} {stats.ok[proto]:>8} {failed:>7} {percentile(lat, .5) * 1e3:>8.1f} "
              f"{percentile(lat, .99) * 1e3:>8.1f}")
    print("\nfailures by cause (protocol, cause, the fault before it):")
    for (proto, cause, after), count in sorted(stats.failures.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>6} x {proto}: {cause}  [after {after}]")
    if not stats.failures:
        print("  none")
    print_processes("processes at start", start_procs)
    print_processes("processes at end", end_procs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"elapsed_s": elapsed, "ok": stats.ok,
                       "failures": [[*k, v] for k, v in stats.failures.items()],
                       "latency_ms": {p: {"p50": percentile(v, .5) * 1e3,
                                          "p99": percentile(v, .99) * 1e3}
                                      for p, v in stats.latency.items()},
                       "timeline": timeline, "start": start_procs, "end": end_procs}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
