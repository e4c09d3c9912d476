#!/usr/bin/env python3
"""The whole request path, against the tools users would run instead, in one run.

Backend everywhere: `sluice hello` (a small HTTP/1.1 + h2c server) on loopback. Paths:
  * backend direct;
  * haproxy -> backend; nginx -> backend;
  * haproxy -> Knative's queue-proxy -> backend (Knative's own data path: its ingress,
    here haproxy, then the queue-proxy in front of the user container; queue-proxy built
    from the Go module pinned in bench/proxy/knative/, run outside Kubernetes with its
    environment set, containerConcurrency 0);
  * Sluice's router alone -> backend (`router/examples/proxy.rs`);
  * `sluice up` with a Service running the same backend behind `sluice queue`
    (min-scale 1, containerConcurrency 0, the default target burst capacity, so the
    activator is in the path as Knative's would be): router -> activator -> queue layer ->
    process, with the mesh off, with it on (the default: mutual TLS on the router ->
    replica hop), and with it on and the access log on (`--access-log`; off by default).
Load: wrk -t2 -c64, HTTP/1.1 keep-alive; h2c with h2load (-c64 -m1) where the path speaks
it; gRPC unary with h2load (-c64 -m1, a 64-byte message echoed by `sluice hello`, HTTP/2 on
every hop: haproxy's servers `proto h2`, Sluice's Service with an `h2c` port; nginx left
out, its h2c listener fails here). Reports req/s, p50/p99/p99.9 and the CPU seconds per 10k requests of each process on
the path. Rounds alternate the paths; medians over the rounds.

    python3 bench/proxy/path.py [--duration 10] [--runs 3] [--only NAME,NAME] [--alt BIN]...

Builds `sluice` and the router example in release mode first ($CARGO_TARGET_DIR when set)
and queue-proxy once into $HOME/.cache/sluice/knative/<version>/.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HOST, WRK_LUA, cpu_seconds, free_port, tool, wait_port, write, wrk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KNATIVE_DIR = os.path.join(ROOT, "bench", "proxy", "knative")


def ensure_tools():
    want = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx-light", "h2load": "nghttp2-client"}
    missing = [p for t, p in want.items()
               if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        cmd = ["apt-get", "install", "-y", "-q"] + missing
        if subprocess.call(cmd, stdout=subprocess.DEVNULL) != 0:
            subprocess.check_call(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            subprocess.check_call(cmd, stdout=subprocess.DEVNULL)


def knative_version():
    with open(os.path.join(KNATIVE_DIR, "go.mod")) as f:
        for line in f:
            parts = line.split()
            if parts[:1] == ["knative.dev/serving"]:
                return parts[1]
    raise RuntimeError("bench/proxy/knative/go.mod names no knative.dev/serving")


def build_queue_proxy():
    version = knative_version()
    out = os.path.join(os.path.expanduser("~"), ".cache", "sluice", "knative", version)
    binary = os.path.join(out, "queue")
    if not os.path.exists(binary):
        os.makedirs(out, exist_ok=True)
        print(f"building Knative queue-proxy {version} (once)", file=sys.stderr)
        subprocess.check_call(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", binary + ".tmp",
                               "knative.dev/serving/cmd/queue"], cwd=KNATIVE_DIR)
        os.rename(binary + ".tmp", binary)
    return version, binary


def tree(pid):
    """`pid` and every process below it."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:  # a child belongs to the thread that spawned it
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except FileNotFoundError:
                pass
    return pids


def label(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        return None
    if not argv:
        return None
    if os.path.basename(argv[0]) == "sluice" and len(argv) > 1:
        return f"sluice {argv[1]}"
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def cpu_by_process(roots):
    """CPU seconds so far of every process under `roots`, keyed by what it is."""
    out = {}
    for root in roots:
        for pid in tree(root):
            name = label(pid)
            if name:
                out[name] = out.get(name, 0.0) + cpu_seconds([pid])
    return out


def h2load(port, duration):
    out = subprocess.run(
        ["h2load", "-c64", "-m1", "-t2", f"-D{duration}", "-H", f"host: {HOST}",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    return parse_h2load(out)


def parse_h2load(out):
    reqs = ok = 0
    rps = 0.0
    lat = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            f = line.split()
            reqs, ok = int(f[1]), int(f[7])
        elif line.startswith("time for request:"):
            # min max mean sd +/- sd; h2load has no percentiles: mean and max instead
            f = line.split()[3:]
            lat = {"mean": f[2], "max": f[1]}
    return {"reqs": reqs, "rps": rps, "errors": reqs - ok, **lat}


GRPC_HOST = "hello-grpc.default.localhost"
# One gRPC message (uncompressed, 64 bytes): what `sluice hello` echoes.
GRPC_FRAME = b"\x00" + (64).to_bytes(4, "big") + b"x" * 64


def grpc_load(port, host, duration, frame_file):
    """gRPC unary calls with h2load; a call counts as failed unless h2load saw a 2xx (h2load
    does not read trailers, so grpc-status is checked once per path by `grpc_check`)."""
    out = subprocess.run(
        ["h2load", "-c64", "-m1", "-t2", f"-D{duration}", "-H", f"host: {host}",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", frame_file,
         f"http://127.0.0.1:{port}/bench.Echo/Say"], capture_output=True, text=True).stdout
    return parse_h2load(out)


def grpc_check(port, host):
    """One gRPC call through the path with nghttp, which prints the trailers: the message
    must come back with grpc-status 0."""
    out = subprocess.run(
        ["nghttp", "-v", "-H", f"host: {host}", "-H", "content-type: application/grpc",
         "-H", "te: trailers", "-d", "-", f"http://127.0.0.1:{port}/bench.Echo/Say"],
        input=GRPC_FRAME, capture_output=True).stdout.decode(errors="replace")
    if "grpc-status: 0" not in out:
        raise RuntimeError(f"gRPC through port {port} did not answer grpc-status 0:\n{out[-2000:]}")


def service_yaml(name, sluice, container_extra):
    """A Knative Service running `sluice hello` at min-scale 1, containerConcurrency 0."""
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containerConcurrency: 0
      containers:
        - image: sluice-hello
          command: ["{sluice}"]
          args: ["hello"]
{container_extra}"""


def service_manifest(sluice):
    """`hello` (HTTP/1.1 to the process) and `hello-grpc` (an h2c port: HTTP/2 to it)."""
    hello = service_yaml("hello", sluice, """          env:
            - name: TARGET
              value: bench
""")
    grpc = service_yaml("hello-grpc", sluice, """          ports:
            - name: h2c
              containerPort: 8080
""")
    return f"{hello}---\n{grpc}"


def wait_ok(port, timeout=60.0, host=HOST):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no 200 from {host} on {port} within {timeout}s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated path keys to run")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--alt", action="append", default=[],
                    help="another sluice binary: adds its whole path, mesh on (`up_alt0`, "
                    "`up_alt1`... in the order given), to the same rounds (e.g. an allocator "
                    "or build experiment); may be repeated")
    args = ap.parse_args()
    ensure_tools()
    subprocess.check_call(["cargo", "build", "-q", "--release", "--locked", "-p", "sluice-cli",
                           "-p", "sluice-router", "--example", "proxy", "--bin", "sluice"],
                          cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    sluice = os.path.join(target, "release", "sluice")
    proxy_bin = os.path.join(target, "release", "examples", "proxy")
    kn_version, queue_proxy = build_queue_proxy()

    # Stopped (SIGTERM, `timeout`): unwind through `finally` so the processes started in
    # sessions of their own are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="sluice-path-")
    lua = write(os.path.join(tmp, "pct.lua"), WRK_LUA)
    procs = []

    def start(key, cmd, port, env=None, ready=wait_port):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(tmp, f"{key}.out"), "w"),
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        procs.append(p)
        ready(port)
        return p

    ports = {k: free_port() for k in ("backend", "haproxy", "nginx", "qp", "qp_haproxy",
                                      "router", "up_off", "up_on", "up_log", "admin_off",
                                      "admin_on", "admin_log",
                                      "haproxy_h2", "nginx_h2", "qp_haproxy_h2",
                                      "haproxy_grpc", "qp_haproxy_grpc")}
    for i in range(len(args.alt)):
        ports[f"up_alt{i}"], ports[f"admin_alt{i}"] = free_port(), free_port()
    # haproxy and nginx take h2c (prior knowledge) on a port of its own; the rest on one.
    h2_ports = {"haproxy": ports["haproxy_h2"], "nginx": ports["nginx_h2"],
                "knative": ports["qp_haproxy_h2"]}
    # gRPC: haproxy takes it on a third port whose backend speaks HTTP/2 to the server.
    grpc_ports = {"haproxy": ports["haproxy_grpc"], "knative": ports["qp_haproxy_grpc"]}
    be = f"127.0.0.1:{ports['backend']}"

    def haproxy_cfg(name, listen, h2, grpc, server):
        return write(os.path.join(tmp, f"{name}.cfg"), f"""global
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{listen} proto h1
  bind 127.0.0.1:{h2} proto h2
  default_backend be
frontend fe_grpc
  bind 127.0.0.1:{grpc} proto h2
  default_backend be_grpc
backend be
  http-reuse always
  server s1 {server}
backend be_grpc
  http-reuse always
  server s1 {server} proto h2
""")

    nginx_conf = write(os.path.join(tmp, "nginx.conf"), f"""daemon off; worker_processes auto;
error_log {tmp}/nginx.err; pid {tmp}/nginx.pid; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 10000000;
  upstream be {{ server {be}; keepalive 128; }}
  server {{ listen 127.0.0.1:{ports['nginx']}; listen 127.0.0.1:{ports['nginx_h2']} http2;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
""")
    qp_env = {
        "CONTAINER_CONCURRENCY": "0", "QUEUE_SERVING_PORT": str(ports["qp"]),
        "QUEUE_SERVING_TLS_PORT": str(free_port()), "USER_PORT": str(ports["backend"]),
        "REVISION_TIMEOUT_SECONDS": "300", "SERVING_LOGGING_CONFIG": "",
        "SERVING_LOGGING_LEVEL": "error", "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "hello", "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001", "SERVING_POD": "hello-00001-bench",
        "SERVING_POD_IP": "127.0.0.1", "SERVING_REQUEST_METRICS_BACKEND": "prometheus",
        "SYSTEM_NAMESPACE": "knative-serving", "METRICS_DOMAIN": "knative.dev/internal/serving",
        "ENABLE_HTTP2_AUTO_DETECTION": "false",
    }
    manifests = os.path.join(tmp, "manifests")
    os.makedirs(manifests)
    write(os.path.join(manifests, "hello.yaml"), service_manifest(sluice))

    def up(key, *flags, binary=sluice):
        state = os.path.join(tmp, f"state-{key}")
        port, admin = ports[key], ports["admin_" + key.split("_")[1]]

        def ready(port):
            wait_ok(port)
            wait_ok(port, host=GRPC_HOST)
        return start(key, [binary, "up", manifests, "--listen", f"127.0.0.1:{port}",
                           "--admin", f"127.0.0.1:{admin}", "--state-dir", state, *flags],
                     port, ready=ready)

    try:
        backend = start("backend", [sluice, "hello"], ports["backend"],
                        env={"PORT": str(ports["backend"]), "TARGET": "bench"})
        ha_version = subprocess.run([tool("haproxy"), "-v"], capture_output=True,
                                    text=True).stdout.split()[2]
        paths = [
            ("direct", "backend direct (sluice hello)", ports["backend"], []),
            ("haproxy", f"haproxy {ha_version}", ports["haproxy"],
             [start("haproxy", [tool("haproxy"), "-f", haproxy_cfg("haproxy", ports["haproxy"], ports["haproxy_h2"], ports["haproxy_grpc"], be)],
                    ports["haproxy"])]),
            ("nginx", "nginx reverse proxy", ports["nginx"],
             [start("nginx", [tool("nginx"), "-c", nginx_conf, "-p", tmp], ports["nginx"])]),
            ("knative", f"haproxy -> Knative queue-proxy {kn_version}", ports["qp_haproxy"],
             [start("qp", [queue_proxy], ports["qp"], env=qp_env),
              start("qp_haproxy", [tool("haproxy"), "-f", haproxy_cfg(
                  "qp_haproxy", ports["qp_haproxy"], ports["qp_haproxy_h2"],
                  ports["qp_haproxy_grpc"], f"127.0.0.1:{ports['qp']}")],
                  ports["qp_haproxy"])]),
            ("router", "Sluice router alone", ports["router"],
             [start("router", [proxy_bin, f"127.0.0.1:{ports['router']}", be], ports["router"])]),
            ("up_off", "Sluice whole path, mesh off", ports["up_off"],
             [up("up_off", "--mesh", "off")]),
            ("up_on", "Sluice whole path, mesh on (default)", ports["up_on"], [up("up_on")]),
            ("up_log", "Sluice whole path, mesh on, --access-log", ports["up_log"],
             [up("up_log", "--access-log")]),
        ]
        for i, alt in enumerate(args.alt):
            key = f"up_alt{i}"
            paths.append((key, f"Sluice whole path, mesh on, {alt}", ports[key],
                          [up(key, binary=alt)]))
        if args.only:
            keep = set(args.only.split(","))
            paths = [p for p in paths
                     if p[0] in keep or p[0] == "direct" or p[0].startswith("up_alt")]
        results = {key: [] for key, _, _, _ in paths}
        h2 = {}
        for key, _, port, _ in paths:
            wrk(port, 2, lua)  # warm-up: connections, pools, caches
        for _ in range(args.runs):
            for key, _, port, ps in paths:
                roots = [p.pid for p in ps] + ([backend.pid] if key in ("direct", "haproxy", "nginx", "knative", "router") else [])
                before = cpu_by_process(roots)
                r = wrk(port, args.duration, lua)
                after = cpu_by_process(roots)
                r["cpu10k"] = {k: (after[k] - before.get(k, 0.0)) / r["reqs"] * 1e4
                               for k in after}
                results[key].append(r)
        for key, _, port, _ in paths:
            h2[key] = h2load(h2_ports.get(key, port), args.duration)
        frame_file = os.path.join(tmp, "grpc.bin")
        with open(frame_file, "wb") as f:
            f.write(GRPC_FRAME)
        grpc_paths = [(key, grpc_ports.get(key, port), GRPC_HOST if key.startswith("up_") else HOST)
                      for key, _, port, _ in paths if key != "nginx"]
        for key, port, host in grpc_paths:
            grpc_check(port, host)
        grpc = {key: [] for key, _, _ in grpc_paths}
        for _ in range(args.runs):
            for key, port, host in grpc_paths:
                grpc[key].append(grpc_load(port, host, args.duration, frame_file))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if os.environ.get("SLUICE_KEEP_BENCH_DIR"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = lambda rs, k: statistics.median(r[k] for r in rs)
    names = {key: name for key, name, _, _ in paths}
    print(f"\n{args.runs} rounds x {args.duration}s, wrk -t2 -c64 HTTP/1.1 keep-alive, "
          "backend `sluice hello`; medians\n")
    print("| path | req/s | p50 ms | p99 ms | p99.9 ms | CPU s / 10k req, each process | errors |")
    print("|---|---|---|---|---|---|---|")
    for key, rs in results.items():
        procs_cpu = sorted({k for r in rs for k in r["cpu10k"]})
        cpu = ", ".join(f"{k} {statistics.median(r['cpu10k'].get(k, 0.0) for r in rs):.3f}"
                        for k in procs_cpu)
        errors = sum(r["errors"] for r in rs)
        print(f"| {names[key]} | {med(rs, 'rps'):,.0f} | {med(rs, 'p50'):.3f} | "
              f"{med(rs, 'p99'):.3f} | {med(rs, 'p999'):.3f} | {cpu} | {errors} |")
    print("\nh2c, h2load -c64 -m1, one run each (h2load reports mean and max, not percentiles)\n")
    print("| path | req/s | mean | max | errors |")
    print("|---|---|---|---|---|")
    for key, r in h2.items():
        print(f"| {names[key]} | {r['rps']:,.0f} | {r.get('mean', '–')} | {r.get('max', '–')} | "
              f"{r['errors']} |")
    print(f"\ngRPC unary, h2load -c64 -m1, 64-byte message echoed, {args.runs} rounds; median "
          "req/s, the mean and max of the median round\n")
    print("| path | req/s | mean | max | errors |")
    print("|---|---|---|---|---|")
    for key, rs in grpc.items():
        mid = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
        print(f"| {names[key]} | {mid['rps']:,.0f} | {mid.get('mean', '–')} | "
              f"{mid.get('max', '–')} | {sum(r['errors'] for r in rs)} |")
    rps = {key: med(rs, "rps") for key, rs in results.items()}
    print()
    for a, b in (("up_on", "knative"), ("router", "haproxy"), ("up_on", "haproxy"),
                 ("up_on", "up_off")):
        if a in rps and b in rps:
            print(f"{names[a]} / {names[b]}: {rps[a] / rps[b]:.2f}x req/s")
    grpc_rps = {key: sorted(r["rps"] for r in rs)[len(rs) // 2] for key, rs in grpc.items()}
    for a, b in (("up_on", "knative"), ("router", "haproxy"), ("up_on", "up_off")):
        if grpc_rps.get(b):
            print(f"gRPC: {names[a]} / {names[b]}: {grpc_rps[a] / grpc_rps[b]:.2f}x req/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"http1": results, "h2c": h2, "grpc": grpc}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
