#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 load for the real-node tier (scripts/kube-nodes-test), standard
library only, run inside the cluster's network namespace.

    load.py URL --host HOST (-n N | --duration S) [-c C] [--count TEXT ...] [--body JSON]

C connections (keep-alive) send requests back to back until N requests are done or S seconds
have passed. A request fails when it gets no response (connection refused or reset, timeout)
or a status other than 200; the connection is then opened again. Prints one JSON object:
sent, ok, failures by status or error, how many 200 bodies contained each --count TEXT, and
p50/p99 latency in ms.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--host", required=True)
    p.add_argument("-n", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0)
    p.add_argument("-c", type=int, default=4)
    p.add_argument("--count", action="append", default=[])
    p.add_argument("--body", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    if (a.n > 0) == (a.duration > 0):
        p.error("give exactly one of -n and --duration")
    url = urllib.parse.urlsplit(a.url)
    path = url.path or "/"
    lock = threading.Lock()
    state = {"sent": 0, "ok": 0, "failures": {}, "counts": {t: 0 for t in a.count}, "lat": []}
    deadline = time.monotonic() + a.duration if a.duration else None

    def take():
        with lock:
            if a.n and state["sent"] >= a.n:
                return False
            if deadline and time.monotonic() >= deadline:
                return False
            state["sent"] += 1
            return True

    def fail(what):
        with lock:
            state["failures"][what] = state["failures"].get(what, 0) + 1

    def worker():
        conn = None
        while take():
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=a.timeout)
            start = time.monotonic()
            try:
                headers = {"Host": a.host}
                method = "GET"
                if a.body is not None:
                    method = "POST"
                    headers["Content-Type"] = "application/json"
                conn.request(method, path, body=a.body, headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
            except Exception as e:  # every way a request can go unanswered counts
                fail(type(e).__name__)
                conn.close()
                conn = None
                continue
            took = (time.monotonic() - start) * 1e3
            if resp.status != 200:
                fail(str(resp.status))
                continue
            with lock:
                state["ok"] += 1
                state["lat"].append(took)
                for t in a.count:
                    if t in body:
                        state["counts"][t] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(a.c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(state.pop("lat"))

    def q(f):
        return round(lat[min(len(lat) - 1, int(f * len(lat)))], 2) if lat else None

    state["p50_ms"] = q(0.50)
    state["p99_ms"] = q(0.99)
    print(json.dumps(state, sort_keys=True))


if __name__ == "__main__":
    main()
