#!/usr/bin/env python3
"""Proxy benchmark: one fixed backend, measured direct and through each proxy, same run.

Backend: nginx returning a 1 KiB body. Paths: backend direct; Sluice router (revision warm,
activator out of path); Sluice router with the activator in path; haproxy; nginx as a
reverse proxy. Load: wrk, 2 threads, 64 keep-alive connections. Reports req/s, p50, p99,
p99.9 and the proxy's CPU seconds per 10k requests, plus the Sluice router's RSS with
1,000 routes. wrk, haproxy and nginx come from Debian's packages (installed if missing).

    python3 bench/proxy/run.py [--duration 10] [--runs 3]

Builds `cargo build --release -p sluice-router --example proxy` first (uses
$CARGO_TARGET_DIR when set).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "hello.default.localhost"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICKS = os.sysconf("SC_CLK_TCK")

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def ensure_tools():
    missing = [t for t in ("wrk", "haproxy", "nginx") if shutil.which(t) is None
               and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        pkgs = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx-light"}
        cmd = ["apt-get", "install", "-y", "-q"] + [pkgs[m] for m in missing]
        if subprocess.call(cmd, stdout=subprocess.DEVNULL) != 0:
            subprocess.check_call(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            subprocess.check_call(cmd, stdout=subprocess.DEVNULL)


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def pids_of(root_pid):
    """The process and its children (nginx master + workers)."""
    out = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout
    return [root_pid] + [int(p) for p in out.split()]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / TICKS


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wrk(port, duration, lua):
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{duration}s", "-s", lua, "-H", f"Host: {HOST}",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    reqs, dur_us, p50, p99, p999, sock_err, status_err = map(int, line.split()[1:])
    return {"reqs": reqs, "rps": reqs / (dur_us / 1e6), "p50": p50 / 1e3, "p99": p99 / 1e3,
            "p999": p999 / 1e3, "errors": sock_err + status_err}


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ensure_tools()
    subprocess.check_call(["cargo", "build", "-q", "--release", "-p", "sluice-router",
                           "--example", "proxy"], cwd=ROOT)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    proxy_bin = os.path.join(target, "release", "examples", "proxy")

    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    lua = write(os.path.join(tmp, "pct.lua"), WRK_LUA)
    body = "x" * 1023 + "\n"
    backend_port = free_port()
    procs = []

    def start(cmd, port, name):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        procs.append(p)
        wait_port(port)
        return p

    nginx_common = f"""daemon off; worker_processes auto; error_log {tmp}/{{name}}.err;
pid {tmp}/{{name}}.pid; events {{{{ worker_connections 4096; }}}}
"""
    backend_conf = write(os.path.join(tmp, "backend.conf"), nginx_common.format(name="backend") + f"""
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{backend_port}; location / {{ default_type text/plain; return 200 "{body.strip()}\\n"; }} }} }}
""")
    nginx_port = free_port()
    nginx_conf = write(os.path.join(tmp, "proxy.conf"), nginx_common.format(name="proxy") + f"""
http {{ access_log off; keepalive_requests 10000000;
  upstream be {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
  server {{ listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
""")
    haproxy_port = free_port()
    haproxy_conf = write(os.path.join(tmp, "haproxy.cfg"), f"""global
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{haproxy_port}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{backend_port}
""")
    sluice_port, sluice_act_port, sluice_routes_port = free_port(), free_port(), free_port()
    backend_addr = f"127.0.0.1:{backend_port}"
    try:
        backend = start([tool("nginx"), "-c", backend_conf, "-p", tmp], backend_port, "backend")
        paths = [
            ("backend direct (nginx, baseline)", backend_port, None),
            ("sluice router, activator out of path", sluice_port,
             start([proxy_bin, f"127.0.0.1:{sluice_port}", backend_addr], sluice_port, "sluice")),
            ("sluice router + activator in path", sluice_act_port,
             start([proxy_bin, f"127.0.0.1:{sluice_act_port}", backend_addr, "--activator"],
                   sluice_act_port, "sluice-act")),
            ("haproxy " + subprocess.run([tool("haproxy"), "-v"], capture_output=True,
                                         text=True).stdout.split()[2], haproxy_port,
             start([tool("haproxy"), "-f", haproxy_conf], haproxy_port, "haproxy")),
            ("nginx reverse proxy", nginx_port,
             start([tool("nginx"), "-c", nginx_conf, "-p", tmp], nginx_port, "nginx")),
        ]
        results = {name: [] for name, _, _ in paths}
        for name, port, _ in paths:
            wrk(port, 2, lua)  # warm-up: connections, pools, caches
        for _ in range(args.runs):
            for name, port, proc in paths:
                pids = pids_of(proc.pid) if proc else []
                before = cpu_seconds(pids)
                r = wrk(port, args.duration, lua)
                r["cpu10k"] = (cpu_seconds(pids) - before) / r["reqs"] * 1e4 if proc else None
                results[name].append(r)
        rss = {name: rss_mb(proc.pid) for name, _, proc in paths
               if proc and name.startswith("sluice")}
        routes = start([proxy_bin, f"127.0.0.1:{sluice_routes_port}", backend_addr, "--routes",
                        "1000"], sluice_routes_port, "sluice-routes")
        wrk(sluice_routes_port, args.duration, lua)
        rss["sluice router with 1,000 routes, after load"] = rss_mb(routes.pid)
        swap_port = free_port()
        swap = subprocess.run([proxy_bin, f"127.0.0.1:{swap_port}", backend_addr, "--routes",
                               "10000", "--swap-test"], capture_output=True, text=True,
                              timeout=120).stdout
        swap_line = next((l for l in swap.splitlines() if l.startswith("SWAP")), "SWAP failed")
        release_port = free_port()
        rel = subprocess.run([proxy_bin, f"127.0.0.1:{release_port}", backend_addr,
                              "--release-test"], capture_output=True, text=True,
                             timeout=120).stdout
        release_line = next((l for l in rel.splitlines() if l.startswith("RELEASE")),
                            "RELEASE failed")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print(f"\n{args.runs} runs x {args.duration}s each, wrk -t2 -c64, 1 KiB body; medians\n")
    print("| path | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 10k req | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        cpu = "–" if rs[0]["cpu10k"] is None else f"{med(rs, 'cpu10k'):.3f}"
        errors = sum(r["errors"] for r in rs)
        print(f"| {name} | {med(rs, 'rps'):,.0f} | {med(rs, 'p50'):.3f} | {med(rs, 'p99'):.3f} | "
              f"{med(rs, 'p999'):.3f} | {cpu} | {errors} |")
    print()
    for name, mb in rss.items():
        print(f"RSS {name}: {mb:.1f} MB")
    base = med(results[paths[1][0]], "rps")
    act = med(results[paths[2][0]], "rps")
    print(f"route change visible (10,000 routes, snapshot build + publish + first 200): {swap_line}")
    print(f"held request answered after a replica is published: {release_line}")
    print(f"activator in path costs {100 * (1 - act / base):.1f} % of the router's throughput")


if __name__ == "__main__":
    sys.exit(main())
