"""The model server under two `sluice` binaries, in alternating rounds: start-to-ready,
idle and peak RSS, and HTTP throughput at concurrency 32 with MiniLM.

Made to decide the binaries' allocator (bench/RESULTS.md, issue 18): the data path gains
from mimalloc, and this checks what the same binary's model server pays for it.

    python3 bench/model-server/alloc.py --a target/release/sluice --b /tmp/sluice-glibc \
        --loadgen target/release/examples/loadgen --minilm "$(scripts/fetch-minilm)"
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def one(binary, args):
    run = argparse.Namespace(sluice=binary, loadgen=args.loadgen, seconds=args.seconds)
    p, addr, ready_ms = bench.start_sluice(run, "minilm", "bert", args.minilm)
    try:
        idle = bench.rss_mb(p.pid)
        load = bench.loadgen(run, "http", addr, "minilm", bench.MINILM_BODY, 32)
        peak = bench.peak_rss_mb(p.pid)
    finally:
        bench.stop(p)
    return {"ready_ms": ready_ms, "idle_mb": idle, "peak_mb": peak, "rps": load["rps"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="a sluice binary")
    ap.add_argument("--b", required=True, help="another sluice binary")
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--minilm", required=True, help="the MiniLM model folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    weights = os.path.getsize(os.path.join(args.minilm, "model.safetensors")) / 2**20
    results = {"a": [], "b": []}
    for r in range(args.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for key in order:
            results[key].append(one(getattr(args, key), args))
            print(f"round {r} {key}: {results[key][-1]}", file=sys.stderr)
    print(f"MiniLM weights {weights:.1f} MB; medians of {args.rounds} rounds\n")
    print("| binary | start-to-ready ms | idle RSS MB | peak RSS MB (x weights) | HTTP c=32 req/s |")
    print("|---|---|---|---|---|")
    for key in ("a", "b"):
        rows = results[key]
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(f"| {getattr(args, key)} | {med['ready_ms']:.0f} | {med['idle_mb']:.0f} | "
              f"{med['peak_mb']:.0f} ({med['peak_mb'] / weights:.2f}x) | {med['rps']:.1f} |")


if __name__ == "__main__":
    main()
