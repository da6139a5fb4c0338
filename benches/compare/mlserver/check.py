"""Checks a running MLServer over gRPC (Open Inference Protocol) against the model file.

    python benches/compare/mlserver/check.py MODEL_DIR [--url 127.0.0.1:18081]

Sends the 360 held-out rows of sample-models/data/digits.csv as one [360, 64] FP32 `pixels`
request and as a few single-row requests, asks for `predict` and `predict_proba`, and compares
with what the joblib model in MODEL_DIR answers in-process. Exits non-zero on any difference.
"""

import argparse
import pathlib
import sys

import joblib
import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train import MODEL_NAME, load_split  # noqa: E402


def infer(client, rows, outputs):
    request = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    request.set_data_from_numpy(rows)
    result = client.infer(MODEL_NAME, [request],
                          outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return [result.as_numpy(o) for o in outputs]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--url", default="127.0.0.1:18081")
    args = parser.parse_args()
    model = joblib.load(args.model_dir / "model.joblib")
    _, _, x_test, y_test = load_split()
    client = grpcclient.InferenceServerClient(args.url)
    assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    meta = client.get_model_metadata(MODEL_NAME)
    print("metadata inputs:", [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
          "outputs:", [(t.name, t.datatype) for t in meta.outputs])

    labels, probabilities = infer(client, x_test, ["predict", "predict_proba"])
    assert labels.shape == (len(x_test), 1) and probabilities.shape == (len(x_test), 10)
    labels = labels.reshape(-1)
    want = model.predict(x_test)
    assert labels.dtype == np.int64 and probabilities.dtype == np.float32, (labels.dtype,
                                                                            probabilities.dtype)
    assert np.array_equal(labels, want), "labels differ"
    assert np.allclose(probabilities, model.predict_proba(x_test), atol=1e-6), "probs differ"
    for i in range(5):
        (label,) = infer(client, x_test[i:i + 1], ["predict"])
        assert label.reshape(-1).tolist() == want[i:i + 1].tolist(), (i, label, want[i])
    print(f"ok: {len(x_test)} rows, labels equal sklearn's; held-out accuracy via MLServer "
          f"{(labels == y_test).mean():.4f}")


if __name__ == "__main__":
    main()
