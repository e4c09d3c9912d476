"""Interop: the real tritonclient (HTTP and gRPC) against a running `sluice model-server`.

Usage: test_tritonclient.py HOST:PORT MINILM_REFERENCE_JSON
Run by scripts/interop-test, which starts the server with models `iris` and `minilm`.
REST and gRPC share the one port.
"""

import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from interop_common import check, cosine

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)
IRIS_CLASSES = [0, 1, 2]


def http_tests(url, ref):
    c = httpclient.InferenceServerClient(url=url)
    check("http live", c.is_server_live())
    check("http ready", c.is_server_ready())
    meta = c.get_server_metadata()
    check("http server metadata", meta["name"] == "sluice-model-server", meta)
    check("http model ready", c.is_model_ready("iris"))
    m = c.get_model_metadata("iris")
    check("http model metadata", m["inputs"][0]["shape"] == [-1, 4], m)

    for binary in (False, True):
        inp = httpclient.InferInput("input-0", list(IRIS.shape), "FP32")
        inp.set_data_from_numpy(IRIS, binary_data=binary)
        outs = [
            httpclient.InferRequestedOutput("output-0", binary_data=binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        ]
        r = c.infer("iris", [inp], outputs=outs, request_id="rid-7")
        check(f"http iris infer binary={binary}", r.as_numpy("output-0").tolist() == IRIS_CLASSES,
              r.get_response())
        p = r.as_numpy("probabilities")
        check(f"http iris probabilities binary={binary}", p.shape == (3, 3)
              and np.allclose(p.sum(axis=1), 1.0, atol=1e-4))
        check(f"http id echoed binary={binary}", r.get_response()["id"] == "rid-7")

    sentences = ref["sentences"][:3]
    for binary in (False, True):
        inp = httpclient.InferInput("text", [len(sentences)], "BYTES")
        inp.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=np.object_),
                                binary_data=binary)
        r = c.infer("minilm", [inp], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary)])
        e = r.as_numpy("embedding")
        check(f"http minilm shape binary={binary}", e.shape == (3, 384), e.shape)
        for i in range(3):
            cs = cosine(e[i], np.array(ref["embeddings"][i]))
            check(f"http minilm cosine[{i}] binary={binary}", cs >= 0.999, cs)

    try:
        c.infer("nope", [httpclient.InferInput("x", [1], "FP32")])
        check("http unknown model errors", False, "no error raised")
    except InferenceServerException as e:
        check("http unknown model errors", "not found" in str(e), str(e))

    c.unload_model("iris")
    check("http unload", not c.is_model_ready("iris"))
    c.load_model("iris")
    check("http load", c.is_model_ready("iris"))


def grpc_tests(url, ref):
    c = grpcclient.InferenceServerClient(url=url)
    check("grpc live", c.is_server_live())
    check("grpc ready", c.is_server_ready())
    check("grpc server metadata", c.get_server_metadata().name == "sluice-model-server")
    m = c.get_model_metadata("iris")
    check("grpc model metadata", list(m.inputs[0].shape) == [-1, 4], m)
    check("grpc model ready", c.is_model_ready("minilm"))

    inp = grpcclient.InferInput("input-0", list(IRIS.shape), "FP32")
    inp.set_data_from_numpy(IRIS)
    r = c.infer("iris", [inp], request_id="g1")
    check("grpc iris infer (raw)", r.as_numpy("output-0").tolist() == IRIS_CLASSES)
    check("grpc id echoed", r.get_response().id == "g1")

    sentences = ref["sentences"][:2]
    inp = grpcclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=np.object_))
    r = c.infer("minilm", [inp])
    e = r.as_numpy("embedding")
    check("grpc minilm shape", e.shape == (2, 384), e.shape)
    check("grpc minilm cosine", cosine(e[1], np.array(ref["embeddings"][1])) >= 0.999)

    # Typed contents through the generated stub.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    req = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    t = req.inputs.add(name="input-0", datatype="FP32", shape=[3, 4])
    t.contents.fp32_contents.extend(IRIS.flatten().tolist())
    resp = stub.ModelInfer(req)
    classes = np.frombuffer(resp.raw_output_contents[0], dtype=np.int64).tolist()
    check("grpc iris infer (typed contents)", classes == IRIS_CLASSES, classes)

    # Both contents and raw contents: INVALID_ARGUMENT naming the tensor.
    req.raw_input_contents.append(IRIS.tobytes())
    try:
        stub.ModelInfer(req)
        check("grpc contents+raw refused", False, "no error raised")
    except grpc.RpcError as e:
        check("grpc contents+raw refused", e.code() == grpc.StatusCode.INVALID_ARGUMENT
              and "input-0" in e.details(), e.details())
    try:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
        check("grpc unknown model", False, "no error raised")
    except grpc.RpcError as e:
        check("grpc unknown model", e.code() == grpc.StatusCode.NOT_FOUND, e.details())


def main():
    url, ref_path = sys.argv[1], sys.argv[2]
    with open(ref_path, encoding="utf-8") as f:
        ref = json.load(f)
    http_tests(url, ref)
    grpc_tests(url, ref)
    print("interop: all checks passed")


if __name__ == "__main__":
    main()
