"""In-process MiniLM baselines: sentence-transformers on PyTorch (CPU) and onnxruntime.

Usage: inprocess.py torch|onnx MODEL_DIR ONNX_PATH SENTENCE SECONDS THREADS
Prints one JSON line: batch-1 latency p50/p99 and req/s, batch-32 sentences/s, peak RSS.
"""

import json
import resource
import sys
import time

import numpy as np


def run(fn, seconds):
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return lat


def main():
    kind, model_dir, onnx_path, sentence, seconds, threads = sys.argv[1:7]
    seconds, threads = float(seconds), int(threads)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if kind == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(model_dir, device="cpu")

        def embed(batch):
            return model.encode(batch, normalize_embeddings=True, convert_to_numpy=True,
                                batch_size=len(batch))
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def embed(batch):
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
            feeds = {n: enc[n].astype(np.int64) for n in names}
            h = sess.run(None, feeds)[0]
            m = enc["attention_mask"][..., None].astype(np.float32)
            e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            return e / np.linalg.norm(e, axis=1, keepdims=True)

    for _ in range(5):
        embed([sentence])
        embed([sentence] * 32)
    lat1 = run(lambda: embed([sentence]), seconds)
    lat32 = run(lambda: embed([sentence] * 32), seconds)
    pct = lambda l, p: l[min(int(len(l) * p), len(l) - 1)] * 1e3
    print(json.dumps({
        "b1_rps": len(lat1) / sum(lat1),
        "b1_p50_ms": pct(lat1, 0.5),
        "b1_p99_ms": pct(lat1, 0.99),
        "b32_sentences_per_s": 32 * len(lat32) / sum(lat32),
        "b32_p50_ms": pct(lat32, 0.5),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
