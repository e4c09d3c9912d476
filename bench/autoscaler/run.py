#!/usr/bin/env python3
"""Autoscaler benchmark: KPA (the baseline) vs the traffic-pattern policy on every committed
trace under samples/traces/, through `sluice autoscaler simulate --json` (the real decider on
a virtual clock), then on freshly generated heavy-tailed bursty traces
(`sluice autoscaler gen-trace --kind heavy-bursty`: bursts of 50-500 requests, Pareto gaps;
one per seed of --heavy-seeds, --heavy-hours long). Prints one markdown table with
pattern/KPA ratios and, per trace, whether the pattern policy kept its promise: no more cold
starts than the KPA and at most 1.05x its replica-seconds (exit status 1 when one did not),
and the decider micro-benchmark (10,000 revisions ticked) when --micro is given.

Usage: bench/autoscaler/run.py [--sluice PATH] [--cold-start MS] [--service-time MS]
                               [--concurrency N] [--heavy-seeds N,N,...] [--heavy-hours H]
                               [--micro] [--daily]
With --daily it also runs the per-time-of-day study (`cargo run --example diurnal_sweep`,
default simulator settings) on every committed trace and on freshly generated multi-day
traces: KPA, the pattern policy before the daily table, with it, and the oracle that plans
on the generator's true rates, with totals after the first day for traces longer than one.
The sluice binary defaults to $SLUICE, else target/release/sluice, else target/debug/sluice
(under $CARGO_TARGET_DIR when set).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def find_sluice(explicit):
    if explicit:
        return explicit
    if os.environ.get("SLUICE"):
        return os.environ["SLUICE"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "sluice"
        if candidate.exists():
            return str(candidate)
    sys.exit("no sluice binary: build it (cargo build --release -p sluice-cli) or pass --sluice")


def simulate(sluice, trace, policy, args):
    out = subprocess.run(
        [sluice, "autoscaler", "simulate", "--trace", str(trace), "--policy", policy,
         "--cold-start", str(args.cold_start), "--service-time", str(args.service_time),
         "--concurrency", str(args.concurrency), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def ratio(a, b, digits=2):
    if b == 0:
        return "—" if a == 0 else "∞"
    return f"{a / b:.{digits}f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sluice")
    p.add_argument("--cold-start", type=int, default=2000)
    p.add_argument("--service-time", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--micro", action="store_true")
    p.add_argument("--daily", action="store_true")
    p.add_argument("--seeds", default="11,2026,5,7,8,21,22,23,24",
                   help="diurnal seeds for the fresh 72 h traces of --daily")
    p.add_argument("--heavy-seeds", default="1,2,3,4,5,6,7,8,9,10,11,12",
                   help="seeds of the generated heavy-tailed bursty traces (empty: none)")
    p.add_argument("--heavy-hours", type=float, default=6.0)
    args = p.parse_args()
    sluice = find_sluice(args.sluice)
    traces = [(t.stem, t) for t in sorted((ROOT / "samples" / "traces").glob("*.csv"))]
    tmp = tempfile.TemporaryDirectory(prefix="sluice-heavy-")
    for seed in [s for s in args.heavy_seeds.split(",") if s]:
        path = pathlib.Path(tmp.name) / f"heavy-bursty-{seed}.csv"
        text = subprocess.run(
            [sluice, "autoscaler", "gen-trace", "--kind", "heavy-bursty", "--seed", seed,
             "--hours", str(args.heavy_hours)],
            check=True, capture_output=True, text=True).stdout
        path.write_text(text)
        traces.append((f"heavy-bursty seed {seed}, {args.heavy_hours:g} h", path))
    print(f"cold start {args.cold_start} ms, service time {args.service_time} ms, "
          f"concurrency {args.concurrency}; ratios are pattern / KPA; kept: pattern cold "
          f"starts <= KPA's and replica-seconds <= 1.05x KPA's\n")
    print("| trace | requests | cold starts KPA | cold starts pattern | ratio "
          "| p99 queue ms KPA | p99 queue ms pattern | ratio "
          "| replica-s KPA | replica-s pattern | ratio | kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    broken = []
    for name, trace in traces:
        k = simulate(sluice, trace, "kpa", args)
        q = simulate(sluice, trace, "pattern", args)
        kept = (q["cold_starts"] <= k["cold_starts"]
                and q["replica_seconds"] <= 1.05 * k["replica_seconds"])
        if not kept:
            broken.append(name)
        print(f"| {name} | {k['requests']} "
              f"| {k['cold_starts']} | {q['cold_starts']} | {ratio(q['cold_starts'], k['cold_starts'])} "
              f"| {k['p99_queue_ms']:.0f} | {q['p99_queue_ms']:.0f} | {ratio(q['p99_queue_ms'], k['p99_queue_ms'])} "
              f"| {k['replica_seconds']:.0f} | {q['replica_seconds']:.0f} "
              f"| {ratio(q['replica_seconds'], k['replica_seconds'], 3)} | {'yes' if kept else '**NO**'} |")
    tmp.cleanup()
    if broken:
        print(f"\nNOT KEPT on: {', '.join(broken)}")
    if args.daily:
        specs = [str(t) for t in sorted((ROOT / "samples" / "traces").glob("*.csv"))]
        specs += [f"diurnal:{seed}:72" for seed in args.seeds.split(",") if seed]
        specs += ["poisson:78:72", "poisson:4:72", "bursty:77:72", "periodic:1:72"]
        for spec in specs:
            print()
            subprocess.run(["cargo", "run", "-q", "-p", "sluice-autoscaler", "--example",
                            "diurnal_sweep", "--", spec, "-"], check=True, cwd=ROOT)
    if args.micro:
        print()
        subprocess.run(["cargo", "bench", "-q", "-p", "sluice-autoscaler", "--bench", "decider"],
                       check=True, cwd=ROOT)
    if broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
