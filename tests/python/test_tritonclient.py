"""Triton's official Python client (tritonclient[grpc]) against a real `sluice serve`.

Run by .ci/run in a virtualenv:  python tests/python/test_tritonclient.py HOST:PORT
against `sluice serve --repository DIR` where DIR was written by `sluice init-repo DIR`.
Exits non-zero on the first failed check and prints `N passed, 0 failed` at the end.
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url = sys.argv[1]
client = grpcclient.InferenceServerClient(url=url)
passed = 0


def check(condition, what):
    global passed
    if not condition:
        print(f"FAILED: {what}")
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


check(client.is_server_live(), "server is live")
check(client.is_server_ready(), "server is ready")
meta = client.get_server_metadata()
check(meta.name == "sluice" and "model_repository" in meta.extensions, "server metadata")
check(client.is_model_ready("digits-mlp"), "digits-mlp is ready")

model = client.get_model_metadata("digits-mlp")
check(model.inputs[0].name == "pixels" and model.inputs[0].datatype == "FP32", "model metadata")
check(list(model.inputs[0].shape) == [-1, 64], "input shape with a variable batch")

# Two rows of the digits data: a 0 and a 1 (the first rows of sample-models/data/digits.csv).
zero = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12,
        0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0,
        0, 0, 6, 13, 10, 0, 0, 0]
one = [0, 0, 0, 12, 13, 5, 0, 0, 0, 0, 0, 11, 16, 9, 0, 0, 0, 0, 3, 15, 16, 6, 0, 0, 0, 7, 15,
       16, 16, 2, 0, 0, 0, 0, 1, 16, 16, 3, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 1, 16, 16, 6, 0,
       0, 0, 0, 0, 11, 16, 10, 0, 0]
pixels = np.array([zero, one], dtype=np.float32)
inputs = [grpcclient.InferInput("pixels", list(pixels.shape), "FP32")]
inputs[0].set_data_from_numpy(pixels)
outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")]
result = client.infer("digits-mlp", inputs, outputs=outputs)
labels = result.as_numpy("label")
check(labels.dtype == np.int64 and list(labels) == [0, 1], f"infer labels {labels}")
probabilities = result.as_numpy("probabilities")
check(probabilities.shape == (2, 10) and abs(probabilities.sum() - 2.0) < 1e-4, "probabilities")

only_label = client.infer("digits-mlp", inputs, outputs=[grpcclient.InferRequestedOutput("label")])
check(only_label.as_numpy("probabilities") is None, "only the requested output comes back")

try:
    bad = [grpcclient.InferInput("pixels", [1, 32], "FP32")]
    bad[0].set_data_from_numpy(np.zeros((1, 32), dtype=np.float32))
    client.infer("digits-mlp", bad)
    check(False, "a wrong shape is refused")
except InferenceServerException as e:
    check("pixels" in e.message() and "shape" in e.message(), f"a wrong shape is refused: {e.message()}")

try:
    client.infer("no-such-model", inputs)
    check(False, "an unknown model is refused")
except InferenceServerException as e:
    check("not loaded" in e.message(), "an unknown model is refused")

index = client.get_model_repository_index()
check({m.name for m in index.models} >= {"digits-logreg", "digits-mlp"}, "repository index")
client.unload_model("digits-logreg")
check(not client.is_model_ready("digits-logreg"), "unload through the repository API")
client.load_model("digits-logreg")
check(client.is_model_ready("digits-logreg"), "load through the repository API")

print(f"{passed} passed, 0 failed")
