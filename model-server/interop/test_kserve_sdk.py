"""Interop: the kserve Python SDK's clients (InferenceRESTClient with the v2 protocol,
InferenceGRPCClient) against a running `sluice model-server`.

Usage: test_kserve_sdk.py HOST:PORT MINILM_REFERENCE_JSON
Run by scripts/interop-test, which starts the server with models `iris` and `minilm`.
REST and gRPC share the one port.

The SDK's REST body carries "model_name" next to "id" and "inputs" (InferRequest.to_rest());
its gRPC request carries model_name and model_version. Outputs are checked against the same
expectations as test_tritonclient.py: the Iris classes and the MiniLM reference embeddings.
"""

import asyncio
import json
import logging
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
from kserve.inference_client import RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from interop_common import check, cosine

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
IRIS_CLASSES = [0, 1, 2]


def output(response, name):
    out = next((o for o in response.outputs if o.name == name), None)
    if out is None:
        raise AssertionError(f"output {name!r} missing from {response}")
    return out.as_numpy()


def iris_input(binary):
    inp = InferInput("input-0", list(IRIS.shape), "FP32")
    inp.set_data_from_numpy(IRIS, binary_data=binary)
    return inp


def text_input(sentences, binary):
    inp = InferInput("text", [len(sentences)], "BYTES")
    inp.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=np.object_),
                            binary_data=binary)
    return inp


def check_iris(what, r):
    check(f"{what} classes", output(r, "output-0").tolist() == IRIS_CLASSES, r)
    p = output(r, "probabilities")
    check(f"{what} probabilities", p.shape == (3, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4), p)


def check_minilm(what, r, ref, n):
    e = output(r, "embedding")
    check(f"{what} shape", e.shape == (n, 384), e.shape)
    for i in range(n):
        cs = cosine(e[i], np.array(ref["embeddings"][i]))
        check(f"{what} cosine[{i}]", cs >= 0.999, cs)


async def rest_tests(addr, ref):
    base = f"http://{addr}"
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as c:
        check("rest live", await c.is_server_live(base))
        check("rest ready", await c.is_server_ready(base))
        check("rest model ready iris", await c.is_model_ready(base, "iris"))
        check("rest model ready minilm", await c.is_model_ready(base, "minilm"))

        for binary in (False, True):
            outs = [RequestedOutput("output-0", {"binary_data": binary}),
                    RequestedOutput("probabilities", {"binary_data": binary})]
            req = InferRequest(model_name="iris", infer_inputs=[iris_input(binary)],
                               request_id=f"k-{binary}", request_outputs=outs)
            body, json_len = req.to_rest()
            head = json.loads(body[:json_len]) if json_len else body
            check(f"rest body names the model binary={binary}", head.get("model_name") == "iris", head)
            r = await c.infer(base, req, model_name="iris")
            check_iris(f"rest iris binary={binary}", r)
            check(f"rest id echoed binary={binary}", r.id == f"k-{binary}", r.id)
            check(f"rest model_name binary={binary}", r.model_name == "iris", r.model_name)

        sentences = ref["sentences"][:3]
        for binary in (False, True):
            req = InferRequest(model_name="minilm", infer_inputs=[text_input(sentences, binary)],
                               request_outputs=[RequestedOutput("embedding", {"binary_data": binary})])
            r = await c.infer(base, req, model_name="minilm")
            check_minilm(f"rest minilm binary={binary}", r, ref, len(sentences))

        # The body's model_name must agree with the URL's: a 400 that names both.
        req = InferRequest(model_name="setosa", infer_inputs=[iris_input(False)])
        try:
            await c.infer(base, req, model_name="iris")
            check("rest contradicting model_name refused", False, "no error raised")
        except httpx.HTTPStatusError as e:
            msg = str(e)
            check("rest contradicting model_name refused", e.response.status_code == 400
                  and '"setosa"' in msg and '"iris"' in msg, msg)

        # Malformed tensors are still refused, naming the tensor.
        bad = InferInput("input-0", [2, 4], "FP32", data=[1.0, 2.0, 3.0, 4.0])
        try:
            await c.infer(base, InferRequest(model_name="iris", infer_inputs=[bad]), model_name="iris")
            check("rest malformed tensor refused", False, "no error raised")
        except httpx.HTTPStatusError as e:
            msg = str(e)
            check("rest malformed tensor refused", e.response.status_code == 400
                  and '"input-0"' in msg and "8 elements" in msg, msg)

        try:
            await c.infer(base, InferRequest(model_name="nope", infer_inputs=[iris_input(False)]),
                          model_name="nope")
            check("rest unknown model", False, "no error raised")
        except httpx.HTTPStatusError as e:
            check("rest unknown model", e.response.status_code == 404 and "not found" in str(e), str(e))


async def grpc_tests(addr, ref):
    async with InferenceGRPCClient(addr, timeout=60) as c:
        check("grpc live", await c.is_server_live())
        check("grpc ready", await c.is_server_ready())
        check("grpc model ready iris", await c.is_model_ready("iris"))
        check("grpc model ready minilm", await c.is_model_ready("minilm"))

        # raw_input_contents (numpy, binary) and typed contents (a list).
        for binary in (True, False):
            req = InferRequest(model_name="iris", infer_inputs=[iris_input(binary)],
                               request_id=f"g-{binary}", model_version="3")
            r = await c.infer(req)
            check_iris(f"grpc iris raw={binary}", r)
            check(f"grpc id and version echoed raw={binary}",
                  r.id == f"g-{binary}" and r.model_name == "iris" and r.model_version == "3",
                  (r.id, r.model_name, r.model_version))

        sentences = ref["sentences"][:2]
        for binary in (True, False):
            req = InferRequest(model_name="minilm", infer_inputs=[text_input(sentences, binary)],
                               request_outputs=[RequestedOutput("embedding")])
            r = await c.infer(req)
            check_minilm(f"grpc minilm raw={binary}", r, ref, len(sentences))

        bad = InferInput("input-0", [2, 4], "FP32", data=[1.0, 2.0, 3.0, 4.0])
        try:
            await c.infer(InferRequest(model_name="iris", infer_inputs=[bad]))
            check("grpc malformed tensor refused", False, "no error raised")
        except grpc.RpcError as e:
            check("grpc malformed tensor refused", e.code() == grpc.StatusCode.INVALID_ARGUMENT
                  and '"input-0"' in e.details(), e.details())
        try:
            await c.infer(InferRequest(model_name="nope", infer_inputs=[iris_input(True)]))
            check("grpc unknown model", False, "no error raised")
        except grpc.RpcError as e:
            check("grpc unknown model", e.code() == grpc.StatusCode.NOT_FOUND, e.details())


def main():
    addr, ref_path = sys.argv[1], sys.argv[2]
    # The gRPC client logs every failed call with its traceback; the refusals here are
    # expected and checked, so keep the SDK's own logging to what is worse.
    logging.getLogger("kserve.trace").setLevel(logging.CRITICAL)
    with open(ref_path, encoding="utf-8") as f:
        ref = json.load(f)
    asyncio.run(rest_tests(addr, ref))
    asyncio.run(grpc_tests(addr, ref))
    print("interop (kserve SDK): all checks passed")


if __name__ == "__main__":
    main()
