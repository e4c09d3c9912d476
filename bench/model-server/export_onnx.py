"""Exports all-MiniLM-L6-v2's encoder to ONNX (once) for the onnxruntime baseline.

Usage: export_onnx.py MODEL_DIR OUT.onnx
"""

import sys

import torch
from transformers import AutoModel, AutoTokenizer

model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)


class Encoder(torch.nn.Module):
    """Keyword-only call into the Hugging Face model, so export sees three plain inputs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return out.last_hidden_state


model = Encoder(AutoModel.from_pretrained(model_dir).eval())
enc = tok(["an example sentence", "another"], padding=True, return_tensors="pt")
args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
dyn = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
       "token_type_ids": {0: "b", 1: "s"}, "last_hidden_state": {0: "b", 1: "s"}}
with torch.no_grad():
    torch.onnx.export(model, args, out, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=17,
                      dynamo=False)
print(out)
