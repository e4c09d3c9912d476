"""KServe's Python ModelServer serving the benchmark's baselines over its v2 endpoint.

Usage: kserve_server.py minilm MODEL_DIR HTTP_PORT GRPC_PORT
       kserve_server.py iris IRIS_DIR HTTP_PORT GRPC_PORT
`minilm` runs sentence-transformers (KServe's usual runtime for embeddings); `iris` runs
the same 4-16-3 MLP as Sluice's sample in numpy (the server is what is measured).
"""

import json
import sys

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class MiniLM(Model):
    def __init__(self, name, path):
        super().__init__(name)
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(2)
        self.model = SentenceTransformer(path, device="cpu")
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):
        texts = payload.inputs[0].data
        texts = [t.decode() if isinstance(t, bytes) else t for t in texts]
        emb = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        out = InferOutput(name="embedding", shape=list(emb.shape), datatype="FP32")
        out.set_data_from_numpy(emb.astype(np.float32), binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")


class Iris(Model):
    def __init__(self, name, path):
        super().__init__(name)
        from safetensors.numpy import load_file

        cfg = json.load(open(f"{path}/config.json"))
        w = load_file(f"{path}/model.safetensors")
        self.mean = np.array(cfg["mean"], dtype=np.float32)
        self.std = np.array(cfg["std"], dtype=np.float32)
        n = len(cfg["hidden"]) + 1
        self.layers = [(w[f"layers.{i}.weight"], w[f"layers.{i}.bias"]) for i in range(n)]
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):
        x = np.asarray(payload.inputs[0].data, dtype=np.float32).reshape(payload.inputs[0].shape)
        h = (x - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        classes = h.argmax(axis=1).astype(np.int64)
        out = InferOutput(name="output-0", shape=list(classes.shape), datatype="INT64")
        out.set_data_from_numpy(classes, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")


if __name__ == "__main__":
    kind, path, http_port, grpc_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = MiniLM("minilm", path) if kind == "minilm" else Iris("iris", path)
    ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1).start([model])
