"""Triton's official Python clients (tritonclient[grpc] and tritonclient[http]) against a real
`sluice serve`, unchanged.

Run by .ci/run in a virtualenv:
    python tests/python/test_tritonclient.py GRPC_HOST:PORT HTTP_HOST:PORT
against `sluice serve --repository DIR` where DIR was written by `sluice init-repo DIR`, with an
application `digits-app` (Exp4 over digits-logreg and digits-mlp) registered and the
Python-authored `python-logreg` (sample-models/python-logreg) loaded.
Exits non-zero on the first failed check and prints `N passed, 0 failed` at the end.
"""

import json
import pathlib
import sys

import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

passed = 0


def check(condition, what):
    global passed
    if not condition:
        print(f"FAILED: {what}")
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


def field(obj, name):
    """gRPC answers are protobuf messages, HTTP answers are dicts."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


# Two rows of the digits data: a 0 and a 1 (the first rows of sample-models/data/digits.csv).
ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12,
        0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0,
        0, 0, 6, 13, 10, 0, 0, 0]
ONE = [0, 0, 0, 12, 13, 5, 0, 0, 0, 0, 0, 11, 16, 9, 0, 0, 0, 0, 3, 15, 16, 6, 0, 0, 0, 7, 15,
       16, 16, 2, 0, 0, 0, 0, 1, 16, 16, 3, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 1, 16, 16, 6, 0,
       0, 0, 0, 0, 11, 16, 10, 0, 0]


def run(protocol, module, url):
    client = module.InferenceServerClient(url=url)
    check(client.is_server_live(), f"{protocol}: server is live")
    check(client.is_server_ready(), f"{protocol}: server is ready")
    meta = client.get_server_metadata()
    check(field(meta, "name") == "sluice" and "model_repository" in field(meta, "extensions"),
          f"{protocol}: server metadata")
    check(client.is_model_ready("digits-mlp"), f"{protocol}: digits-mlp is ready")
    check(not client.is_model_ready("no-such-model"), f"{protocol}: an unknown model is not ready")

    model = client.get_model_metadata("digits-mlp")
    first = field(model, "inputs")[0]
    check(field(first, "name") == "pixels" and field(first, "datatype") == "FP32",
          f"{protocol}: model metadata")
    check([int(d) for d in field(first, "shape")] == [-1, 64], f"{protocol}: variable batch")

    pixels = np.array([ZERO, ONE], dtype=np.float32)
    for binary in ([True, False] if protocol == "http" else [True]):
        inputs = [module.InferInput("pixels", list(pixels.shape), "FP32")]
        if protocol == "http":
            inputs[0].set_data_from_numpy(pixels, binary_data=binary)
            outputs = [module.InferRequestedOutput("label", binary_data=binary),
                       module.InferRequestedOutput("probabilities", binary_data=binary)]
        else:
            inputs[0].set_data_from_numpy(pixels)
            outputs = [module.InferRequestedOutput("label"),
                       module.InferRequestedOutput("probabilities")]
        result = client.infer("digits-mlp", inputs, outputs=outputs)
        labels = result.as_numpy("label")
        check(labels.dtype == np.int64 and list(labels) == [0, 1],
              f"{protocol}: infer labels {labels} (binary data: {binary})")
        probabilities = result.as_numpy("probabilities")
        check(probabilities.shape == (2, 10) and abs(probabilities.sum() - 2.0) < 1e-4,
              f"{protocol}: probabilities (binary data: {binary})")

    only = client.infer("digits-mlp", inputs, outputs=[module.InferRequestedOutput("label")])
    check(only.as_numpy("probabilities") is None, f"{protocol}: only the requested output")

    try:
        bad = [module.InferInput("pixels", [1, 32], "FP32")]
        bad[0].set_data_from_numpy(np.zeros((1, 32), dtype=np.float32))
        client.infer("digits-mlp", bad)
        check(False, f"{protocol}: a wrong shape is refused")
    except InferenceServerException as e:
        check("pixels" in e.message() and "shape" in e.message(),
              f"{protocol}: a wrong shape is refused: {e.message()}")
    try:
        client.infer("no-such-model", inputs)
        check(False, f"{protocol}: an unknown model is refused")
    except InferenceServerException as e:
        check("not loaded" in e.message(), f"{protocol}: an unknown model is refused")

    # An application's name in place of a model's: the request goes through selection.
    check(client.is_model_ready("digits-app"), f"{protocol}: the application is ready")
    app_meta = client.get_model_metadata("digits-app")
    check([field(o, "name") for o in field(app_meta, "outputs")] == ["label", "confidence", "default"],
          f"{protocol}: application metadata")
    inputs = [module.InferInput("pixels", list(pixels.shape), "FP32")]
    inputs[0].set_data_from_numpy(pixels)
    app = client.infer("digits-app", inputs, parameters={"user_id": "alice"})
    check(list(app.as_numpy("label")) == [0, 1] and not app.as_numpy("default").any(),
          f"{protocol}: infer on an application")
    check(app.as_numpy("confidence").shape == (2,), f"{protocol}: the ensemble's confidence")

    index = client.get_model_repository_index()
    entries = index if isinstance(index, list) else index.models
    check({field(m, "name") for m in entries} >= {"digits-logreg", "digits-mlp"},
          f"{protocol}: repository index")
    client.unload_model("digits-logreg")
    check(not client.is_model_ready("digits-logreg"), f"{protocol}: unload through the repository API")
    client.load_model("digits-logreg")
    check(client.is_model_ready("digits-logreg"), f"{protocol}: load through the repository API")


def python_model(url):
    """The Python-authored model answers every held-out digit as the Rust model does."""
    client = grpcclient.InferenceServerClient(url=url)
    check(client.is_model_ready("python-logreg"), "python-logreg (componentize-py) is ready")
    data = np.loadtxt(pathlib.Path(__file__).parents[2] / "sample-models/data/digits.csv",
                      delimiter=",", dtype=np.float32)
    held_out = data[np.arange(len(data)) % 5 == 0]
    python, rust = [], []
    for start in range(0, len(held_out), 120):  # within the models' max batch (256)
        rows = np.ascontiguousarray(held_out[start:start + 120, :64])
        x = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        python.extend(client.infer("python-logreg", [x]).as_numpy("label"))
        rust.extend(client.infer("digits-logreg", [x]).as_numpy("label"))
    python, rust = np.array(python), np.array(rust)
    accuracy = float((python == held_out[:, 64]).mean())
    check((python == rust).all(), f"python-logreg labels equal digits-logreg's (accuracy {accuracy:.4f})")


def minilm(protocol, module, url):
    """Triton's client gets sentence embeddings (BYTES in, FP32 out) from the MiniLM guest,
    equal to sentence-transformers' own (sample-models/minilm/reference.json)."""
    client = module.InferenceServerClient(url=url)
    check(client.is_model_ready("minilm"), f"{protocol}: minilm (wasi:nn) is ready")
    reference = json.loads((pathlib.Path(__file__).parents[2]
                            / "sample-models/minilm/reference.json").read_text(encoding="utf-8"))
    rows = reference["embeddings"]
    lowest = 1.0
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        text = np.array([r["text"].encode("utf-8") for r in chunk], dtype=np.object_)
        x = module.InferInput("text", [len(chunk)], "BYTES")
        x.set_data_from_numpy(text)
        embeddings = client.infer("minilm", [x]).as_numpy("embedding")
        check(embeddings.shape == (len(chunk), 384), f"{protocol}: embeddings are [{len(chunk)}, 384]")
        theirs = np.array([r["embedding"] for r in chunk], dtype=np.float32)
        cosines = (embeddings * theirs).sum(axis=1) / (
            np.linalg.norm(embeddings, axis=1) * np.linalg.norm(theirs, axis=1))
        lowest = min(lowest, float(cosines.min()))
    check(lowest >= 0.999, f"{protocol}: {len(rows)} MiniLM embeddings match sentence-transformers' "
                           f"(lowest cosine {lowest:.6f})")


run("grpc", grpcclient, sys.argv[1])
python_model(sys.argv[1])
minilm("grpc", grpcclient, sys.argv[1])
run("http", httpclient, sys.argv[2])
minilm("http", httpclient, sys.argv[2])

with urllib.request.urlopen(f"http://{sys.argv[2]}/metrics") as response:
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
requests = families.get("sluice_requests")  # the parser drops the _total suffix of counters
check(requests is not None and any(s.labels.get("model") == "digits-mlp" and s.value > 0
                                   for s in requests.samples),
      "/metrics parses as Prometheus text and counts the requests")
lookups = families.get("sluice_cache_lookups")
check(lookups is not None and any(s.labels.get("result") == "hit" for s in lookups.samples),
      "/metrics counts the applications' cache hits")
print(f"{passed} passed, 0 failed")
