"""The CUDA build of the model server on a GPU machine: correctness and speed.

Runs where a GPU and PyTorch are (the device machine); needs no network. Given a
`sluice` binary built with `--features sluice-model-server/cuda` and the loadgen example:

1. writes an F32 copy of MiniLM's weights (shipped as F16 to keep the transfer small), so
   Sluice and the PyTorch baseline load the very same numbers;
2. starts `sluice model-server` on it and checks that the process holds GPU memory (the
   model really runs on the GPU, not silently on the CPU);
3. embeds the committed reference sentences (model-server/tests/fixtures) over OIP v2,
   one batched request and one request per sentence, and compares them with the
   sentence-transformers reference (cosine >= 0.999) and with PyTorch on the GPU computing
   from the same weights;
4. measures Sluice (HTTP, loadgen, one short sentence, concurrency 1 and 32) next to
   sentence-transformers on PyTorch on the same GPU in process (batch 1 and batch 32), and
   Sluice's CPU path on the same machine (CUDA hidden), all in one run.

Prints one JSON document; exits non-zero when a check fails.
Usage: check.py SLUICE LOADGEN F16_MODEL_DIR FIXTURE SECONDS
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SENTENCE = "The quick brown fox jumps over the lazy dog near the bank."


def f32_copy(src, dst):
    import torch
    from safetensors.torch import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(src, f), dst)
    t = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: v.to(torch.float32).contiguous() for k, v in t.items()},
              os.path.join(dst, "model.safetensors"))


def start(sluice, model_dir, env):
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(
        [sluice, "model-server", "--model-name", "minilm", "--model-format", "bert",
         "--storage-uri", model_dir, "--listen", "127.0.0.1:0",
         "--max-batch-size", "32", "--max-queue-delay", "2ms"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    p._log = log
    addr = None
    for line in p.stdout:
        line = line.strip()
        if line.startswith("SLUICE_LISTENING "):
            addr = line.split(" ", 1)[1]
        if line == "SLUICE_READY":
            break
    if addr is None:
        raise RuntimeError(f"sluice model-server did not start:\n{log_tail(p, 4000)}")
    # Keep reading stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, addr, (time.perf_counter() - t0) * 1e3


def log_tail(p, n):
    p._log.seek(0)
    return p._log.read()[-n:]


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return log_tail(p, 1500)


def infer(addr, sentences):
    body = {"inputs": [{"name": "text", "shape": [len(sentences)], "datatype": "BYTES",
                        "data": sentences}]}
    req = urllib.request.Request(f"http://{addr}/v2/models/minilm/infer",
                                 data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.load(r)["outputs"][0]
    hidden = out["shape"][1]
    d = out["data"]
    return [d[i * hidden:(i + 1) * hidden] for i in range(out["shape"][0])]


def cosine(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def gpu_pids():
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    rows = {}
    for line in out.strip().splitlines():
        pid, mem = [x.strip() for x in line.split(",")]
        rows[int(pid)] = int(mem)
    return rows


def loadgen(lg, addr, concurrency, seconds):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                               "data": [SENTENCE]}]}, f)
    out = subprocess.run([lg, "http", f"http://{addr}/v2/models/minilm/infer", f.name,
                          str(concurrency), str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_reference(model_dir, sentences, seconds):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    device = os.environ.get("CHECK_TORCH_DEVICE", "cuda")  # "cpu" only to dry-run this script
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()

    @torch.inference_mode()
    def embed(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        e = torch.nn.functional.normalize(e, dim=1)
        return e.cpu().numpy()

    ref = embed(sentences).tolist()

    def run(fn):
        lat = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t0)
        lat.sort()
        return lat

    for _ in range(10):
        embed([SENTENCE])
        embed([SENTENCE] * 32)
    lat1 = run(lambda: embed([SENTENCE]))
    lat32 = run(lambda: embed([SENTENCE] * 32))
    pct = lambda l, p: l[min(int(len(l) * p), len(l) - 1)] * 1e3
    speed = {"b1_rps": len(lat1) / sum(lat1), "b1_p50_ms": pct(lat1, 0.5),
             "b1_p99_ms": pct(lat1, 0.99), "b32_sentences_per_s": 32 * len(lat32) / sum(lat32),
             "b32_p50_ms": pct(lat32, 0.5)}
    return ref, speed


def main():
    sluice, lg, f16_dir, fixture, seconds = sys.argv[1:6]
    seconds = float(seconds)
    fx = json.load(open(fixture))
    sentences, want = fx["sentences"], fx["embeddings"]
    work = tempfile.mkdtemp(prefix="sluice-gpu-")
    model_dir = os.path.join(work, "minilm")
    f32_copy(f16_dir, model_dir)
    result = {"checks": {}, "speed": {}}
    failures = []

    p, addr, ready_ms = start(sluice, model_dir, dict(os.environ))
    try:
        result["sluice_gpu_ready_ms"] = ready_ms
        mem = gpu_pids().get(p.pid)
        result["checks"]["sluice_gpu_memory_mib"] = mem
        if not mem:
            failures.append(f"sluice (pid {p.pid}) holds no GPU memory: {gpu_pids()}")
        batched = infer(addr, sentences)
        alone = [infer(addr, [s])[0] for s in sentences]
        ref, torch_speed = torch_reference(model_dir, sentences, seconds)
        cos_fixture = min(min(cosine(g, w) for g, w in zip(batched, want)),
                          min(cosine(g, w) for g, w in zip(alone, want)))
        cos_torch = min(cosine(g, r) for g, r in zip(batched, ref))
        result["checks"]["min_cosine_vs_sentence_transformers_fixture"] = cos_fixture
        result["checks"]["min_cosine_vs_pytorch_gpu_same_weights"] = cos_torch
        if cos_fixture < 0.999:
            failures.append(f"cosine vs fixture {cos_fixture} < 0.999")
        if cos_torch < 0.9999:
            failures.append(f"cosine vs PyTorch on the GPU {cos_torch} < 0.9999")
        for c in (1, 32):
            result["speed"][f"sluice-gpu http c={c}"] = loadgen(lg, addr, c, seconds)
        result["speed"]["pytorch-gpu in-process"] = torch_speed
    finally:
        log = stop(p)
        result["sluice_gpu_log_tail"] = log[-1500:]

    cpu_env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p, addr, ready_ms = start(sluice, model_dir, cpu_env)
    try:
        result["sluice_cpu_ready_ms"] = ready_ms
        for c in (1, 32):
            result["speed"][f"sluice-cpu({os.cpu_count()} cores) http c={c}"] = loadgen(lg, addr, c, seconds)
    finally:
        stop(p)
    shutil.rmtree(work, ignore_errors=True)
    result["failures"] = failures
    print(json.dumps(result, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
