#!/usr/bin/env python3
"""Autoscaler benchmark: KPA (the baseline) vs the traffic-pattern policy on every committed
trace under samples/traces/, through `sluice autoscaler simulate --json` (the real decider on
a virtual clock). Prints one markdown table with pattern/KPA ratios, and the decider
micro-benchmark (10,000 revisions ticked) when --micro is given.

Usage: bench/autoscaler/run.py [--sluice PATH] [--cold-start MS] [--service-time MS]
                               [--concurrency N] [--micro] [--daily]
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
    args = p.parse_args()
    sluice = find_sluice(args.sluice)
    traces = sorted((ROOT / "samples" / "traces").glob("*.csv"))
    print(f"cold start {args.cold_start} ms, service time {args.service_time} ms, "
          f"concurrency {args.concurrency}; ratios are pattern / KPA\n")
    print("| trace | requests | cold starts KPA | cold starts pattern | ratio "
          "| p99 queue ms KPA | p99 queue ms pattern | ratio "
          "| replica-s KPA | replica-s pattern | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for trace in traces:
        k = simulate(sluice, trace, "kpa", args)
        q = simulate(sluice, trace, "pattern", args)
        print(f"| {trace.stem} | {k['requests']} "
              f"| {k['cold_starts']} | {q['cold_starts']} | {ratio(q['cold_starts'], k['cold_starts'])} "
              f"| {k['p99_queue_ms']:.0f} | {q['p99_queue_ms']:.0f} | {ratio(q['p99_queue_ms'], k['p99_queue_ms'])} "
              f"| {k['replica_seconds']:.0f} | {q['replica_seconds']:.0f} "
              f"| {ratio(q['replica_seconds'], k['replica_seconds'], 3)} |")
    if args.daily:
        specs = [str(t) for t in traces]
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


if __name__ == "__main__":
    main()
