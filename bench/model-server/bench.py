"""Runs every configuration of the model-server benchmark and prints the table.

Called by bench/model-server/run with the built binaries and model paths.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCE = "The quick brown fox jumps over the lazy dog near the bank."
IRIS_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
MINILM_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
THREADS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_sluice(args, name, fmt, uri):
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [args.sluice, "model-server", "--model-name", name, "--model-format", fmt,
         "--storage-uri", uri, "--listen", "127.0.0.1:0", "--cpu-threads", str(THREADS),
         "--max-batch-size", "32", "--max-queue-delay", "2ms"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = None
    for line in p.stdout:
        line = line.strip()
        if line.startswith("SLUICE_LISTENING "):
            addr = line.split(" ", 1)[1]
        if line == "SLUICE_READY":
            break
    ready_ms = (time.perf_counter() - t0) * 1e3
    if addr is None:
        raise RuntimeError("sluice did not start")
    return p, addr, ready_ms


def start_kserve(args, kind, path):
    port, gport = free_port(), free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "kserve_server.py"), kind, path, str(port), str(gport)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v2/models/{kind}/ready"
    deadline = time.time() + 120
    while time.time() < deadline:
        # Polling a starting server's readiness endpoint is the only handshake it offers.
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.2)
    else:
        p.kill()
        raise RuntimeError("kserve server did not become ready")
    return p, f"127.0.0.1:{port}", (time.perf_counter() - t0) * 1e3


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def loadgen(args, mode, addr, model, body, concurrency):
    if mode == "http":
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(body, f)
        cmd = [args.loadgen, "http", f"http://{addr}/v2/models/{model}/infer", f.name, str(concurrency), str(args.seconds)]
    else:
        cmd = [args.loadgen, "grpc", addr, model, SENTENCE, str(concurrency), str(args.seconds)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def inprocess(args, kind):
    out = subprocess.run([sys.executable, os.path.join(HERE, "inprocess.py"), kind, args.st_dir, args.onnx,
                          SENTENCE, str(args.seconds), str(THREADS)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    for a in ("--sluice", "--loadgen", "--embed-speed", "--minilm", "--st-dir", "--onnx", "--iris", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    rows = {}

    p, addr, ready_ms = start_sluice(args, "minilm", "bert", args.minilm)
    idle_rss = rss_mb(p.pid)
    for mode in ("http", "grpc"):
        for c in (1, 32):
            rows[f"sluice-{mode} c={c}"] = loadgen(args, mode, addr, "minilm", MINILM_BODY, c)
    rows["sluice minilm"] = {"start_to_ready_ms": ready_ms, "idle_rss_mb": idle_rss, "peak_rss_mb": peak_rss_mb(p.pid)}
    stop(p)

    p, addr, ready_ms = start_kserve(args, "minilm", args.st_dir)
    for c in (1, 32):
        rows[f"kserve-python c={c}"] = loadgen(args, "http", addr, "minilm", MINILM_BODY, c)
    rows["kserve minilm"] = {"start_to_ready_ms": ready_ms, "peak_rss_mb": peak_rss_mb(p.pid)}
    stop(p)

    # Sluice's encoder in process, no HTTP: the same measurement inprocess.py makes.
    out = subprocess.run([args.embed_speed, args.minilm, str(max(1, round(args.seconds))), "sluice"],
                         env={**os.environ, "RAYON_NUM_THREADS": str(THREADS)},
                         check=True, capture_output=True, text=True).stdout
    rows["sluice in-process"] = json.loads(out.strip().splitlines()[-1])
    rows["torch in-process"] = inprocess(args, "torch")
    rows["onnxruntime in-process"] = inprocess(args, "onnx")

    p, addr, ready_ms = start_sluice(args, "iris", "sluice-mlp", args.iris)
    rows["sluice iris c=32"] = loadgen(args, "http", addr, "iris", IRIS_BODY, 32)
    rows["sluice iris c=32"]["peak_rss_mb"] = peak_rss_mb(p.pid)
    stop(p)
    p, addr, ready_ms = start_kserve(args, "iris", args.iris)
    rows["kserve iris c=32"] = loadgen(args, "http", addr, "iris", IRIS_BODY, 32)
    rows["kserve iris c=32"]["peak_rss_mb"] = peak_rss_mb(p.pid)
    stop(p)

    weights_mb = os.path.getsize(os.path.join(args.minilm, "model.safetensors")) / 2**20
    rows["weights_mb"] = weights_mb
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)

    print(f"\nMiniLM, one {len(SENTENCE.split())}-word sentence per request, {THREADS} threads, {args.seconds:.0f} s per row")
    print(f"{'configuration':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for k in ("sluice-http c=1", "sluice-grpc c=1", "kserve-python c=1", "sluice-http c=32", "sluice-grpc c=32", "kserve-python c=32"):
        r = rows[k]
        print(f"{k:28} {r['rps']:9.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    for k in ("sluice in-process", "torch in-process", "onnxruntime in-process"):
        r = rows[k]
        print(f"{k + ' b=1':28} {r['b1_rps']:9.1f} {r['b1_p50_ms']:8.2f} {r['b1_p99_ms']:8.2f}")
        print(f"{k + ' b=32 (sent/s)':28} {r['b32_sentences_per_s']:9.1f} {r['b32_p50_ms']:8.2f} {'':>8}")
    si_, ox = rows["sluice in-process"], rows["onnxruntime in-process"]
    print("\nin process, Sluice's encoder / onnxruntime:")
    print(f"  batch-1 p50 latency            {si_['b1_p50_ms'] / ox['b1_p50_ms']:.2f}x   (target <= 1.25)")
    print(f"  batch-32 sentences/s           {si_['b32_sentences_per_s'] / ox['b32_sentences_per_s']:.2f}x   (target >= 1.0)")
    s32 = rows["sluice-http c=32"]["rps"]
    print("\nratios at concurrency 32 (Sluice HTTP / other):")
    print(f"  vs KServe Python server        {s32 / rows['kserve-python c=32']['rps']:.2f}x   (target >= 2)")
    print(f"  vs PyTorch in-process batch 32 {s32 / rows['torch in-process']['b32_sentences_per_s']:.2f}x   (target >= 1)")
    print(f"  vs onnxruntime batch 32        {s32 / rows['onnxruntime in-process']['b32_sentences_per_s']:.2f}x   (target >= 0.9)")
    print(f"  p99 / p50                      {rows['sluice-http c=32']['p99_ms'] / rows['sluice-http c=32']['p50_ms']:.2f}x   (target <= 2)")
    print(f"  Sluice gRPC / HTTP             {rows['sluice-grpc c=32']['rps'] / s32:.2f}x")
    sm = rows["sluice minilm"]
    print(f"\nSluice start-to-ready {sm['start_to_ready_ms']:.0f} ms (target <= 300); peak RSS {sm['peak_rss_mb']:.0f} MB, "
          f"weights {weights_mb:.0f} MB -> {sm['peak_rss_mb'] / weights_mb:.2f}x (target <= 1.5); "
          f"KServe peak RSS {rows['kserve minilm']['peak_rss_mb']:.0f} MB, torch in-process {rows['torch in-process']['peak_rss_mb']:.0f} MB")
    si, ki = rows["sluice iris c=32"], rows["kserve iris c=32"]
    print(f"Iris MLP c=32: Sluice {si['rps']:.0f} req/s (p50 {si['p50_ms']:.2f}, p99 {si['p99_ms']:.2f} ms), "
          f"KServe {ki['rps']:.0f} req/s (p50 {ki['p50_ms']:.2f}, p99 {ki['p99_ms']:.2f} ms) -> {si['rps'] / ki['rps']:.1f}x (target >= 10)")


if __name__ == "__main__":
    main()
