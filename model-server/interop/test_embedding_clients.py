"""Interop: the clients people call embedding services with, against a running
`sluice model-server` serving MiniLM.

Usage: test_embedding_clients.py HOST:PORT MINILM_REFERENCE_JSON
Run by scripts/interop-test.

- The `openai` package's `OpenAI(...).embeddings.create` at `/v1/embeddings` and at KServe's
  `/openai/v1/embeddings` (it asks for base64 by default and decodes it), and its error for a
  bad request (`openai.BadRequestError` with the field in `param`).
- `huggingface_hub`'s `InferenceClient(model=URL).feature_extraction`, which posts
  text-embeddings-inference's body to the bare URL.
Every vector is checked against sentence-transformers' own embeddings (cosine >= 0.999).
"""

import json
import sys

import numpy as np
import openai
from huggingface_hub import InferenceClient

from interop_common import check, cosine


def main():
    addr, reference_path = sys.argv[1], sys.argv[2]
    with open(reference_path) as f:
        reference = json.load(f)
    sentences, want = reference["sentences"], reference["embeddings"]

    for base in (f"http://{addr}/v1", f"http://{addr}/openai/v1"):
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        # Left out, the package asks for base64 and decodes it.
        for label, encoding in (("default (base64)", openai.omit), ("float", "float")):
            r = client.embeddings.create(model="minilm", input=sentences[:3], encoding_format=encoding)
            check(f"openai {base} {label} rows", len(r.data) == 3, r)
            for i, row in enumerate(r.data):
                check(f"openai {base} {label} row {i}",
                      cosine(row.embedding, want[i]) >= 0.999, cosine(row.embedding, want[i]))
            check(f"openai {base} usage", r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens, r.usage)
            check(f"openai {base} model", r.model == "minilm", r.model)
        try:
            client.embeddings.create(model="minilm", input="")
            raise AssertionError("an empty input was accepted")
        except openai.BadRequestError as e:
            check(f"openai {base} empty input is a 400 naming input",
                  e.status_code == 400 and e.param == "input", (e.status_code, e.param))
        try:
            client.embeddings.create(model="no-such-model", input="hello")
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            check(f"openai {base} unknown model is a 404", e.code == "model_not_found", e.code)

    hf = InferenceClient(model=f"http://{addr}")
    got = hf.feature_extraction(sentences[0])
    check("huggingface_hub feature_extraction shape", tuple(got.shape) == (1, 384), got.shape)
    check("huggingface_hub feature_extraction vector", cosine(got[0], want[0]) >= 0.999, cosine(got[0], want[0]))
    raw = hf.feature_extraction(sentences[1], normalize=False)
    check("huggingface_hub normalize=False is the raw mean",
          abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3 and cosine(raw[0], want[1]) >= 0.999,
          np.linalg.norm(raw[0]))
    print("embedding clients: all passed")


if __name__ == "__main__":
    main()
